# Development: cheap and disposable. No secrets here (TURN secrets live in Ansible's vault).
environment = "dev"
region      = "us-west-1"
protect     = false # tables, user pool and host can be destroyed

network = {
  cidr_block     = "10.42.0.0/16"
  public_subnets = [{ cidr = "10.42.0.0/24" }]
}

host = {
  instance_type = "t3.small"
  relay_nodes   = 1 # one relay process, as the seed ran (prod shows the several-node shape)
  # enable_seed_ports = true would open the seed's plain-HTTP 8001/8080 for old clients.
}
