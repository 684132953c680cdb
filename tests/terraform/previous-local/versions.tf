terraform {
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0" # what .terraform.lock.hcl records; upgrade both together
    }
  }

  # State on this machine: terraform init -backend-config="path=..." chooses where.
  backend "local" {}
}

# Every AWS API goes to the emulator (moto server, or LocalStack in a CI service
# container). Credentials come from the environment (AWS_ACCESS_KEY_ID=test, ...): the
# emulator accepts any.
provider "aws" {
  region = var.region

  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  skip_requesting_account_id  = false # the emulator answers sts:GetCallerIdentity

  endpoints {
    cloudwatchlogs = coalesce(var.endpoints.logs, var.endpoint_url)
    cognitoidp     = coalesce(var.endpoints.cognito_idp, var.endpoint_url)
    dynamodb       = coalesce(var.endpoints.dynamodb, var.endpoint_url)
    ec2            = coalesce(var.endpoints.ec2, var.endpoint_url)
    iam            = coalesce(var.endpoints.iam, var.endpoint_url)
    ssm            = coalesce(var.endpoints.ssm, var.endpoint_url)
    sts            = coalesce(var.endpoints.sts, var.endpoint_url)
  }

  default_tags {
    tags = {
      Project     = "signaling"
      Environment = var.environment
      ManagedBy   = "terraform"
    }
  }
}
