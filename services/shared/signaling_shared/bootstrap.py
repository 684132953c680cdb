"""Create the tables, the user pool and its app client on an AWS emulator (idempotent).

The same code serves the embedded emulator (``make dev``, the tests) and LocalStack (CI
on GitHub). In AWS itself Terraform owns these resources; this module refuses to run
without an emulator endpoint unless told otherwise.

    python -m signaling_shared.bootstrap            # prints SIGNALING_* lines for the shell
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from signaling_shared.aws import make_client
from signaling_shared.dynamo import PEER_ID_INDEX
from signaling_shared.settings import CommonSettings, Environment

TTL_ATTRIBUTE = "expires_at"


@dataclass(frozen=True)
class Bootstrapped:
    user_pool_id: str
    client_id: str
    rooms_table: str
    peers_table: str
    messages_table: str

    def env(self) -> dict[str, str]:
        return {
            "SIGNALING_COGNITO_USER_POOL_ID": self.user_pool_id,
            "SIGNALING_COGNITO_CLIENT_ID": self.client_id,
        }


def table_definitions(settings: CommonSettings) -> list[dict[str, Any]]:
    """CreateTable requests for the rooms table, the peers routing table and held messages."""
    return [
        {
            "TableName": settings.rooms_table,
            "KeySchema": [{"AttributeName": "room_id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "room_id", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        },
        {
            "TableName": settings.peers_table,
            "KeySchema": [
                {"AttributeName": "room_id", "KeyType": "HASH"},
                {"AttributeName": "peer_id", "KeyType": "RANGE"},
            ],
            "AttributeDefinitions": [
                {"AttributeName": "room_id", "AttributeType": "S"},
                {"AttributeName": "peer_id", "AttributeType": "S"},
            ],
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": PEER_ID_INDEX,
                    "KeySchema": [
                        {"AttributeName": "peer_id", "KeyType": "HASH"},
                        {"AttributeName": "room_id", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": [TTL_ATTRIBUTE]},
                }
            ],
            "BillingMode": "PAY_PER_REQUEST",
        },
        {
            "TableName": settings.messages_table,
            "KeySchema": [
                {"AttributeName": "room_id", "KeyType": "HASH"},
                {"AttributeName": "msg_key", "KeyType": "RANGE"},
            ],
            "AttributeDefinitions": [
                {"AttributeName": "room_id", "AttributeType": "S"},
                {"AttributeName": "msg_key", "AttributeType": "S"},
            ],
            "BillingMode": "PAY_PER_REQUEST",
        },
    ]


def ensure_tables(dynamodb: Any, settings: CommonSettings) -> None:
    for definition in table_definitions(settings):
        name = definition["TableName"]
        try:
            dynamodb.create_table(**definition)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise
        dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
            )


def ensure_user_pool(cognito: Any, settings: CommonSettings) -> tuple[str, str]:
    pool_name = f"{settings.table_prefix}signaling-users"
    pool_id = next(
        (
            pool["Id"]
            for page in cognito.get_paginator("list_user_pools").paginate(MaxResults=60)
            for pool in page.get("UserPools", [])
            if pool["Name"] == pool_name
        ),
        None,
    )
    if pool_id is None:
        pool_id = cognito.create_user_pool(
            PoolName=pool_name,
            AdminCreateUserConfig={"AllowAdminCreateUserOnly": True},  # as Terraform's (no SignUp)
            Policies={
                "PasswordPolicy": {
                    "MinimumLength": 16,
                    "RequireUppercase": True,
                    "RequireLowercase": True,
                    "RequireNumbers": True,
                    "RequireSymbols": True,
                }
            },
        )["UserPool"]["Id"]
    client_name = "signaling-services"
    clients = cognito.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60).get("UserPoolClients", [])
    client_id = next((c["ClientId"] for c in clients if c["ClientName"] == client_name), None)
    if client_id is None:
        client_id = cognito.create_user_pool_client(
            UserPoolId=pool_id,
            ClientName=client_name,
            GenerateSecret=False,
            ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
    return str(pool_id), str(client_id)


def bootstrap(settings: CommonSettings) -> Bootstrapped:
    ensure_tables(make_client(settings, "dynamodb"), settings)
    pool_id, client_id = ensure_user_pool(make_client(settings, "cognito-idp"), settings)
    return Bootstrapped(pool_id, client_id, settings.rooms_table, settings.peers_table, settings.messages_table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allow-aws", action="store_true", help="Run even without an emulator endpoint.")
    args = parser.parse_args(argv)
    settings = CommonSettings(environment=Environment.DEVELOPMENT)
    if not (settings.endpoint_for("dynamodb") and settings.endpoint_for("cognito-idp")) and not args.allow_aws:
        print("no emulator endpoint (AWS_ENDPOINT_URL) is set; in AWS, Terraform creates these", file=sys.stderr)
        return 2
    result = bootstrap(settings)
    for key, value in result.env().items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
