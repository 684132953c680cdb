# A test fixture, not an environment: terraform/environments/local as it was before
# modules/signaling-stack (e.g. in fc081f0), each root calling the four modules itself.
# tests/integration/test_terraform_local.py applies it to the AWS emulator, then plans
# today's environments/local against that state and expects only moves. Only the module
# sources differ from the original (they point at terraform/modules from here).

locals {
  name         = "signaling-${var.environment}"
  table_prefix = "${var.environment}-"
  tags         = merge(var.tags, { Service = "signaling" })
}

module "network" {
  source = "../../../terraform/modules/network"

  name                    = local.name
  cidr_block              = var.network.cidr_block
  public_subnets          = var.network.public_subnets
  existing_vpc_id         = var.network.existing_vpc_id
  existing_subnet_ids     = var.network.existing_subnet_ids
  flow_log_retention_days = var.network.flow_log_retention_days
  tags                    = local.tags
}

module "data" {
  source = "../../../terraform/modules/data"

  table_prefix        = local.table_prefix
  deletion_protection = var.protect
  tags                = local.tags
}

module "identity" {
  source = "../../../terraform/modules/identity"

  name_prefix             = local.table_prefix
  deletion_protection     = var.protect
  password_minimum_length = var.identity.password_minimum_length
  token_validity          = var.identity.token_validity
  advanced_security_mode  = var.identity.advanced_security_mode
  tags                    = local.tags
}

module "host" {
  source = "../../../terraform/modules/signaling-host"

  name        = local.name
  environment = var.environment
  vpc_id      = module.network.vpc_id
  subnet_id   = module.network.public_subnet_ids[0]

  dynamodb_table_arns   = values(module.data.table_arns)
  dynamodb_index_arns   = module.data.index_arns
  cognito_user_pool_arn = module.identity.user_pool_arn

  termination_protection = var.protect
  ami_id                 = var.host.ami_id
  ami_ssm_parameter      = var.host.ami_ssm_parameter
  instance_type          = var.host.instance_type
  root_volume_size_gb    = var.host.root_volume_size_gb
  detailed_monitoring    = var.host.detailed_monitoring
  key_name               = var.host.key_name
  public_ingress_cidrs   = var.host.public_ingress_cidrs
  enable_turn            = var.host.enable_turn
  enable_turn_tls        = var.host.enable_turn_tls
  turn_relay_ports       = var.host.turn_relay_ports
  enable_http            = var.host.enable_http
  enable_seed_ports      = var.host.enable_seed_ports
  ssh_cidrs              = var.host.ssh_cidrs
  monitoring_cidrs       = var.host.monitoring_cidrs
  metrics_ports          = var.host.metrics_ports
  allow_http_egress      = var.host.allow_http_egress
  log_retention_days     = var.host.log_retention_days
  relay_nodes            = var.host.relay_nodes
  tags                   = local.tags
}
