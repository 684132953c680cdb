# The DynamoDB tables the services use, as signaling_shared.bootstrap creates them on the
# emulator: <prefix>rooms (key room_id), <prefix>peers, the routing table (keys room_id,
# peer_id; index peer_id-index) and <prefix>messages, messages held for peers not in their
# room yet (keys room_id, msg_key). Every table: on-demand, TTL on the expiry attribute,
# point-in-time recovery, encryption at rest, switchable deletion protection.
# A new table (relay nodes) is one more entry in local.tables.

locals {
  tables = {
    rooms = {
      hash_key   = "room_id"
      range_key  = null
      attributes = ["room_id"]
      indexes    = {}
    }
    peers = {
      hash_key   = "room_id"
      range_key  = "peer_id"
      attributes = ["room_id", "peer_id"]
      indexes = {
        # rooms-api finds the rooms of a peer id; the expiry comes along to skip stale entries.
        "peer_id-index" = {
          hash_key           = "peer_id"
          range_key          = "room_id"
          non_key_attributes = [var.ttl_attribute]
        }
      }
    }
    messages = {
      hash_key   = "room_id"
      range_key  = "msg_key" # "<to_peer_id>#<accepted ms>#<node>#<counter>": a target's messages in order
      attributes = ["room_id", "msg_key"]
      indexes    = {}
    }
  }
}

resource "aws_dynamodb_table" "this" {
  for_each = local.tables
  # checkov:skip=CKV_AWS_119:Encrypted at rest with the AWS-managed key (aws/dynamodb); a customer-managed key would add a key policy and KMS grants to the host role for no extra reader control we need.

  name                        = "${var.table_prefix}${each.key}"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = each.value.hash_key
  range_key                   = each.value.range_key
  deletion_protection_enabled = var.deletion_protection

  dynamic "attribute" {
    for_each = each.value.attributes
    content {
      name = attribute.value
      type = "S"
    }
  }

  dynamic "global_secondary_index" {
    for_each = each.value.indexes
    content {
      name               = global_secondary_index.key
      hash_key           = global_secondary_index.value.hash_key
      range_key          = global_secondary_index.value.range_key
      projection_type    = "INCLUDE"
      non_key_attributes = global_secondary_index.value.non_key_attributes
    }
  }

  ttl {
    enabled        = true
    attribute_name = var.ttl_attribute
  }

  point_in_time_recovery {
    enabled = var.point_in_time_recovery
  }

  server_side_encryption {
    enabled = true
  }

  tags = merge(var.tags, { Name = "${var.table_prefix}${each.key}" })
}
