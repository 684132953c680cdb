output "vpc_id" {
  description = "Id of the VPC (created here, or existing_vpc_id)."
  value       = local.create ? aws_vpc.this[0].id : var.existing_vpc_id
}

output "public_subnet_ids" {
  description = "Ids of the public subnets (created here, or existing_subnet_ids), in input order."
  value       = local.create ? [for key in sort(keys(local.subnets)) : aws_subnet.public[key].id] : var.existing_subnet_ids
}

output "flow_log_group_name" {
  description = "CloudWatch Logs group of the VPC flow logs, or null when they are off or the VPC is not ours."
  value       = local.flow_logs ? aws_cloudwatch_log_group.flow_logs[0].name : null
}
