# What Ansible and the services need from this environment: modules/signaling-stack's outputs,
# forwarded under the same names (ansible/scripts/inventory.py reads them).

output "region" {
  description = "AWS region of the provider, the services' SIGNALING_AWS_REGION."
  value       = module.stack.region
}

output "environment" {
  description = "Environment name."
  value       = module.stack.environment
}

output "instance_id" {
  description = "EC2 instance id, the SSM Session Manager target."
  value       = module.stack.instance_id
}

output "public_ip" {
  description = "The host's Elastic IP (point the service's DNS name here)."
  value       = module.stack.public_ip
}

output "public_dns" {
  description = "Public DNS name of the Elastic IP."
  value       = module.stack.public_dns
}

output "table_prefix" {
  description = "SIGNALING_TABLE_PREFIX."
  value       = module.stack.table_prefix
}

output "table_names" {
  description = "DynamoDB table names by role (rooms, peers, messages)."
  value       = module.stack.table_names
}

output "user_pool_id" {
  description = "SIGNALING_COGNITO_USER_POOL_ID."
  value       = module.stack.user_pool_id
}

output "user_pool_client_id" {
  description = "SIGNALING_COGNITO_CLIENT_ID."
  value       = module.stack.user_pool_client_id
}

output "log_group_name" {
  description = "CloudWatch Logs group for the host's container logs."
  value       = module.stack.log_group_name
}

output "signaling_env" {
  description = "The SIGNALING_* settings Terraform decides, for the services' .env (Ansible templates it)."
  value       = module.stack.signaling_env
}

output "host_network" {
  description = "What Ansible mirrors on the host: its addresses, the public ports (security group rules), the networks allowed to reach SSH and the metrics ports, and how many relay nodes it runs."
  value       = module.stack.host_network
}
