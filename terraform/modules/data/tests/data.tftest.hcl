# terraform test (from the module folder): plans against a mocked AWS provider.

mock_provider "aws" {}

variables {
  table_prefix = "test-"
}

run "creates_the_tables_the_services_expect" {
  command = plan

  assert {
    condition     = output.table_names.rooms == "test-rooms" && output.table_names.peers == "test-peers" && output.table_names.messages == "test-messages" && length(output.table_names) == 3
    error_message = "Tables must be named <prefix>rooms, <prefix>peers and <prefix>messages, as the services' settings build them."
  }

  assert {
    condition     = aws_dynamodb_table.this["rooms"].hash_key == "room_id" && aws_dynamodb_table.this["rooms"].range_key == null
    error_message = "rooms is keyed by room_id alone."
  }

  assert {
    condition     = aws_dynamodb_table.this["peers"].hash_key == "room_id" && aws_dynamodb_table.this["peers"].range_key == "peer_id"
    error_message = "peers is keyed by room_id and peer_id."
  }

  assert {
    condition     = aws_dynamodb_table.this["messages"].hash_key == "room_id" && aws_dynamodb_table.this["messages"].range_key == "msg_key"
    error_message = "messages is keyed by room_id and msg_key."
  }

  assert {
    condition = one([
      for index in aws_dynamodb_table.this["peers"].global_secondary_index : index
      if index.name == "peer_id-index" && index.hash_key == "peer_id" && index.range_key == "room_id"
      && index.projection_type == "INCLUDE" && toset(index.non_key_attributes) == toset(["expires_at"])
    ]) != null
    error_message = "peers needs peer_id-index (peer_id, room_id) projecting expires_at, as rooms-api queries it."
  }

  assert {
    condition     = alltrue([for table in aws_dynamodb_table.this : alltrue([for attribute in table.attribute : attribute.type == "S"])])
    error_message = "Every key attribute is a string."
  }
}

run "every_table_is_on_demand_with_ttl_pitr_encryption_and_deletion_protection" {
  command = plan

  assert {
    condition     = alltrue([for table in aws_dynamodb_table.this : table.billing_mode == "PAY_PER_REQUEST"])
    error_message = "Tables must use on-demand billing."
  }

  assert {
    condition     = alltrue([for table in aws_dynamodb_table.this : table.ttl[0].enabled && table.ttl[0].attribute_name == "expires_at"])
    error_message = "TTL must be enabled on expires_at, the attribute the services write."
  }

  assert {
    condition     = alltrue([for table in aws_dynamodb_table.this : table.point_in_time_recovery[0].enabled])
    error_message = "Point-in-time recovery must be on by default."
  }

  assert {
    condition     = alltrue([for table in aws_dynamodb_table.this : table.server_side_encryption[0].enabled])
    error_message = "Server-side encryption (KMS) must be on."
  }

  assert {
    condition     = alltrue([for table in aws_dynamodb_table.this : table.deletion_protection_enabled])
    error_message = "Deletion protection must be on by default."
  }
}

run "protection_and_recovery_can_be_turned_off_for_disposable_environments" {
  command = plan

  variables {
    deletion_protection    = false
    point_in_time_recovery = false
  }

  assert {
    condition     = alltrue([for table in aws_dynamodb_table.this : !table.deletion_protection_enabled && !table.point_in_time_recovery[0].enabled])
    error_message = "deletion_protection and point_in_time_recovery must reach every table."
  }

  assert {
    condition     = alltrue([for table in aws_dynamodb_table.this : table.server_side_encryption[0].enabled])
    error_message = "Encryption is never switchable."
  }
}

# Each validation rejects bad input --------------------------------------------------

run "rejects_an_empty_table_prefix" {
  command = plan
  variables {
    table_prefix = ""
  }
  expect_failures = [var.table_prefix]
}

run "rejects_a_table_prefix_the_services_would_refuse" {
  command = plan
  variables {
    table_prefix = "prod/"
  }
  expect_failures = [var.table_prefix]
}

run "rejects_a_bad_ttl_attribute" {
  command = plan
  variables {
    ttl_attribute = "expires at"
  }
  expect_failures = [var.ttl_attribute]
}
