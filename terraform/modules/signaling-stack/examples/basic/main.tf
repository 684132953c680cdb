# The whole service for an environment called "example", on module defaults, as the
# environment roots call it (terraform/environments/*/main.tf).
module "stack" {
  source = "../.."

  environment = "example"
  protect     = false # an example must be destroyable; keep the default (true) in production

  network = { cidr_block = "10.50.0.0/16", public_subnets = [{ cidr = "10.50.0.0/24" }] }
  host    = { instance_type = "t3.small" }

  tags = { Example = "signaling-stack-basic" }
}

output "signaling_env" {
  description = "The SIGNALING_* settings for the services' .env."
  value       = module.stack.signaling_env
}

output "public_ip" {
  description = "The host's Elastic IP."
  value       = module.stack.public_ip
}
