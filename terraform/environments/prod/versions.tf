terraform {
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0" # what .terraform.lock.hcl records; upgrade both together
    }
  }

  # Partial configuration: terraform init -backend-config=backend.hcl (see terraform/README.md).
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project     = "signaling"
      Environment = var.environment
      ManagedBy   = "terraform"
    }
  }
}
