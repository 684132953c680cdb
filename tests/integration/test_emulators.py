"""The emulators CI runs on besides the embedded one: an emulator named by AWS_ENDPOINT_URL*
(GitHub Actions sends DynamoDB to a LocalStack service container that way), and LocalStack
through testcontainers where a Docker engine answers."""

from __future__ import annotations

import asyncio
import os
import uuid

import boto3
import pytest
from moto.server import ThreadedMotoServer

from devstack import background
from emulators import docker_available, localstack_dynamodb
from signaling_shared.bootstrap import ensure_tables
from signaling_shared.dynamo import Repository, Room
from signaling_shared.settings import CommonSettings, Environment
from support import TIMEOUT, Peer, create_room, sign_in

pytestmark = pytest.mark.integration

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-west-1"}


def dynamodb(endpoint: str) -> object:
    return boto3.session.Session().client("dynamodb", endpoint_url=endpoint, **CREDENTIALS)


async def test_the_emulator_aws_endpoint_url_dynamodb_names_holds_the_stack_s_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With AWS_ENDPOINT_URL_DYNAMODB set (GitHub Actions' LocalStack, here a second emulator),
    the stack creates its tables there and a room created through the API lands there;
    Cognito stays on the stack's own emulator."""
    external = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    external.start()
    try:
        host, port = external.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        prefix = f"ext{uuid.uuid4().hex[:6]}-"
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
        stack = await asyncio.to_thread(background.start, "--table-prefix", prefix)
        try:
            assert stack.aws != endpoint  # the stack's own emulator, for Cognito
            client = dynamodb(endpoint)
            tables = client.list_tables()["TableNames"]  # type: ignore[attr-defined]
            assert {f"{prefix}rooms", f"{prefix}peers", f"{prefix}messages"} <= set(tables)
            user = await sign_in(stack.api)
            room = await create_room(stack.api, user)
            item = client.get_item(  # type: ignore[attr-defined]
                TableName=f"{prefix}rooms", Key={"room_id": {"S": room.room_id}}
            )
            assert item["Item"]["room_id"]["S"] == room.room_id
            peer = await Peer.connect(stack.relay)
            try:
                await peer.register("Worker", room, user)
            finally:
                await peer.close()
            assert client.get_item(  # type: ignore[attr-defined]
                TableName=f"{prefix}peers", Key={"room_id": {"S": room.room_id}, "peer_id": {"S": "Worker"}}
            ).get("Item")
        finally:
            await asyncio.to_thread(stack.stop, 6 * TIMEOUT)
    finally:
        external.stop()


@pytest.mark.skipif(not docker_available(), reason="no Docker engine answers here: LocalStack runs where one does")
async def test_localstack_through_testcontainers_holds_the_tables_and_a_room() -> None:
    """The conftest's LocalStack path: testcontainers runs LocalStack's DynamoDB, the bootstrap
    creates the tables there, and the repository writes and reads a room."""
    with localstack_dynamodb() as endpoint:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        settings = CommonSettings(
            environment=Environment.DEVELOPMENT,
            dynamodb_endpoint_url=endpoint,
            table_prefix="ls-",
            aws_region="us-west-1",
        )
        ensure_tables(dynamodb(endpoint), settings)
        tables = dynamodb(endpoint).list_tables()["TableNames"]  # type: ignore[attr-defined]
        assert {"ls-rooms", "ls-peers", "ls-messages"} <= set(tables)
        repository = Repository.from_settings(settings)
        room = Room(room_id=uuid.uuid4().hex[:16], created_by="sub", token_hash="h", created_at=1, expires_at=2**31)
        await repository.create_room(room)
        assert await repository.get_room(room.room_id) == room
