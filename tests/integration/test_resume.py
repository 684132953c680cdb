"""Lossless resume within the resume window, on one relay process.

A socket that drops without a close frame (its TCP connection aborted) leaves its peer
detached: the room sees nothing, messages to it are kept, numbered, and replayed in
order when it registers again with its resume token and the last seq it saw.
"""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import ANY

import pytest

from conftest import RelayFactory
from devstack.stack import StackInfo
from signaling_shared.errors import Unavailable
from support import (
    TIMEOUT,
    Peer,
    RoomGrant,
    User,
    create_room,
    drop,
    gated_relay,
    peer_ids_in_table,
    resume,
    resume_message,
    scaled,
    sign_in,
)
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration


def url(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def room_of_two(api: str, address: str) -> tuple[RoomGrant, Peer, User, Peer, User]:
    a_user, b_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, a_user)
    a, b = await Peer.connect(address), await Peer.connect(address)
    await a.register("A", room, a_user)
    await b.register("B", room, b_user)
    await a.expect("peer_joined")
    return room, a, a_user, b, b_user


async def test_resume_after_a_dropped_socket_replays_everything_in_order(
    api: str, relay_with: RelayFactory, stack: StackInfo
) -> None:
    """Messages sent while B was away are replayed to B in order with contiguous seqs, and
    acked to A only once B has them."""
    async with relay_with() as server:
        room, a, _, b, b_user = await room_of_two(api, url(server))
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": 0})
        assert (await b.expect("peer_message"))["payload"] == 0
        await drop(b)

        sent = []
        for i in range(1, 6):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": i, "id": f"m{i}"})
            sent.append(i)
        await a.send({"type": "offer", "target": "B", "sdp": "v=0 while away", "id": "o"})
        await a.send({"type": "broadcast", "payload": "all", "id": "b"})
        assert await a.expect("ack") == {"type": "ack", "id": "b", "queued": False}  # broadcasts: when sent
        await a.barrier()  # no ack for B's messages yet (not received), and no peer_left
        assert await peer_ids_in_table(stack, room.room_id) == {"A", "B"}

        b2, registered = await resume(b, url(server), room, b_user)
        assert registered["resumed"] is True
        assert registered["last_seq"] == b.last_seq + 7
        assert [p["peer_id"] for p in registered["peers"]] == ["A"]
        replayed = [await b2.expect("peer_message") for _ in sent]  # recv() checks seqs: no gap, no duplicate
        assert [m["payload"] for m in replayed] == sent
        assert (await b2.expect("offer"))["sdp"] == "v=0 while away"
        assert (await b2.expect("broadcast"))["payload"] == "all"
        acks = [await a.expect("ack") for _ in range(6)]  # B confirmed receipt: now A hears
        assert [m["id"] for m in acks] == [f"m{i}" for i in sent] + ["o"]
        assert not any(m["queued"] for m in acks)

        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": "after"})
        assert (await b2.expect("peer_message"))["payload"] == "after"  # numbering goes on
        await a.barrier()
        for peer in (a, b2):
            await peer.close()


async def test_a_resume_needs_the_token_and_the_identity(api: str, relay_with: RelayFactory) -> None:
    """A wrong token or another identity gets RESUME_FAILED and changes nothing; the right one resumes."""
    async with relay_with() as server:
        room, a, _, b, b_user = await room_of_two(api, url(server))
        await drop(b)
        stranger = await sign_in(api)
        for changes, user in (({"resume_token": "forged"}, b_user), ({}, stranger)):
            attempt = await Peer.connect(url(server))
            await attempt.send(resume_message(b, room, user, **changes))
            await attempt.expect_error("RESUME_FAILED")
            await attempt.close()
        await a.barrier()  # the room saw nothing
        b2, registered = await resume(b, url(server), room, b_user)
        assert registered["resumed"] is True
        for peer in (a, b2):
            await peer.close()


async def test_a_peer_that_does_not_come_back_leaves_after_the_window(
    api: str, relay_with: RelayFactory, stack: StackInfo
) -> None:
    """Past the resume window the room gets peer_left 'timeout', the entry goes, a resume fails."""
    async with relay_with(resume_window_seconds=scaled(0.5)) as server:
        room, a, _, b, b_user = await room_of_two(api, url(server))
        await drop(b)
        left = await a.expect("peer_left")
        assert left == {"type": "peer_left", "peer_id": "B", "reason": "timeout"}
        assert await peer_ids_in_table(stack, room.room_id) == {"A"}
        late = await Peer.connect(url(server))
        await late.send(resume_message(b, room, b_user))
        await late.expect_error("RESUME_FAILED")
        await late.close()
        await a.close()


async def test_a_clean_close_leaves_at_once(api: str, relay_with: RelayFactory) -> None:
    """A client that closes its socket properly leaves now: peer_left 'closed'."""
    async with relay_with() as server:
        _, a, _, b, _ = await room_of_two(api, url(server))
        await b.close()
        assert await a.expect("peer_left") == {"type": "peer_left", "peer_id": "B", "reason": "closed"}
        await a.close()


async def test_messages_a_departed_peer_never_received_are_reported_to_their_senders(
    api: str, relay_with: RelayFactory
) -> None:
    """B drops and never resumes: each message kept for it fails with DELIVERY_FAILED (and its
    id if it had one), none is acked, and the room then hears peer_left 'timeout'."""
    async with relay_with(resume_window_seconds=scaled(0.5)) as server:
        _, a, _, b, _ = await room_of_two(api, url(server))
        await drop(b)
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": 1, "id": "m1"})
        await a.send({"type": "offer", "target": "B", "sdp": "v=0", "id": "o1"})
        await a.send({"type": "candidate", "target": "B", "candidate": None})  # no id (v1)
        await a.expect_error_with_id("DELIVERY_FAILED", "m1")
        await a.expect_error_with_id("DELIVERY_FAILED", "o1")
        await a.expect_error("DELIVERY_FAILED")  # told too, in the v1 shape
        assert await a.expect("peer_left") == {"type": "peer_left", "peer_id": "B", "reason": "timeout"}
        await a.barrier()
        await a.close()


async def test_a_detached_peer_that_would_overflow_is_dropped(api: str, relay_with: RelayFactory) -> None:
    """Past resume_buffer_messages the sender gets DELIVERY_FAILED and the room peer_left 'overflow'."""
    async with relay_with(resume_buffer_messages=3) as server:
        _, a, _, b, _ = await room_of_two(api, url(server))
        await drop(b)
        for i in range(3):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": i})
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": 3, "id": 3})
        await a.expect_error_with_id("DELIVERY_FAILED", 3)
        for _ in range(3):  # the three kept for B never reached it either (v1: no id)
            await a.expect_error("DELIVERY_FAILED")
        assert await a.expect("peer_left") == {"type": "peer_left", "peer_id": "B", "reason": "overflow"}
        await a.close()


async def test_resume_from_a_new_socket_while_the_old_one_still_looks_open(api: str, relay_with: RelayFactory) -> None:
    """A half-open old socket is closed with 4002 when its peer resumes elsewhere; the room sees nothing."""
    async with relay_with() as server:
        room, a, _, b, b_user = await room_of_two(api, url(server))
        b2, registered = await resume(b, url(server), room, b_user)
        assert registered["resumed"] is True
        code, _ = await b.closed()
        assert code == 4002
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": "here"})
        assert (await b2.expect("peer_message"))["payload"] == "here"
        await a.barrier()
        for peer in (a, b2):
            await peer.close()


async def test_seq_cannot_be_forged_by_a_sender(api: str, relay_with: RelayFactory) -> None:
    """A relayed message carrying its own 'seq' or 'sender' reaches the target with the server's."""
    async with relay_with() as server:
        _, a, _, b, _ = await room_of_two(api, url(server))
        await a.send({"type": "offer", "target": "B", "sdp": "v=0", "seq": 999, "sender": "A"})
        offer = await b.expect("offer")  # recv() asserts the seq is B's next one, not 999
        assert offer == {"type": "offer", "target": "B", "sdp": "v=0", "sender": "A"}
        for peer in (a, b):
            await peer.close()


async def test_frames_sent_during_a_resume_follow_the_replay(api: str, stack: StackInfo) -> None:
    """While the resume's write is under way, new frames are kept and come after the replay, in order."""
    async with gated_relay(stack, "claim_peer") as (server, gated):
        room, a, _, b, b_user = await room_of_two(api, url(server))
        await drop(b)
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": "before"})
        b2 = await Peer.connect(url(server))
        b2.peer_id = b.peer_id
        gated.arm()
        await b2.send(resume_message(b, room, b_user))
        await asyncio.wait_for(gated.reached.wait(), TIMEOUT)
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": "during", "id": "d"})
        await a.barrier()  # taken in: not acked, since B has not received it yet
        gated.gate.set()
        registered = await b2.expect("registered_auth")
        assert registered["resumed"] is True
        b2.last_seq = b.last_seq
        assert [(await b2.expect("peer_message"))["payload"] for _ in range(2)] == ["before", "during"]
        assert await a.expect("ack") == {"type": "ack", "id": "d", "queued": False}
        await a.barrier()
        for peer in (a, b2):
            await peer.close()


async def test_a_failed_resume_write_changes_nothing(api: str, stack: StackInfo) -> None:
    """A storage failure during a resume is STORAGE_UNAVAILABLE; the peer stays detached and can retry."""
    async with gated_relay(stack, "claim_peer") as (server, gated):
        room, a, _, b, b_user = await room_of_two(api, url(server))
        await drop(b)
        gated.fail_with = Unavailable("injected", operation="claim_peer")
        gated.arm()
        gated.gate.set()
        failed = await Peer.connect(url(server))
        await failed.send(resume_message(b, room, b_user))
        await failed.expect_error("STORAGE_UNAVAILABLE")
        await failed.close()
        await a.barrier()  # still no peer_left
        b2, registered = await resume(b, url(server), room, b_user)
        assert registered["resumed"] is True
        for peer in (a, b2):
            await peer.close()


async def test_a_lease_refresh_during_a_resume_does_not_end_it(api: str, stack: StackInfo) -> None:
    """The lease refresh skips a member being resumed instead of taking the new entry for a takeover."""
    async with gated_relay(stack, "claim_peer") as (server, gated):
        room, a, _, b, b_user = await room_of_two(api, url(server))
        await drop(b)
        b2 = await Peer.connect(url(server))
        b2.peer_id = b.peer_id
        gated.arm()
        await b2.send(resume_message(b, room, b_user))
        await asyncio.wait_for(gated.reached.wait(), TIMEOUT)
        await server.relay.refresh_leases()
        gated.gate.set()
        assert (await b2.expect("registered_auth"))["resumed"] is True
        await server.relay.refresh_leases()
        b2.last_seq = b.last_seq
        await b2.barrier()  # still open
        await a.barrier()  # no peer_left
        for peer in (a, b2):
            await peer.close()


async def test_a_replay_larger_than_the_outbox_arrives_whole(api: str, relay_with: RelayFactory) -> None:
    """Frames owed to a resuming peer are replayed even past the outbox limit (they are owed already)."""
    async with relay_with(outbox_max_messages=4) as server:
        room, a, _, b, b_user = await room_of_two(api, url(server))
        await drop(b)
        for i in range(20):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": i, "id": i})
        await a.barrier()
        b2, _ = await resume(b, url(server), room, b_user)
        assert [(await b2.expect("peer_message"))["payload"] for _ in range(20)] == list(range(20))
        # B's one confirmation acks all 20 at once: answers pass A's outbox limit too.
        assert [(await a.expect("ack"))["id"] for _ in range(20)] == list(range(20))
        for peer in (a, b2):
            await peer.close()


async def test_confirmed_frames_are_forgotten(api: str, relay_with: RelayFactory) -> None:
    """A peer that reads keeps confirming: the frames kept for it stay few however many it gets."""
    async with relay_with(messages_per_second=10_000, message_burst=10_000) as server:
        _, a, _, b, _ = await room_of_two(api, url(server))
        for i in range(300):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": i})
            assert (await b.expect("peer_message"))["payload"] == i
        member = server.relay.hub.get(
            *next((m.room_id, m.peer_id) for m in server.relay.hub.members() if m.peer_id == "B")
        )
        assert member is not None
        assert len(member.unconfirmed) < 50  # without confirmation all 300 would still be kept
        for peer in (a, b):
            await peer.close()


async def test_a_connected_peer_that_stops_confirming_is_refused_messages_not_dropped(
    api: str, relay_with: RelayFactory
) -> None:
    """A connected peer with three quarters of its resume buffer unconfirmed takes no more
    messages: each sent to it is acked (it confirmed receipt) or refused with PEER_BUSY,
    exactly once, and the peer stays in the room. Once it reads again, messages pass again."""
    # Frames go out as fast as the relay answers: no per-connection rate limit here.
    unlimited = {"messages_per_second": 100_000, "message_burst": 100_000}
    async with relay_with(resume_buffer_bytes=4096, outbox_max_messages=10_000, **unlimited) as server:
        _, a, _, b, _ = await room_of_two(api, url(server))
        # b stops reading: its client buffers a few frames, then reads (and answers) no ping.
        acked: list[int] = []
        refused: list[int] = []

        def record(reply: dict[str, Any]) -> None:
            if reply["type"] == "ack":
                acked.append(reply["id"])
            else:
                assert reply == {"type": "error", "code": "PEER_BUSY", "reason": ANY, "id": reply["id"]}
                refused.append(reply["id"])

        for i in range(200):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": {"i": i, "pad": "x" * 100}, "id": i})
            await a.send_raw("barrier-probe")
            while (reply := await a.recv()) != {"type": "error", "code": "INVALID_JSON", "reason": ANY}:
                record(reply)
            if refused:
                break
        else:
            raise AssertionError("the peer was never busy")
        assert refused == [i]
        # b reads again: it has every message but the refused one, and its pongs ack them.
        assert [(await b.expect("peer_message"))["payload"]["i"] for _ in range(i)] == list(range(i))
        while len(acked) < i:
            record(await a.recv())
        assert sorted(acked) == list(range(i))
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": {"i": i}, "id": i})
        assert (await b.expect("peer_message"))["payload"] == {"i": i}
        assert (await a.expect("ack"))["id"] == i
        assert server.relay.hub.get(*next((m.room_id, "B") for m in server.relay.hub.members())) is not None
        for peer in (a, b):
            await peer.close()


async def test_a_message_resent_after_a_resume_is_delivered_once(api: str, relay_with: RelayFactory) -> None:
    """A client that resumes and sends again what it has no outcome for (same id) delivers it
    once and gets one ack; the same id sent after its outcome is a new message."""
    async with relay_with() as server:
        room, a, a_user, b, b_user = await room_of_two(api, url(server))
        await drop(b)
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": "once", "id": "m1"})
        await a.barrier()
        await drop(a)
        a2, _ = await resume(a, url(server), room, a_user)
        await a2.send({"type": "peer_message", "to_peer_id": "B", "payload": "once", "id": "m1"})
        await a2.barrier()  # taken in, nothing said: the first one's outcome is still to come
        b2, _ = await resume(b, url(server), room, b_user)
        assert (await b2.expect("peer_message"))["payload"] == "once"
        await b2.barrier()  # not twice
        assert await a2.expect("ack") == {"type": "ack", "id": "m1", "queued": False}
        await a2.barrier()
        await a2.send({"type": "peer_message", "to_peer_id": "B", "payload": "again", "id": "m1"})
        assert (await b2.expect("peer_message"))["payload"] == "again"
        assert await a2.expect("ack") == {"type": "ack", "id": "m1", "queued": False}
        for peer in (a2, b2):
            await peer.close()
