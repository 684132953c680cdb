"""Registration and the four sources of a session, without sockets or an emulator."""

from __future__ import annotations

from typing import Any

from fakes.relay_world import ROOM_TOKEN, World
from signaling_shared.dynamo import RelayNode
from signaling_shared.errors import StorageUnavailable
from ws_relay.close_codes import CloseCode
from ws_relay.hub import MemberState


async def test_a_fresh_register_is_answered_announced_and_written() -> None:
    """registered_auth lists the peers already there; they hear peer_joined; the routing
    entry is in the table, on this node."""
    world = World()
    await world.room()
    a = await world.register("A", sub="alice", role="worker", metadata={"tags": ["gpu"]})
    b = await world.register("B", sub="bob")
    registered = b.link.last("registered_auth")
    assert registered["peer_id"] == "B"
    assert registered["token"] == ROOM_TOKEN
    assert [peer["peer_id"] for peer in registered["peers"]] == ["A"]
    assert registered["peers"][0]["metadata"] == {"tags": ["gpu"]}
    assert registered["resume_token"]
    assert registered["resumed"] is False
    assert a.link.last("peer_joined")["peer_id"] == "B"
    entry = await world.repository.peer_entry("room-1", "B")
    assert entry is not None
    assert entry.owner_sub == "bob"
    assert entry.node_id == world.settings.node_id
    assert world.metrics.registrations.labels("ok")._value.get() == 2


async def test_room_token_room_and_expiry_are_checked() -> None:
    world = World()
    await world.room()
    await world.room("old", expires_in=-1)
    wrong = await world.register("A", token="not-the-token")
    assert wrong.link.errors() == ["INVALID_ROOM_TOKEN"]
    missing = await world.register("A", room="nowhere")
    assert missing.link.errors() == ["ROOM_NOT_FOUND"]
    expired = await world.register("A", room="old")
    assert expired.link.errors() == ["ROOM_EXPIRED"]
    bad_identity = await world.register("A", sub="bad-token")
    assert bad_identity.link.errors() == ["INVALID_ID_TOKEN"]
    assert world.relay.hub.member_count == 0


async def test_another_identity_cannot_take_a_peer_id_held_in_the_table() -> None:
    """The routing entry decides across nodes: another node's live entry of another
    identity refuses the id (PEER_ID_TAKEN), and the hub keeps no reservation."""
    world = World()
    await world.room()
    other_node = World(repository=world.repository, clock=world.clock, node_id="relay-2")
    await other_node.register("A", sub="alice")
    taken = await world.register("A", sub="mallory")
    assert taken.link.errors() == ["PEER_ID_TAKEN"]
    again = await world.register("A", sub="alice")  # the same identity may take it over
    assert again.link.of_type("registered_auth")


async def test_the_same_identity_takes_its_peer_id_over() -> None:
    """The older socket is closed with 4002; what it owed is failed to its senders."""
    world = World()
    await world.room()
    sender = await world.register("S", sub="sam")
    old = await world.register("A", sub="alice")
    await world.send(sender, {"type": "peer_message", "to_peer_id": "A", "payload": 1, "id": "m1"})
    new = await world.register("A", sub="alice")
    assert old.link.close_code() == CloseCode.REPLACED
    assert new.link.of_type("registered_auth")
    assert sender.link.last("error")["code"] == "DELIVERY_FAILED"
    assert world.relay.hub.get("room-1", "A") is new.connection.member


async def test_a_register_whose_socket_leaves_during_the_write_claims_nothing() -> None:
    """The write lands, but the socket is gone: the entry is released, nobody hears a join."""
    world = World()
    await world.room()
    other = await world.register("O", sub="olga")
    client = world.connect()
    claim_peer = world.repository.claim_peer

    async def closing_then_claim(*args: Any, **kwargs: Any) -> None:
        client.link.closed = (1006, "")
        await claim_peer(*args, **kwargs)

    world.repository.claim_peer = closing_then_claim  # type: ignore[method-assign]
    await world.register("A", client=client)
    assert not client.link.of_type("registered_auth")
    assert await world.repository.peer_entry("room-1", "A") is None
    assert not other.link.of_type("peer_joined")
    assert world.metrics.registrations.labels("abandoned")._value.get() == 1


async def test_a_failed_write_is_undone_and_the_peer_id_stays_free() -> None:
    world = World()
    await world.room()
    world.repository.fail_next("claim_peer", StorageUnavailable("DynamoDB did not answer"))
    failed = await world.register("A")
    assert failed.link.errors() == ["STORAGE_UNAVAILABLE"]
    assert await world.repository.peer_entry("room-1", "A") is None
    retried = await world.register("A", client=failed)
    assert retried.link.of_type("registered_auth")


async def test_a_live_member_resumes_with_what_it_missed() -> None:
    """Dropped, the member waits; a resume replays every frame after last_seq, and the
    room hears neither a leave nor a join."""
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    b = await world.register("B", sub="bob")
    await world.drop(a)
    assert a.member.state is MemberState.DETACHED
    await world.send(b, {"type": "peer_message", "to_peer_id": "A", "payload": "while away", "id": 7})
    resumed = await world.resume(a)
    registered = resumed.link.last("registered_auth")
    assert registered["resumed"] is True
    assert [frame["payload"] for frame in resumed.link.of_type("peer_message")] == ["while away"]
    assert resumed.member.state is MemberState.LIVE
    assert not b.link.of_type("peer_left")
    assert len(b.link.of_type("peer_joined")) == 0
    resumed.link.confirm()
    assert b.link.last("ack")["id"] == 7
    entry = await world.repository.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.connection_id == resumed.link.connection_id


async def test_a_resume_is_refused_without_its_token_or_its_frames() -> None:
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    await world.drop(a)
    registered = a.link.last("registered_auth")
    forged = await world.register("A", sub="alice", resume_token="forged", last_seq=0)
    assert forged.link.errors() == ["RESUME_FAILED"]
    ahead = await world.register("A", sub="alice", resume_token=registered["resume_token"], last_seq=99)
    assert ahead.link.errors() == ["RESUME_FAILED"]
    stranger = await world.register("A", sub="mallory", resume_token=registered["resume_token"], last_seq=0)
    assert stranger.link.errors() == ["RESUME_FAILED"]
    assert (await world.resume(a)).link.last("registered_auth")["resumed"] is True


async def test_a_resume_whose_write_fails_leaves_the_member_as_it_was() -> None:
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    await world.drop(a)
    world.repository.fail_next("claim_peer", StorageUnavailable("DynamoDB did not answer"))
    failed = await world.resume(a)
    assert failed.link.errors() == ["STORAGE_UNAVAILABLE"]
    assert a.member.state is MemberState.DETACHED
    entry = await world.repository.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.connection_id == a.link.connection_id
    assert (await world.resume(a)).link.last("registered_auth")["resumed"] is True


async def test_a_session_saved_at_shutdown_resumes_on_the_next_process() -> None:
    """The frames it had not confirmed are replayed by the next process, and their
    senders' acks come when it confirms them."""
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    b = await world.register("B", sub="bob")
    await world.drop(a)
    await world.send(b, {"type": "peer_message", "to_peer_id": "A", "payload": "unconfirmed", "id": "m"})
    world.relay.begin_shutdown()
    await world.drop(b)
    await world.relay.save_sessions()
    saved = await world.repository.load_session("room-1", "A")
    assert saved is not None
    assert saved.frames

    later = World(repository=world.repository, clock=world.clock)
    b2 = await later.resume(b)
    a2 = await later.resume(a)
    assert a2.link.last("registered_auth")["resumed"] is True
    assert [frame["payload"] for frame in a2.link.of_type("peer_message")] == ["unconfirmed"]
    a2.link.confirm()
    await later.settle()
    assert b2.link.last("ack")["id"] == "m"
    assert await later.repository.load_session("room-1", "A") is None  # taken


async def test_a_saved_session_nobody_resumes_ends_with_peer_left() -> None:
    world = World(resume_window_seconds=1)
    await world.room()
    a = await world.register("A", sub="alice")
    world.relay.begin_shutdown()
    await world.drop(a)
    await world.relay.save_sessions()

    world.clock.now += 2  # the saved session's window is over when the next process starts
    later = World(repository=world.repository, clock=world.clock, resume_window_seconds=1)
    b = await later.register("B", sub="bob")  # the room is watched: the lapsed session ends
    await later.until(lambda: bool(b.link.of_type("peer_left")))  # its timer is due at once
    left = b.link.last("peer_left")
    assert (left["peer_id"], left["reason"]) == ("A", "timeout")
    assert await later.repository.load_session("room-1", "A") is None


async def test_a_session_orphaned_by_a_dead_process_is_recovered() -> None:
    """The process died without saving: the identity vouches, numbering goes on from the
    client's last_seq, and the room (which lost it with the process) hears it join."""
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    later = World(repository=world.repository, clock=world.clock)  # same node id, new process
    b = await later.register("B", sub="bob")
    recovered = await later.resume(a)
    registered = recovered.link.last("registered_auth")
    assert registered["resumed"] is True
    assert registered["recovered"] is True
    assert b.link.last("peer_joined")["peer_id"] == "A"
    entry = await later.repository.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.connection_id == recovered.link.connection_id


async def test_a_session_held_by_a_live_node_is_not_recovered_elsewhere() -> None:
    world = World(node_id="relay-2")  # serves the room in place (no public URL)
    await world.room()
    a = await world.register("A", sub="alice")
    await world.repository.heartbeat_node(RelayNode("relay-2", "ws://relay-2.test/ws", 1, 100, world.clock() + 60))
    here = World(repository=world.repository, clock=world.clock)  # no public URL: serves in place
    refused = await here.resume(a)
    assert refused.link.errors() == ["RESUME_FAILED"]


async def test_a_room_served_by_another_live_node_redirects() -> None:
    world = World(public_ws_url="ws://relay-1.test/ws", node_id="relay-1")
    await world.room(node_id="relay-2")
    await world.repository.heartbeat_node(RelayNode("relay-2", "ws://relay-2.test/ws", 1, 100, world.clock() + 60))
    client = await world.register("A", id="r")
    assert client.link.last("redirect")["ws_url"] == "ws://relay-2.test/ws"
    assert client.link.close_code() == CloseCode.REDIRECTED
    assert world.metrics.registrations.labels("redirected")._value.get() == 1


async def test_a_room_of_a_dead_node_is_taken_over() -> None:
    world = World(public_ws_url="ws://relay-1.test/ws", node_id="relay-1")
    await world.room(node_id="relay-gone")
    client = await world.register("A")
    assert client.link.of_type("registered_auth")
    assert (await world.repository.get_room("room-1")).node_id == world.settings.node_id


async def test_no_registration_while_shutting_down() -> None:
    world = World()
    await world.room()
    world.relay.begin_shutdown()
    client = await world.register("A")
    assert client.link.errors() == ["SERVER_BUSY"]


async def test_the_successors_second_register_replaces_metadata_and_judges_admin() -> None:
    world = World()
    await world.room()
    worker = await world.register("W", sub="wendy", role="worker", is_admin=True, metadata={"status": "busy"})
    rival = await world.register("X", sub="xavier", role="worker", is_admin=True)
    assert rival.link.last("admin_conflict")["current_admin"] == "W"
    assert rival.link.last("registered_auth")["admin_peer_id"] == "W"
    await world.register(
        "W", sub="wendy", role="worker", is_admin=True, metadata={"status": "available"}, client=worker
    )
    assert worker.link.of_type("registered_auth")[-1]["admin_peer_id"] == "W"
    assert rival.link.last("metadata_updated")["metadata"] == {"status": "available"}
    changed_role = await world.register("W", sub="wendy", role="client", is_admin=True, client=worker)
    assert changed_role.link.errors() == ["ALREADY_REGISTERED"]


async def test_a_takeover_abandoned_during_its_write_gives_the_entry_back() -> None:
    """The same identity's new socket leaves while its write lands: the member still
    holding the id keeps it, in the hub and in the table."""
    world = World()
    await world.room()
    holder = await world.register("A", sub="alice")
    newcomer = world.connect()
    claim_peer = world.repository.claim_peer

    async def leaving_during_the_write(*args: Any, **kwargs: Any) -> None:
        await claim_peer(*args, **kwargs)
        newcomer.link.closed = (1006, "")

    world.repository.claim_peer = leaving_during_the_write  # type: ignore[method-assign]
    await world.register("A", sub="alice", client=newcomer)
    world.repository.claim_peer = claim_peer  # type: ignore[method-assign]
    assert holder.link.closed is None
    assert world.relay.hub.get("room-1", "A") is holder.connection.member
    entry = await world.repository.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.connection_id == holder.link.connection_id


async def test_a_resume_of_a_member_that_leaves_during_the_write_fails_and_frees_the_entry() -> None:
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    await world.drop(a)
    claim_peer = world.repository.claim_peer

    async def ended_during_the_write(*args: Any, **kwargs: Any) -> None:
        await claim_peer(*args, **kwargs)
        world.relay.end(a.member, CloseCode.ROOM_EXPIRED, "room_expired")

    world.repository.claim_peer = ended_during_the_write  # type: ignore[method-assign]
    resumed = await world.resume(a)
    assert resumed.link.errors() == ["RESUME_FAILED"]
    assert "changed while resuming" in resumed.link.last("error")["reason"]
    assert await world.repository.peer_entry("room-1", "A") is None


async def test_a_resume_whose_write_lands_and_fails_stays_resuming_while_it_is_undone() -> None:
    """Until the previous entry is back, the member is RESUMING: a lease refresh leaves it
    alone (it would find the entry moved and end it) and a second resume is refused."""
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    await world.drop(a)
    claim_peer, restore = world.repository.claim_peer, world.relay.cluster.restore
    during: list[str] = []

    async def landing_then_failing(*args: Any, **kwargs: Any) -> None:
        await claim_peer(*args, **kwargs)
        raise StorageUnavailable("the answer was lost")

    async def restoring(member: Any, now: float) -> None:
        await world.relay.refresh_leases()
        second = await world.resume(a)
        during.extend(second.link.errors())
        await restore(member, now)

    world.repository.claim_peer = landing_then_failing  # type: ignore[method-assign]
    world.relay.cluster.restore = restoring  # type: ignore[method-assign]
    failed = await world.resume(a)
    assert failed.link.errors() == ["STORAGE_UNAVAILABLE"]
    assert during == ["RESUME_FAILED"]
    assert world.relay.hub.is_current(a.member)
    assert a.member.state is MemberState.DETACHED
    entry = await world.repository.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.connection_id == a.link.connection_id


# Rooms read before (ws_relay.roomcache) ------------------------------------------------


async def test_the_next_registration_in_a_room_served_here_does_not_read_the_room() -> None:
    world = World()
    await world.room(marked=True)
    await world.register("A", sub="alice")
    world.repository.operations.clear()
    b = await world.register("B", sub="bob")
    assert b.link.last("registered_auth")["peers"][0]["peer_id"] == "A"
    assert world.repository.operations == ["claim_peer"]
    wrong = await world.register("C", token="not-the-token")  # refused on the room as read
    assert wrong.link.errors() == ["INVALID_ROOM_TOKEN"]
    assert world.repository.operations == ["claim_peer"]


async def test_a_room_deleted_since_it_was_read_refuses_the_registration() -> None:
    world = World()
    await world.room(marked=True)
    await world.register("A", sub="alice")
    await world.repository.delete_room("room-1", now=world.clock())
    world.repository.operations.clear()
    late = await world.register("B", sub="bob")
    assert late.link.errors() == ["ROOM_NOT_FOUND"]
    assert world.repository.operations == ["claim_peer", "get_room"]  # refused, then read
    assert await world.repository.peer_entry("room-1", "B") is None


async def test_a_room_taken_by_another_node_since_it_was_read_redirects() -> None:
    world = World(public_ws_url="ws://relay-1.test/ws", node_id="relay-1")
    await world.room(marked=True)  # no node yet: relay-1 takes it at the first registration
    await world.register("A", sub="alice")
    # relay-1 was away long enough for relay-2 to take the room (as far as the table says).
    await world.repository.move_room("room-1", from_node="relay-1", to_node="relay-2")
    await world.repository.heartbeat_node(RelayNode("relay-2", "ws://relay-2.test/ws", 1, 100, world.clock() + 60))
    moved = await world.register("B", sub="bob")
    assert moved.link.last("redirect")["ws_url"] == "ws://relay-2.test/ws"
    assert await world.repository.peer_entry("room-1", "B") is None


async def test_a_message_held_since_the_room_was_read_is_delivered() -> None:
    """Another node serving the room in place holds a message for an absent peer: the room's
    mark changes, so the peer's registration here reads the room again and looks."""
    world = World()
    await world.room(marked=True)
    await world.register("A", sub="alice")
    other = World(repository=world.repository, clock=world.clock, node_id="relay-2")
    sender = await other.register("S", sub="sam")
    await other.send(sender, {"type": "peer_message", "to_peer_id": "W", "payload": {"job": 1}, "id": 7})
    assert (sender.link.last("ack")["id"], sender.link.last("ack")["queued"]) == (7, True)
    worker = await world.register("W", sub="wendy")
    await world.until(lambda: bool(worker.link.of_type("peer_message")))
    assert worker.link.last("peer_message")["payload"] == {"job": 1}
