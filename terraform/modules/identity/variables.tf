variable "name_prefix" {
  description = "Prefix of the user pool's name, as the table prefix (\"prod-\" gives prod-signaling-users, the emulator bootstrap's naming)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{1,64}$", var.name_prefix))
    error_message = "name_prefix must be 1 to 64 letters, digits, '_', '.' or '-', e.g. \"prod-\"."
  }
}

variable "password_minimum_length" {
  description = "Minimum password length. The auth-api generates 47-character random passwords; people never choose one."
  type        = number
  default     = 16
  nullable    = false

  validation {
    condition     = var.password_minimum_length >= 12 && var.password_minimum_length <= 99 && floor(var.password_minimum_length) == var.password_minimum_length
    error_message = "password_minimum_length must be a whole number between 12 and 99 (the auth-api's generated passwords are 47 characters)."
  }
}

variable "token_validity" {
  description = "Lifetimes of the app client's tokens: ID and access tokens in minutes, refresh tokens in days."
  type = object({
    id_token_minutes     = optional(number, 60)
    access_token_minutes = optional(number, 60)
    refresh_token_days   = optional(number, 1)
  })
  default  = {}
  nullable = false

  validation {
    condition = alltrue([
      for minutes in [var.token_validity.id_token_minutes, var.token_validity.access_token_minutes] :
      minutes >= 5 && minutes <= 1440 && floor(minutes) == minutes
    ])
    error_message = "token_validity.id_token_minutes and access_token_minutes must be whole minutes between 5 and 1440 (Cognito's limits)."
  }

  validation {
    condition     = var.token_validity.refresh_token_days >= 1 && var.token_validity.refresh_token_days <= 30 && floor(var.token_validity.refresh_token_days) == var.token_validity.refresh_token_days
    error_message = "token_validity.refresh_token_days must be a whole number of days between 1 and 30."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the user pool (turn it off first to destroy it). On in production."
  type        = bool
  default     = true
  nullable    = false
}

variable "advanced_security_mode" {
  description = "Cognito threat protection: OFF, AUDIT or ENFORCED (AUDIT and ENFORCED are billed per user)."
  type        = string
  default     = "OFF"
  nullable    = false

  validation {
    condition     = contains(["OFF", "AUDIT", "ENFORCED"], var.advanced_security_mode)
    error_message = "advanced_security_mode must be OFF, AUDIT or ENFORCED."
  }
}

variable "tags" {
  description = "Tags added to the user pool."
  type        = map(string)
  default     = {}
  nullable    = false
}
