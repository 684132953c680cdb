# terraform test (from the module folder): plans against a mocked AWS provider.

mock_provider "aws" {}

variables {
  name = "signaling-test"
}

run "creates_a_vpc_with_one_public_subnet_by_default" {
  command = plan

  assert {
    condition     = aws_vpc.this[0].cidr_block == "10.42.0.0/16" && aws_vpc.this[0].enable_dns_hostnames && aws_vpc.this[0].enable_dns_support
    error_message = "The VPC must use the default CIDR with DNS hostnames (the Elastic IP's public DNS name)."
  }

  assert {
    condition     = length(aws_subnet.public) == 1 && aws_subnet.public["0"].cidr_block == "10.42.0.0/24"
    error_message = "One public subnet is created by default."
  }

  assert {
    condition     = alltrue([for subnet in aws_subnet.public : subnet.map_public_ip_on_launch == false])
    error_message = "Subnets must not give instances public addresses: the host has an Elastic IP."
  }

  assert {
    condition     = aws_route.internet[0].destination_cidr_block == "0.0.0.0/0" && length(aws_route_table_association.public) == 1
    error_message = "The public subnets route to the internet gateway."
  }

  assert {
    condition     = length(aws_default_security_group.this) == 1
    error_message = "The VPC's default security group must be taken over (and left without rules)."
  }
}

run "logs_rejected_traffic_for_a_year_by_default" {
  command = plan

  assert {
    condition     = aws_flow_log.this[0].traffic_type == "REJECT" && aws_flow_log.this[0].log_destination_type == "cloud-watch-logs"
    error_message = "Flow logs must record rejected traffic to CloudWatch Logs."
  }

  assert {
    condition     = aws_cloudwatch_log_group.flow_logs[0].retention_in_days == 365
    error_message = "Flow logs are kept 365 days by default."
  }

  assert {
    condition     = jsondecode(aws_iam_role.flow_logs[0].assume_role_policy).Statement[0].Principal.Service == "vpc-flow-logs.amazonaws.com"
    error_message = "Only the flow logs service may assume the flow logs role."
  }
}

run "flow_logs_can_be_turned_off" {
  command = plan

  variables {
    flow_log_retention_days = 0
  }

  assert {
    condition     = length(aws_flow_log.this) == 0 && length(aws_cloudwatch_log_group.flow_logs) == 0 && length(aws_iam_role.flow_logs) == 0
    error_message = "flow_log_retention_days = 0 must create no flow log resources."
  }
}

run "creates_several_subnets_in_given_zones" {
  command = plan

  variables {
    public_subnets = [
      { cidr = "10.42.0.0/24", availability_zone = "us-west-1a" },
      { cidr = "10.42.1.0/24", availability_zone = "us-west-1c" },
    ]
  }

  assert {
    condition     = [for key in ["0", "1"] : aws_subnet.public[key].availability_zone] == ["us-west-1a", "us-west-1c"]
    error_message = "Each subnet must be placed in its availability zone."
  }
}

run "reuses_an_existing_vpc_without_creating_anything" {
  command = plan

  variables {
    existing_vpc_id     = "vpc-0123456789abcdef0"
    existing_subnet_ids = ["subnet-0123456789abcdef0"]
  }

  assert {
    condition     = length(aws_vpc.this) == 0 && length(aws_subnet.public) == 0 && length(aws_internet_gateway.this) == 0 && length(aws_flow_log.this) == 0
    error_message = "With existing_vpc_id nothing must be created."
  }

  assert {
    condition     = output.vpc_id == "vpc-0123456789abcdef0" && output.public_subnet_ids == tolist(["subnet-0123456789abcdef0"])
    error_message = "The outputs must pass the existing VPC and subnets through."
  }
}

# Each validation rejects bad input --------------------------------------------------

run "rejects_a_bad_name" {
  command = plan
  variables {
    name = "Signaling_Prod"
  }
  expect_failures = [var.name]
}

run "rejects_an_invalid_cidr_block" {
  command = plan
  variables {
    cidr_block = "10.42.0.0/33"
  }
  expect_failures = [var.cidr_block]
}

run "rejects_a_vpc_larger_than_a_slash_16" {
  command = plan
  variables {
    cidr_block = "10.0.0.0/8"
  }
  expect_failures = [var.cidr_block]
}

run "rejects_no_public_subnets" {
  command = plan
  variables {
    public_subnets = []
  }
  expect_failures = [var.public_subnets]
}

run "rejects_an_invalid_subnet_cidr" {
  command = plan
  variables {
    public_subnets = [{ cidr = "10.42.0/24" }]
  }
  expect_failures = [var.public_subnets]
}

run "rejects_a_repeated_subnet_cidr" {
  command = plan
  variables {
    public_subnets = [{ cidr = "10.42.0.0/24" }, { cidr = "10.42.0.0/24" }]
  }
  expect_failures = [var.public_subnets]
}

run "rejects_a_malformed_existing_vpc_id" {
  command = plan
  variables {
    existing_vpc_id     = "my-vpc"
    existing_subnet_ids = ["subnet-0123456789abcdef0"]
  }
  expect_failures = [var.existing_vpc_id]
}

run "rejects_a_malformed_existing_subnet_id" {
  command = plan
  variables {
    existing_vpc_id     = "vpc-0123456789abcdef0"
    existing_subnet_ids = ["public-a"]
  }
  expect_failures = [var.existing_subnet_ids]
}

run "rejects_an_existing_vpc_without_subnets" {
  command = plan
  variables {
    existing_vpc_id = "vpc-0123456789abcdef0"
  }
  expect_failures = [var.existing_subnet_ids]
}

run "rejects_existing_subnets_without_their_vpc" {
  command = plan
  variables {
    existing_subnet_ids = ["subnet-0123456789abcdef0"]
  }
  expect_failures = [var.existing_subnet_ids]
}

run "rejects_an_unsupported_flow_log_retention" {
  command = plan
  variables {
    flow_log_retention_days = 42
  }
  expect_failures = [var.flow_log_retention_days]
}
