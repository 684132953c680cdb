"""Connection outcomes (ws_relay.outcomes): reports checked, counted and logged, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from fakes.relay_world import Client, World
from support import logs_into
from ws_relay import protocol
from ws_relay.outcomes import REPORTS_PER_PEER, path_of

TURN = "turn:turn.example.org:3478?transport=udp"


async def pair(world: World) -> tuple[Client, Client]:
    await world.room()
    return await world.register("A", sub="alice"), await world.register("B", sub="bob")


def report(**fields: Any) -> dict[str, Any]:
    return {"type": "connection_report", "peer_id": "B", **fields}


@pytest.mark.parametrize(
    ("local", "remote", "path"),
    [
        ("host", "host", "direct"),
        ("srflx", "host", "stun"),
        ("host", "prflx", "stun"),
        ("relay", "srflx", "relay"),
        ("host", "relay", "relay"),
        (None, None, "unknown"),
        ("host", None, "unknown"),
    ],
)
def test_the_path_is_named_by_the_candidate_types(local: str | None, remote: str | None, path: str) -> None:
    message = protocol.parse_message(report(outcome="failed", local_candidate=local, remote_candidate=remote))
    assert isinstance(message, protocol.ConnectionReport)
    assert path_of(message) == path


async def test_a_report_is_counted_by_outcome_and_path_and_acked() -> None:
    world = World(turn_urls=[TURN])
    a, _ = await pair(world)
    connected = report(
        outcome="connected",
        local_candidate="relay",
        remote_candidate="srflx",
        transport="udp",
        time_to_connect_ms=850,
        turn_server=TURN,
        id="r1",
    )
    await world.send(a, connected)
    await world.send(a, report(outcome="closed", id="r2"))
    assert [frame["id"] for frame in a.link.of_type("ack")] == ["r1", "r2"]
    assert world.metrics.peer_connections.labels("connected", "relay")._value.get() == 1
    assert world.metrics.peer_connections.labels("closed", "unknown")._value.get() == 1
    samples = {
        s.name: s.value
        for s in next(iter(world.metrics.time_to_connect.collect())).samples
        if s.labels["path"] == "relay"
    }
    assert samples["signaling_peer_connection_seconds_count"] == 1
    assert samples["signaling_peer_connection_seconds_sum"] == pytest.approx(0.85)
    entry = await world.repository.peer_entry("room-1", "A")  # what rooms-api shows the creator
    assert entry is not None
    assert entry.connections == {
        "B": {"outcome": "closed", "path": "unknown", "time_to_connect_ms": None, "at": int(world.clock.now)}
    }


async def test_bad_reports_get_typed_errors_and_count_nothing() -> None:
    world = World(turn_urls=[TURN])
    a, _ = await pair(world)
    bad = [
        report(peer_id="A", outcome="failed"),  # itself
        report(peer_id="nobody", outcome="failed"),  # not in the room
        report(outcome="connected"),  # no time to connect
        report(outcome="connected", time_to_connect_ms=-1),
        report(outcome="connected", time_to_connect_ms=10, turn_server="turn:elsewhere.example:3478"),
        report(outcome="closed", failure="ice_failed"),
        report(outcome="maybe"),
        report(outcome="failed", local_candidate="192.0.2.1"),  # an address is not a type
    ]
    for n, message in enumerate(bad):
        await world.send(a, {**message, "id": n})
    assert a.link.errors() == ["INVALID_MESSAGE", "PEER_NOT_FOUND"] + ["INVALID_MESSAGE"] * 6
    assert world.metrics.peer_connections._metrics == {}


async def test_reports_per_peer_are_bounded() -> None:
    world = World()
    a, _ = await pair(world)
    for n in range(REPORTS_PER_PEER + 1):
        await world.send(a, report(outcome="failed", failure="timeout", id=n))
    assert a.link.errors() == ["RATE_LIMITED"]
    assert world.metrics.peer_connections.labels("failed", "unknown")._value.get() == REPORTS_PER_PEER


async def test_a_peer_that_left_may_still_be_reported_closed() -> None:
    world = World()
    a, b = await pair(world)
    await world.send(
        a, report(outcome="connected", local_candidate="host", remote_candidate="host", time_to_connect_ms=5)
    )
    await world.close(b)
    await world.send(a, report(outcome="closed", id="late"))
    assert a.link.last("ack")["id"] == "late"
    assert world.metrics.peer_connections.labels("connected", "direct")._value.get() == 1


async def test_the_log_line_carries_no_address() -> None:
    world = World(turn_urls=[TURN])
    a, _ = await pair(world)
    with logs_into("INFO") as buffer:
        await world.send(a, report(outcome="failed", failure="ice_failed", local_candidate="host"))
    out = buffer.getvalue()
    line = next(line for line in out.splitlines() if "peer_connection" in line)
    assert "ice_failed" in line
    assert "192.0.2.1" not in line  # the fake client's address
