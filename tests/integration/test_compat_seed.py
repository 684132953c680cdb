"""The seed's clients, replayed frame by frame over real WebSockets: what they send is taken
from their code (talmolab/sleap-RTC at 6559585: ``worker/worker_class.py``,
``client/client_class.py``; webRTC-connect at 3f83ff2), and what they may receive is what
the seed sent. Their message loops raise on any other type, so a v1 peer must see nothing
else: no ``peer_joined``, ``peer_left``, ``metadata_updated``, ``broadcast``, ``ack``..."""

from __future__ import annotations

from typing import Any

import pytest

from support import Peer, RoomGrant, User, create_room, sign_in, unique

pytestmark = pytest.mark.integration


def seed_register(peer_id: str, room: RoomGrant, user: User) -> dict[str, Any]:
    """Exactly the seed worker's (and client's) register: four fields and the type."""
    return {
        "type": "register",
        "peer_id": peer_id,
        "room_id": room.room_id,
        "token": room.token,
        "id_token": user.id_token,
    }


async def seed_peer(relay: str, peer_id: str, room: RoomGrant, user: User) -> Peer:
    peer = await Peer.connect(relay, seed=True)
    await peer.send(seed_register(peer_id, room, user))
    reply = await peer.expect("registered_auth")
    assert (reply["room_id"], reply["token"], reply["peer_id"]) == (room.room_id, room.token, peer_id)
    peer.peer_id = peer_id
    return peer


async def test_the_seed_worker_and_client_see_only_the_seeds_frames(api: str, relay: str) -> None:
    """The seed flow: the worker registers, the client registers and offers, the worker
    answers, candidates trickle both ways; neither hears of the other's arrival or departure,
    and nothing but the relayed frames reaches them (the barrier's error comes next)."""
    worker_user, client_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, worker_user)
    worker_id, client_id = unique("Worker"), unique("Client")
    worker = await seed_peer(relay, worker_id, room, worker_user)
    client = await seed_peer(relay, client_id, room, client_user)

    await client.send({"type": "offer", "sender": client_id, "target": worker_id, "sdp": "v=0 offer"})
    offer = await worker.expect("offer")  # first: no peer_joined before it
    assert offer == {"type": "offer", "sender": client_id, "target": worker_id, "sdp": "v=0 offer"}
    await worker.send({"type": "answer", "sender": worker_id, "target": client_id, "sdp": "v=0 answer"})
    assert (await client.expect("answer"))["sdp"] == "v=0 answer"
    candidate = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    await worker.send({"type": "candidate", "sender": worker_id, "target": client_id, "candidate": candidate})
    assert (await client.expect("candidate"))["candidate"] == candidate

    await client.close()
    await worker.barrier()  # no peer_left: the seed never sent one
    await worker.close()


async def test_a_v2_peer_in_a_seed_room_cannot_send_the_seed_peers_what_they_do_not_know(api: str, relay: str) -> None:
    """A v2 peer joins, updates its metadata, broadcasts and leaves: the seed worker hears none
    of it. A peer_message for it is refused (UNSUPPORTED_BY_PEER) rather than sent to a client
    that would crash on it; offers still pass both ways."""
    worker_user, modern_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, worker_user)
    worker_id, modern_id = unique("Worker"), unique("Modern")
    worker = await seed_peer(relay, worker_id, room, worker_user)
    modern = await Peer.connect(relay)
    registered = await modern.register(modern_id, room, modern_user)
    assert [peer["peer_id"] for peer in registered["peers"]] == [worker_id]

    await modern.send({"type": "update_metadata", "metadata": {"tags": ["gpu"]}, "id": "u"})
    await modern.expect("ack")
    await modern.send({"type": "broadcast", "payload": "hello", "id": "b"})
    await modern.expect("ack")
    await modern.send({"type": "peer_message", "to_peer_id": worker_id, "payload": {"job": 1}, "id": "m"})
    refused = await modern.expect_error_with_id("UNSUPPORTED_BY_PEER", "m")
    assert worker_id in refused["reason"]
    # Nor a peer's own error: the seed's worker would take it for the relay's, and exit.
    await modern.send({"type": "error", "target": worker_id, "reason": "worker_busy", "id": "e"})
    await modern.expect_error_with_id("UNSUPPORTED_BY_PEER", "e")

    await modern.send({"type": "offer", "target": worker_id, "sdp": "v=0 modern", "id": "o"})
    offer = await worker.expect("offer")
    assert (offer["sender"], offer["sdp"]) == (modern_id, "v=0 modern")
    await modern.expect("ack")
    await worker.send({"type": "answer", "sender": worker_id, "target": modern_id, "sdp": "v=0 seed"})
    assert (await modern.expect("answer"))["sender"] == worker_id

    await modern.close()
    await worker.barrier()
    await worker.close()


async def test_a_seed_peer_gets_errors_in_the_seeds_shape(api: str, relay: str) -> None:
    """What the seed did answer, errors, still reaches a v1 peer in its {type, code, reason}
    shape: an offer to a peer not in the room, a spoofed sender."""
    user = await sign_in(api)
    room = await create_room(api, user)
    worker = await seed_peer(relay, unique("Worker"), room, user)
    await worker.send({"type": "offer", "sender": worker.peer_id, "target": "Nobody", "sdp": "v=0"})
    await worker.expect_error("PEER_NOT_FOUND")
    await worker.send({"type": "offer", "sender": "Someone-else", "target": "Nobody", "sdp": "v=0"})
    await worker.expect_error("SENDER_MISMATCH")
    await worker.close()
