# terraform init -backend-config=backend.hcl
# The bucket and the lock table are created once per account (terraform/README.md).
bucket         = "signaling-terraform-state"
key            = "signaling/dev/terraform.tfstate"
region         = "us-west-1"
dynamodb_table = "signaling-terraform-locks"
encrypt        = true
