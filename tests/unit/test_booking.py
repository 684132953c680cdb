"""Booking a worker (ws_relay.booking) on one node, without sockets: claim, renew, release,
and each way a lease ends; the limits on each request."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fakes.relay_world import Client, World


async def room_of(world: World, *peers: tuple[str, dict[str, Any]]) -> list[Client]:
    await world.room()
    return [await world.register(peer_id, sub=peer_id.lower(), **extra) for peer_id, extra in peers]


def claim(peer_id: str = "W", **extra: Any) -> dict[str, Any]:
    return {"type": "claim", "peer_id": peer_id, **extra}


async def test_a_claim_is_granted_and_the_worker_and_the_room_hear_it() -> None:
    world = World()
    w, c, x = await room_of(world, ("W", {}), ("C", {}), ("X", {}))
    await world.send(c, claim(ttl_seconds=60, id="k1"))
    claimed = c.link.last("claimed")
    lease_id = claimed["lease_id"]
    assert claimed == {
        "type": "claimed",
        "peer_id": "W",
        "lease_id": lease_id,
        "expires_at": int(world.clock.now) + 60,
        "id": "k1",
        "seq": claimed["seq"],
    }
    assert {**w.link.last("booked"), "seq": 0} == {
        "type": "booked",
        "lease_id": lease_id,
        "by_peer_id": "C",
        "expires_at": claimed["expires_at"],
        "seq": 0,
    }
    availability = x.link.last("peer_availability")
    assert (availability["peer_id"], availability["available"], availability["claims"]) == ("W", False, 1)
    booking = await world.repository.booking("room-1", "W")
    assert [(lease.lease_id, lease.holder_peer_id) for lease in booking.leases] == [(lease_id, "C")]
    assert world.metrics.claims.labels("granted")._value.get() == 1


async def test_a_second_claimant_is_refused_until_the_worker_takes_more() -> None:
    world = World()
    _, c1, c2, _, d1, d2, d3 = await room_of(
        world, ("W", {}), ("C1", {}), ("C2", {}), ("V", {"max_claims": 2}), ("D1", {}), ("D2", {}), ("D3", {})
    )
    await world.send(c1, claim(id=1))
    await world.send(c2, claim(id=2))
    assert c1.link.of_type("claimed")
    assert c2.link.errors() == ["ALREADY_CLAIMED"]
    assert c2.link.last("error")["id"] == 2
    for client in (d1, d2, d3):
        await world.send(client, claim("V", id=3))
    assert [bool(client.link.of_type("claimed")) for client in (d1, d2, d3)] == [True, True, False]
    assert d3.link.errors() == ["ALREADY_CLAIMED"]
    assert world.metrics.claims.labels("refused")._value.get() == 2


async def test_of_two_claims_at_the_same_instant_exactly_one_wins() -> None:
    for _ in range(20):
        world = World()
        _, c1, c2 = await room_of(world, ("W", {}), ("C1", {}), ("C2", {}))
        await asyncio.gather(
            world.relay.handle_frame(c1.connection, json.dumps(claim(id=1))),
            world.relay.handle_frame(c2.connection, json.dumps(claim(id=2))),
        )
        await world.settle()
        outcomes = sorted((bool(c.link.of_type("claimed")), tuple(c.link.errors())) for c in (c1, c2))
        assert outcomes == [(False, ("ALREADY_CLAIMED",)), (True, ())]
        assert len((await world.repository.booking("room-1", "W")).leases) == 1


async def test_claiming_again_gives_the_lease_already_held() -> None:
    world = World()
    _, c = await room_of(world, ("W", {}), ("C", {}))
    await world.send(c, claim(id=1))
    await world.send(c, claim(id=2))  # a retry after a resume, say
    first, second = c.link.of_type("claimed")
    assert first["lease_id"] == second["lease_id"]
    assert second["id"] == 2
    assert len((await world.repository.booking("room-1", "W")).leases) == 1


async def test_a_holder_renews_its_lease_and_no_one_else_can() -> None:
    world = World()
    _, c, other = await room_of(world, ("W", {}), ("C", {}), ("O", {}))
    await world.send(c, claim(ttl_seconds=30, id=1))
    lease_id = c.link.last("claimed")["lease_id"]
    world.clock.now += 20
    await world.send(c, {"type": "renew", "lease_id": lease_id, "ttl_seconds": 60, "id": 2})
    renewed = c.link.last("claimed")
    assert (renewed["lease_id"], renewed["expires_at"], renewed["id"]) == (lease_id, int(world.clock.now) + 60, 2)
    assert (await world.repository.booking("room-1", "W")).lease(lease_id).expires_at == renewed["expires_at"]  # type: ignore[union-attr]
    await world.send(other, {"type": "renew", "lease_id": lease_id, "id": 3})
    await world.send(other, {"type": "release", "lease_id": lease_id, "id": 4})
    await world.send(c, {"type": "renew", "lease_id": "made-up", "id": 5})
    await world.send(c, {"type": "renew", "lease_id": "made-up~W", "id": 6})
    assert other.link.errors() == ["LEASE_NOT_FOUND", "LEASE_NOT_FOUND"]
    assert c.link.errors() == ["LEASE_NOT_FOUND", "LEASE_NOT_FOUND"]
    assert (await world.repository.booking("room-1", "W")).lease(lease_id) is not None


async def test_a_released_lease_frees_the_worker_for_the_next_client() -> None:
    world = World()
    w, c1, c2 = await room_of(world, ("W", {}), ("C1", {}), ("C2", {}))
    await world.send(c1, claim(id=1))
    lease_id = c1.link.last("claimed")["lease_id"]
    await world.send(c1, {"type": "release", "lease_id": lease_id, "id": 2})
    assert {k: v for k, v in c1.link.last("released").items() if k != "seq"} == {
        "type": "released",
        "peer_id": "W",
        "lease_id": lease_id,
        "id": 2,
    }
    ended = w.link.last("lease_ended")
    assert (ended["lease_id"], ended["holder_peer_id"], ended["reason"]) == (lease_id, "C1", "released")
    assert not c1.link.of_type("lease_ended")  # its own release is answered by 'released'
    assert c2.link.last("peer_availability")["available"] is True
    await world.send(c1, {"type": "release", "lease_id": lease_id, "id": 3})
    assert c1.link.errors() == ["LEASE_NOT_FOUND"]
    await world.send(c2, claim(id=4))
    assert c2.link.of_type("claimed")


async def test_a_lease_not_renewed_expires_and_both_sides_hear_it() -> None:
    world = World(claim_ttl_min_seconds=1)
    w, c = await room_of(world, ("W", {}), ("C", {}))
    await world.send(c, claim(ttl_seconds=1, id=1))
    lease_id = c.link.last("claimed")["lease_id"]
    world.clock.now += 2
    await world.until(lambda: bool(c.link.of_type("lease_ended")))
    for client in (c, w):
        ended = client.link.last("lease_ended")
        assert (ended["lease_id"], ended["reason"]) == (lease_id, "expired")
    assert (await world.repository.booking("room-1", "W")).leases == ()
    assert world.metrics.claims.labels("expired")._value.get() == 1
    assert c.member.holding == {}


async def test_a_holder_that_leaves_ends_its_leases() -> None:
    world = World(resume_window_seconds=1)
    w, c, x = await room_of(world, ("W", {}), ("C", {}), ("X", {}))
    await world.send(c, claim(id=1))
    lease_id = c.link.last("claimed")["lease_id"]
    await world.drop(c)  # detached: the lease holds through the resume window
    assert not w.link.of_type("lease_ended")
    await world.until(lambda: bool(w.link.of_type("lease_ended")))
    ended = w.link.last("lease_ended")
    assert (ended["lease_id"], ended["holder_peer_id"], ended["reason"]) == (lease_id, "C", "holder_left")
    assert x.link.last("peer_availability")["available"] is True
    assert (await world.repository.booking("room-1", "W")).leases == ()


async def test_a_worker_that_leaves_ends_the_leases_on_it() -> None:
    world = World()
    w, c = await room_of(world, ("W", {}), ("C", {}))
    await world.send(c, claim(id=1))
    lease_id = c.link.last("claimed")["lease_id"]
    await world.close(w)
    ended = c.link.last("lease_ended")
    assert (ended["peer_id"], ended["lease_id"], ended["reason"]) == ("W", lease_id, "peer_left")
    assert c.member.holding == {}
    assert (await world.repository.booking("room-1", "W")).leases == ()


async def test_claims_are_checked_before_any_write() -> None:
    world = World(max_leases_per_peer=1, claims_per_minute=60, claim_burst=6)
    _, _, c = await room_of(world, ("W", {}), ("V", {}), ("C", {}))
    await world.send(c, claim("C", id=1))  # itself
    await world.send(c, claim(ttl_seconds=4, id=2))  # below claim_ttl_min_seconds (5)
    await world.send(c, claim(ttl_seconds=3601, id=3))  # above claim_ttl_max_seconds
    await world.send(c, claim("nobody", id=4))
    await world.send(c, claim(id=5))
    await world.send(c, claim("V", id=6))  # a second lease: past max_leases_per_peer
    assert c.link.errors() == ["INVALID_MESSAGE"] * 3 + ["PEER_NOT_FOUND", "INVALID_MESSAGE"]
    writes = world.repository.operations.count("write_booking")
    assert writes == 1  # only the granted claim wrote
    await world.send(c, {"type": "release", "lease_id": c.link.last("claimed")["lease_id"], "id": 7})
    for n in range(8, 14):  # each a read and maybe a write: the identity's budget (burst 6) runs out
        await world.send(c, {"type": "release", "lease_id": "unknown~W", "id": n})
    tail = c.link.errors()[5:]
    assert tail[0] == "LEASE_NOT_FOUND"
    assert tail[-1] == "RATE_LIMITED"


async def test_discovery_filters_on_availability() -> None:
    world = World()
    _, _, c, x = await room_of(world, ("W", {"role": "worker"}), ("V", {"role": "worker"}), ("C", {}), ("X", {}))
    await world.send(c, claim(id=1))
    await world.send(x, {"type": "discover_peers", "filters": {"role": "worker", "available": True}, "id": 2})
    assert [peer["peer_id"] for peer in x.link.last("peer_list")["peers"]] == ["V"]
    await world.send(x, {"type": "discover_peers", "filters": {"available": False}, "id": 3})
    assert [peer["peer_id"] for peer in x.link.last("peer_list")["peers"]] == ["W"]
    await world.send(x, {"type": "discover_peers", "filters": {"available": "yes"}, "id": 4})
    assert x.link.errors() == ["INVALID_MESSAGE"]


async def test_a_worker_declares_its_capacity_in_its_routing_entry() -> None:
    world = World()
    await room_of(world, ("W", {"max_claims": 3}))
    entry = await world.repository.peer_entry("room-1", "W")
    assert entry is not None
    assert entry.max_claims == 3
