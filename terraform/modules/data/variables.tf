variable "table_prefix" {
  description = "Prefix of every table name, as the services' SIGNALING_TABLE_PREFIX (e.g. \"prod-\" gives prod-rooms and prod-peers)."
  type        = string

  validation {
    # The services accept ^[A-Za-z0-9_.-]{0,64}$; a non-empty prefix keeps environments apart in one account.
    condition     = can(regex("^[A-Za-z0-9_.-]{1,64}$", var.table_prefix))
    error_message = "table_prefix must be 1 to 64 letters, digits, '_', '.' or '-' (the services' SIGNALING_TABLE_PREFIX), e.g. \"prod-\"."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the tables (turn it off first to destroy them). On in production."
  type        = bool
  default     = true
  nullable    = false
}

variable "point_in_time_recovery" {
  description = "Continuous backups with point-in-time recovery (35 days) on every table."
  type        = bool
  default     = true
  nullable    = false
}

variable "ttl_attribute" {
  description = "Attribute holding each item's expiry (epoch seconds) for DynamoDB's TTL; the services write expires_at."
  type        = string
  default     = "expires_at"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]{0,254}$", var.ttl_attribute))
    error_message = "ttl_attribute must be a plain attribute name (letters, digits, '_'), e.g. \"expires_at\"."
  }
}

variable "tags" {
  description = "Tags added to every table."
  type        = map(string)
  default     = {}
  nullable    = false
}
