# The AWS emulator on this machine (moto server by default, or LocalStack): the same
# composition as dev and prod. endpoint_url is usually given on the command line
# (-var endpoint_url=http://127.0.0.1:PORT).
environment = "local"
region      = "us-west-1"
protect     = false

host = {
  # moto serves Amazon Linux's public AMI parameters, not Canonical's.
  ami_ssm_parameter = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
  # moto does not implement MonitorInstances.
  detailed_monitoring = false
  # Three relay nodes: the emulator apply and make deploy ENV=local exercise the several-node shape.
  relay_nodes = 3
}
