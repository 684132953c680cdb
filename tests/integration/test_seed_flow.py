"""The seed's whole flow against the stack: sign in, create a room, register, relay."""

from __future__ import annotations

import pytest

from support import Peer, joined_pair

pytestmark = pytest.mark.integration


async def test_offer_answer_and_candidates_relay_both_ways(api: str, relay: str) -> None:
    """offer, answer and trickled candidates reach the target, sender stamped, fields untouched."""
    _, (worker, _), (client, _) = await joined_pair(api, relay)
    assert client.peer_id
    assert worker.peer_id

    await client.send({"type": "offer", "sender": client.peer_id, "target": worker.peer_id, "sdp": "v=0 offer"})
    offer = await worker.expect("offer")
    assert offer == {"type": "offer", "sender": client.peer_id, "target": worker.peer_id, "sdp": "v=0 offer"}

    await worker.send({"type": "answer", "sender": worker.peer_id, "target": client.peer_id, "sdp": "v=0 answer"})
    assert (await client.expect("answer"))["sdp"] == "v=0 answer"

    candidate = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    await client.send({"type": "candidate", "sender": client.peer_id, "target": worker.peer_id, "candidate": candidate})
    assert (await worker.expect("candidate"))["candidate"] == candidate
    await worker.send({"type": "candidate", "target": client.peer_id, "candidate": candidate, "extra": [1]})
    relayed = await client.expect("candidate")
    assert relayed["sender"] == worker.peer_id
    assert relayed["extra"] == [1]
    await worker.send({"type": "candidate", "target": client.peer_id, "candidate": None})
    assert (await client.expect("candidate"))["candidate"] is None

    await client.close()
    left = await worker.expect("peer_left")
    assert left["peer_id"] == client.peer_id
    await worker.close()
    _ = Peer
