variable "environment" {
  description = "Environment name: prefixes the tables and the user pool (\"<environment>-rooms\") and names the host (\"signaling-<environment>\")."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,15}$", var.environment))
    error_message = "environment must be 2 to 16 lowercase letters or digits, starting with a letter."
  }
}

variable "protect" {
  description = "Deletion protection on the tables and the user pool, termination protection on the host. Turn off (and apply) before a destroy."
  type        = bool
  default     = true
  nullable    = false
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
  description = "Tags added to every resource, with Service = \"signaling\" (the root's provider adds Project, Environment and ManagedBy)."
  type        = map(string)
  default     = {}
  nullable    = false
}
