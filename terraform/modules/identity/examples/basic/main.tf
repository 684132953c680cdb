# The user pool and app client for an environment called "example".
module "identity" {
  source = "../.."

  name_prefix         = "example-"
  deletion_protection = false # an example must be destroyable; keep the default (true) in production
  token_validity      = { id_token_minutes = 30 }

  tags = { Example = "identity-basic" }
}

output "user_pool_id" {
  description = "SIGNALING_COGNITO_USER_POOL_ID."
  value       = module.identity.user_pool_id
}

output "client_id" {
  description = "SIGNALING_COGNITO_CLIENT_ID."
  value       = module.identity.client_id
}
