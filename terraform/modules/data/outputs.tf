output "table_prefix" {
  description = "The services' SIGNALING_TABLE_PREFIX."
  value       = var.table_prefix
}

output "table_names" {
  description = "Table names by role: rooms, peers, messages."
  value       = { for role, table in aws_dynamodb_table.this : role => table.name }
}

output "table_arns" {
  description = "Table ARNs by role: rooms, peers, messages."
  value       = { for role, table in aws_dynamodb_table.this : role => table.arn }
}

output "index_arns" {
  description = "ARNs of the tables' global secondary indexes (the peers table's peer_id-index)."
  value = flatten([
    for role, table in aws_dynamodb_table.this : [
      for name, index in local.tables[role].indexes : "${table.arn}/index/${name}"
    ]
  ])
}
