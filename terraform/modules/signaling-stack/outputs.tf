# What Ansible and the services need from this environment (each root forwards every one).

output "region" {
  description = "AWS region of the provider, the services' SIGNALING_AWS_REGION."
  value       = data.aws_region.current.name
}

output "environment" {
  description = "Environment name."
  value       = var.environment
}

output "instance_id" {
  description = "EC2 instance id, the SSM Session Manager target."
  value       = module.host.instance_id
}

output "public_ip" {
  description = "The host's Elastic IP (point the service's DNS name here)."
  value       = module.host.public_ip
}

output "public_dns" {
  description = "Public DNS name of the Elastic IP."
  value       = module.host.public_dns
}

output "table_prefix" {
  description = "SIGNALING_TABLE_PREFIX."
  value       = module.data.table_prefix
}

output "table_names" {
  description = "DynamoDB table names by role (rooms, peers, messages)."
  value       = module.data.table_names
}

output "user_pool_id" {
  description = "SIGNALING_COGNITO_USER_POOL_ID."
  value       = module.identity.user_pool_id
}

output "user_pool_client_id" {
  description = "SIGNALING_COGNITO_CLIENT_ID."
  value       = module.identity.client_id
}

output "log_group_name" {
  description = "CloudWatch Logs group for the host's container logs."
  value       = module.host.log_group_name
}

output "signaling_env" {
  description = "The SIGNALING_* settings Terraform decides, for the services' .env (Ansible templates it)."
  value = {
    SIGNALING_AWS_REGION           = data.aws_region.current.name
    SIGNALING_TABLE_PREFIX         = module.data.table_prefix
    SIGNALING_COGNITO_USER_POOL_ID = module.identity.user_pool_id
    SIGNALING_COGNITO_CLIENT_ID    = module.identity.client_id
  }
}

output "host_network" {
  description = "What Ansible mirrors on the host: its addresses, the public ports (security group rules), the networks allowed to reach SSH and the metrics ports, and how many relay nodes it runs."
  value = {
    public_ip        = module.host.public_ip
    private_ip       = module.host.private_ip
    public_ports     = module.host.public_ports
    ssh_cidrs        = module.host.admin_access.ssh_cidrs
    monitoring_cidrs = module.host.admin_access.monitoring_cidrs
    metrics_ports    = module.host.admin_access.metrics_ports
    relay_nodes      = module.host.relay_nodes
  }
}
