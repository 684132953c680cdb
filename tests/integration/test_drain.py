"""A relay process stopped with SIGTERM drains, and its peers resume on the next process:
the room sees no leave or join, and nothing sent to them is lost, acks included."""

from __future__ import annotations

import signal

import pytest

from devstack.stack import StackInfo
from support import (
    Peer,
    create_room,
    drop,
    peer_ids_in_table,
    relay_process,
    resume,
    resume_message,
    sign_in,
)

pytestmark = pytest.mark.integration


async def test_peers_resume_on_the_next_process_after_a_sigterm_losing_nothing(api: str, stack: StackInfo) -> None:
    """B's network fails and A sends it three messages (not acked: B has not got them). The relay
    is stopped (SIGTERM): A gets go_away, then 4500; the process exits 0. On a new process A
    and B resume with their tokens: B gets the three messages in order with contiguous seqs,
    A then gets their acks, and the two go on talking."""
    a_user, b_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, a_user)
    async with relay_process(stack, drain_seconds=0.5, drain_jitter_ms=100) as first:
        a, b = await Peer.connect(first.url), await Peer.connect(first.url)
        await a.register("A", room, a_user)
        await b.register("B", room, b_user)
        await a.expect("peer_joined")
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": "before"})
        assert (await b.expect("peer_message"))["payload"] == "before"
        await drop(b)
        for i in range(3):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": i, "id": f"m{i}"})
        await a.barrier()  # taken in, not acked
        first.process.send_signal(signal.SIGTERM)
        go_away = await a.expect("go_away")
        assert 500 <= go_away["reconnect_after_ms"] <= 600
        code, _ = await a.closed()
        assert code == 4500
        assert await first.wait() == 0
    assert await peer_ids_in_table(stack, room.room_id) == {"A", "B"}  # kept for the resume window

    async with relay_process(stack) as second:
        a2, registered = await resume(a, second.url, room, a_user)
        assert registered["resumed"] is True
        assert registered["peers"] == []  # B has not resumed here yet
        b2, registered = await resume(b, second.url, room, b_user)
        assert registered["resumed"] is True
        assert [p["peer_id"] for p in registered["peers"]] == ["A"]
        assert [(await b2.expect("peer_message"))["payload"] for _ in range(3)] == [0, 1, 2]  # seqs checked
        acks = [await a2.expect("ack") for _ in range(3)]
        assert [m["id"] for m in acks] == ["m0", "m1", "m2"]
        await a2.send({"type": "peer_message", "to_peer_id": "B", "payload": "after", "id": "after"})
        assert (await b2.expect("peer_message"))["payload"] == "after"
        assert (await a2.expect("ack"))["id"] == "after"
        await a2.barrier()  # no peer_left, no peer_joined
        await b2.barrier()

        # A session is resumed once: the spent token fails (and changes nothing).
        again = await Peer.connect(second.url)
        await again.send(resume_message(b, room, b_user))
        await again.expect_error("RESUME_FAILED")
        for peer in (a2, b2, again):
            await peer.close()


async def test_a_killed_relay_saves_nothing_so_resume_fails_and_registering_again_works(
    api: str, stack: StackInfo
) -> None:
    """After SIGKILL there is no saved session: a resume is refused with RESUME_FAILED (the
    client then registers again, as the same identity, and gets its place back)."""
    user = await sign_in(api)
    room = await create_room(api, user)
    async with relay_process(stack) as first:
        peer = await Peer.connect(first.url)
        await peer.register("A", room, user)
        first.process.kill()
        await first.wait()
        await peer.closed()
    async with relay_process(stack) as second:
        retry = await Peer.connect(second.url)
        await retry.send(resume_message(peer, room, user))
        await retry.expect_error("RESUME_FAILED")
        await retry.register("A", room, user)
        await retry.close()
