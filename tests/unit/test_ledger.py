"""Delivery: numbering, acks on confirmed receipt, failures on departure, held messages."""

from __future__ import annotations

from fakes.relay_world import ROOM_TOKEN, Client, World
from signaling_shared.errors import StorageUnavailable
from ws_relay.close_codes import CloseCode


async def pair(world: World) -> tuple[Client, Client]:
    await world.room()
    return await world.register("A", sub="alice"), await world.register("B", sub="bob")


async def test_a_message_is_numbered_and_acked_once_its_target_confirms_it() -> None:
    world = World()
    a, b = await pair(world)
    await world.send(a, {"type": "offer", "target": "B", "sdp": "v=0", "id": "o1"})
    offer = b.link.last("offer")
    assert offer["sender"] == "A"
    assert offer["message_id"] == "o1"
    assert offer["seq"] == 1
    assert not a.link.of_type("ack")
    b.link.confirm()
    assert a.link.last("ack")["id"] == "o1"
    assert b.member.unconfirmed == type(b.member.unconfirmed)()


async def test_only_frames_whose_receipt_settles_something_are_confirmed_at_once() -> None:
    """The link pings at once for a message whose sender waits for its ack; a message
    without an id, a room event or the ack itself may be confirmed later, with others."""
    world = World()
    a, b = await pair(world)
    await world.send(a, {"type": "offer", "target": "B", "sdp": "v=0", "id": "o1"})
    await world.send(a, {"type": "offer", "target": "B", "sdp": "v=0"})
    b.link.confirm()
    await world.register("C", sub="carol")
    assert [m["type"] for m in b.link.sent if "seq" in m] == ["offer", "offer", "peer_joined"]
    assert b.link.awaited == [True, False, False]
    assert a.link.last("ack")["id"] == "o1"
    assert a.link.awaited[-1] is False  # the ack: nothing waits on its receipt


async def test_a_target_that_leaves_unconfirmed_fails_its_senders() -> None:
    """With an id: DELIVERY_FAILED with that id. Without one: reported only if the target
    was lost (timeout), never when it closed properly (it may have read it)."""
    world = World(resume_window_seconds=1)
    a, b = await pair(world)
    await world.send(a, {"type": "offer", "target": "B", "sdp": "v=0", "id": "o1"})
    await world.send(a, {"type": "offer", "target": "B", "sdp": "v=0"})
    await world.close(b)
    errors = a.link.of_type("error")
    assert [(e["code"], e.get("id")) for e in errors] == [("DELIVERY_FAILED", "o1")]
    assert a.link.last("peer_left")["reason"] == "closed"


async def test_a_detached_member_owed_more_than_kept_for_a_resume_is_ended() -> None:
    world = World(resume_buffer_messages=3)
    a, b = await pair(world)
    await world.drop(b)
    for i in range(4):
        await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": i})
    assert a.link.last("peer_left")["reason"] == "overflow"
    assert world.relay.hub.get("room-1", "B") is None


async def test_a_connected_member_that_has_not_confirmed_most_of_its_buffer_is_busy() -> None:
    """Past three quarters of the resume buffer unconfirmed, direct messages for a connected
    member are refused with PEER_BUSY (the sender is told, the member stays); once it
    confirms, they pass again. The last quarter is left for the room's events."""
    world = World(resume_buffer_messages=4)
    a, b = await pair(world)
    for i in range(4):
        await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": i, "id": i})
    assert [(e["code"], e["id"]) for e in a.link.of_type("error")] == [("PEER_BUSY", 3)]
    assert [m["payload"] for m in b.link.of_type("peer_message")] == [0, 1, 2]
    assert b.link.close_code() is None
    await world.register("C", sub="carol")
    assert b.link.last("peer_joined")["peer_id"] == "C"  # the quarter kept for events
    assert b.link.close_code() is None
    b.link.confirm()
    assert sorted(ack["id"] for ack in a.link.of_type("ack")) == [0, 1, 2]
    await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": 3, "id": 3})
    assert b.link.last("peer_message")["payload"] == 3


async def test_only_a_v2_senders_message_with_an_id_is_refused_for_a_busy_peer() -> None:
    """A message its sender could not match to a PEER_BUSY (no id), or from a client that
    knows no PEER_BUSY (the seed's), is kept as before, within the whole buffer."""
    world = World(resume_buffer_messages=12)
    await world.room()
    b = await world.register("B", sub="bob")
    a = await world.register("A", sub="alice")
    seed = world.connect()
    await world.send(
        seed, {"type": "register", "peer_id": "S", "room_id": "room-1", "token": ROOM_TOKEN, "id_token": "sam"}
    )
    for i in range(12):
        await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": i, "id": i})
        if a.link.errors():
            break
    assert a.link.errors() == ["PEER_BUSY"]
    await world.send(a, {"type": "offer", "target": "B", "sdp": "no id"})
    await world.send(seed, {"type": "offer", "target": "B", "sdp": "from the seed"})
    assert a.link.errors() == ["PEER_BUSY"]
    assert seed.link.errors() == []
    assert [offer["sdp"] for offer in b.link.of_type("offer")] == ["no id", "from the seed"]
    assert b.link.close_code() is None


async def test_a_frame_larger_than_the_busy_share_passes_when_nothing_else_is_kept() -> None:
    """Refused alone, it would be refused however often it is sent again."""
    world = World(resume_buffer_bytes=2048)
    a, b = await pair(world)
    b.link.confirm()  # A's peer_joined
    await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": "x" * 1700, "id": 1})
    assert a.link.errors() == []
    assert b.link.last("peer_message")["payload"] == "x" * 1700


async def test_a_member_that_does_not_confirm_still_gets_its_own_replies() -> None:
    """Replies (errors included) answer what the member sent: they pass the resume buffer's
    limits, so a member that sends faster than it confirms is not dropped for them."""
    world = World(resume_buffer_messages=4)
    a, _ = await pair(world)
    for _ in range(10):
        await world.send(a, {"type": "offer", "target": "Nobody", "sdp": "v=0"})
    assert a.link.errors() == ["PEER_NOT_FOUND"] * 10
    assert a.link.close_code() is None
    assert world.relay.hub.get("room-1", "A") is not None


async def test_a_member_that_confirms_none_of_its_replies_is_ended_past_their_own_budget() -> None:
    """Replies pass the limits on what others send, not a budget of their own (the resume
    buffer's size in bytes): a client that reads but never confirms cannot make the relay
    keep its answers without bound."""
    world = World(resume_buffer_bytes=2048)
    a, b = await pair(world)
    for _ in range(40):  # each error is about 100 bytes
        await world.send(a, {"type": "offer", "target": "Nobody", "sdp": "v=0"})
    assert a.link.close_code() == CloseCode.OVERFLOW
    assert b.link.last("peer_left")["reason"] == "overflow"


async def test_a_message_for_a_peer_not_there_yet_is_held_and_delivered() -> None:
    """Acked queued; delivered when the target registers, before what comes live; removed
    from the table once the target confirms it."""
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": "early", "id": "h1"})
    assert {**a.link.last("ack"), "seq": None} == {"type": "ack", "id": "h1", "queued": True, "seq": None}
    assert len(await world.repository.held_messages("room-1", to_peer_id="B")) == 1
    b = await world.register("B", sub="bob")
    assert [frame["payload"] for frame in b.link.of_type("peer_message")] == ["early"]
    b.link.confirm()
    await world.settle()
    assert await world.repository.held_messages("room-1", to_peer_id="B") == []
    assert world.metrics.held.labels("delivered")._value.get() == 1


async def test_what_was_held_for_a_member_is_delivered_whole_past_the_outbox_limit() -> None:
    """Held messages (and what waited behind them) were accepted for the member already:
    a burst of them larger than the outbox does not cut off the client that registers."""
    world = World(outbox_max_messages=4)
    await world.room()
    a = await world.register("A", sub="alice")
    for i in range(6):
        await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": i, "id": i})
    b = await world.register("B", sub="bob", client=world.connect(outbox_max=4))
    assert b.link.close_code() is None
    assert [frame["payload"] for frame in b.link.of_type("peer_message")] == list(range(6))
    # What others send it live still counts against the outbox limit.
    for i in range(5):
        await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": f"live-{i}"})
    assert b.link.close_code() == CloseCode.SLOW_CONSUMER


async def test_a_held_message_whose_read_fails_stays_held() -> None:
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": "early", "id": "h1"})
    world.repository.fail_next("held_messages", StorageUnavailable("DynamoDB did not answer"))
    b = await world.register("B", sub="bob")
    assert b.link.of_type("registered_auth")
    assert not b.link.of_type("peer_message")
    assert len(await world.repository.held_messages("room-1", to_peer_id="B")) == 1


async def test_a_held_message_that_expires_is_reported_to_its_sender() -> None:
    world = World(queue_ttl_min_seconds=1)
    await world.room()
    a = await world.register("A", sub="alice")
    await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": 1, "id": "x", "ttl_seconds": 1})
    world.clock.now += 2  # its lifetime is over when its timer fires (in a second)
    await world.until(lambda: bool(a.link.of_type("expired")))
    assert {**a.link.last("expired"), "seq": None} == {"type": "expired", "id": "x", "to_peer_id": "B", "seq": None}
    assert await world.repository.held_messages("room-1", to_peer_id="B") == []


async def test_a_sender_back_after_a_restart_hears_of_its_message_that_expired_past_the_room_s_mark() -> None:
    """A message held for 900 s; its sender drops at once and stays away (a message of an
    absent sender is kept for it, past its expiry, for the resume window); the relay
    restarts (the sender's session saved) and the sender resumes after the room's mark of
    held messages has lapsed: the resume still reads the room's messages, and it is told."""
    world = World(resume_window_seconds=3600)
    await world.room(marked=True)
    a = await world.register("A", sub="alice")
    await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": 1, "id": "x", "ttl_seconds": 900})
    await world.drop(a)
    world.clock.now += 1790
    world.relay.begin_shutdown()
    await world.relay.save_sessions()
    world.clock.now += 20
    assert not (await world.repository.get_room("room-1")).may_hold_messages(world.clock())
    later = World(repository=world.repository, clock=world.clock, resume_window_seconds=3600)
    back = await later.resume(a)
    await later.until(lambda: bool(back.link.of_type("expired")))
    assert {**back.link.last("expired"), "seq": None} == {"type": "expired", "id": "x", "to_peer_id": "B", "seq": None}


async def test_holds_mark_their_room_rarely() -> None:
    """The first hold marks the room for two longest lifetimes; holds it covers leave the
    room item alone (in DynamoDB each write of it can cancel a registration's transaction);
    a hold it no longer covers marks it again."""
    world = World()
    await world.room(marked=True)
    a = await world.register("A", sub="alice")
    start = world.clock()
    longest = world.relay.settings.queue_ttl_max_seconds

    async def hold(n: int) -> int | None:
        await world.send(a, {"type": "peer_message", "to_peer_id": "B", "payload": n, "id": f"h{n}", "ttl_seconds": 60})
        assert a.link.last("ack") == {"type": "ack", "id": f"h{n}", "queued": True, "seq": a.link.last("ack")["seq"]}
        return (await world.repository.get_room("room-1")).held_until_ms

    first = await hold(1)
    assert first == int(start * 1000) + 2000 * longest
    world.repository.rooms_table["room-1"]["held_until_ms"]["N"] = "1"  # so that any write of it shows
    world.clock.now += longest
    assert await hold(2) == 1  # still covered by the first mark: the room item is not written
    world.clock.now += longest  # a message held now would outlive the first mark
    assert await hold(3) == int(world.clock() * 1000) + 2000 * longest
