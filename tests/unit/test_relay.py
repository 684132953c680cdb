"""Dispatch, discovery, fan-out, leaving and shutdown on one node, without sockets."""

from __future__ import annotations

from typing import Any

from fakes.relay_world import Client, World
from ws_relay.close_codes import CloseCode
from ws_relay.hub import MemberState


async def room_of(world: World, *peers: tuple[str, dict[str, Any]]) -> list[Client]:
    await world.room()
    return [await world.register(peer_id, sub=peer_id.lower(), **extra) for peer_id, extra in peers]


async def test_bad_frames_get_typed_errors_with_their_id_and_the_socket_stays() -> None:
    world = World()
    (a,) = await room_of(world, ("A", {}))
    await world.send(a, "{not json")
    await world.send(a, {"type": "nonsense", "id": 1})
    await world.send(a, {"type": "offer", "id": 2})
    await world.send(a, {"type": "offer", "target": "nobody", "sdp": "v=0"})  # with an id: held
    await world.send(a, {"type": "offer", "sender": "B", "target": "A", "sdp": "v=0", "id": 4})
    errors = [(frame["code"], frame.get("id")) for frame in a.link.of_type("error")]
    assert errors == [
        ("INVALID_JSON", None),
        ("UNKNOWN_MESSAGE_TYPE", 1),
        ("INVALID_MESSAGE", 2),
        ("PEER_NOT_FOUND", None),
        ("SENDER_MISMATCH", 4),
    ]
    assert a.link.closed is None


async def test_only_a_register_or_a_ping_before_registering() -> None:
    world = World()
    client = world.connect()
    await world.send(client, {"type": "ping", "id": "p"})
    await world.send(client, {"type": "broadcast", "payload": 1, "id": "b"})
    assert client.link.sent[0] == {"type": "pong", "id": "p"}
    assert client.link.errors() == ["NOT_REGISTERED"]


async def test_a_sender_over_its_rate_is_refused_without_decoding() -> None:
    world = World(messages_per_second=1, message_burst=1)
    client = world.connect()
    await world.send(client, {"type": "ping"})
    await world.send(client, '{"type": "ping", "id": "late"')  # not even valid JSON: not decoded
    refused = client.link.last("error")
    assert refused["code"] == "RATE_LIMITED"
    assert refused["id"] == "late"
    assert refused["retry_after_ms"] > 0


async def test_discovery_filters_the_room_and_never_looks_into_another() -> None:
    world = World()
    a, _, _ = await room_of(
        world,
        ("A", {}),
        ("W1", {"role": "worker", "metadata": {"tags": ["gpu"], "properties": {"gpu_memory_mb": 24576}}}),
        ("W2", {"role": "worker", "metadata": {"tags": ["cpu"]}}),
    )
    await world.send(a, {"type": "discover_peers", "filters": {"role": "worker", "tags": ["gpu"]}, "id": 1})
    await world.send(a, {"type": "discover_peers", "filters": {"room_id": "another"}, "id": 2})
    await world.send(a, {"type": "discover_peers", "filters": {"properties": {"x": {"$regex": "."}}}, "id": 3})
    lists = a.link.of_type("peer_list")
    assert [peer["peer_id"] for peer in lists[0]["peers"]] == ["W1"]
    assert lists[1]["peers"] == []
    assert a.link.last("error")["code"] == "INVALID_MESSAGE"
    await world.send(a, {"type": "query", "id": 4})
    assert sorted(a.link.last("available_peers")["peers"]) == ["W1", "W2"]


async def test_a_broadcast_costs_one_message_per_recipient() -> None:
    world = World(messages_per_second=1, message_burst=3)
    a, b, c = await room_of(world, ("A", {}), ("B", {}), ("C", {}))
    await world.send(a, {"type": "broadcast", "payload": "hi", "id": 1})  # 2 of 3
    assert b.link.last("broadcast")["payload"] == "hi"
    assert c.link.last("broadcast")["from_peer_id"] == "A"
    await world.send(a, {"type": "broadcast", "payload": "again", "id": 2})  # 1 left: refused before sending
    assert a.link.last("error")["code"] == "RATE_LIMITED"
    assert len(b.link.of_type("broadcast")) == 1


async def test_metadata_updates_are_checked_stored_and_heard() -> None:
    world = World(max_metadata_bytes=64)
    a, b = await room_of(world, ("A", {"metadata": {"status": "busy"}}), ("B", {}))
    await world.send(a, {"type": "update_metadata", "metadata": {"status": "free"}, "id": 1})
    assert b.link.last("metadata_updated")["metadata"] == {"status": "free"}
    entry = await world.repository.peer_entry("room-1", "A")
    assert entry is not None
    assert entry.metadata == {"status": "free"}
    await world.send(a, {"type": "update_metadata", "metadata": {"big": "x" * 100}, "id": 2})
    assert a.link.last("error")["code"] == "INVALID_MESSAGE"
    await world.send(a, {"type": "update_metadata", "peer_id": "B", "metadata": {}, "id": 3})
    assert a.link.last("error")["code"] == "SENDER_MISMATCH"


async def test_a_dropped_member_waits_for_its_resume_then_leaves() -> None:
    world = World(resume_window_seconds=1)
    a, b = await room_of(world, ("A", {}), ("B", {}))
    await world.drop(a)
    assert a.member.state is MemberState.DETACHED
    assert not b.link.of_type("peer_left")
    await world.until(lambda: bool(b.link.of_type("peer_left")))
    assert b.link.last("peer_left")["reason"] == "timeout"
    assert await world.repository.peer_entry("room-1", "A") is None


async def test_quit_ends_the_member_for_good() -> None:
    world = World()
    a, b = await room_of(world, ("A", {"is_admin": True}), ("B", {}))
    await world.send(a, {"type": "quit"})
    assert a.link.close_code() == CloseCode.QUIT
    assert b.link.last("peer_left")["reason"] == "quit"
    assert a.member.state is MemberState.GONE


async def test_a_v1_peer_gets_only_what_the_seed_sent() -> None:
    world = World()
    await world.room()
    seed = world.connect()
    await world.send(
        seed, {"type": "register", "peer_id": "S", "room_id": "room-1", "token": "room-token", "id_token": "s"}
    )
    v2 = await world.register("B", sub="bob")
    await world.send(v2, {"type": "peer_message", "to_peer_id": "S", "payload": 1, "id": "m"})
    assert v2.link.last("error")["code"] == "UNSUPPORTED_BY_PEER"
    await world.send(v2, {"type": "offer", "target": "S", "sdp": "v=0"})
    assert [frame["type"] for frame in seed.link.sent] == ["registered_auth", "offer"]


async def test_shutdown_sends_go_away_and_refuses_registrations() -> None:
    world = World(drain_seconds=1, drain_jitter_ms=10)
    (a,) = await room_of(world, ("A", {}))
    waiting = world.connect()
    world.relay.begin_shutdown()
    assert a.link.last("go_away")["reason"] == "SERVER_SHUTDOWN"
    assert 1000 <= waiting.link.last("go_away")["reconnect_after_ms"] <= 1010
    assert not world.relay.drained.is_set()
    await world.drop(a)
    await world.close(waiting)
    assert world.relay.drained.is_set()


async def test_an_unhandled_error_is_answered_as_internal_error_every_time() -> None:
    world = World()
    (a,) = await room_of(world, ("A", {}))

    def broken(*_: Any, **__: Any) -> Any:
        raise ZeroDivisionError("a bug a client can reach")

    world.relay.discover = broken  # type: ignore[method-assign]
    for i in range(10):
        await world.send(a, {"type": "discover_peers", "id": i})
    assert [frame["id"] for frame in a.link.of_type("error") if frame["code"] == "INTERNAL_ERROR"] == list(range(10))
    assert world.metrics.errors.labels("INTERNAL_ERROR")._value.get() == 10
