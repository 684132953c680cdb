variable "name" {
  description = "Name of the host, used for its resources and the Name tag (e.g. \"signaling-prod\")."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3 to 40 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "environment" {
  description = "Environment the host serves (dev, prod, local, ...), written to /etc/signaling/host-facts for Ansible."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,15}$", var.environment))
    error_message = "environment must be 2 to 16 lowercase letters or digits, starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC of the host's security group."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id such as \"vpc-0123456789abcdef0\"."
  }
}

variable "subnet_id" {
  description = "Public subnet (with a route to an internet gateway) where the host runs."
  type        = string

  validation {
    condition     = can(regex("^subnet-[0-9a-f]+$", var.subnet_id))
    error_message = "subnet_id must be a subnet id such as \"subnet-0123456789abcdef0\"."
  }
}

variable "ami_id" {
  description = "AMI of the host; null looks up ami_ssm_parameter. A later AMI does not replace a running host (use terraform apply -replace)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "ami_id must be an AMI id such as \"ami-0123456789abcdef0\", or null to use ami_ssm_parameter."
  }
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter naming the current AMI, used when ami_id is null (default: Ubuntu 24.04 LTS, amd64, which ships the SSM agent)."
  type        = string
  default     = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
  nullable    = false

  validation {
    condition     = startswith(var.ami_ssm_parameter, "/aws/service/")
    error_message = "ami_ssm_parameter must be a public AWS parameter under /aws/service/."
  }
}

variable "instance_type" {
  description = "EC2 instance type (x86_64 to match the default AMI)."
  type        = string
  default     = "t3.small"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like \"t3.small\"."
  }
}

variable "root_volume_size_gb" {
  description = "Size of the encrypted gp3 root volume, in GiB."
  type        = number
  default     = 20
  nullable    = false

  validation {
    condition     = var.root_volume_size_gb >= 8 && var.root_volume_size_gb <= 500 && floor(var.root_volume_size_gb) == var.root_volume_size_gb
    error_message = "root_volume_size_gb must be a whole number between 8 and 500."
  }
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics for the instance (billed); off gives five-minute metrics."
  type        = bool
  default     = true
  nullable    = false
}

variable "termination_protection" {
  description = "Refuse API termination of the instance (turn it off first to destroy it). On in production."
  type        = bool
  default     = true
  nullable    = false
}

variable "key_name" {
  description = "EC2 key pair for SSH; null (the default) installs no key: administration goes through SSM Session Manager."
  type        = string
  default     = null
}

variable "relay_nodes" {
  description = "Relay nodes on the host: one ws-relay container per node (about one per vCPU: a relay process uses one core), each with its own URL through the edge (wss://<domain>/nodes/relay-<k>) on the one Elastic IP. 1 runs the single relay exactly as before."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.relay_nodes >= 1 && var.relay_nodes <= 16 && floor(var.relay_nodes) == var.relay_nodes
    error_message = "relay_nodes must be a whole number between 1 and 16 (one relay per vCPU; more hosts need their own domain name and Elastic IP, see docs/deploy.md)."
  }
}

variable "public_ingress_cidrs" {
  description = "Who may reach the public ports (HTTPS 443 and TURN): the whole internet by default."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false

  validation {
    condition     = length(var.public_ingress_cidrs) >= 1 && alltrue([for cidr in var.public_ingress_cidrs : can(regex("^[0-9.]+/[0-9]{1,2}$", cidr)) && can(cidrhost(cidr, 0))])
    error_message = "public_ingress_cidrs must list at least one valid IPv4 CIDR block."
  }
}

variable "enable_turn" {
  description = "Open the TURN ports (3478 UDP/TCP) and the relay port range for coturn."
  type        = bool
  default     = true
  nullable    = false
}

variable "enable_turn_tls" {
  description = "Also open 5349/tcp, TURN over TLS: only once coturn has a certificate (its role runs no-tls by default)."
  type        = bool
  default     = false
  nullable    = false
}

variable "turn_relay_ports" {
  description = "UDP port range coturn relays media through (its min-port and max-port)."
  type = object({
    from = optional(number, 49152)
    to   = optional(number, 65535)
  })
  default  = {}
  nullable = false

  validation {
    condition     = var.turn_relay_ports.from >= 1024 && var.turn_relay_ports.from <= var.turn_relay_ports.to && var.turn_relay_ports.to <= 65535
    error_message = "turn_relay_ports must satisfy 1024 <= from <= to <= 65535."
  }
}

variable "enable_http" {
  description = "Open port 80 to public_ingress_cidrs (HTTP-to-HTTPS redirects, ACME HTTP-01). Off: Caddy still gets certificates through TLS-ALPN-01 on 443."
  type        = bool
  default     = false
  nullable    = false
}

variable "enable_seed_ports" {
  description = "Open the seed's plain-HTTP ports 8001 (APIs) and 8080 (WebSocket) to public_ingress_cidrs, for clients not yet on the HTTPS URL (compose profile seed-ports)."
  type        = bool
  default     = false
  nullable    = false
}

variable "ssh_cidrs" {
  description = "Networks allowed to SSH to the host; empty (the default) keeps port 22 closed."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for cidr in var.ssh_cidrs : can(regex("^[0-9.]+/[0-9]{1,2}$", cidr)) && can(cidrhost(cidr, 0))])
    error_message = "ssh_cidrs must contain valid IPv4 CIDR blocks."
  }

  validation {
    condition     = alltrue([for cidr in var.ssh_cidrs : try(tonumber(split("/", cidr)[1]), 32) >= 8])
    error_message = "ssh_cidrs must not open SSH to the internet (prefixes shorter than /8, such as 0.0.0.0/0): use SSM Session Manager."
  }
}

variable "monitoring_cidrs" {
  description = "Networks of the Prometheus servers allowed to scrape metrics_ports; empty keeps them closed."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for cidr in var.monitoring_cidrs : can(regex("^[0-9.]+/[0-9]{1,2}$", cidr)) && can(cidrhost(cidr, 0)) && try(tonumber(split("/", cidr)[1]), 32) >= 8])
    error_message = "monitoring_cidrs must contain valid IPv4 CIDR blocks no wider than /8 (metrics are never public)."
  }
}

variable "metrics_ports" {
  description = "TCP ports scraped from monitoring_cidrs (node exporter 9100 by default)."
  type        = list(number)
  default     = [9100]
  nullable    = false

  validation {
    condition     = alltrue([for port in var.metrics_ports : port >= 1024 && port <= 65535 && floor(port) == port])
    error_message = "metrics_ports must be whole port numbers between 1024 and 65535."
  }

  validation {
    condition     = length(setintersection(toset(var.metrics_ports), toset([3478, 5349, 8001, 8080]))) == 0
    error_message = "metrics_ports must not include the TURN or seed ports (3478, 5349, 8001, 8080): they have their own switches."
  }
}

variable "allow_http_egress" {
  description = "Allow outbound HTTP (port 80) for package mirrors that serve plain HTTP (signed packages). HTTPS egress is always allowed."
  type        = bool
  default     = true
  nullable    = false
}

variable "dynamodb_table_arns" {
  description = "ARNs of the tables the services read and write (the data module's table_arns)."
  type        = list(string)

  validation {
    condition     = length(var.dynamodb_table_arns) >= 1 && alltrue([for arn in var.dynamodb_table_arns : can(regex("^arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:[0-9]{12}:table/[A-Za-z0-9_.-]+$", arn))])
    error_message = "dynamodb_table_arns must list table ARNs such as \"arn:aws:dynamodb:eu-west-1:123456789012:table/prod-rooms\" (no wildcards)."
  }
}

variable "dynamodb_index_arns" {
  description = "ARNs of the tables' indexes the services query (the data module's index_arns)."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for arn in var.dynamodb_index_arns : can(regex("^arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:[0-9]{12}:table/[A-Za-z0-9_.-]+/index/[A-Za-z0-9_.-]+$", arn))])
    error_message = "dynamodb_index_arns must list index ARNs such as \"arn:aws:dynamodb:eu-west-1:123456789012:table/prod-peers/index/peer_id-index\" (no wildcards)."
  }
}

variable "cognito_user_pool_arn" {
  description = "ARN of the user pool the auth-api manages (the identity module's user_pool_arn)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:cognito-idp:[a-z0-9-]+:[0-9]{12}:userpool/[A-Za-z0-9_-]+$", var.cognito_user_pool_arn))
    error_message = "cognito_user_pool_arn must be a user pool ARN such as \"arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_AbCdEf123\"."
  }
}

variable "log_retention_days" {
  description = "Retention of the host's CloudWatch Logs group (container logs shipped by Ansible's configuration), in days."
  type        = number
  default     = 365
  nullable    = false

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch Logs retention period: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
  nullable    = false
}
