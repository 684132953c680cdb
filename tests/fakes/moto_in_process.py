"""DynamoDB answered by moto in this process (no HTTP), for the unit tier.

moto's in-process mock resets every backend when it starts and when it stops, and the
integration tier's emulator, a moto server in this same pytest process, keeps the shared
stack's tables and user pool in those same backends: a plain ``mock_aws()`` in a unit test
wiped them for every test after it. So the mock starts without a reset and stops keeping
the data, and works in a region of its own that the stack never uses, whose tables it
deletes when it stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto import mock_aws

REGION = "eu-north-1"  # the stack's emulator serves us-west-1


@contextmanager
def dynamodb_in_process() -> Iterator[Any]:
    mock = mock_aws()
    mock.start(reset=False)
    client = boto3.session.Session().client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=f"https://dynamodb.{REGION}.amazonaws.com",  # moto's, not AWS_ENDPOINT_URL's emulator
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    try:
        yield client
    finally:
        for table in client.list_tables()["TableNames"]:
            client.delete_table(TableName=table)
        client.close()
        mock.stop(remove_data=False)
