"""The repositories' error ladders: botocore errors become typed ones (reported for metrics,
refused conditions excepted), batches retry what DynamoDB leaves unprocessed, and the
in-memory repository fails on demand the way the DynamoDB one fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from fakes.memory_repository import MemoryRepository
from fakes.moto_in_process import dynamodb_in_process
from signaling_shared.dynamo import PeerRecord, RelayNode, Repository, Room, SavedSession, translate_error
from signaling_shared.errors import ConditionFailed, NotFound, RepositoryError, Throttled, Unavailable


def client_error(code: str, **response: Any) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, **response}, "Operation")


def cancelled(*codes: str) -> ClientError:
    return client_error("TransactionCanceledException", CancellationReasons=[{"Code": code} for code in codes])


@pytest.mark.parametrize(
    ("exc", "kind", "aws_code", "reasons"),
    [
        (client_error("ConditionalCheckFailedException"), ConditionFailed, "ConditionalCheckFailedException", ()),
        (
            cancelled("None", "ConditionalCheckFailed"),
            ConditionFailed,
            "TransactionCanceledException",
            (None, "ConditionalCheckFailed"),
        ),
        (cancelled("ThrottlingError", "None"), Throttled, "TransactionCanceledException", ("ThrottlingError", None)),
        (cancelled("TransactionConflict"), Unavailable, "TransactionCanceledException", ()),
        (
            client_error("ProvisionedThroughputExceededException"),
            Throttled,
            "ProvisionedThroughputExceededException",
            (),
        ),
        (client_error("ResourceNotFoundException"), Unavailable, "ResourceNotFoundException", ()),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), Unavailable, None, ()),
    ],
)
def test_botocore_errors_become_typed_errors(
    exc: Exception, kind: type[RepositoryError], aws_code: str | None, reasons: tuple[str | None, ...]
) -> None:
    error = translate_error("claim_peer", exc)
    assert type(error) is kind
    assert (error.aws_code, error.operation, error.reasons) == (aws_code, "claim_peer", reasons)


@pytest.fixture
def bare_dynamodb() -> Iterator[Any]:
    """moto in-process, without tables."""
    with dynamodb_in_process() as client:
        yield client


async def test_failures_are_reported_and_refused_conditions_are_not(bare_dynamodb: Any) -> None:
    reported: list[tuple[str, RepositoryError]] = []
    tables = {"rooms_table": "rooms", "peers_table": "peers", "messages_table": "messages"}
    repository = Repository(bare_dynamodb, **tables, on_error=lambda op, error: reported.append((op, error)))
    with pytest.raises(Unavailable) as missing:
        await repository.get_room("room-1")  # no such table
    assert missing.value.aws_code == "ResourceNotFoundException"
    with pytest.raises(Unavailable):
        await repository.check()
    assert [op for op, _ in reported] == ["get_room", "describe_table"]
    bare_dynamodb.create_table(
        TableName="rooms",
        KeySchema=[{"AttributeName": "room_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "room_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    room = Room("room-1", "creator", "hash", 0, 10**10)
    await repository.create_room(room)
    with pytest.raises(ConditionFailed):
        await repository.create_room(room)
    assert len(reported) == 2  # a refused condition is an answer, not a failure


class ScriptedClient:
    """A boto3 client that answers BatchWriteItem and DescribeTable as scripted."""

    def __init__(self, unprocessed: int = 0, status: str = "ACTIVE") -> None:
        self.unprocessed = unprocessed
        self.status = status
        self.batches: list[dict[str, Any]] = []

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.batches.append(RequestItems)
        if self.unprocessed:
            self.unprocessed -= 1
            return {"UnprocessedItems": RequestItems}
        return {"UnprocessedItems": {}}

    def describe_table(self, TableName: str) -> dict[str, Any]:
        return {"Table": {"TableName": TableName, "TableStatus": self.status}}


def scripted(client: ScriptedClient) -> Repository:
    return Repository(client, rooms_table="rooms", peers_table="peers", messages_table="messages")


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("signaling_shared.dynamo.client.time.sleep", slept.append)
    return slept


async def test_a_batch_retries_what_dynamodb_left_unprocessed(no_backoff: list[float]) -> None:
    client = ScriptedClient(unprocessed=2)
    await scripted(client).delete_messages("room-1", [f"B#{n}" for n in range(30)])
    assert [len(batch["messages"]) for batch in client.batches] == [25, 25, 25, 5]
    assert no_backoff == [0.1, 0.2]


async def test_a_batch_left_unprocessed_after_six_attempts_is_throttled(no_backoff: list[float]) -> None:
    client = ScriptedClient(unprocessed=100)
    with pytest.raises(Throttled) as throttled:
        await scripted(client).delete_peers("room-1", ["A"])
    assert throttled.value.operation == "batch_write"
    assert len(client.batches) == 6
    assert no_backoff == [0.1, 0.2, 0.4, 0.8, 1.0]


async def test_a_table_that_is_not_active_fails_the_check() -> None:
    await scripted(ScriptedClient(status="UPDATING")).check()
    with pytest.raises(Unavailable, match="table rooms is CREATING"):
        await scripted(ScriptedClient(status="CREATING")).check()


# The in-memory repository's controls -------------------------------------------------


def entry(**fields: Any) -> PeerRecord:
    values: dict[str, Any] = {
        "room_id": "room-1",
        "peer_id": "A",
        "owner_sub": "alice",
        "owner_username": "alice",
        "connection_id": "c1",
        "node_id": "node-a",
        "connected_at": 100,
        "expires_at": 200,
        **fields,
    }
    return PeerRecord(**values)


async def test_an_injected_failure_fails_the_next_calls_of_its_operation_and_is_reported() -> None:
    reported: list[str] = []
    repository = MemoryRepository(on_error=lambda op, error: reported.append(op))
    room = Room("room-1", "creator", "hash", 100, 1000)
    repository.fail_next("create_room", Unavailable("down", operation="create_room"), times=2)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await repository.create_room(room)
    await repository.create_room(room)
    assert await repository.get_room("room-1") == room
    repository.fail_next("get_room", ConditionFailed("no"))  # refused conditions are not reported
    with pytest.raises(ConditionFailed):
        await repository.get_room("room-1")
    assert reported == ["create_room", "create_room"]
    assert repository.operations == ["create_room"] * 3 + ["get_room"] * 2


async def test_an_injected_failure_is_handled_as_dynamodb_s_would_be() -> None:
    repository = MemoryRepository()
    await repository.create_room(Room("room-1", "creator", "hash", 100, 1000))
    await repository.claim_peer(entry(), now=100)
    repository.fail_next("release_peer", ConditionFailed("taken over"))
    await repository.release_peer("room-1", "A", "c1")  # ignored, as a refused delete is
    assert await repository.peer_entry("room-1", "A") is not None
    session = SavedSession(entry(), "session-a", ("hash",), 3, frames=[(1, "{}")])
    await repository.save_session(session)
    repository.fail_next("delete_messages", Unavailable("down"))
    await repository.take_session(entry(connection_id="c2"), session, now=100)  # its frames: left to the TTL
    assert (await repository.peer_entry("room-1", "A")) == entry(connection_id="c2")
    repository.fail_next("take_session", ConditionFailed("gone", reasons=("ConditionalCheckFailed", None)))
    with pytest.raises(NotFound):  # a refused room check, as DynamoDB cancels the transaction
        await repository.take_session(entry(connection_id="c3"), session, now=100)


async def test_the_first_heartbeat_creates_the_registry_even_if_another_node_does_first() -> None:
    repository = MemoryRepository()
    await repository.heartbeat_node(RelayNode("node-a", "ws://a", 0, 10, 150.0))
    repository.rooms_table.clear()
    repository.fail_next("heartbeat_node", Unavailable("down"), times=1)
    with pytest.raises(Unavailable):
        await repository.heartbeat_node(RelayNode("node-b", "ws://b", 0, 10, 150.0))
    await repository.heartbeat_node(RelayNode("node-b", "ws://b", 0, 10, 150.0))
    assert [n.node_id for n in await repository.relay_nodes()] == ["node-b"]
    assert repository.operations[-4:] == ["heartbeat_node"] * 3 + ["relay_nodes"]  # update, create, update


async def test_the_ttl_sweep_deletes_what_expired_by_the_clock() -> None:
    now = [150.0]
    repository = MemoryRepository(clock=lambda: now[0])
    await repository.create_room(Room("room-1", "creator", "hash", 100, 1000))
    await repository.create_room(Room("room-2", "creator", "hash", 100, 140))
    await repository.claim_peer(entry(), now=100)
    await repository.heartbeat_node(RelayNode("node-a", "ws://a", 0, 10, 120.0))
    assert repository.run_ttl() == 1  # room-2; the node registry has no TTL
    assert [p.peer_id for p in await repository.list_peers("room-1", now=0)] == ["A"]
    now[0] = 500
    assert repository.run_ttl() == 1  # the peer's entry
    assert await repository.list_peers("room-1", now=0) == []
    assert Room("room-1", "creator", "hash", 100, 1000).is_expired(1000)
    assert not RelayNode("node-a", "ws://a", 0, 10, 120.0).is_live(120)
