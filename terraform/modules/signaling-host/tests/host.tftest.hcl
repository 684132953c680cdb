# terraform test (from the module folder): plans against a mocked AWS provider.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-west-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_ssm_parameter" {
    defaults = { insecure_value = "ami-0123456789abcdef0" }
  }
}

variables {
  name                  = "signaling-test"
  environment           = "test"
  vpc_id                = "vpc-0123456789abcdef0"
  subnet_id             = "subnet-0123456789abcdef0"
  dynamodb_table_arns   = ["arn:aws:dynamodb:us-west-1:123456789012:table/test-rooms", "arn:aws:dynamodb:us-west-1:123456789012:table/test-peers"]
  dynamodb_index_arns   = ["arn:aws:dynamodb:us-west-1:123456789012:table/test-peers/index/peer_id-index"]
  cognito_user_pool_arn = "arn:aws:cognito-idp:us-west-1:123456789012:userpool/us-west-1_AbCdEf123"
}

# The instance ---------------------------------------------------------------------------

run "the_instance_requires_imdsv2_and_encrypts_its_root_volume" {
  command = plan

  assert {
    condition     = aws_instance.this.metadata_options[0].http_tokens == "required" && aws_instance.this.metadata_options[0].http_endpoint == "enabled"
    error_message = "IMDSv2 must be required."
  }

  assert {
    condition     = aws_instance.this.metadata_options[0].http_put_response_hop_limit == 2
    error_message = "The hop limit is 2, so containers reach the role through the Docker bridge, and no further."
  }

  assert {
    condition     = aws_instance.this.root_block_device[0].encrypted && aws_instance.this.root_block_device[0].volume_type == "gp3"
    error_message = "The root volume must be encrypted gp3."
  }

  assert {
    condition     = aws_instance.this.monitoring && aws_instance.this.ebs_optimized && aws_instance.this.disable_api_termination
    error_message = "Detailed monitoring, EBS optimisation and termination protection are on by default."
  }

  assert {
    condition     = aws_instance.this.ami == "ami-0123456789abcdef0" && data.aws_ssm_parameter.ami[0].name == "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
    error_message = "Without ami_id the AMI comes from the public SSM parameter."
  }

  assert {
    condition     = aws_eip.this.domain == "vpc"
    error_message = "The host has an Elastic IP."
  }

  assert {
    condition     = aws_cloudwatch_log_group.this.name == "/signaling/signaling-test" && aws_cloudwatch_log_group.this.retention_in_days == 365
    error_message = "The host's log group keeps logs a year."
  }
}

run "user_data_only_prepares_the_host_for_ansible" {
  command = plan

  assert {
    condition     = strcontains(aws_instance.this.user_data, "hostnamectl set-hostname 'signaling-test'") && strcontains(aws_instance.this.user_data, "amazon-ssm-agent")
    error_message = "user_data sets the hostname and starts the SSM agent."
  }

  assert {
    condition     = !can(regex("install[^\\n]*(docker|coturn|caddy|compose)", aws_instance.this.user_data))
    error_message = "user_data must not configure the services: that is Ansible's job."
  }
}

run "detailed_monitoring_termination_protection_and_the_ami_are_configurable" {
  command = plan

  variables {
    detailed_monitoring    = false
    termination_protection = false
    ami_id                 = "ami-0fedcba9876543210"
  }

  assert {
    condition     = !aws_instance.this.monitoring && !aws_instance.this.disable_api_termination
    error_message = "detailed_monitoring and termination_protection must reach the instance."
  }

  assert {
    condition     = aws_instance.this.ami == "ami-0fedcba9876543210" && length(data.aws_ssm_parameter.ami) == 0
    error_message = "ami_id must be used as is, without looking up the SSM parameter."
  }
}

# The security group: only 443 and TURN are public unless a variable opens more ---------

run "only_https_and_turn_are_open_by_default" {
  command = plan

  assert {
    condition = toset(keys(aws_vpc_security_group_ingress_rule.this)) == toset([
      "https:0.0.0.0/0", "https-udp:0.0.0.0/0",
      "turn-udp:0.0.0.0/0", "turn-tcp:0.0.0.0/0", "turn-relay:0.0.0.0/0",
    ])
    error_message = "By default only HTTPS (TCP and UDP) and TURN (not TURN over TLS: coturn runs no-tls) may be open."
  }

  assert {
    condition = alltrue([
      for rule in aws_vpc_security_group_ingress_rule.this :
      contains([443, 3478, 49152], rule.from_port) && (rule.from_port == 49152 ? rule.to_port == 65535 && rule.ip_protocol == "udp" : rule.to_port == rule.from_port)
    ])
    error_message = "Public ports are 443, 3478 and the UDP relay range 49152-65535, nothing else."
  }

  assert {
    condition     = alltrue([for rule in aws_vpc_security_group_ingress_rule.this : !contains([22, 80, 8001, 8002, 8080, 9100], rule.from_port)])
    error_message = "SSH, plain HTTP, the seed ports and metrics must be closed by default."
  }

  assert {
    condition     = alltrue([for rule in aws_vpc_security_group_ingress_rule.this : rule.ip_protocol != "-1" && rule.description != ""])
    error_message = "Every rule names one protocol and says why it exists."
  }
}

run "egress_is_https_http_and_turn_relay_only" {
  command = plan

  assert {
    condition     = toset(keys(aws_vpc_security_group_egress_rule.this)) == toset(["https", "http", "turn-relay"])
    error_message = "Egress is HTTPS, HTTP (package mirrors) and the TURN relay."
  }

  assert {
    condition     = alltrue([for rule in aws_vpc_security_group_egress_rule.this : rule.ip_protocol != "-1"])
    error_message = "No egress rule allows every protocol."
  }

  assert {
    condition     = length(aws_vpc_security_group_egress_rule.turn_probe) == 1 && aws_vpc_security_group_egress_rule.turn_probe[0].ip_protocol == "tcp" && aws_vpc_security_group_egress_rule.turn_probe[0].from_port == 3478 && aws_vpc_security_group_egress_rule.turn_probe[0].to_port == 3478
    error_message = "The relay's TURN probe reaches this host's TCP 3478, and nothing else."
  }
}

run "turn_over_tls_opens_5349_only_when_asked" {
  command = plan

  variables {
    enable_turn_tls = true
  }

  assert {
    condition     = contains(keys(aws_vpc_security_group_ingress_rule.this), "turn-tls:0.0.0.0/0") && aws_vpc_security_group_ingress_rule.this["turn-tls:0.0.0.0/0"].from_port == 5349
    error_message = "enable_turn_tls opens 5349/tcp."
  }
}

run "without_turn_only_https_is_public" {
  command = plan

  variables {
    enable_turn       = false
    allow_http_egress = false
  }

  assert {
    condition     = toset(keys(aws_vpc_security_group_ingress_rule.this)) == toset(["https:0.0.0.0/0", "https-udp:0.0.0.0/0"])
    error_message = "enable_turn = false must close every TURN port."
  }

  assert {
    condition     = toset(keys(aws_vpc_security_group_egress_rule.this)) == toset(["https"]) && length(aws_vpc_security_group_egress_rule.turn_probe) == 0
    error_message = "Without TURN and HTTP egress only HTTPS goes out."
  }
}

run "the_public_ports_can_be_limited_to_given_networks" {
  command = plan

  variables {
    public_ingress_cidrs = ["198.51.100.0/24"]
    turn_relay_ports     = { from = 50000, to = 50999 }
  }

  assert {
    condition     = alltrue([for rule in aws_vpc_security_group_ingress_rule.this : rule.cidr_ipv4 == "198.51.100.0/24"])
    error_message = "public_ingress_cidrs must replace 0.0.0.0/0 on every public rule."
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.this["turn-relay:198.51.100.0/24"].from_port == 50000 && aws_vpc_security_group_ingress_rule.this["turn-relay:198.51.100.0/24"].to_port == 50999
    error_message = "turn_relay_ports must set the relay range."
  }
}

run "seed_ports_and_http_open_only_when_enabled" {
  command = plan

  variables {
    enable_seed_ports = true
    enable_http       = true
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.this["seed-api:0.0.0.0/0"].from_port == 8001 && aws_vpc_security_group_ingress_rule.this["seed-ws:0.0.0.0/0"].from_port == 8080
    error_message = "enable_seed_ports opens 8001 and 8080."
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.this["http:0.0.0.0/0"].from_port == 80
    error_message = "enable_http opens 80."
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.this) == 8
    error_message = "Nothing else opens with them."
  }
}

run "ssh_and_metrics_open_only_to_their_networks" {
  command = plan

  variables {
    ssh_cidrs        = ["203.0.113.7/32"]
    monitoring_cidrs = ["10.42.0.0/16"]
    metrics_ports    = [9100, 9323]
    key_name         = "operator"
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.this["ssh:203.0.113.7/32"].from_port == 22 && length([for rule in aws_vpc_security_group_ingress_rule.this : rule if rule.from_port == 22]) == 1
    error_message = "SSH opens only to ssh_cidrs."
  }

  assert {
    condition     = toset([for rule in aws_vpc_security_group_ingress_rule.this : "${rule.from_port}:${rule.cidr_ipv4}" if contains([9100, 9323], rule.from_port)]) == toset(["9100:10.42.0.0/16", "9323:10.42.0.0/16"])
    error_message = "Metrics ports open only to monitoring_cidrs."
  }

  assert {
    condition     = aws_instance.this.key_name == "operator"
    error_message = "key_name installs the SSH key."
  }
}

# The instance role: exactly the services' calls, on exactly these resources -----------

run "the_role_grants_the_services_calls_on_their_tables_and_pool_only" {
  command = plan

  assert {
    condition     = jsondecode(aws_iam_role.this.assume_role_policy).Statement[0].Principal.Service == "ec2.amazonaws.com"
    error_message = "Only EC2 may assume the host role."
  }

  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.services.policy).Statement : s if s.Sid == "ServiceTables"]) == {
      Sid    = "ServiceTables"
      Effect = "Allow"
      Action = [
        "dynamodb:BatchWriteItem", "dynamodb:ConditionCheckItem", "dynamodb:DeleteItem", "dynamodb:DescribeTable",
        "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query", "dynamodb:UpdateItem",
      ]
      Resource = [
        "arn:aws:dynamodb:us-west-1:123456789012:table/test-peers",
        "arn:aws:dynamodb:us-west-1:123456789012:table/test-rooms",
      ]
    }
    error_message = "DynamoDB: the services' actions on the two tables, nothing else."
  }

  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.services.policy).Statement : s if s.Sid == "ServiceIndexes"]) == {
      Sid      = "ServiceIndexes"
      Effect   = "Allow"
      Action   = ["dynamodb:Query"]
      Resource = ["arn:aws:dynamodb:us-west-1:123456789012:table/test-peers/index/peer_id-index"]
    }
    error_message = "Indexes: Query only, on the given index."
  }

  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.services.policy).Statement : s if s.Sid == "ServiceUserPool"]) == {
      Sid      = "ServiceUserPool"
      Effect   = "Allow"
      Action   = ["cognito-idp:AdminCreateUser", "cognito-idp:AdminDeleteUser", "cognito-idp:AdminInitiateAuth", "cognito-idp:AdminSetUserPassword", "cognito-idp:DescribeUserPoolClient", "cognito-idp:ListUsers"]
      Resource = ["arn:aws:cognito-idp:us-west-1:123456789012:userpool/us-west-1_AbCdEf123"]
    }
    error_message = "Cognito: the auth-api's calls on this pool only."
  }

  assert {
    condition = one([for s in jsondecode(aws_iam_role_policy.services.policy).Statement : s if s.Sid == "HostLogs"]).Resource == [
      "arn:aws:logs:us-west-1:123456789012:log-group:/signaling/signaling-test",
      "arn:aws:logs:us-west-1:123456789012:log-group:/signaling/signaling-test:log-stream:*",
    ]
    error_message = "Logs: the host's own log group only."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.services.policy).Statement :
      s.Effect == "Allow" && alltrue([for action in s.Action : !strcontains(action, "*")])
    ])
    error_message = "No wildcard actions."
  }

  assert {
    condition = toset(flatten([
      for s in jsondecode(aws_iam_role_policy.services.policy).Statement : [s.Sid] if contains(s.Resource, "*")
    ])) == toset(["SessionManager"])
    error_message = "Only Session Manager's actions, which AWS cannot scope, apply to every resource."
  }

  assert {
    condition     = length(jsondecode(aws_iam_role_policy.services.policy).Statement) == 5
    error_message = "The policy has exactly the five statements above."
  }
}

run "without_indexes_there_is_no_index_statement" {
  command = plan

  variables {
    dynamodb_index_arns = []
  }

  assert {
    condition     = length([for s in jsondecode(aws_iam_role_policy.services.policy).Statement : s if s.Sid == "ServiceIndexes"]) == 0
    error_message = "No index ARNs, no index permissions."
  }
}

# Relay nodes: one by default, N on request, the same one address either way ----------

run "one_relay_node_by_default" {
  command = plan

  assert {
    condition     = output.relay_nodes == 1
    error_message = "The host runs one relay node unless relay_nodes says otherwise (the seed's shape)."
  }
}

run "three_relay_nodes_share_the_host_s_one_elastic_ip_and_ports" {
  command = plan

  variables {
    relay_nodes = 3
  }

  assert {
    condition     = output.relay_nodes == 3
    error_message = "relay_nodes must reach the output Ansible reads."
  }

  assert {
    condition     = aws_eip.this.domain == "vpc" && length(aws_vpc_security_group_ingress_rule.this) == 5
    error_message = "More relay nodes add no address and no port: they are reached through the edge on 443."
  }
}

# Each validation rejects bad input ----------------------------------------------------

run "rejects_a_bad_name" {
  command = plan
  variables {
    name = "signaling_test"
  }
  expect_failures = [var.name]
}

run "rejects_a_bad_environment" {
  command = plan
  variables {
    environment = "Prod-1"
  }
  expect_failures = [var.environment]
}

run "rejects_a_bad_vpc_id" {
  command = plan
  variables {
    vpc_id = "default"
  }
  expect_failures = [var.vpc_id]
}

run "rejects_a_bad_subnet_id" {
  command = plan
  variables {
    subnet_id = "public"
  }
  expect_failures = [var.subnet_id]
}

run "rejects_a_bad_ami_id" {
  command = plan
  variables {
    ami_id = "ubuntu-24.04"
  }
  expect_failures = [var.ami_id]
}

run "rejects_a_private_ami_parameter" {
  command = plan
  variables {
    ami_ssm_parameter = "/my/ami"
  }
  expect_failures = [var.ami_ssm_parameter]
}

run "rejects_a_bad_instance_type" {
  command = plan
  variables {
    instance_type = "small"
  }
  expect_failures = [var.instance_type]
}

run "rejects_a_tiny_root_volume" {
  command = plan
  variables {
    root_volume_size_gb = 4
  }
  expect_failures = [var.root_volume_size_gb]
}

run "rejects_no_public_ingress_cidrs" {
  command = plan
  variables {
    public_ingress_cidrs = []
  }
  expect_failures = [var.public_ingress_cidrs]
}

run "rejects_an_inverted_relay_range" {
  command = plan
  variables {
    turn_relay_ports = { from = 60000, to = 50000 }
  }
  expect_failures = [var.turn_relay_ports]
}

run "rejects_a_relay_range_on_privileged_ports" {
  command = plan
  variables {
    turn_relay_ports = { from = 443, to = 2000 }
  }
  expect_failures = [var.turn_relay_ports]
}

run "rejects_an_invalid_ssh_cidr" {
  command = plan
  variables {
    ssh_cidrs = ["203.0.113.7"]
  }
  expect_failures = [var.ssh_cidrs]
}

run "rejects_ssh_from_the_internet" {
  command = plan
  variables {
    ssh_cidrs = ["0.0.0.0/0"]
  }
  expect_failures = [var.ssh_cidrs]
}

run "rejects_public_metrics" {
  command = plan
  variables {
    monitoring_cidrs = ["0.0.0.0/0"]
  }
  expect_failures = [var.monitoring_cidrs]
}

run "rejects_a_privileged_metrics_port" {
  command = plan
  variables {
    metrics_ports = [22]
  }
  expect_failures = [var.metrics_ports]
}

run "rejects_turn_or_seed_ports_as_metrics_ports" {
  command = plan
  variables {
    metrics_ports = [8080]
  }
  expect_failures = [var.metrics_ports]
}

run "rejects_wildcard_table_arns" {
  command = plan
  variables {
    dynamodb_table_arns = ["arn:aws:dynamodb:us-west-1:123456789012:table/*"]
  }
  expect_failures = [var.dynamodb_table_arns]
}

run "rejects_no_table_arns" {
  command = plan
  variables {
    dynamodb_table_arns = []
  }
  expect_failures = [var.dynamodb_table_arns]
}

run "rejects_wildcard_index_arns" {
  command = plan
  variables {
    dynamodb_index_arns = ["arn:aws:dynamodb:us-west-1:123456789012:table/test-peers/index/*"]
  }
  expect_failures = [var.dynamodb_index_arns]
}

run "rejects_a_bad_user_pool_arn" {
  command = plan
  variables {
    cognito_user_pool_arn = "arn:aws:cognito-idp:us-west-1:123456789012:userpool/*"
  }
  expect_failures = [var.cognito_user_pool_arn]
}

run "rejects_an_unsupported_log_retention" {
  command = plan
  variables {
    log_retention_days = 10
  }
  expect_failures = [var.log_retention_days]
}

run "rejects_no_relay_node" {
  command = plan
  variables {
    relay_nodes = 0
  }
  expect_failures = [var.relay_nodes]
}

run "rejects_more_relay_nodes_than_a_host_has_cores_for" {
  command = plan
  variables {
    relay_nodes = 17
  }
  expect_failures = [var.relay_nodes]
}

run "rejects_a_fraction_of_a_relay_node" {
  command = plan
  variables {
    relay_nodes = 1.5
  }
  expect_failures = [var.relay_nodes]
}
