# The Cognito user pool and app client the auth-api needs: it signs up anonymous users
# with random credentials as an administrator (AdminCreateUser, AdminSetUserPassword),
# signs them in with ADMIN_USER_PASSWORD_AUTH (AdminInitiateAuth), deletes a room creator's own user with its room and sweeps users
# older than their lifetime (ListUsers, AdminDeleteUser). The relay and
# rooms-api verify the ID tokens against the pool's JWKS. No identity pool exists, so there
# are no unauthenticated (guest) AWS identities at all.

resource "aws_cognito_user_pool" "this" {
  name                = "${var.name_prefix}signaling-users"
  deletion_protection = var.deletion_protection ? "ACTIVE" : "INACTIVE"
  mfa_configuration   = "OFF" # anonymous machine sign-in: there is no person to hold a second factor

  password_policy {
    minimum_length                   = var.password_minimum_length
    require_lowercase                = true
    require_uppercase                = true
    require_numbers                  = true
    require_symbols                  = true
    temporary_password_validity_days = 1
  }

  # No self sign-up: the auth-api creates users as an administrator (AdminCreateUser), so
  # nobody can create users past its rate limit by calling SignUp with the app client id.
  admin_create_user_config {
    allow_admin_create_user_only = true
  }

  # Users have no e-mail or phone: only an administrator can recover an account.
  account_recovery_setting {
    recovery_mechanism {
      name     = "admin_only"
      priority = 1
    }
  }

  username_configuration {
    case_sensitive = false
  }

  user_pool_add_ons {
    advanced_security_mode = var.advanced_security_mode
  }

  tags = var.tags
}

resource "aws_cognito_user_pool_client" "this" {
  name         = "signaling-services"
  user_pool_id = aws_cognito_user_pool.this.id

  generate_secret                      = false # the auth-api calls AdminInitiateAuth without a SECRET_HASH
  explicit_auth_flows                  = ["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
  prevent_user_existence_errors        = "ENABLED"
  enable_token_revocation              = true
  allowed_oauth_flows_user_pool_client = false
  supported_identity_providers         = ["COGNITO"]

  id_token_validity      = var.token_validity.id_token_minutes
  access_token_validity  = var.token_validity.access_token_minutes
  refresh_token_validity = var.token_validity.refresh_token_days
  token_validity_units {
    id_token      = "minutes"
    access_token  = "minutes"
    refresh_token = "days"
  }
}
