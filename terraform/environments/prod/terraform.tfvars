# Production. No secrets here (TURN secrets live in Ansible's vault).
environment = "prod"
region      = "us-west-1"
protect     = true # deletion protection on the tables and the pool, termination protection on the host

network = {
  cidr_block              = "10.43.0.0/16"
  public_subnets          = [{ cidr = "10.43.0.0/24" }]
  flow_log_retention_days = 365
}

identity = {
  token_validity = { id_token_minutes = 60, access_token_minutes = 60, refresh_token_days = 1 }
}

host = {
  instance_type       = "t3.medium"
  root_volume_size_gb = 30
  detailed_monitoring = true
  log_retention_days  = 365
  # One relay process, as the seed ran: seed clients (which do not follow redirects) keep
  # working. Raise to one per vCPU (t3.medium has 2) once every client uses the SDK or v2.
  relay_nodes = 1
  # Prometheus scrapes the node exporter from the monitoring network only; SSH stays closed.
  monitoring_cidrs = []
}
