variable "name" {
  description = "Name of the network, used in the Name tag of every resource (e.g. \"signaling-prod\")."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3 to 40 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "cidr_block" {
  description = "IPv4 CIDR block of the VPC created by this module (ignored when existing_vpc_id is set)."
  type        = string
  default     = "10.42.0.0/16"
  nullable    = false

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && tonumber(try(split("/", var.cidr_block)[1], "0")) >= 16 && tonumber(try(split("/", var.cidr_block)[1], "0")) <= 24
    error_message = "cidr_block must be a valid IPv4 CIDR block with a prefix length between /16 and /24, e.g. \"10.42.0.0/16\"."
  }
}

variable "public_subnets" {
  description = "Public subnets to create: a CIDR inside cidr_block each, and optionally an availability zone (null lets AWS choose)."
  type = list(object({
    cidr              = string
    availability_zone = optional(string)
  }))
  default  = [{ cidr = "10.42.0.0/24" }]
  nullable = false

  validation {
    condition     = length(var.public_subnets) >= 1 && length(var.public_subnets) <= 4
    error_message = "public_subnets must list between 1 and 4 subnets."
  }

  validation {
    condition     = alltrue([for subnet in var.public_subnets : can(cidrhost(subnet.cidr, 0))])
    error_message = "Every public_subnets[*].cidr must be a valid IPv4 CIDR block, e.g. \"10.42.0.0/24\"."
  }

  validation {
    condition     = length(distinct([for subnet in var.public_subnets : subnet.cidr])) == length(var.public_subnets)
    error_message = "public_subnets must not repeat a CIDR block."
  }
}

variable "existing_vpc_id" {
  description = "Reuse this VPC instead of creating one (then existing_subnet_ids is required and nothing is created)."
  type        = string
  default     = null

  validation {
    condition     = var.existing_vpc_id == null || can(regex("^vpc-[0-9a-f]{8,17}$", var.existing_vpc_id))
    error_message = "existing_vpc_id must be a VPC id such as \"vpc-0123456789abcdef0\", or null."
  }
}

variable "existing_subnet_ids" {
  description = "Public subnets of existing_vpc_id to place the host in (used only with existing_vpc_id)."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for id in var.existing_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", id))])
    error_message = "existing_subnet_ids must contain subnet ids such as \"subnet-0123456789abcdef0\"."
  }

  validation {
    condition     = var.existing_vpc_id == null ? length(var.existing_subnet_ids) == 0 : length(var.existing_subnet_ids) >= 1
    error_message = "existing_subnet_ids is required with existing_vpc_id, and must be empty without it."
  }
}

variable "flow_log_retention_days" {
  description = "Retention of the VPC flow logs (rejected traffic) in CloudWatch Logs, in days; 0 disables flow logs."
  type        = number
  default     = 365
  nullable    = false

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "flow_log_retention_days must be 0 (disabled) or a CloudWatch Logs retention period: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
  nullable    = false
}
