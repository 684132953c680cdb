# terraform test (from the module folder): plans against a mocked AWS provider.

mock_provider "aws" {}

variables {
  name_prefix = "test-"
}

run "the_pool_has_a_strong_password_policy_and_no_guest_access" {
  command = plan

  assert {
    condition     = aws_cognito_user_pool.this.name == "test-signaling-users"
    error_message = "The pool is named <prefix>signaling-users, like the emulator bootstrap's."
  }

  assert {
    condition = (
      aws_cognito_user_pool.this.password_policy[0].minimum_length == 16
      && aws_cognito_user_pool.this.password_policy[0].require_lowercase
      && aws_cognito_user_pool.this.password_policy[0].require_uppercase
      && aws_cognito_user_pool.this.password_policy[0].require_numbers
      && aws_cognito_user_pool.this.password_policy[0].require_symbols
    )
    error_message = "Passwords need 16 characters and every character class."
  }

  assert {
    condition     = aws_cognito_user_pool.this.admin_create_user_config[0].allow_admin_create_user_only == true
    error_message = "Self sign-up must stay on: the auth-api creates users with SignUp."
  }

  assert {
    condition     = aws_cognito_user_pool.this.deletion_protection == "ACTIVE"
    error_message = "Deletion protection must be on by default."
  }

  assert {
    condition     = one(aws_cognito_user_pool.this.account_recovery_setting[0].recovery_mechanism).name == "admin_only"
    error_message = "Anonymous users have no e-mail or phone: recovery is admin-only."
  }
}

run "the_client_allows_user_password_auth_without_a_secret" {
  command = plan

  assert {
    condition     = toset(aws_cognito_user_pool_client.this.explicit_auth_flows) == toset(["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"])
    error_message = "The app client allows exactly ADMIN_USER_PASSWORD_AUTH and refresh tokens."
  }

  assert {
    condition     = aws_cognito_user_pool_client.this.generate_secret == false
    error_message = "The auth-api calls InitiateAuth without a secret hash."
  }

  assert {
    condition     = aws_cognito_user_pool_client.this.prevent_user_existence_errors == "ENABLED" && aws_cognito_user_pool_client.this.enable_token_revocation
    error_message = "The client hides whether users exist and allows token revocation."
  }

  assert {
    condition     = aws_cognito_user_pool_client.this.allowed_oauth_flows_user_pool_client == false
    error_message = "No OAuth flows: the services only use ADMIN_USER_PASSWORD_AUTH."
  }
}

run "tokens_are_short_lived_by_default" {
  command = plan

  assert {
    condition = (
      aws_cognito_user_pool_client.this.id_token_validity == 60
      && aws_cognito_user_pool_client.this.access_token_validity == 60
      && aws_cognito_user_pool_client.this.refresh_token_validity == 1
      && aws_cognito_user_pool_client.this.token_validity_units[0].id_token == "minutes"
      && aws_cognito_user_pool_client.this.token_validity_units[0].access_token == "minutes"
      && aws_cognito_user_pool_client.this.token_validity_units[0].refresh_token == "days"
    )
    error_message = "ID and access tokens last 60 minutes, refresh tokens one day."
  }
}

run "token_lifetimes_and_protection_are_configurable" {
  command = plan

  variables {
    token_validity      = { id_token_minutes = 15 }
    deletion_protection = false
  }

  assert {
    condition     = aws_cognito_user_pool_client.this.id_token_validity == 15 && aws_cognito_user_pool_client.this.access_token_validity == 60
    error_message = "Unset token lifetimes keep their defaults."
  }

  assert {
    condition     = aws_cognito_user_pool.this.deletion_protection == "INACTIVE"
    error_message = "deletion_protection = false must reach the pool."
  }
}

# Each validation rejects bad input --------------------------------------------------

run "rejects_a_bad_name_prefix" {
  command = plan
  variables {
    name_prefix = "prod signaling"
  }
  expect_failures = [var.name_prefix]
}

run "rejects_a_short_minimum_password_length" {
  command = plan
  variables {
    password_minimum_length = 8
  }
  expect_failures = [var.password_minimum_length]
}

run "rejects_a_fractional_minimum_password_length" {
  command = plan
  variables {
    password_minimum_length = 16.5
  }
  expect_failures = [var.password_minimum_length]
}

run "rejects_an_id_token_lifetime_beyond_a_day" {
  command = plan
  variables {
    token_validity = { id_token_minutes = 1441 }
  }
  expect_failures = [var.token_validity]
}

run "rejects_a_refresh_token_lifetime_beyond_30_days" {
  command = plan
  variables {
    token_validity = { refresh_token_days = 90 }
  }
  expect_failures = [var.token_validity]
}

run "rejects_an_unknown_advanced_security_mode" {
  command = plan
  variables {
    advanced_security_mode = "ON"
  }
  expect_failures = [var.advanced_security_mode]
}
