"""What a registration costs in DynamoDB calls, counted on the relay's own boto3 client.

A fresh registration in a room that holds nothing reads the room and claims the peer id:
two calls; the next ones in a room this relay serves claim only (the claim's transaction
checks that the room is still as read, ``ws_relay.roomcache``). The room's marks
(``held_until_ms``, ``saved_until``) are what spare it the held-messages query and the
saved-sessions query; a room written without them pays for both, and so does a room that a
previous process left messages and sessions in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from devstack.stack import StackInfo
from signaling_shared.aws import make_client
from signaling_shared.dynamo import Repository
from signaling_shared.settings import RelaySettings
from support import TIMEOUT, Peer, RoomGrant, User, create_room, relay_settings, running_relay, sign_in, store_room
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration

ROOM, CLAIM = ("GetItem", "rooms"), ("TransactWriteItems", "")
HELD, SAVED = ("Query", "messages"), ("Query", "peers")


class Calls:
    """The DynamoDB operations a relay called since ``start``, in order, each with the kind of
    table it named (boto3 calls them from worker threads)."""

    def __init__(self, settings: RelaySettings) -> None:
        self.tables = {
            settings.rooms_table: "rooms",
            settings.peers_table: "peers",
            settings.messages_table: "messages",
        }
        self.names: list[tuple[str, str]] = []
        self.counting = False
        self._loop = asyncio.get_running_loop()
        self._more = asyncio.Event()

    def called(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self.counting:
            self.names.append((model.name, self.tables.get(params.get("TableName", ""), "")))
            self._loop.call_soon_threadsafe(self._more.set)

    def start(self) -> list[tuple[str, str]]:
        self.names = []
        self.counting = True
        return self.names

    async def until(self, done: Callable[[list[tuple[str, str]]], bool]) -> list[tuple[str, str]]:
        """The calls so far, once ``done`` says they are complete."""
        async with asyncio.timeout(TIMEOUT):
            while not done(self.names):
                self._more.clear()
                await self._more.wait()
        return list(self.names)


@asynccontextmanager
async def counted_relay(stack: StackInfo) -> AsyncIterator[tuple[RelayServer, Calls]]:
    """A relay whose DynamoDB client reports each call to ``Calls`` (once started); its
    heartbeat and leases are quiet meanwhile."""
    settings = relay_settings(stack, node_heartbeat_seconds=3600, node_ttl_seconds=7200, peer_lease_seconds=3600)
    client = make_client(settings, "dynamodb")
    calls = Calls(settings)
    client.meta.events.register("provide-client-params.dynamodb", calls.called)
    repository = Repository(
        client,
        rooms_table=settings.rooms_table,
        peers_table=settings.peers_table,
        messages_table=settings.messages_table,
    )
    async with running_relay(settings, repository=repository) as server:
        yield server, calls


async def registered(server: RelayServer, peer_id: str, room: RoomGrant, user: User) -> Peer:
    """``peer_id`` registered, and everything its registration does finished: the relay
    answers a connection's frames in order, so the pong comes after the inbox is open; and
    what the registration set going beside it is done."""
    peer = await Peer.connect(f"ws://127.0.0.1:{server.port}")
    await peer.register(peer_id, room, user)
    await peer.send({"type": "ping", "id": "after"})
    assert await peer.expect("pong") == {"type": "pong", "id": "after"}
    await server.relay.finish_tasks()
    return peer


async def test_a_fresh_registration_reads_the_room_claims_the_peer_id_and_the_next_only_claims(
    api: str, stack: StackInfo
) -> None:
    worker_user, client_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, worker_user)
    async with counted_relay(stack) as (server, calls):
        first = calls.start()
        await registered(server, "Worker", room, worker_user)
        second = calls.start()
        await registered(server, "Client", room, client_user)
        calls.counting = False
    assert first == [ROOM, CLAIM]
    assert second == [CLAIM]


async def test_a_room_without_marks_is_looked_into(api: str, stack: StackInfo) -> None:
    """A room written before the marks existed may hold messages and saved sessions: its
    first registration looks for both."""
    user = await sign_in(api)
    room = await store_room(stack, "an earlier creator", expires_in=600)
    async with counted_relay(stack) as (server, calls):
        calls.start()
        await registered(server, "Worker", room, user)
        names = list(calls.names)
    assert names[:2] == [ROOM, CLAIM]
    assert sorted(names[2:]) == sorted([HELD, SAVED])


async def test_what_a_previous_process_left_in_a_room_is_found_by_the_next(api: str, stack: StackInfo) -> None:
    """A message held and a session saved by a relay that stopped: the room says so, and the
    next relay reads both at the next registration. The message arrives."""
    client_user, worker_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, client_user)
    async with running_relay(relay_settings(stack)) as previous:
        client = await registered(previous, "Client", room, client_user)
        await client.send({"type": "peer_message", "to_peer_id": "Worker", "payload": {"job": 1}, "id": 1})
        assert await client.expect("ack") == {"type": "ack", "id": 1, "queued": True}
    async with counted_relay(stack) as (server, calls):
        calls.start()
        worker = await Peer.connect(f"ws://127.0.0.1:{server.port}")
        await worker.register("Worker", room, worker_user)
        delivered = await worker.expect("peer_message")
        names = await calls.until(lambda names: SAVED in names and names.count(HELD) >= 2)
        calls.counting = False
    assert delivered["payload"] == {"job": 1}
    assert names[:2] == [ROOM, CLAIM]
    # Then the room's index of held messages and the worker's messages, and the saved-sessions
    # query beside them (and the delivered message's delete, once the worker confirms it).
    assert sorted(set(names[2:])) == sorted({HELD, SAVED} | ({("BatchWriteItem", "")} & set(names)))
