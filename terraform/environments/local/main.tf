# The signaling service in this environment: modules/signaling-stack, the composition
# dev, prod and local all call (tests/unit/test_terraform_layout.py checks it), so the
# emulator apply in CI exercises what production runs. What differs between environments
# lives next to this file: versions.tf (provider, backend), variables.tf, terraform.tfvars.

module "stack" {
  source = "../../modules/signaling-stack"

  environment = var.environment
  protect     = var.protect
  network     = var.network
  identity    = var.identity
  host        = var.host
  tags        = var.tags
}

# Before modules/signaling-stack each root called the four modules itself. These moves carry
# a state of that layout over unchanged: its first plan shows only moves, no destroy or
# create (tests/integration/test_terraform_local.py proves it on the emulator). Remove them
# only once every state of every environment has been applied with this layout.

moved {
  from = module.network
  to   = module.stack.module.network
}

moved {
  from = module.data
  to   = module.stack.module.data
}

moved {
  from = module.identity
  to   = module.stack.module.identity
}

moved {
  from = module.host
  to   = module.stack.module.host
}
