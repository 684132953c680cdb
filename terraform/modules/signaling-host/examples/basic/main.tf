# The host with everything it needs, from the sibling modules: what an environment does.
module "network" {
  source = "../../../network"

  name = "signaling-example"
}

module "data" {
  source = "../../../data"

  table_prefix        = "example-"
  deletion_protection = false
}

module "identity" {
  source = "../../../identity"

  name_prefix         = "example-"
  deletion_protection = false
}

module "host" {
  source = "../.."

  name        = "signaling-example"
  environment = "example"
  vpc_id      = module.network.vpc_id
  subnet_id   = module.network.public_subnet_ids[0]

  dynamodb_table_arns   = values(module.data.table_arns)
  dynamodb_index_arns   = module.data.index_arns
  cognito_user_pool_arn = module.identity.user_pool_arn

  termination_protection = false # an example must be destroyable
  monitoring_cidrs       = ["10.42.0.0/16"]

  tags = { Example = "signaling-host-basic" }
}

output "public_ip" {
  description = "The host's Elastic IP."
  value       = module.host.public_ip
}

output "instance_id" {
  description = "The instance, for SSM Session Manager."
  value       = module.host.instance_id
}
