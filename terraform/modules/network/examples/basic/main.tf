# A VPC with two public subnets in two availability zones, and rejected-traffic flow logs.
module "network" {
  source = "../.."

  name       = "signaling-example"
  cidr_block = "10.50.0.0/16"
  public_subnets = [
    { cidr = "10.50.0.0/24", availability_zone = "us-west-1a" },
    { cidr = "10.50.1.0/24", availability_zone = "us-west-1c" },
  ]
  flow_log_retention_days = 365

  tags = { Example = "network-basic" }
}

output "vpc_id" {
  description = "Id of the VPC."
  value       = module.network.vpc_id
}

output "public_subnet_ids" {
  description = "Ids of the public subnets."
  value       = module.network.public_subnet_ids
}
