output "instance_id" {
  description = "Id of the EC2 instance (the target of SSM Session Manager)."
  value       = aws_instance.this.id
}

output "public_ip" {
  description = "The Elastic IP: the host's stable public address."
  value       = aws_eip.this.public_ip
}

output "public_dns" {
  description = "Public DNS name of the Elastic IP."
  value       = aws_eip.this.public_dns
}

output "private_ip" {
  description = "Private address of the instance in its subnet."
  value       = aws_instance.this.private_ip
}

output "security_group_id" {
  description = "Id of the host's security group."
  value       = aws_security_group.this.id
}

output "role_name" {
  description = "Name of the instance role."
  value       = aws_iam_role.this.name
}

output "role_arn" {
  description = "ARN of the instance role."
  value       = aws_iam_role.this.arn
}

output "log_group_name" {
  description = "CloudWatch Logs group the host's logs are shipped to."
  value       = aws_cloudwatch_log_group.this.name
}

output "public_ports" {
  description = "Inbound rules open to public_ingress_cidrs, by name: protocol and port range."
  value       = { for name, port in local.public_ports : name => { protocol = port.protocol, from = port.from, to = port.to } }
}

output "admin_access" {
  description = "Networks allowed to reach SSH (ssh_cidrs) and the metrics ports (monitoring_cidrs, metrics_ports), as the security group opens them."
  value = {
    ssh_cidrs        = var.ssh_cidrs
    monitoring_cidrs = var.monitoring_cidrs
    metrics_ports    = var.metrics_ports
  }
}

output "relay_nodes" {
  description = "Relay nodes the host runs (relay_nodes): Ansible starts one ws-relay container per node, relay-1 to relay-<n>."
  value       = var.relay_nodes
}
