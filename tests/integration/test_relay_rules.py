"""The relay's security rules and typed errors, over real WebSockets on the stack.

Each rule has a test that fails if the rule is removed; each bad input gets its typed
error while the connection, the other peers and the tables stay intact.
"""

from __future__ import annotations

from typing import Any

import pytest

from devstack.stack import StackInfo
from support import Peer, create_room, joined_pair, peer_ids_in_table, repository, sign_in, store_room, unique

pytestmark = pytest.mark.integration


async def test_nothing_is_relayed_before_register(api: str, relay: str) -> None:
    """offer/answer/candidate on an unregistered socket get NOT_REGISTERED."""
    _, (worker, _), (client, _) = await joined_pair(api, relay)
    stranger = await Peer.connect(relay)
    for kind, extra in (("offer", {"sdp": "v=0"}), ("answer", {"sdp": "v=0"}), ("candidate", {"candidate": None})):
        await stranger.send({"type": kind, "sender": worker.peer_id, "target": worker.peer_id, **extra})
        await stranger.expect_error("NOT_REGISTERED")
    await worker.barrier()  # the worker received none of them
    for peer in (stranger, worker, client):
        await peer.close()


async def test_sender_must_be_the_registered_peer(api: str, relay: str) -> None:
    """A forged sender gets SENDER_MISMATCH and reaches no one."""
    _, (worker, _), (client, _) = await joined_pair(api, relay)
    await client.send({"type": "offer", "sender": worker.peer_id, "target": worker.peer_id, "sdp": "v=0"})
    await client.expect_error("SENDER_MISMATCH")
    await worker.barrier()
    await client.close()
    await worker.close()


async def test_messages_never_cross_rooms(api: str, relay: str) -> None:
    """A peer id of another room is not reachable: PEER_NOT_FOUND, and that peer sees nothing."""
    _, (a, _), (b, _) = await joined_pair(api, relay)
    _, (c, _), (d, _) = await joined_pair(api, relay)
    for kind, extra in (("offer", {"sdp": "v=0"}), ("candidate", {"candidate": None})):
        await a.send({"type": kind, "target": c.peer_id, **extra})
        await a.expect_error("PEER_NOT_FOUND")
    await a.barrier()
    await c.barrier()
    for peer in (a, b, c, d):
        await peer.close()


async def test_message_to_absent_peer_is_answered(api: str, relay: str) -> None:
    """No silent drops: a target that is not in the room gives PEER_NOT_FOUND."""
    _, (worker, _), (client, _) = await joined_pair(api, relay)
    await client.send({"type": "offer", "target": "Nobody-1", "sdp": "v=0"})
    error = await client.expect_error("PEER_NOT_FOUND")
    assert "Nobody-1" in error["reason"]
    await client.close()
    await worker.expect("peer_left")
    await worker.send({"type": "answer", "target": client.peer_id, "sdp": "v=0"})
    await worker.expect_error("PEER_NOT_FOUND")
    await worker.close()


async def test_peer_id_of_another_identity_is_refused_and_nobody_is_evicted(
    api: str, relay: str, stack: StackInfo
) -> None:
    """Another identity gets PEER_ID_TAKEN; the holder keeps its place and its routing entry."""
    room, (worker, _), (client, _) = await joined_pair(api, relay)
    assert worker.peer_id
    assert client.peer_id
    intruder_user = await sign_in(api)
    intruder = await Peer.connect(relay)
    await intruder.send(
        {
            "type": "register",
            "protocol": 2,
            "peer_id": worker.peer_id,
            "room_id": room.room_id,
            "token": room.token,
            "id_token": intruder_user.id_token,
        }
    )
    await intruder.expect_error("PEER_ID_TAKEN")
    await client.send({"type": "offer", "target": worker.peer_id, "sdp": "still you"})
    assert (await worker.expect("offer"))["sdp"] == "still you"
    assert await peer_ids_in_table(stack, room.room_id) == {worker.peer_id, client.peer_id}
    for peer in (intruder, worker, client):
        await peer.close()


async def test_same_identity_takes_over_its_peer_id(api: str, relay: str, stack: StackInfo) -> None:
    """A second socket of the same identity takes the peer id; the old one is closed with 4002."""
    room, (worker, worker_user), (client, _) = await joined_pair(api, relay)
    assert worker.peer_id
    successor = await Peer.connect(relay)
    await successor.register(worker.peer_id, room, worker_user)
    code, reason = await worker.closed()
    assert code == 4002
    assert reason
    assert "taken over" in reason
    assert (await client.expect("peer_joined"))["peer_id"] == worker.peer_id
    await client.send({"type": "offer", "target": worker.peer_id, "sdp": "to the successor"})
    assert (await successor.expect("offer"))["sdp"] == "to the successor"
    await client.barrier()  # the old socket's departure announced no peer_left
    assert worker.peer_id in await peer_ids_in_table(stack, room.room_id)
    await successor.close()
    await client.close()


async def test_failed_register_changes_nothing(api: str, relay: str, stack: StackInfo) -> None:
    """Wrong token, bad ID token or unknown room: the holder of the id stays, the socket can retry."""
    room, (worker, worker_user), (client, _) = await joined_pair(api, relay)
    assert worker.peer_id
    retry = await Peer.connect(relay)
    base = {
        "type": "register",
        "protocol": 2,
        "peer_id": worker.peer_id,
        "room_id": room.room_id,
        "token": room.token,
        "id_token": worker_user.id_token,
    }
    for change, code in (
        ({"token": "wrong"}, "INVALID_ROOM_TOKEN"),
        ({"id_token": "not.a.jwt"}, "INVALID_ID_TOKEN"),
        ({"room_id": "0000000000000000"}, "ROOM_NOT_FOUND"),
    ):
        await retry.send({**base, **change})
        await retry.expect_error(code)
    await worker.barrier()  # still registered, still open
    await client.barrier()  # no join/leave was announced
    assert await peer_ids_in_table(stack, room.room_id) == {worker.peer_id, client.peer_id}
    await retry.close()
    await worker.close()
    await client.close()


async def test_register_errors(api: str, relay: str, stack: StackInfo) -> None:
    """Each registration failure has its code; after all of them the same socket registers."""
    user = await sign_in(api)
    room = await create_room(api, user)
    expired = await store_room(stack, "someone", expires_in=-5)
    peer = await Peer.connect(relay)
    base = {
        "type": "register",
        "protocol": 2,
        "peer_id": unique("P"),
        "room_id": room.room_id,
        "token": room.token,
        "id_token": user.id_token,
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"id_token": "garbage"}, "INVALID_ID_TOKEN"),
        ({"id_token": user.id_token[:-4] + "AAAA"}, "INVALID_ID_TOKEN"),
        ({"room_id": "ffffffffffffffff"}, "ROOM_NOT_FOUND"),
        ({"token": room.token[:-1]}, "INVALID_ROOM_TOKEN"),
        ({"room_id": expired.room_id, "token": expired.token}, "ROOM_EXPIRED"),
        ({"room_id": expired.room_id, "token": "wrong"}, "INVALID_ROOM_TOKEN"),
        ({"peer_id": "bad id!"}, "INVALID_MESSAGE"),
        ({"token": None}, "INVALID_MESSAGE"),
    ]
    for change, code in cases:
        await peer.send({**base, **change})
        await peer.expect_error(code)
    await peer.register(str(base["peer_id"]), room, user)
    await peer.send(base)
    await peer.expect_error("ALREADY_REGISTERED")
    await peer.close()


async def test_malformed_frames_get_typed_errors_and_others_keep_going(api: str, relay: str) -> None:
    """Bad frames are answered one by one; the sender stays connected and its room keeps working."""
    _, (worker, _), (client, _) = await joined_pair(api, relay)
    frames: list[tuple[str | bytes, str]] = [
        ("{not json", "INVALID_JSON"),
        ("[]", "INVALID_MESSAGE"),
        ('{"type": "subscribe"}', "UNKNOWN_MESSAGE_TYPE"),
        ('{"type": "offer", "target": "x"}', "INVALID_MESSAGE"),
        ('{"type": "offer", "target": "x", "sdp": NaN}', "INVALID_JSON"),
        ("[" * 50_000, "INVALID_JSON"),
        (b"\x00\x01binary", "INVALID_MESSAGE"),
        ("\u2603", "INVALID_JSON"),
    ]
    for frame, code in frames:
        await client.send_raw(frame)
        await client.expect_error(code)
    await client.send({"type": "offer", "target": worker.peer_id, "sdp": "after the noise"})
    assert (await worker.expect("offer"))["sdp"] == "after the noise"
    await worker.close()
    await client.close()


async def test_disconnect_announces_leave_and_cleans_the_routing_table(api: str, relay: str, stack: StackInfo) -> None:
    """peer_joined on register, peer_left on disconnect; the routing entry goes, the room stays."""
    room, (worker, _), (client, _) = await joined_pair(api, relay)
    third_user = await sign_in(api)
    third = await Peer.connect(relay)
    await third.register(unique("Third"), room, third_user)
    assert (await worker.expect("peer_joined"))["peer_id"] == third.peer_id
    assert (await client.expect("peer_joined"))["peer_id"] == third.peer_id
    await client.close()
    for peer in (worker, third):
        left = await peer.expect("peer_left")
        assert left["peer_id"] == client.peer_id
    assert await peer_ids_in_table(stack, room.room_id) == {worker.peer_id, third.peer_id}
    await repository(stack).get_room(room.room_id)  # the room itself is untouched
    await worker.close()
    await third.close()
