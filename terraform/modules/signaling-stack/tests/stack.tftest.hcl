# terraform test (from the module folder): plans against a mocked AWS provider. The child
# modules test their own resources (a test here cannot reach into them); this proves the
# wiring: names from the environment, settings passed through, the outputs the roots forward.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-west-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_ssm_parameter" {
    defaults = { insecure_value = "ami-0123456789abcdef0" }
  }
}

variables {
  environment = "test"
}

run "names_every_resource_after_the_environment" {
  command = plan

  assert {
    condition     = output.environment == "test" && output.region == "us-west-1"
    error_message = "environment and region are the environment's and the provider's."
  }

  assert {
    condition     = output.table_prefix == "test-" && output.table_names == { rooms = "test-rooms", peers = "test-peers", messages = "test-messages" }
    error_message = "Tables are <environment>-rooms, -peers and -messages (SIGNALING_TABLE_PREFIX = \"<environment>-\")."
  }

  assert {
    condition     = output.log_group_name == "/signaling/signaling-test"
    error_message = "The host is named signaling-<environment>."
  }

  assert {
    condition     = output.signaling_env.SIGNALING_AWS_REGION == "us-west-1" && output.signaling_env.SIGNALING_TABLE_PREFIX == "test-" && length(output.signaling_env) == 4
    error_message = "signaling_env holds the four SIGNALING_* settings Terraform decides."
  }
}

run "unset_settings_take_the_modules_defaults" {
  command = plan

  assert {
    condition     = output.host_network.relay_nodes == 1 && length(output.host_network.ssh_cidrs) == 0 && length(output.host_network.monitoring_cidrs) == 0
    error_message = "Without host settings: one relay node, SSH and metrics closed (modules/signaling-host's defaults)."
  }

  assert {
    condition     = toset(keys(output.host_network.public_ports)) == toset(["https", "https-udp", "turn-udp", "turn-tcp", "turn-relay"])
    error_message = "Without host settings only HTTPS and TURN are public."
  }

  assert {
    condition     = module.network.flow_log_group_name != null
    error_message = "Without network settings a VPC with flow logs is created."
  }
}

run "network_and_host_settings_reach_their_modules" {
  command = plan

  variables {
    network = {
      existing_vpc_id     = "vpc-0123456789abcdef0"
      existing_subnet_ids = ["subnet-0123456789abcdef0"]
    }
    host = {
      relay_nodes      = 3
      enable_http      = true
      ssh_cidrs        = ["10.8.0.0/16"]
      monitoring_cidrs = ["10.9.0.0/16"]
      metrics_ports    = [9100, 9101]
    }
  }

  assert {
    condition     = module.network.vpc_id == "vpc-0123456789abcdef0" && module.network.public_subnet_ids == tolist(["subnet-0123456789abcdef0"]) && module.network.flow_log_group_name == null
    error_message = "network.existing_vpc_id and existing_subnet_ids reach modules/network: nothing is created."
  }

  assert {
    condition     = output.host_network.relay_nodes == 3 && contains(keys(output.host_network.public_ports), "http")
    error_message = "host.relay_nodes and host.enable_http reach modules/signaling-host."
  }

  assert {
    condition     = output.host_network.ssh_cidrs == tolist(["10.8.0.0/16"]) && output.host_network.monitoring_cidrs == tolist(["10.9.0.0/16"]) && output.host_network.metrics_ports == tolist([9100, 9101])
    error_message = "host.ssh_cidrs, monitoring_cidrs and metrics_ports reach modules/signaling-host and come back in host_network."
  }
}

# Validation ----------------------------------------------------------------------------

run "rejects_an_environment_name_with_capitals" {
  command = plan

  variables {
    environment = "Prod"
  }

  expect_failures = [var.environment]
}

run "rejects_an_environment_name_too_long_for_the_resource_names" {
  command = plan

  variables {
    environment = "averyveryverylongname"
  }

  expect_failures = [var.environment]
}
