"""The seed's successor's clients (sleap-RTC at its HEAD, 5f12af4, written for webRTC-connect
at ac5bf95), replayed frame by frame over real WebSockets. The frames are the clients' own
(``worker/worker_class.py``: register with is_admin and the worker_busy error;
``worker/state_manager.py``: update_metadata and the re-register after a job;
``worker/mesh_coordinator.py``: mesh_connect, mesh_answer, ice_candidate;
``client/client_class.py``: register, discover_peers with room_id, peer_message), and what
they must receive is what their message loops read."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from support import TIMEOUT, Peer, RoomGrant, User, create_room, sign_in, unique

pytestmark = pytest.mark.integration

TAGS = ["sleap-rtc", "training-worker", "inference-worker"]


def worker_register(
    peer_id: str, room: RoomGrant, user: User, *, status: str = "available", **extra: Any
) -> dict[str, Any]:
    """worker_class.py's register (the admin claim is optimistic: every worker sends it)."""
    return {
        "type": "register",
        "peer_id": peer_id,
        "room_id": room.room_id,
        "token": room.token,
        "id_token": user.id_token,
        "role": "worker",
        "is_admin": True,
        "metadata": {
            "tags": TAGS,
            "properties": {"gpu_memory_mb": 24576, "gpu_model": "A100", "status": status, "max_concurrent_jobs": 1},
        },
        **extra,
    }


def client_register(peer_id: str, room: RoomGrant, user: User) -> dict[str, Any]:
    """client_class.py's _register_with_room."""
    return {
        "type": "register",
        "peer_id": peer_id,
        "room_id": room.room_id,
        "token": room.token,
        "id_token": user.id_token,
        "role": "client",
        "metadata": {
            "tags": ["sleap-rtc", "training-client"],
            "properties": {"sleap_version": "unknown", "platform": "Linux", "user_id": "someone"},
        },
    }


def discover(client_id: str, room_id: str, **properties: Any) -> dict[str, Any]:
    """client_class.py's _discover_workers_in_room."""
    filters = {
        "role": "worker",
        "room_id": room_id,
        "tags": ["sleap-rtc"],
        "properties": {"status": "available", **properties},
    }
    return {"type": "discover_peers", "from_peer_id": client_id, "filters": filters}


async def connected(relay: str, register: dict[str, Any]) -> tuple[Peer, dict[str, Any]]:
    peer = await Peer.connect(relay)
    await peer.send(register)
    return peer, await peer.recv()


async def test_two_workers_elect_one_admin_and_form_their_mesh(api: str, relay: str) -> None:
    """The first worker's admin claim wins and the second hears admin_conflict, then learns
    the admin from registered_auth; the admin announcing itself again on its socket is
    confirmed, not refused; mesh_connect, mesh_answer and ice_candidate reach their targets
    with from_peer_id stamped; the admin's departure frees the role."""
    owner, other = await sign_in(api), await sign_in(api)
    room = await create_room(api, owner)
    admin_id, second_id, third_id = unique("Worker"), unique("Worker"), unique("Worker")

    admin, first = await connected(relay, worker_register(admin_id, room, owner))
    assert first["type"] == "registered_auth"
    assert (first["admin_peer_id"], first["peer_list"], first["peer_metadata"]) == (admin_id, [], {})
    assert all("username" not in server for server in first["mesh_ice_servers"])
    await admin.send(worker_register(admin_id, room, owner))  # _notify_admin_status, same socket
    again = await admin.expect("registered_auth")
    assert again["admin_peer_id"] == admin_id

    second, conflict = await connected(relay, worker_register(second_id, room, other))
    assert conflict == {"type": "admin_conflict", "room_id": room.room_id, "current_admin": admin_id}
    registered = await second.expect("registered_auth")
    assert (registered["admin_peer_id"], registered["peer_list"]) == (admin_id, [admin_id])
    assert registered["peer_metadata"][admin_id]["properties"]["gpu_model"] == "A100"
    await admin.expect("peer_joined")

    offer = {"sdp": "v=0 mesh offer", "type": "offer"}
    await second.send({"type": "mesh_connect", "from_peer_id": second_id, "target_peer_id": admin_id, "offer": offer})
    assert await admin.expect("mesh_offer") == {"type": "mesh_offer", "from_peer_id": second_id, "offer": offer}
    answer = {"sdp": "v=0 mesh answer", "type": "answer"}
    await admin.send({"type": "mesh_answer", "from_peer_id": admin_id, "target_peer_id": second_id, "answer": answer})
    assert await second.expect("mesh_answer") == {"type": "mesh_answer", "from_peer_id": admin_id, "answer": answer}
    candidate = {"candidate": "candidate:1 1 UDP 2130706431 127.0.0.1 5000 typ host", "sdpMLineIndex": 0, "sdpMid": "0"}
    await second.send(
        {"type": "ice_candidate", "from_peer_id": second_id, "target_peer_id": admin_id, "candidate": candidate}
    )
    delivered = await admin.expect("ice_candidate")
    assert (delivered["from_peer_id"], delivered["candidate"]) == (second_id, candidate)
    # As the successor does: a candidate for a peer that is gone is dropped without an error
    # (the successor's worker closes itself on any error).
    await second.send({"type": "ice_candidate", "from_peer_id": second_id, "target_peer_id": "Gone", "candidate": {}})
    await second.barrier()
    # The server's rules hold in the successor's shape too: no sending in another's name.
    await second.send({"type": "mesh_connect", "from_peer_id": admin_id, "target_peer_id": admin_id, "offer": offer})
    await second.expect_error("SENDER_MISMATCH")

    await admin.close()
    assert (await second.expect("peer_left"))["peer_id"] == admin_id
    third, after = await connected(relay, worker_register(third_id, room, owner))
    assert after["type"] == "registered_auth"  # no admin_conflict: the role was freed
    assert after["admin_peer_id"] == third_id
    await second.close()
    await third.close()


async def test_a_client_finds_a_worker_by_room_and_a_busy_worker_turns_it_away(api: str, relay: str) -> None:
    """--room-id/--token and --auto-select: the client's discovery (room_id filter, any-of
    tags) finds the available worker; the worker's status update merges (it stays discoverable
    by its tags and GPU memory, and drops out of "available"); a busy worker's worker_busy
    error reaches the client; after the job the worker re-registers on its socket and is
    found again; quit is a clean leave."""
    owner, visitor = await sign_in(api), await sign_in(api)
    room = await create_room(api, owner)
    worker_id, client_id = unique("Worker"), unique("Client")
    worker, _ = await connected(relay, worker_register(worker_id, room, owner))
    client, registered = await connected(relay, client_register(client_id, room, visitor))
    assert registered["type"] == "registered_auth"
    assert isinstance(registered["ice_servers"], list)  # what the client reads from it
    await worker.expect("peer_joined")

    await client.send(discover(client_id, room.room_id, gpu_memory_mb={"$gte": 8192}))
    found = await client.expect("peer_list")
    assert [peer["peer_id"] for peer in found["peers"]] == [worker_id]
    await client.send(discover(client_id, "another-room"))
    assert (await client.expect("peer_list"))["peers"] == []
    await client.send(
        {"type": "discover_peers", "from_peer_id": client_id, "filters": {"tags": ["no-such", "sleap-rtc"]}}
    )
    assert [peer["peer_id"] for peer in (await client.expect("peer_list"))["peers"]] == [worker_id]  # any-of

    # state_manager.update_status("reserved"): a partial update, merged.
    update = {"type": "update_metadata", "peer_id": worker_id, "metadata": {"properties": {"status": "reserved"}}}
    await worker.send(update)
    confirmed = await worker.expect("metadata_updated")
    assert confirmed["metadata"]["tags"] == TAGS
    assert confirmed["metadata"]["properties"]["gpu_memory_mb"] == 24576
    assert confirmed["metadata"]["properties"]["status"] == "reserved"
    assert (await client.expect("metadata_updated"))["metadata"] == confirmed["metadata"]
    await client.send(discover(client_id, room.room_id))
    assert (await client.expect("peer_list"))["peers"] == []
    await client.send({"type": "discover_peers", "from_peer_id": client_id, "filters": {"tags": ["training-worker"]}})
    assert len((await client.expect("peer_list"))["peers"]) == 1

    # The client offers anyway; the busy worker answers with its own error, for the client.
    await client.send({"type": "offer", "sender": client_id, "target": worker_id, "sdp": "v=0"})
    assert (await worker.expect("offer"))["sender"] == client_id
    busy = {
        "type": "error",
        "target": client_id,
        "reason": "worker_busy",
        "message": "Worker is currently reserved. Please use --room-id and --token to discover available workers.",
        "current_status": "reserved",
    }
    await worker.send(busy)
    relayed = await client.expect("error")
    assert relayed == {**busy, "code": "PEER_ERROR", "sender": worker_id}

    await client.send(
        {
            "type": "peer_message",
            "from_peer_id": client_id,
            "to_peer_id": worker_id,
            "payload": {"app_message_type": "job"},
        }
    )
    message = await worker.expect("peer_message")
    assert (message["from_peer_id"], message["payload"]) == (client_id, {"app_message_type": "job"})

    # state_manager.reregister_worker after the job: discoverable again.
    await worker.send(worker_register(worker_id, room, owner))
    assert (await worker.expect("registered_auth"))["admin_peer_id"] == worker_id
    assert (await client.expect("metadata_updated"))["metadata"]["properties"]["status"] == "available"
    await client.send(discover(client_id, room.room_id))
    assert [peer["peer_id"] for peer in (await client.expect("peer_list"))["peers"]] == [worker_id]

    await client.send({"type": "quit"})
    assert (await client.closed())[0] == 4006
    left = await worker.expect("peer_left")
    assert (left["peer_id"], left["reason"]) == (client_id, "quit")
    await worker.close()


async def test_a_second_register_on_a_socket_must_be_the_same_peer(api: str, relay: str) -> None:
    """A successor's second register refreshes its own registration, nothing else: another
    peer id, another room's token or another identity is refused, and the registration stands."""
    owner, stranger = await sign_in(api), await sign_in(api)
    room, elsewhere = await create_room(api, owner), await create_room(api, owner)
    worker_id = unique("Worker")
    worker, _ = await connected(relay, worker_register(worker_id, room, owner))
    await worker.send(worker_register(unique("Worker"), room, owner))
    await worker.expect_error("ALREADY_REGISTERED")
    await worker.send({**worker_register(worker_id, room, owner), "token": elsewhere.token})
    await worker.expect_error("INVALID_ROOM_TOKEN")
    await worker.send(worker_register(worker_id, room, stranger))
    await worker.expect_error("ALREADY_REGISTERED")
    await worker.send({"type": "ping"})
    await worker.expect("pong")
    await worker.close()


async def test_the_successors_own_sign_in_is_refused_with_a_reason(relay: str) -> None:
    """sleap-rtc 0.0.7 registers workers with an slp_ API key and clients with a GitHub JWT:
    refused with UNSUPPORTED_AUTH, whose reason says what this service takes instead."""
    for credentials in ({"api_key": "slp_0123456789"}, {"jwt": "eyJhbGciOi.x.y", "room_id": "room-1"}):
        peer = await Peer.connect(relay)
        await peer.send({"type": "register", "peer_id": "Worker-1", **credentials})
        refused = await peer.expect_error("UNSUPPORTED_AUTH")
        assert "id_token" in refused["reason"]
        await peer.close()


async def test_delete_peer_and_health_answer_as_the_successors_clients_expect(api: str, relay: str) -> None:
    """POST /delete-peer {"peer_id"} removes the peer from its room for the room's creator or
    the peer itself (the relay closes it at its next lease refresh) and, for anyone else,
    changes nothing and names no room; GET /health is /healthz, on the APIs and the relay."""
    owner, worker_user, stranger = await sign_in(api), await sign_in(api), await sign_in(api)
    room = await create_room(api, owner)
    worker_id = unique("Worker")
    worker, _ = await connected(relay, worker_register(worker_id, room, worker_user))
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        refused = await http.post("/delete-peer", json={"peer_id": worker_id}, headers=stranger.bearer)
        assert (refused.status_code, refused.json()["room_ids"]) == (200, [])
        listed = await http.get(f"/rooms/{room.room_id}", headers=owner.bearer)
        assert [peer["peer_id"] for peer in listed.json()["peers"]] == [worker_id]
        removed = await http.post("/delete-peer", json={"peer_id": worker_id}, headers=worker_user.bearer)
        assert (removed.status_code, removed.json()["room_ids"]) == (200, [room.room_id])
        assert (await http.get(f"/rooms/{room.room_id}", headers=owner.bearer)).json()["peers"] == []
        assert (await http.post("/delete-peer", json={"peer_id": worker_id})).status_code == 401
    async with httpx.AsyncClient(base_url=relay.replace("ws://", "http://"), timeout=TIMEOUT) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
    await worker.close()
