# The signaling host: one EC2 instance behind an Elastic IP, its security group, and an
# instance role that can do exactly what the services do. user_data only prepares the
# host for Ansible; Ansible configures everything else.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0

  name = var.ami_ssm_parameter
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ssm_parameter.ami[0].insecure_value

  # The AWS calls the services make, as IAM actions (kept in one file that a test compares
  # with the services' code).
  service_actions = jsondecode(file("${path.module}/service-actions.json"))
  dynamodb_table_actions = sort([
    for action in local.service_actions["dynamodb"] : "dynamodb:${action}"
  ])
  dynamodb_index_actions = sort([
    for action in local.service_actions["dynamodb"] : "dynamodb:${action}" if contains(["Query", "Scan"], action)
  ])
  cognito_actions = sort([for action in local.service_actions["cognito-idp"] : "cognito-idp:${action}"])

  log_group_name = "/signaling/${var.name}"
  log_group_arn  = "arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:${local.log_group_name}"

  # Every inbound rule, by name. Public: HTTPS (TCP for HTTP/1.1 and 2, UDP for HTTP/3) and
  # TURN. Everything else only when a variable opens it.
  public_ports = merge(
    {
      https     = { protocol = "tcp", from = 443, to = 443, description = "HTTPS and WebSocket (wss) through the Caddy edge" }
      https-udp = { protocol = "udp", from = 443, to = 443, description = "HTTP/3 through the Caddy edge" }
    },
    var.enable_turn ? {
      turn-udp   = { protocol = "udp", from = 3478, to = 3478, description = "TURN/STUN over UDP (coturn)" }
      turn-tcp   = { protocol = "tcp", from = 3478, to = 3478, description = "TURN over TCP (coturn)" }
      turn-relay = { protocol = "udp", from = var.turn_relay_ports.from, to = var.turn_relay_ports.to, description = "TURN relayed media (coturn min-port to max-port)" }
    } : {},
    var.enable_turn && var.enable_turn_tls ? {
      turn-tls = { protocol = "tcp", from = 5349, to = 5349, description = "TURN over TLS (coturn, enable_turn_tls)" }
    } : {},
    var.enable_http ? {
      http = { protocol = "tcp", from = 80, to = 80, description = "HTTP redirect to HTTPS and ACME HTTP-01 (enable_http)" }
    } : {},
    var.enable_seed_ports ? {
      seed-api = { protocol = "tcp", from = 8001, to = 8001, description = "The seed's plain-HTTP API port (enable_seed_ports)" }
      seed-ws  = { protocol = "tcp", from = 8080, to = 8080, description = "The seed's plain WebSocket port (enable_seed_ports)" }
    } : {},
  )
  ingress_rules = merge(
    { for pair in setproduct(keys(local.public_ports), var.public_ingress_cidrs) :
      "${pair[0]}:${pair[1]}" => merge(local.public_ports[pair[0]], { cidr = pair[1] })
    },
    { for cidr in var.ssh_cidrs :
      "ssh:${cidr}" => { protocol = "tcp", from = 22, to = 22, cidr = cidr, description = "SSH from an administration network (ssh_cidrs)" }
    },
    { for pair in setproduct(var.metrics_ports, var.monitoring_cidrs) :
      "metrics-${pair[0]}:${pair[1]}" => { protocol = "tcp", from = pair[0], to = pair[0], cidr = pair[1], description = "Prometheus scrapes from monitoring_cidrs" }
    },
  )
  egress_rules = merge(
    {
      https = { protocol = "tcp", from = 443, to = 443, description = "AWS APIs (DynamoDB, Cognito, SSM, CloudWatch), ACME, container images" }
    },
    var.allow_http_egress ? {
      http = { protocol = "tcp", from = 80, to = 80, description = "Package mirrors that serve signed packages over plain HTTP" }
    } : {},
    var.enable_turn ? {
      turn-relay = { protocol = "udp", from = 1, to = 65535, description = "TURN relayed media to peers, whose ports are arbitrary" }
    } : {},
  )
}

# Network ---------------------------------------------------------------------------

resource "aws_security_group" "this" {
  name        = var.name
  description = "Signaling host: HTTPS and TURN in; SSH, seed ports and metrics only when enabled"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "this" {
  for_each = local.ingress_rules

  security_group_id = aws_security_group.this.id
  description       = each.value.description
  ip_protocol       = each.value.protocol
  from_port         = each.value.from
  to_port           = each.value.to
  cidr_ipv4         = each.value.cidr

  tags = merge(var.tags, { Name = "${var.name}-in-${each.key}" })
}

resource "aws_vpc_security_group_egress_rule" "this" {
  for_each = local.egress_rules

  security_group_id = aws_security_group.this.id
  description       = each.value.description
  ip_protocol       = each.value.protocol
  from_port         = each.value.from
  to_port           = each.value.to
  cidr_ipv4         = "0.0.0.0/0"

  tags = merge(var.tags, { Name = "${var.name}-out-${each.key}" })
}

# The relay's TURN probe allocates on the public TURN URLs, this host's own Elastic IP: UDP
# leaves through the turn-relay rule above; TCP 3478 needs this one, to that address only.
resource "aws_vpc_security_group_egress_rule" "turn_probe" {
  count = var.enable_turn ? 1 : 0

  security_group_id = aws_security_group.this.id
  description       = "The relay's TURN probe over TCP to this host's own TURN port (its Elastic IP)"
  ip_protocol       = "tcp"
  from_port         = 3478
  to_port           = 3478
  cidr_ipv4         = "${aws_eip.this.public_ip}/32"

  tags = merge(var.tags, { Name = "${var.name}-out-turn-probe" })
}

# Identity --------------------------------------------------------------------------

resource "aws_iam_role" "this" {
  name = var.name
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "Ec2AssumesTheHostRole"
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "ec2.amazonaws.com" }
    }]
  })

  tags = var.tags
}

resource "aws_iam_role_policy" "services" {
  name = "signaling-services"
  role = aws_iam_role.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid      = "ServiceTables"
          Effect   = "Allow"
          Action   = local.dynamodb_table_actions
          Resource = sort(var.dynamodb_table_arns)
        },
        {
          Sid      = "ServiceUserPool"
          Effect   = "Allow"
          Action   = local.cognito_actions
          Resource = [var.cognito_user_pool_arn]
        },
        {
          Sid      = "HostLogs"
          Effect   = "Allow"
          Action   = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
          Resource = [local.log_group_arn, "${local.log_group_arn}:log-stream:*"]
        },
        {
          # The minimum for Session Manager (AWS's documented custom instance profile);
          # these actions cannot be scoped to a resource.
          Sid    = "SessionManager"
          Effect = "Allow"
          Action = [
            "ssm:UpdateInstanceInformation",
            "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel",
          ]
          Resource = ["*"]
        },
      ],
      length(var.dynamodb_index_arns) > 0 && length(local.dynamodb_index_actions) > 0 ? [
        {
          Sid      = "ServiceIndexes"
          Effect   = "Allow"
          Action   = local.dynamodb_index_actions
          Resource = sort(var.dynamodb_index_arns)
        },
      ] : [],
    )
  })
}

resource "aws_iam_instance_profile" "this" {
  name = var.name
  role = aws_iam_role.this.name

  tags = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  # checkov:skip=CKV_AWS_158:CloudWatch Logs encrypts log groups at rest with its own key; the services never log secrets, tokens or SDP, so a customer-managed KMS key would add cost and a key policy for nothing.

  tags = var.tags
}

# Compute ---------------------------------------------------------------------------

resource "aws_instance" "this" {
  # checkov:skip=CKV_AWS_126:Detailed monitoring is var.detailed_monitoring, on by default and in dev and prod (a terraform test asserts it); only environments/local turns it off, because the AWS emulator (moto) does not implement MonitorInstances.
  ami                     = local.ami_id
  instance_type           = var.instance_type
  subnet_id               = var.subnet_id
  vpc_security_group_ids  = [aws_security_group.this.id]
  iam_instance_profile    = aws_iam_instance_profile.this.name
  key_name                = var.key_name
  monitoring              = var.detailed_monitoring
  ebs_optimized           = true
  disable_api_termination = var.termination_protection

  user_data = templatefile("${path.module}/templates/user-data.sh.tftpl", {
    hostname    = var.name
    environment = var.environment
  })
  user_data_replace_on_change = false

  # Hop limit 2, not 1: auth-api, rooms-api and ws-relay call Cognito and DynamoDB with the
  # instance role from containers (compose's "egress" network), one hop past the host. The
  # edge's "public" network is a bridge too, so Caddy could reach IMDS as well (docs/security.md).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 2
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    encrypted             = true
    delete_on_termination = true
    tags                  = merge(var.tags, { Name = "${var.name}-root" })
  }

  tags = merge(var.tags, { Name = var.name })

  lifecycle {
    # A newer AMI in the SSM parameter must not replace a running host: replace it on purpose.
    ignore_changes = [ami]
  }
}

resource "aws_eip" "this" {
  domain = "vpc"

  tags = merge(var.tags, { Name = var.name })
}

resource "aws_eip_association" "this" {
  allocation_id = aws_eip.this.id
  instance_id   = aws_instance.this.id
}
