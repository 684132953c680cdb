"""This node in the shared tables: leases, take-over decisions, heartbeat and fencing."""

from __future__ import annotations

import asyncio
import dataclasses

from fakes.relay_world import World
from signaling_shared.dynamo import PeerRecord, RelayNode
from signaling_shared.errors import RepositoryError, StorageUnavailable
from support import TIMEOUT
from ws_relay.close_codes import CloseCode


async def test_a_lease_refresh_extends_every_entry() -> None:
    world = World(peer_lease_seconds=30)
    await world.room()
    await world.register("A")
    before = await world.repository.peer_entry("room-1", "A")
    world.clock.now += 20
    await world.relay.refresh_leases()
    after = await world.repository.peer_entry("room-1", "A")
    assert before is not None
    assert after is not None
    assert after.expires_at == before.expires_at + 20


async def test_a_deleted_room_closes_its_peers_with_4003_and_a_lost_one_with_4007() -> None:
    world = World()
    await world.room("deleted")
    await world.room("lost")
    a = await world.register("A", room="deleted")
    b = await world.register("B", room="lost")
    await world.repository.delete_room("deleted", now=world.clock())  # the creator's: a tombstone
    del world.repository.rooms_table["lost"]  # gone without a deletion (a storage fault)
    await world.relay.refresh_leases()
    await world.settle()
    assert a.link.close_code() == CloseCode.ROOM_DELETED
    assert b.link.close_code() == CloseCode.ROOM_LOST


async def test_an_entry_taken_over_elsewhere_replaces_the_member_here() -> None:
    world = World()
    await world.room()
    a = await world.register("A", sub="alice")
    entry = await world.repository.peer_entry("room-1", "A")
    assert entry is not None
    elsewhere = dataclasses.replace(entry, connection_id="another-node's", node_id="relay-2")
    await world.repository.claim_peer(elsewhere, now=int(world.clock()))
    await world.relay.refresh_leases()
    await world.settle()
    assert a.link.close_code() == CloseCode.REPLACED


async def test_a_storage_fault_during_a_refresh_ends_nobody() -> None:
    world = World()
    await world.room()
    a = await world.register("A")
    world.repository.fail_next("refresh_peer", RepositoryError("DynamoDB did not answer"))
    await world.relay.refresh_leases()
    await world.settle()
    assert a.link.closed is None


async def test_a_node_heartbeats_and_prunes_nodes_long_silent() -> None:
    world = World(
        public_ws_url="ws://relay-1.test/ws", node_id="relay-1", node_ttl_seconds=10, node_heartbeat_seconds=1
    )
    long_gone = RelayNode("relay-old", "ws://old.test/ws", 0, 10, world.clock() - 1000)
    await world.repository.heartbeat_node(long_gone)
    await world.relay.cluster.heartbeat()
    nodes = {node.node_id: node for node in await world.repository.relay_nodes()}
    assert set(nodes) == {"relay-1"}
    assert nodes["relay-1"].ws_url == "ws://relay-1.test/ws"
    assert not nodes["relay-1"].draining
    await world.relay.cluster.draining()
    assert (await world.repository.relay_nodes())[0].draining


async def test_a_node_that_cannot_renew_its_entry_in_time_is_fenced() -> None:
    """Renewals fail: before the entry can lapse (and its rooms move), the node fences."""
    world = World(public_ws_url="ws://relay-1.test/ws", node_id="relay-1", node_ttl_seconds=2, node_heartbeat_seconds=1)
    await world.relay.cluster.heartbeat()

    async def failing(node: RelayNode) -> None:
        raise StorageUnavailable("DynamoDB did not answer")

    world.repository.heartbeat_node = failing  # type: ignore[method-assign]
    beating = asyncio.ensure_future(world.relay.cluster.heartbeat_forever())
    async with asyncio.timeout(TIMEOUT):
        await world.relay.cluster.fenced.wait()
    assert beating.done()


async def test_two_nodes_taking_one_room_over_agree_on_one() -> None:
    """The move is conditional on the previous owner: the loser redirects to the winner."""
    first = World(public_ws_url="ws://relay-1.test/ws", node_id="relay-1")
    second = World(
        repository=first.repository, clock=first.clock, public_ws_url="ws://relay-2.test/ws", node_id="relay-2"
    )
    room = await first.room(node_id="relay-dead")
    for world in (first, second):
        await world.relay.cluster.heartbeat()
    results = await asyncio.gather(
        first.relay.cluster.serving_node(room, first.clock()), second.relay.cluster.serving_node(room, first.clock())
    )
    owner = (await first.repository.get_room("room-1")).node_id
    assert owner in ("relay-1", "relay-2")
    assert sorted(node.node_id if node else "here" for node in results) == sorted(["here", owner])


async def test_a_record_carries_this_node_and_a_lease_within_the_room() -> None:
    world = World(peer_lease_seconds=120)
    room = await world.room(expires_in=60)
    a = await world.register("A")
    record = world.relay.cluster.record(a.member, world.clock())
    assert isinstance(record, PeerRecord)
    assert record.node_id == world.settings.node_id
    assert record.expires_at == room.expires_at
