output "user_pool_id" {
  description = "The services' SIGNALING_COGNITO_USER_POOL_ID."
  value       = aws_cognito_user_pool.this.id
}

output "user_pool_arn" {
  description = "ARN of the user pool (the host role's Cognito permissions are scoped to it)."
  value       = aws_cognito_user_pool.this.arn
}

output "user_pool_endpoint" {
  description = "The pool's endpoint (cognito-idp.<region>.amazonaws.com/<pool id>): the ID tokens' issuer without https://."
  value       = aws_cognito_user_pool.this.endpoint
}

output "client_id" {
  description = "The services' SIGNALING_COGNITO_CLIENT_ID."
  value       = aws_cognito_user_pool_client.this.id
}
