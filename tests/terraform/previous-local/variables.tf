variable "environment" {
  description = "Environment name: prefixes the tables and the user pool (\"<environment>-rooms\") and names the host (\"signaling-<environment>\")."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,15}$", var.environment))
    error_message = "environment must be 2 to 16 lowercase letters or digits, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of every resource (the services' SIGNALING_AWS_REGION)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as \"us-west-1\"."
  }
}

variable "protect" {
  description = "Deletion protection on the tables and the user pool, termination protection on the host. Turn off (and apply) before a destroy."
  type        = bool
  default     = true
}

variable "network" {
  description = "Network settings (see modules/network); unset fields take the module's defaults."
  type = object({
    cidr_block = optional(string)
    public_subnets = optional(list(object({
      cidr              = string
      availability_zone = optional(string)
    })))
    existing_vpc_id         = optional(string)
    existing_subnet_ids     = optional(list(string))
    flow_log_retention_days = optional(number)
  })
  default  = {}
  nullable = false
}

variable "identity" {
  description = "User pool settings (see modules/identity); unset fields take the module's defaults."
  type = object({
    password_minimum_length = optional(number)
    advanced_security_mode  = optional(string)
    token_validity = optional(object({
      id_token_minutes     = optional(number)
      access_token_minutes = optional(number)
      refresh_token_days   = optional(number)
    }))
  })
  default  = {}
  nullable = false
}

variable "host" {
  description = "Host settings (see modules/signaling-host); unset fields take the module's defaults."
  type = object({
    ami_id               = optional(string)
    ami_ssm_parameter    = optional(string)
    instance_type        = optional(string)
    root_volume_size_gb  = optional(number)
    detailed_monitoring  = optional(bool)
    key_name             = optional(string)
    public_ingress_cidrs = optional(list(string))
    enable_turn          = optional(bool)
    enable_turn_tls      = optional(bool)
    turn_relay_ports = optional(object({
      from = optional(number)
      to   = optional(number)
    }))
    enable_http        = optional(bool)
    enable_seed_ports  = optional(bool)
    ssh_cidrs          = optional(list(string))
    monitoring_cidrs   = optional(list(string))
    metrics_ports      = optional(list(number))
    allow_http_egress  = optional(bool)
    log_retention_days = optional(number)
    relay_nodes        = optional(number)
  })
  default  = {}
  nullable = false
}

variable "tags" {
  description = "Tags added to every resource (Project, Environment and ManagedBy are always set)."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "endpoint_url" {
  description = "The AWS emulator's endpoint for every service (moto server, LocalStack)."
  type        = string
  default     = "http://127.0.0.1:4566"

  validation {
    condition     = can(regex("^https?://[^/]+/?$", var.endpoint_url))
    error_message = "endpoint_url must be an http(s) URL without a path, e.g. \"http://127.0.0.1:4566\"."
  }
}

variable "endpoints" {
  description = "Per-service endpoints overriding endpoint_url (e.g. DynamoDB on LocalStack, Cognito on moto)."
  type = object({
    cognito_idp = optional(string)
    dynamodb    = optional(string)
    ec2         = optional(string)
    iam         = optional(string)
    logs        = optional(string)
    ssm         = optional(string)
    sts         = optional(string)
  })
  default  = {}
  nullable = false
}
