"""rooms-api: rooms with a room token and an expiry, stored in DynamoDB."""
