"""Protocol v2 over real WebSockets: roles and metadata, discovery, app messages, ids and acks,
ping. (v1 and v2 clients in one room: test_compat_seed.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import RelayFactory
from devstack.stack import StackInfo
from support import Peer, RoomGrant, User, create_room, repository, sign_in
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration


def url(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def register_v2(
    peer: Peer, peer_id: str, room: RoomGrant, user: User, *, role: str, metadata: dict[str, Any], id: Any = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "register",
        "peer_id": peer_id,
        "room_id": room.room_id,
        "token": room.token,
        "id_token": user.id_token,
        "role": role,
        "metadata": metadata,
    }
    if id is not None:
        message["id"] = id
    await peer.send(message)
    reply = await peer.expect("registered_auth")
    peer.peer_id = peer_id
    return reply


async def test_roles_and_metadata_are_announced_and_stored(api: str, relay: str, stack: StackInfo) -> None:
    """registered_auth lists the peers already there; peer_joined carries role and metadata; the table keeps them."""
    worker_user, client_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, worker_user)
    worker, client = await Peer.connect(relay), await Peer.connect(relay)
    gpu = {"tags": ["gpu"], "properties": {"gpu_memory_mb": 24576}}
    first = await register_v2(worker, "W", room, worker_user, role="worker", metadata=gpu, id="r1")
    assert first["peers"] == []
    assert first["id"] == "r1"
    second = await register_v2(client, "C", room, client_user, role="client", metadata={})
    assert [(p["peer_id"], p["role"], p["metadata"]) for p in second["peers"]] == [("W", "worker", gpu)]
    assert isinstance(second["peers"][0]["connected_at"], int)
    joined = await worker.expect("peer_joined")
    assert (joined["peer_id"], joined["role"], joined["metadata"]) == ("C", "client", {})
    stored = {p.peer_id: p for p in await repository(stack).list_peers(room.room_id, now=0)}
    assert (stored["W"].role, stored["W"].metadata) == ("worker", gpu)

    await worker.send({"type": "update_metadata", "metadata": {**gpu, "properties": {"busy": True}}, "id": 7})
    assert await worker.expect("ack") == {"type": "ack", "id": 7, "queued": False}
    updated = await client.expect("metadata_updated")
    assert updated["peer_id"] == "W"
    assert updated["metadata"]["properties"] == {"busy": True}
    stored = {p.peer_id: p for p in await repository(stack).list_peers(room.room_id, now=0)}
    assert stored["W"].metadata["properties"] == {"busy": True}
    await worker.close()
    await client.close()


async def test_discovery_filters_the_callers_room_only(api: str, relay: str) -> None:
    """discover_peers returns the matching peers of the caller's room, never itself or another room's."""
    users = [await sign_in(api) for _ in range(5)]
    room, elsewhere = await create_room(api, users[0]), await create_room(api, users[0])
    peers = [await Peer.connect(relay) for _ in range(5)]
    big = {"tags": ["gpu", "a100"], "properties": {"gpu_memory_mb": 40960, "sleap_version": "1.3.0"}}
    small = {"tags": ["gpu"], "properties": {"gpu_memory_mb": 4096, "sleap_version": "1.3.0"}}
    mistyped = {"tags": ["gpu"], "properties": {"gpu_memory_mb": "48GB", "sleap_version": "1.3.0"}}
    await register_v2(peers[0], "Big", room, users[0], role="worker", metadata=big)
    await register_v2(peers[1], "Small", room, users[1], role="worker", metadata=small)
    await register_v2(peers[2], "Odd", room, users[2], role="worker", metadata=mistyped)
    await register_v2(peers[3], "Far", elsewhere, users[3], role="worker", metadata=big)
    client = peers[4]
    await register_v2(client, "Client", room, users[4], role="client", metadata={})

    filters = {
        "role": "worker",
        "tags": ["gpu"],
        "properties": {"gpu_memory_mb": {"$gte": 8192}, "sleap_version": "1.3.0"},
    }
    await client.send({"type": "discover_peers", "filters": filters, "id": "d1"})
    found = await client.expect("peer_list")
    assert found["id"] == "d1"
    assert found["count"] == 1
    assert [p["peer_id"] for p in found["peers"]] == ["Big"]
    assert found["peers"][0]["metadata"] == big

    await client.send({"type": "discover_peers"})
    everyone = await client.expect("peer_list")
    assert sorted(p["peer_id"] for p in everyone["peers"]) == ["Big", "Odd", "Small"]

    await client.send({"type": "discover_peers", "filters": {"properties": {"x": {"$regex": "."}}}, "id": 2})
    error = await client.expect_error_with_id("INVALID_MESSAGE", 2)
    assert "$regex" in error["reason"]
    for peer in peers:
        await peer.close()


async def test_peer_messages_and_broadcasts(api: str, relay: str) -> None:
    """peer_message arrives untouched with the server's from_peer_id; broadcast reaches the others only."""
    users = [await sign_in(api) for _ in range(4)]
    room, elsewhere = await create_room(api, users[0]), await create_room(api, users[0])
    a, b, c, far = [await Peer.connect(relay) for _ in range(4)]
    seats = [(a, "A", room), (b, "B", room), (c, "C", room), (far, "Far", elsewhere)]
    for (peer, name, where), user in zip(seats, users, strict=True):
        await register_v2(peer, name, where, user, role="peer", metadata={})
    await a.expect("peer_joined")
    await a.expect("peer_joined")
    await b.expect("peer_joined")

    payload = {"job": {"id": 42, "files": ["a.slp"], "nested": [1, {"x": None}]}, "from_peer_id": "forged"}
    await a.send({"type": "peer_message", "to_peer_id": "B", "payload": payload, "id": "m1"})
    assert await a.expect("ack") == {"type": "ack", "id": "m1", "queued": False}
    assert await b.expect("peer_message") == {
        "type": "peer_message",
        "from_peer_id": "A",
        "to_peer_id": "B",
        "payload": payload,
        "message_id": "m1",  # the sender's id: a message delivered twice is known by it
    }

    # Far is not in this room: held for a peer of that id registering here, never sent to Far.
    await a.send({"type": "peer_message", "to_peer_id": "Far", "payload": 1, "id": "m2"})
    assert await a.expect("ack") == {"type": "ack", "id": "m2", "queued": True}
    await a.send({"type": "peer_message", "to_peer_id": "Far", "payload": 1})
    await a.expect_error("PEER_NOT_FOUND")  # without an id (v1): nothing is held

    await b.send({"type": "broadcast", "payload": "hello", "id": 3})
    assert await b.expect("ack") == {"type": "ack", "id": 3, "queued": False}
    for peer in (a, c):
        assert await peer.expect("broadcast") == {"type": "broadcast", "from_peer_id": "B", "payload": "hello"}
    await b.barrier()
    await far.barrier()
    for peer in (a, b, c, far):
        await peer.close()


async def test_ids_acks_errors_and_ping(api: str, relay: str) -> None:
    """Ids come back on ack, pong and errors; v1 errors (no id) keep the v1 shape."""
    user, other_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, user)
    peer, other = await Peer.connect(relay), await Peer.connect(relay)
    await peer.send({"type": "ping", "id": "p0"})
    assert await peer.expect("pong") == {"type": "pong", "id": "p0"}
    await peer.send({"type": "offer", "target": "X", "sdp": "v=0", "id": 1})
    await peer.expect_error_with_id("NOT_REGISTERED", 1)
    await peer.send({"type": "offer", "target": "X", "id": 2})
    await peer.expect_error_with_id("INVALID_MESSAGE", 2)
    await peer.send({"type": "nonsense", "id": 3})
    await peer.expect_error_with_id("UNKNOWN_MESSAGE_TYPE", 3)
    await peer.send({"type": "offer", "target": "X", "sdp": "v=0"})
    await peer.expect_error("NOT_REGISTERED")  # no id: exactly {type, code, reason}

    await peer.register("P", room, user)
    await other.register("O", room, other_user)
    await peer.expect("peer_joined")
    await peer.send({"type": "offer", "target": "O", "sdp": "v=0", "id": "o1"})
    assert await peer.expect("ack") == {"type": "ack", "id": "o1", "queued": False}
    relayed = await other.expect("offer")
    assert "id" not in relayed
    await peer.send({"type": "ping"})
    assert await peer.expect("pong") == {"type": "pong"}
    await peer.close()
    await other.close()


async def test_metadata_size_is_limited(api: str, relay_with: RelayFactory) -> None:
    """Metadata over max_metadata_bytes is refused at register and on update; the peer stays as it was."""
    async with relay_with(max_metadata_bytes=64) as server:
        user = await sign_in(api)
        room = await create_room(api, user)
        peer = await Peer.connect(url(server))
        big = {"blob": "x" * 100}
        await peer.send(
            {
                "type": "register",
                "peer_id": "P",
                "room_id": room.room_id,
                "token": room.token,
                "id_token": user.id_token,
                "metadata": big,
                "id": "r",
            }
        )
        error = await peer.expect_error_with_id("INVALID_MESSAGE", "r")
        assert "limit is 64" in error["reason"]
        await register_v2(peer, "P", room, user, role="peer", metadata={"ok": 1})
        await peer.send({"type": "update_metadata", "metadata": big, "id": "u"})
        await peer.expect_error_with_id("INVALID_MESSAGE", "u")
        await peer.send({"type": "discover_peers"})
        await peer.expect("peer_list")
        await peer.close()
