# The services' tables for an environment called "example": example-rooms, example-peers.
module "data" {
  source = "../.."

  table_prefix        = "example-"
  deletion_protection = false # an example must be destroyable; keep the default (true) in production

  tags = { Example = "data-basic" }
}

output "table_names" {
  description = "Table names by role."
  value       = module.data.table_names
}
