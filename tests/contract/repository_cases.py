"""The repository's contract: cases that hold for the DynamoDB ``Repository`` and for the
in-memory one alike, so the fake the unit tier uses cannot drift from the real thing.

Each case takes a repository over empty tables of its own. They run against the in-memory
repository and the real one on moto in-process (tests/unit/test_repository_contract.py),
and against the real one on the integration tier's emulator
(tests/integration/test_repository_contract_emulator.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from fakes.memory_repository import MemoryRepository
from signaling_shared.dynamo import (
    Booking,
    Lease,
    PeerRecord,
    QueuedMessage,
    RelayNode,
    Repository,
    Room,
    SavedSession,
)
from signaling_shared.errors import ConditionFailed, NotFound, Unavailable

AnyRepository = Repository | MemoryRepository
Case = Callable[[AnyRepository], Awaitable[None]]

CASES: list[Case] = []


def case(fn: Case) -> Case:
    CASES.append(fn)
    return fn


def case_id(fn: Case) -> str:
    return fn.__name__


def clock() -> int:
    """Now, in whole seconds: items are stamped around now (an emulator's TTL sweep might
    remove an item dated long ago in the middle of a case)."""
    return int(time.time())


def room(room_id: str = "room-1", *, now: int, expires_in: int = 3600, node_id: str = "") -> Room:
    return Room(room_id, "creator", f"hash-{room_id}", now, now + expires_in, node_id)


def peer(
    peer_id: str = "A",
    *,
    now: int,
    room_id: str = "room-1",
    sub: str = "alice",
    connection: str = "c1",
    expires_at: int | None = None,
    **extra: Any,
) -> PeerRecord:
    """A routing entry, connected ``now`` for a minute; ``extra``: other PeerRecord fields."""
    base = PeerRecord(room_id, peer_id, sub, f"user-{sub}", connection, "node-a", now, expires_at or now + 60)
    return replace(base, **extra)


def message(to: str, n: int, *, now: int, room_id: str = "room-1", **extra: Any) -> QueuedMessage:
    """The ``n``-th message held for ``to``; ``extra``: other QueuedMessage fields."""
    key = QueuedMessage.key_for(to, now * 1000 + n, "node-a", n)
    base = QueuedMessage(room_id, key, to, "S", "session-s", f"m{n}", (now + 600) * 1000, f'{{"n":{n}}}')
    return replace(base, **extra)


def node(node_id: str, *, expires_at: float, rooms: int = 0, capacity: int = 100, **extra: Any) -> RelayNode:
    return RelayNode(node_id, f"ws://{node_id}.test/ws", rooms, capacity, expires_at, **extra)


async def hold(repo: AnyRepository, held: QueuedMessage) -> None:
    """Hold ``held`` in its room (created, live, if there is none yet), the room marked
    until the message expires."""
    with contextlib.suppress(ConditionFailed):
        await repo.create_room(room(held.room_id, now=clock()))
    await repo.hold_message(held, held_until_ms=held.expires_at_ms)


async def saved(repo: AnyRepository, *, now: int, frames: int = 2, connection: str = "c1") -> SavedSession:
    """A peer claimed in a live room, its session saved with ``frames`` frames."""
    await repo.create_room(room(now=now))
    live = peer(now=now, connection=connection, session_id="session-a", metadata={"tags": ["gpu"]})
    await repo.claim_peer(live, now=now)
    session = SavedSession(
        peer=replace(live, expires_at=now + 30),
        session_id="session-a",
        resume_hashes=("hash-1", "hash-2"),
        seq=7,
        frames=[(seq, f'{{"seq":{seq}}}') for seq in range(6, 6 + frames)],
        owed=[(6, {"ack": "m1", "to": ["S", 1]})],
        answers=[6],
        in_flight=["x1", 2],
    )
    await repo.save_session(session)
    return session


# Rooms -----------------------------------------------------------------------------


@case
async def rooms_are_created_once_and_read_back_expired_or_not(repo: AnyRepository) -> None:
    now = clock()
    first = room(now=now)
    placed = room("room-2", now=now, expires_in=-10, node_id="node-a")
    marked = replace(room("room-3", now=now), held_until_ms=0, saved_until=0)
    await repo.create_room(first)
    await repo.create_room(placed)
    await repo.create_room(marked)
    assert await repo.get_room("room-3") == marked
    assert await repo.get_room("room-1") == first
    assert await repo.get_room("room-2") == placed  # expired: returned all the same
    with pytest.raises(ConditionFailed):
        await repo.create_room(replace(first, created_by="someone else"))
    assert await repo.get_room("room-1") == first
    with pytest.raises(NotFound):
        await repo.get_room("nowhere")


@case
async def a_deleted_room_leaves_a_tombstone(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    assert await repo.was_deleted("room-1") is False
    await repo.delete_room("room-1", now=now)
    with pytest.raises(NotFound):
        await repo.get_room("room-1")
    assert await repo.was_deleted("room-1") is True
    assert await repo.was_deleted("never-was") is False
    await repo.delete_room("never-was", now=now)  # no room: the tombstone all the same
    assert await repo.was_deleted("never-was") is True
    again = room(now=now, expires_in=60)
    await repo.create_room(again)  # the id is free again
    assert await repo.get_room("room-1") == again


@case
async def a_room_moves_only_from_the_node_that_has_it(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    await repo.move_room("room-1", from_node="", to_node="node-a")
    assert (await repo.get_room("room-1")).node_id == "node-a"
    with pytest.raises(ConditionFailed):
        await repo.move_room("room-1", from_node="", to_node="node-b")  # it has a node now
    with pytest.raises(ConditionFailed):
        await repo.move_room("room-1", from_node="node-b", to_node="node-c")
    await repo.move_room("room-1", from_node="node-a", to_node="node-b")
    assert (await repo.get_room("room-1")).node_id == "node-b"
    with pytest.raises(ConditionFailed):
        await repo.move_room("room-1", from_node="node-a", to_node="node-c")  # the second of two takeovers
    with pytest.raises(ConditionFailed):
        await repo.move_room("nowhere", from_node="", to_node="node-a")
    await repo.create_room(room("room-2", now=now, node_id="node-a"))
    await repo.move_room("room-2", from_node="node-a", to_node="node-c")
    assert (await repo.get_room("room-2")).node_id == "node-c"


# Relay nodes -----------------------------------------------------------------------


@case
async def heartbeats_register_nodes_listed_by_id(repo: AnyRepository) -> None:
    now = clock()
    assert await repo.relay_nodes() == []
    await repo.heartbeat_node(node("node-b", expires_at=now + 30.12345, rooms=3, capacity=50))
    await repo.heartbeat_node(node("node-a", expires_at=now + 30.5, draining=True))
    nodes = await repo.relay_nodes()
    assert [n.node_id for n in nodes] == ["node-a", "node-b"]
    assert nodes[0] == node("node-a", expires_at=now + 30.5, draining=True)
    assert nodes[1].expires_at == float(f"{now + 30.12345:.3f}")  # to the millisecond
    assert (nodes[1].rooms, nodes[1].capacity, nodes[1].ws_url) == (3, 50, "ws://node-b.test/ws")
    await repo.heartbeat_node(node("node-b", expires_at=now + 60, rooms=1))
    assert (await repo.relay_nodes())[1] == node("node-b", expires_at=now + 60, rooms=1)


@case
async def assignments_count_up_until_the_next_heartbeat(repo: AnyRepository) -> None:
    now = clock()
    with pytest.raises(ConditionFailed):
        await repo.count_assignment("node-a")  # no registry yet
    await repo.heartbeat_node(node("node-a", expires_at=now + 30, rooms=2, capacity=10))
    await repo.count_assignment("node-a")
    await repo.count_assignment("node-a")
    (counted,) = await repo.relay_nodes()
    assert counted.assigned == 2
    assert counted.load == (2 + 2) / 10
    with pytest.raises(ConditionFailed):
        await repo.count_assignment("node-z")  # not registered
    await repo.heartbeat_node(node("node-a", expires_at=now + 60))
    assert (await repo.relay_nodes())[0].assigned == 0


@case
async def long_silent_nodes_are_pruned(repo: AnyRepository) -> None:
    now = clock()
    assert await repo.prune_nodes(expired_before=now) == []  # no registry yet
    await repo.heartbeat_node(node("node-c", expires_at=now - 1000.5))
    await repo.heartbeat_node(node("node-a", expires_at=now - 2000))
    await repo.heartbeat_node(node("node-b", expires_at=now + 30))
    await repo.heartbeat_node(node("node-d", expires_at=now - 100))
    assert await repo.prune_nodes(expired_before=now - 500) == ["node-a", "node-c"]
    assert [n.node_id for n in await repo.relay_nodes()] == ["node-b", "node-d"]
    assert await repo.prune_nodes(expired_before=now - 500) == []


# Peers -----------------------------------------------------------------------------


@case
async def a_claimed_peer_is_read_back_as_written(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    worker = peer(now=now, role="worker", metadata={"tags": ["gpu"], "n": 1}, session_id="session-a")
    await repo.claim_peer(worker, now=now)
    assert await repo.peer_entry("room-1", "A") == worker
    assert await repo.list_peers("room-1", now=now) == [worker]
    plain = peer("B", now=now, sub="bob")
    await repo.claim_peer(plain, now=now)
    entry = await repo.peer_entry("room-1", "B")
    assert entry == plain
    assert entry is not None
    assert (entry.role, entry.metadata, entry.session_id, entry.saved) == ("peer", {}, "", False)
    assert await repo.peer_entry("room-1", "nobody") is None
    assert await repo.peer_entry("room-2", "A") is None


@case
async def a_peer_is_claimed_only_in_a_live_room(repo: AnyRepository) -> None:
    now = clock()
    with pytest.raises(NotFound):
        await repo.claim_peer(peer(now=now), now=now)
    await repo.create_room(room(now=now, expires_in=10))
    with pytest.raises(NotFound):
        await repo.claim_peer(peer(now=now + 10), now=now + 10)  # expired at that instant
    assert await repo.peer_entry("room-1", "A") is None
    await repo.claim_peer(peer(now=now), now=now + 9)


@case
async def a_claim_on_a_room_as_read_earlier_needs_the_room_unchanged(repo: AnyRepository) -> None:
    """A claim made on a room read earlier (a cached room) decides what a read now would:
    each change of the room's node, marks or identity since that read fails it, as NotFound."""
    now = clock()
    await repo.create_room(replace(room(now=now, node_id="node-a"), held_until_ms=0, saved_until=0))
    read = await repo.get_room("room-1")
    await repo.claim_peer(peer("A", now=now), now=now, as_read=read)

    await repo.move_room("room-1", from_node="node-a", to_node="node-b")
    with pytest.raises(NotFound):
        await repo.claim_peer(peer("B", now=now), now=now, as_read=read)
    read = await repo.get_room("room-1")
    await repo.claim_peer(peer("B", now=now), now=now, as_read=read)

    await repo.hold_message(message("C", 1, now=now), held_until_ms=(now + 600) * 1000)
    with pytest.raises(NotFound):
        await repo.claim_peer(peer("C", now=now), now=now, as_read=read)
    read = await repo.get_room("room-1")
    await repo.claim_peer(peer("C", now=now), now=now, as_read=read)

    await repo.mark_sessions_saved("room-1", until=now + 30)
    with pytest.raises(NotFound):
        await repo.claim_peer(peer("D", now=now), now=now, as_read=read)
    read = await repo.get_room("room-1")
    await repo.claim_peer(peer("D", now=now), now=now, as_read=read)

    # The room deleted and created again under its id is another room, whatever its marks.
    await repo.delete_room("room-1", now=now)
    await repo.create_room(replace(read, token_hash="another hash"))
    with pytest.raises(NotFound):
        await repo.claim_peer(peer("E", now=now), now=now, as_read=read)
    assert await repo.peer_entry("room-1", "E") is None
    # A room read without marks (or node) is unchanged only while it has none.
    await repo.delete_room("room-1", now=now)
    await repo.create_room(room(now=now))
    bare = await repo.get_room("room-1")
    await repo.claim_peer(peer("E", now=now), now=now, as_read=bare)
    await repo.mark_sessions_saved("room-1", until=now + 30)
    with pytest.raises(NotFound):
        await repo.claim_peer(peer("F", now=now), now=now, as_read=bare)


@case
async def a_live_peer_id_belongs_to_its_identity(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    await repo.claim_peer(peer(now=now), now=now)
    with pytest.raises(ConditionFailed):
        await repo.claim_peer(peer(now=now, sub="mallory", connection="c2"), now=now)
    again = peer(now=now, connection="c2", metadata={"v": 2})
    await repo.claim_peer(again, now=now)  # the same identity, a new connection
    assert await repo.peer_entry("room-1", "A") == again
    with pytest.raises(ConditionFailed):
        await repo.claim_peer(peer(now=now, sub="mallory"), now=now + 59)
    taken = peer(now=now + 60, sub="mallory", connection="c3")
    await repo.claim_peer(taken, now=now + 60)  # the lease ran out: anyone may take it
    assert await repo.peer_entry("room-1", "A") == taken
    await repo.delete_room("room-1", now=now)
    with pytest.raises(NotFound):  # the room first, though the entry would refuse too
        await repo.claim_peer(peer(now=now, sub="bob"), now=now)


@case
async def a_peer_left_by_a_dead_process_is_recovered_once(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    with pytest.raises(ConditionFailed):
        await repo.recover_peer(peer(now=now, connection="c2"), from_connection="c1", now=now)  # no entry
    await repo.claim_peer(peer(now=now, session_id="session-a"), now=now)
    with pytest.raises(ConditionFailed):
        await repo.recover_peer(peer(now=now, sub="mallory", connection="c2"), from_connection="c1", now=now)
    with pytest.raises(ConditionFailed):
        await repo.recover_peer(peer(now=now, connection="c2"), from_connection="c9", now=now)
    recovered = peer(now=now, connection="c2", node_id="node-b", session_id="session-a")
    await repo.recover_peer(recovered, from_connection="c1", now=now)
    assert await repo.peer_entry("room-1", "A") == recovered
    with pytest.raises(ConditionFailed):  # the second of two recoveries
        await repo.recover_peer(peer(now=now, connection="c3"), from_connection="c1", now=now)
    await repo.delete_room("room-1", now=now)
    with pytest.raises(NotFound):
        await repo.recover_peer(peer(now=now, connection="c3"), from_connection="c2", now=now)


@case
async def a_saved_peer_is_not_recovered(repo: AnyRepository) -> None:
    now = clock()
    await saved(repo, now=now)
    with pytest.raises(ConditionFailed):
        await repo.recover_peer(peer(now=now, connection="c2"), from_connection="c1", now=now)


@case
async def a_lease_is_refreshed_by_its_holder_while_the_room_exists(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now, expires_in=5))
    await repo.claim_peer(peer(now=now), now=now)
    await repo.refresh_peer("room-1", "A", "c1", now + 120)
    entry = await repo.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.expires_at == now + 120
    with pytest.raises(ConditionFailed):
        await repo.refresh_peer("room-1", "A", "c2", now + 180)  # taken over
    with pytest.raises(ConditionFailed):
        await repo.refresh_peer("room-1", "B", "c1", now + 180)  # no entry
    await repo.delete_room("room-1", now=now)
    with pytest.raises(NotFound):
        await repo.refresh_peer("room-1", "A", "c1", now + 180)
    entry = await repo.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.expires_at == now + 120


@case
async def metadata_is_updated_by_the_holder_only(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    await repo.claim_peer(peer(now=now, metadata={"status": "busy"}), now=now)
    await repo.update_peer_metadata("room-1", "A", "c1", {"status": "available", "tags": ["gpu", 1]})
    entry = await repo.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.metadata == {"status": "available", "tags": ["gpu", 1]}
    with pytest.raises(ConditionFailed):
        await repo.update_peer_metadata("room-1", "A", "c2", {})
    with pytest.raises(ConditionFailed):
        await repo.update_peer_metadata("room-1", "B", "c1", {})


@case
async def a_peer_is_released_by_its_holder_only(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    await repo.claim_peer(peer(now=now), now=now)
    await repo.release_peer("room-1", "A", "c2")  # a takeover keeps its own entry
    assert await repo.peer_entry("room-1", "A") is not None
    await repo.release_peer("room-1", "A", "c1")
    assert await repo.peer_entry("room-1", "A") is None
    await repo.release_peer("room-1", "A", "c1")  # gone already: nothing to do


@case
async def peers_are_listed_oldest_first_and_live_unless_asked(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    await repo.create_room(room("room-2", now=now))
    b = peer("B", now=now, sub="bob")
    a = peer("A", now=now + 1)
    c = peer("C", now=now, sub="carol", expires_at=now + 5)
    for record in (a, b, c):
        await repo.claim_peer(record, now=now)
    await repo.claim_peer(peer("D", now=now, room_id="room-2"), now=now)
    assert await repo.list_peers("room-1", now=now) == [b, c, a]
    assert await repo.list_peers("room-1", now=now + 5.5) == [b, a]
    assert await repo.list_peers("room-1", now=now + 5.5, include_expired=True) == [b, c, a]
    assert await repo.list_peers("room-3", now=now) == []


@case
async def the_rooms_of_a_peer_id_are_those_it_is_live_in(repo: AnyRepository) -> None:
    now = clock()
    for room_id, expires_at in (("room-c", now + 60), ("room-a", now + 60), ("room-b", now + 5)):
        await repo.create_room(room(room_id, now=now))
        await repo.claim_peer(peer("W", now=now, room_id=room_id, expires_at=expires_at), now=now)
        await repo.claim_peer(peer("X", now=now, room_id=room_id, sub="bob"), now=now)
    assert await repo.rooms_of_peer("W", now=now) == ["room-a", "room-b", "room-c"]
    assert await repo.rooms_of_peer("W", now=now + 5) == ["room-a", "room-c"]
    assert await repo.rooms_of_peer("nobody", now=now) == []


@case
async def peers_are_deleted_in_batches_of_distinct_ids(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    ids = [f"P{n:02d}" for n in range(30)]  # more than one batch
    for peer_id in ids:
        await repo.claim_peer(peer(peer_id, now=now), now=now)
    await repo.delete_peers("room-1", [])
    await repo.delete_peers("room-1", (p for p in ids[:27]))
    assert [p.peer_id for p in await repo.list_peers("room-1", now=now)] == ids[27:]
    await repo.delete_peers("room-1", ["P27", "nobody"])
    with pytest.raises(Unavailable):  # DynamoDB refuses a batch naming a key twice
        await repo.delete_peers("room-1", ["P28", "P28"])
    assert [p.peer_id for p in await repo.list_peers("room-1", now=now)] == ["P28", "P29"]


# Held messages ---------------------------------------------------------------------


@case
async def held_messages_are_listed_by_target_in_order(repo: AnyRepository) -> None:
    now = clock()
    b2, b1 = message("B", 2, now=now), message("B", 1, now=now, correlation_id=7, for_session="session-b")
    bb = message("BB", 3, now=now)
    a = message("A", 4, now=now, expires_at_ms=(now - 10) * 1000)  # expired: listed all the same
    other = message("B", 5, now=now, room_id="room-2")
    for held in (b2, bb, b1, a, other):
        await hold(repo, held)
    assert await repo.held_messages("room-1") == [a, b1, b2, bb]
    assert await repo.held_messages("room-1", to_peer_id="B") == [b1, b2]  # not BB's
    assert await repo.held_messages("room-1", to_peer_id="B", with_frames=False) == [
        replace(b1, frame=""),
        replace(b2, frame=""),
    ]
    assert await repo.held_messages("room-1", to_peer_id="C") == []
    assert await repo.held_messages("room-3") == []
    with pytest.raises(ConditionFailed):
        await hold(repo, replace(b1, frame="another"))  # the key is taken
    claimed = message("C", 6, now=now, claimed_until_ms=now * 1000)
    await hold(repo, claimed)  # a new hold is nobody's claim
    assert await repo.held_messages("room-1", to_peer_id="C") == [replace(claimed, claimed_until_ms=0)]


@case
async def a_held_message_is_taken_once(repo: AnyRepository) -> None:
    now = clock()
    held = message("B", 1, now=now)
    await hold(repo, held)
    assert await repo.take_message("room-1", held.key) == held
    assert await repo.take_message("room-1", held.key) is None
    assert await repo.held_messages("room-1") == []


@case
async def held_messages_are_claimed_for_a_saved_session(repo: AnyRepository) -> None:
    now = clock()
    first, second = message("B", 1, now=now), message("B", 2, now=now)
    await hold(repo, first)
    await hold(repo, second)
    until = (now + 30) * 1000
    await repo.claim_messages("room-1", iter([first.key, "B#gone"]), until)  # a missing one is skipped
    assert await repo.held_messages("room-1") == [replace(first, claimed_until_ms=until), second]
    assert await repo.take_message("room-1", first.key) == replace(first, claimed_until_ms=until)


@case
async def held_messages_are_deleted_in_batches_of_distinct_keys(repo: AnyRepository) -> None:
    now = clock()
    held = [message("B", n, now=now) for n in range(28)]
    for one in held:
        await hold(repo, one)
    await repo.delete_messages("room-1", [])
    await repo.delete_messages("room-1", [m.key for m in held[:26]] + ["B#gone"])
    assert await repo.held_messages("room-1") == held[26:]
    with pytest.raises(Unavailable):
        await repo.delete_messages("room-1", [held[26].key, held[26].key])
    assert await repo.held_messages("room-1") == held[26:]


@case
async def a_room_s_messages_and_saved_frames_are_deleted_together(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now, frames=3)
    await hold(repo, message("B", 1, now=now))
    elsewhere = message("B", 2, now=now, room_id="room-2")
    await hold(repo, elsewhere)
    await repo.delete_room_messages("room-1")
    assert await repo.held_messages("room-1") == []
    assert await repo.held_messages("room-2") == [elsewhere]
    assert await repo.load_session("room-1", session.peer.peer_id) is None  # its frames are gone
    await repo.delete_room_messages("room-3")  # nothing there: nothing to do


@case
async def holding_a_message_marks_its_room_and_needs_the_room(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(replace(room(now=now), held_until_ms=0, saved_until=0))
    assert not (await repo.get_room("room-1")).may_hold_messages(now)
    held = message("B", 1, now=now)
    until = held.expires_at_ms + 60_000
    await repo.hold_message(held, held_until_ms=until)
    marked = await repo.get_room("room-1")
    assert (marked.held_until_ms, marked.saved_until) == (until, 0)
    assert marked.may_hold_messages(now)
    assert not marked.may_hold_messages(until / 1000)
    with pytest.raises(ConditionFailed):  # the key is taken: the mark stays as it was
        await repo.hold_message(replace(held, frame="another"), held_until_ms=until + 1)
    assert (await repo.get_room("room-1")).held_until_ms == until
    gone = message("B", 2, now=now, room_id="room-2")
    with pytest.raises(NotFound):  # no room: nothing is held, and no room item appears
        await repo.hold_message(gone, held_until_ms=until)
    assert await repo.held_messages("room-2") == []
    with pytest.raises(NotFound):
        await repo.get_room("room-2")


@case
async def a_hold_the_room_s_mark_covers_leaves_the_room_item_alone(repo: AnyRepository) -> None:
    now = clock()
    marked = replace(room(now=now), held_until_ms=5, saved_until=0)
    await repo.create_room(marked)
    held = message("B", 1, now=now)
    await repo.hold_message(held, held_until_ms=None)
    assert await repo.get_room("room-1") == marked
    assert await repo.held_messages("room-1") == [held]
    with pytest.raises(ConditionFailed):  # the key is taken
        await repo.hold_message(replace(held, frame="another"), held_until_ms=None)
    assert await repo.held_messages("room-1") == [held]


@case
async def saving_sessions_marks_their_room(repo: AnyRepository) -> None:
    now = clock()
    unmarked = room(now=now)  # a room written before the marks: anything may be in it
    await repo.create_room(unmarked)
    assert (await repo.get_room("room-1")).may_have_saved_sessions(now)
    assert (await repo.get_room("room-1")).may_hold_messages(now)
    await repo.mark_sessions_saved("room-1", until=now + 30)
    marked = await repo.get_room("room-1")
    assert marked == replace(unmarked, saved_until=now + 30)
    assert marked.may_have_saved_sessions(now)
    assert not marked.may_have_saved_sessions(now + 30)
    await repo.mark_sessions_saved("room-2", until=now + 30)  # no room: nothing, and no room item
    with pytest.raises(NotFound):
        await repo.get_room("room-2")


# Saved sessions --------------------------------------------------------------------


@case
async def a_saved_session_is_loaded_back_whole(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now)
    loaded = await repo.load_session("room-1", "A")
    assert loaded == replace(session, peer=replace(session.peer, saved=True))
    assert await repo.held_messages("room-1") == []  # its frames are not held messages
    entry = await repo.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.saved is True
    assert entry.expires_at == now + 30  # the saved session's lease
    assert [p.saved for p in await repo.list_peers("room-1", now=now)] == [True]


@case
async def a_session_without_frames_is_saved_and_loaded(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now, frames=0)
    loaded = await repo.load_session("room-1", "A")
    assert loaded is not None
    assert (loaded.frames, loaded.seq, loaded.session_id) == ([], session.seq, "session-a")


@case
async def only_the_holder_saves_a_session(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now, frames=0)
    with pytest.raises(ConditionFailed):
        await repo.save_session(replace(session, peer=replace(session.peer, connection_id="c2")))
    with pytest.raises(ConditionFailed):
        await repo.save_session(replace(session, peer=replace(session.peer, peer_id="B")))
    assert await repo.load_session("room-1", "B") is None


@case
async def a_session_missing_frames_is_loaded_whole_or_not_at_all(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now, frames=3)
    assert await repo.load_session("room-1", "nobody") is None
    await repo.create_room(room("room-2", now=now))
    await repo.claim_peer(peer(now=now, room_id="room-2"), now=now)
    assert await repo.load_session("room-2", "A") is None  # an entry, but nothing saved
    await repo.delete_session_frames(replace(session, frames=session.frames[1:2]))  # one frame lapsed
    assert await repo.load_session("room-1", "A") is None
    partial = await repo.load_session("room-1", "A", whole=False)
    assert partial is not None
    assert partial.frames == [session.frames[0], session.frames[2]]
    await repo.delete_session_frames(replace(session, frames=[]))  # no frames: nothing to do


@case
async def an_unresumed_session_is_dropped_once(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now)
    assert await repo.drop_session(replace(session, peer=replace(session.peer, connection_id="c2"))) is False
    assert await repo.drop_session(session) is True
    assert await repo.peer_entry("room-1", "A") is None
    assert await repo.drop_session(session) is False
    await repo.claim_peer(session.peer, now=now)  # the same connection, nothing saved
    assert await repo.drop_session(session) is False
    assert await repo.peer_entry("room-1", "A") is not None


@case
async def a_saved_session_s_entry_is_not_claimed_over(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now)
    for claimant in (replace(session.peer, connection_id="c2"), peer(now=now, sub="someone else", connection="c3")):
        with pytest.raises(ConditionFailed):  # not even by its own identity: the session must end first
            await repo.claim_peer(claimant, now=now)
    with pytest.raises(ConditionFailed):  # nor once its window is over
        await repo.claim_peer(replace(session.peer, connection_id="c2"), now=session.peer.expires_at + 1)
    assert await repo.load_session("room-1", "A") == replace(session, peer=replace(session.peer, saved=True))


@case
async def a_saved_session_is_taken_by_one_resume(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now)
    resumed = replace(session.peer, connection_id="c2", node_id="node-b", expires_at=now + 90)
    await repo.take_session(resumed, session, now=now)
    assert await repo.peer_entry("room-1", "A") == resumed  # nothing saved on it any more
    assert await repo.load_session("room-1", "A") is None
    with pytest.raises(ConditionFailed):
        await repo.take_session(replace(resumed, connection_id="c3"), session, now=now)
    assert await repo.drop_session(session) is False


@case
async def a_saved_session_is_not_taken_after_its_entry_changed(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now)
    assert await repo.drop_session(session) is True  # registered again: the saved session ended
    await repo.claim_peer(replace(session.peer, connection_id="c2"), now=now)
    assert await repo.peer_entry("room-1", "A") == replace(session.peer, connection_id="c2")  # nothing saved
    resume = replace(session.peer, connection_id="c3")
    with pytest.raises(ConditionFailed):
        await repo.take_session(resume, session, now=now)
    with pytest.raises(ConditionFailed):  # the entry's connection, but nothing saved on it
        await repo.take_session(resume, replace(session, peer=replace(session.peer, connection_id="c2")), now=now)


@case
async def a_saved_session_is_not_taken_in_a_gone_room(repo: AnyRepository) -> None:
    now = clock()
    session = await saved(repo, now=now)
    await repo.delete_room("room-1", now=now)
    with pytest.raises(NotFound):
        await repo.take_session(replace(session.peer, connection_id="c2"), session, now=now)
    assert await repo.load_session("room-1", "A") == replace(session, peer=replace(session.peer, saved=True))


@case
async def a_peers_connection_outcomes_are_kept_on_its_entry_while_it_holds_it(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    await repo.claim_peer(peer("A", now=now), now=now)
    outcomes = {"B": {"outcome": "connected", "path": "relay", "time_to_connect_ms": 840, "at": now}}
    await repo.update_peer_connections("room-1", "A", "c1", outcomes)
    assert (await repo.peer_entry("room-1", "A")).connections == outcomes  # type: ignore[union-attr]
    assert [p.connections for p in await repo.list_peers("room-1", now=now)] == [outcomes]
    with pytest.raises(ConditionFailed):
        await repo.update_peer_connections("room-1", "A", "someone-else", {})
    with pytest.raises(ConditionFailed):
        await repo.update_peer_connections("room-1", "nobody", "c1", {})
    resumed = replace(peer("A", now=now), connection_id="c2", connections=outcomes)
    await repo.claim_peer(resumed, now=now)  # an entry written whole keeps what it carries
    assert await repo.peer_entry("room-1", "A") == resumed


# Bookings --------------------------------------------------------------------------


@case
async def a_booking_is_written_over_the_version_read_only(repo: AnyRepository) -> None:
    """Of two writers that read the same version, one lands; the other reads again."""
    now = clock()
    await repo.create_room(room(now=now))
    await repo.claim_peer(peer("W", now=now, max_claims=2), now=now)
    assert (await repo.peer_entry("room-1", "W")).max_claims == 2  # type: ignore[union-attr]
    empty = await repo.booking("room-1", "W")
    assert empty == Booking("room-1", "W")
    first = Booking("room-1", "W", (Lease("l1", "C1", "carol", now + 60),), version=1, expires_at=now + 7200)
    second = Booking("room-1", "W", (Lease("l2", "C2", "dave", now + 60),), version=1, expires_at=now + 7200)
    await repo.write_booking(first, read_version=0, peer_live_at=now)
    with pytest.raises(ConditionFailed):
        await repo.write_booking(second, read_version=0, peer_live_at=now)
    assert await repo.booking("room-1", "W") == first
    both = replace(first, leases=(*first.leases, Lease("l2", "C2", "dave", now + 30)), version=2)
    await repo.write_booking(both, read_version=1, peer_live_at=now)
    with pytest.raises(ConditionFailed):
        await repo.write_booking(replace(both, version=2), read_version=1)
    released = replace(both, leases=both.leases[1:], version=3)
    await repo.write_booking(released, read_version=2)  # a release needs no live peer
    stored = await repo.booking("room-1", "W")
    assert stored == released
    assert stored.live(now + 31) == ()
    assert stored.lease("l2") == Lease("l2", "C2", "dave", now + 30)
    assert await repo.held_messages("room-1") == []  # a booking is not a held message


@case
async def a_lease_is_granted_only_on_a_live_peer(repo: AnyRepository) -> None:
    now = clock()
    await repo.create_room(room(now=now))
    await repo.claim_peer(peer("W", now=now, expires_at=now + 10), now=now)
    booking = Booking("room-1", "W", (Lease("l1", "C", "carol", now + 60),), version=1, expires_at=now + 7200)
    with pytest.raises(NotFound):
        await repo.write_booking(booking, read_version=0, peer_live_at=now + 10)  # its entry lapsed by then
    with pytest.raises(NotFound):
        await repo.write_booking(replace(booking, peer_id="nobody"), read_version=0, peer_live_at=now)
    assert await repo.booking("room-1", "W") == Booking("room-1", "W")
    await repo.write_booking(booking, read_version=0, peer_live_at=now)
    await repo.delete_room_messages("room-1")  # a deleted room's bookings go with its messages
    assert await repo.booking("room-1", "W") == Booking("room-1", "W")


# Health ----------------------------------------------------------------------------


@case
async def the_tables_answer_the_health_check(repo: AnyRepository) -> None:
    await repo.check()
