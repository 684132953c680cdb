"""The unit tier's in-process moto leaves the integration tier's emulator alone."""

from __future__ import annotations

import boto3

from fakes.moto_in_process import dynamodb_in_process


def stack_region_client() -> object:
    return boto3.session.Session().client(
        "dynamodb",
        region_name="us-west-1",
        endpoint_url="https://dynamodb.us-west-1.amazonaws.com",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def test_the_emulators_tables_survive_a_unit_test_on_moto_in_process() -> None:
    """A table in the stack's region (standing in for the embedded emulator's, which lives in
    the same moto backends) is still there after the in-process mock started and stopped."""
    with dynamodb_in_process():
        stack = stack_region_client()
        stack.create_table(  # type: ignore[attr-defined]
            TableName="stack-rooms",
            KeySchema=[{"AttributeName": "room_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "room_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    with dynamodb_in_process() as own:
        assert own.list_tables()["TableNames"] == []  # its own region is empty
        stack = stack_region_client()
        try:
            # (with the integration tier's stack running, its own tables are listed too)
            assert "stack-rooms" in stack.list_tables()["TableNames"]  # type: ignore[attr-defined]
        finally:
            stack.delete_table(TableName="stack-rooms")  # type: ignore[attr-defined]
