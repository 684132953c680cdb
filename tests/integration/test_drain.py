"""A relay process stopped with SIGTERM drains, and its peers resume on the next process:
the room sees no leave or join, and nothing sent to them is lost, acks included."""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.stack import StackInfo
from support import (
    Peer,
    RoomGrant,
    ServiceProcess,
    User,
    create_room,
    drop,
    peer_ids_in_table,
    relay_process,
    resume,
    resume_message,
    scaled,
    scaled_whole,
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
    drain, jitter_ms = scaled(0.5), round(scaled(100))
    async with relay_process(stack, drain_seconds=drain, drain_jitter_ms=jitter_ms) as first:
        a, b = await Peer.connect(first.url), await Peer.connect(first.url)
        await a.register("A", room, a_user)
        await b.register("B", room, b_user)
        await a.expect("peer_joined")
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": "before"})
        assert (await b.expect("peer_message"))["payload"] == "before"
        await drop(b)
        await first.logged("peer_detached")  # the relay has seen B go
        for i in range(3):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": i, "id": f"m{i}"})
        await a.barrier()  # taken in, not acked
        first.process.send_signal(signal.SIGTERM)
        go_away = await a.expect("go_away")
        assert int(drain * 1000) <= go_away["reconnect_after_ms"] <= int(drain * 1000) + jitter_ms
        code, _ = await a.closed()
        assert code == 4500
        assert await first.wait() == 0
    assert await peer_ids_in_table(stack, room.room_id) == {"A", "B"}  # kept for the resume window

    async with relay_process(stack) as second:
        a2, registered = await resume(a, second.url, room, a_user)
        assert registered["resumed"] is True
        assert registered["peers"] == []  # B has not resumed here yet
        for i in range(3):  # as a client does: send again what has no outcome yet, same ids
            await a2.send({"type": "peer_message", "to_peer_id": "B", "payload": i, "id": f"m{i}"})
        await a2.barrier()  # nothing: they are on their way already
        b2, registered = await resume(b, second.url, room, b_user)
        assert registered["resumed"] is True
        assert [p["peer_id"] for p in registered["peers"]] == ["A"]
        assert [(await b2.expect("peer_message"))["payload"] for _ in range(3)] == [0, 1, 2]  # seqs checked
        acks = [await a2.expect("ack") for _ in range(3)]  # once each
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


async def test_a_message_that_expires_while_its_sender_moves_is_reported_after_its_resume(
    api: str, stack: StackInfo
) -> None:
    """A holds an offer for a worker that never comes (1 s) and the relay restarts: the offer
    expires on the new process before A is back; A hears `expired` when it resumes."""
    a_user, b_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, a_user)
    async with relay_process(stack, drain_seconds=scaled(0.2), drain_jitter_ms=0) as first:
        a, b = await Peer.connect(first.url), await Peer.connect(first.url)
        await a.register("A", room, a_user)
        await b.register("B", room, b_user)
        await a.expect("peer_joined")
        await a.send({"type": "offer", "target": "Ghost", "sdp": "v=0", "id": "g", "ttl_seconds": scaled_whole(1)})
        assert await a.expect("ack") == {"type": "ack", "id": "g", "queued": True}
        first.process.send_signal(signal.SIGTERM)
        for peer in (a, b):
            await peer.closed()
        assert await first.wait() == 0
    async with relay_process(stack) as second:
        b2, _ = await resume(b, second.url, room, b_user)  # loads the room's held messages here
        await second.logged("expired_sender_absent")
        a2, _ = await resume(a, second.url, room, a_user)
        assert await a2.expect("expired") == {"type": "expired", "id": "g", "to_peer_id": "Ghost"}
        await a2.barrier()
        for peer in (a2, b2):
            await peer.close()


async def test_a_killed_relay_saved_nothing_yet_the_next_process_recovers_its_sessions(
    api: str, stack: StackInfo
) -> None:
    """After SIGKILL nothing was saved, but the routing entries remain: a resume on the next
    process recovers the session (resumed, recovered, numbering on after the client's
    last_seq, nothing replayed), announces it to the peers already back, and what was held
    for it is delivered. Another identity cannot recover it; a peer that left cannot."""
    a_user, b_user, thief = await sign_in(api), await sign_in(api), await sign_in(api)
    room = await create_room(api, a_user)
    async with relay_process(stack) as first:
        a, b = await Peer.connect(first.url), await Peer.connect(first.url)
        await a.register("A", room, a_user)
        await b.register("B", room, b_user)
        await a.expect("peer_joined")
        first.process.kill()
        await first.wait()
        await a.closed()
        await b.closed()
    async with relay_process(stack) as second:
        stolen = await Peer.connect(second.url)
        await stolen.send(resume_message(a, room, thief))
        await stolen.expect_error("RESUME_FAILED")

        b2, registered = await resume(b, second.url, room, b_user)
        assert (registered["resumed"], registered.get("recovered"), registered["peers"]) == (True, True, [])
        assert registered["last_seq"] == b.last_seq == 0
        await b2.send({"type": "peer_message", "to_peer_id": "A", "payload": "while away", "id": "w"})
        assert await b2.expect("ack") == {"type": "ack", "id": "w", "queued": True}  # A is not back yet

        a2, registered = await resume(a, second.url, room, a_user)
        assert (registered["resumed"], registered.get("recovered")) == (True, True)
        assert registered["last_seq"] == a.last_seq == 1  # its peer_joined: numbering goes on from there
        assert [p["peer_id"] for p in registered["peers"]] == ["B"]
        held = await a2.expect("peer_message")
        assert (held["payload"], held["message_id"], a2.last_seq) == ("while away", "w", 2)
        assert (await b2.expect("peer_joined"))["peer_id"] == "A"

        await b2.close()  # a clean close: B leaves the room
        assert (await a2.expect("peer_left"))["peer_id"] == "B"
        again = await Peer.connect(second.url)
        await again.send(resume_message(b, room, b_user))
        await again.expect_error("RESUME_FAILED")
        for peer in (a2, stolen, again):
            await peer.close()


async def _drained_with_three_owed_to_b(api: str, stack: StackInfo, **overrides: Any) -> DrainedRoom:
    """A and B in a room on a relay; B's network fails; A sends B three messages (ids m0..m2);
    a second relay is started and the first one is stopped with SIGTERM."""
    a_user, b_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, a_user)
    stack_exit = contextlib.AsyncExitStack()
    second = await stack_exit.enter_async_context(relay_process(stack))
    async with relay_process(stack, drain_seconds=scaled(0.2), drain_jitter_ms=0, **overrides) as first:
        a, b = await Peer.connect(first.url), await Peer.connect(first.url)
        await a.register("A", room, a_user)
        await b.register("B", room, b_user)
        await a.expect("peer_joined")
        await drop(b)
        await first.logged("peer_detached")  # the relay has seen B go
        for i in range(3):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": i, "id": f"m{i}"})
        await a.barrier()
        first.process.send_signal(signal.SIGTERM)
        await a.closed()
        assert await first.wait() == 0
    return DrainedRoom(room, a, a_user, b, b_user, second, stack_exit)


@dataclass
class DrainedRoom:
    room: RoomGrant
    a: Peer
    a_user: User
    b: Peer
    b_user: User
    second: ServiceProcess
    stack_exit: contextlib.AsyncExitStack


async def test_acks_due_to_a_sender_not_back_yet_wait_for_its_resume(api: str, stack: StackInfo) -> None:
    """B resumes on the new process before A: B's receipts are acked to A when A resumes."""
    drained = await _drained_with_three_owed_to_b(api, stack)
    async with drained.stack_exit:
        url = drained.second.url
        b2, _ = await resume(drained.b, url, drained.room, drained.b_user)
        assert [(await b2.expect("peer_message"))["payload"] for _ in range(3)] == [0, 1, 2]
        await b2.barrier()  # B has confirmed them; A is not here yet
        a2, _ = await resume(drained.a, url, drained.room, drained.a_user)
        assert [(await a2.expect("ack"))["id"] for _ in range(3)] == ["m0", "m1", "m2"]
        await a2.barrier()
        for peer in (a2, b2):
            await peer.close()


async def test_a_saved_session_nobody_resumes_ends_with_peer_left_and_its_senders_told(
    api: str, stack: StackInfo
) -> None:
    """B never comes back: when its saved session's window ends, the new process announces
    peer_left 'timeout' and fails the three messages B never received."""
    drained = await _drained_with_three_owed_to_b(api, stack, resume_window_seconds=scaled(3))
    async with drained.stack_exit:
        a2, _ = await resume(drained.a, drained.second.url, drained.room, drained.a_user)
        for i in range(3):
            await a2.expect_error_with_id("DELIVERY_FAILED", f"m{i}")
        assert await a2.expect("peer_left") == {"type": "peer_left", "peer_id": "B", "reason": "timeout"}
        await a2.barrier()
        assert await peer_ids_in_table(stack, drained.room.room_id) == {"A"}
        await a2.close()


async def test_registering_afresh_ends_the_saved_session_and_tells_its_senders(api: str, stack: StackInfo) -> None:
    """B registers without resuming: the messages its saved session held never reach it, and
    A is told so; B joins as new."""
    drained = await _drained_with_three_owed_to_b(api, stack)
    async with drained.stack_exit:
        a2, _ = await resume(drained.a, drained.second.url, drained.room, drained.a_user)
        b2 = await Peer.connect(drained.second.url)
        await b2.register("B", drained.room, drained.b_user)
        got = [await a2.recv() for _ in range(4)]
        joined = [m for m in got if m["type"] == "peer_joined"]
        failed = [m for m in got if m["type"] == "error"]
        assert [m["peer_id"] for m in joined] == ["B"]
        assert [(m["code"], m["id"]) for m in failed] == [("DELIVERY_FAILED", f"m{i}") for i in range(3)]
        await b2.barrier()  # B gets none of them
        for peer in (a2, b2):
            await peer.close()
