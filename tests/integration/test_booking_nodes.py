"""Booking a worker over real sockets and the emulator's DynamoDB: two relay nodes on the
shared tables grant one worker to exactly one of two clients claiming it at the same
instant, every time; the lease outlives the process that granted it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import RelayFactory
from support import Peer, create_room, sign_in, unique
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration

ROUNDS = 12


def url(server: RelayServer) -> str:
    return f"ws://{server.settings.host}:{server.port}"


async def next_of(peer: Peer, *kinds: str) -> dict[str, Any]:
    """The next message of one of ``kinds`` (room events that come first skipped)."""
    while True:
        message = await peer.recv()
        if message["type"] in kinds:
            return message


async def outcome(peer: Peer) -> dict[str, Any]:
    """The answer to the claim: claimed or the error."""
    return await next_of(peer, "claimed", "error")


async def test_two_clients_on_two_nodes_claiming_one_worker_at_once_exactly_one_wins(
    api: str, relay_with: RelayFactory
) -> None:
    async with relay_with(node_id="node-a") as node_a, relay_with(node_id="node-b") as node_b:
        users = await asyncio.gather(*(sign_in(api) for _ in range(3)))
        for _ in range(ROUNDS):
            room = await create_room(api, users[0])
            worker = await Peer.connect(url(node_a))
            await worker.register(unique("Worker"), room, users[0])
            near, far = await Peer.connect(url(node_a)), await Peer.connect(url(node_b))
            await near.register(unique("Near"), room, users[1])
            await far.register(unique("Far"), room, users[2])
            assert worker.peer_id is not None
            claim = {"type": "claim", "peer_id": worker.peer_id, "ttl_seconds": 60}
            await asyncio.gather(near.send({**claim, "id": "n"}), far.send({**claim, "id": "f"}))
            answers = await asyncio.gather(outcome(near), outcome(far))
            kinds = sorted((a["type"], a.get("code")) for a in answers)
            assert kinds == [("claimed", None), ("error", "ALREADY_CLAIMED")], answers
            for peer in (worker, near, far):
                await peer.close()


async def test_a_lease_outlives_the_relay_that_granted_it(api: str, relay_with: RelayFactory) -> None:
    """Granted by one process, which then stops (saving its sessions for a resume): another
    process refuses a second claimant, from the state in DynamoDB alone."""
    users = await asyncio.gather(*(sign_in(api) for _ in range(3)))
    room = await create_room(api, users[0])
    async with relay_with(node_id="node-a") as first:
        worker = await Peer.connect(url(first))
        await worker.register("Worker", room, users[0])
        holder = await Peer.connect(url(first))
        await holder.register("Holder", room, users[1])
        await holder.send({"type": "claim", "peer_id": "Worker", "id": 1})
        lease = await outcome(holder)
        assert lease["type"] == "claimed", lease
        booked = await next_of(worker, "booked")
        assert (booked["lease_id"], booked["by_peer_id"]) == (lease["lease_id"], "Holder")
    async with relay_with(node_id="node-b") as second:
        rival = await Peer.connect(url(second))
        await rival.register("Rival", room, users[2])
        await rival.send({"type": "claim", "peer_id": "Worker", "id": 2})
        refused = await outcome(rival)
        assert (refused["type"], refused.get("code"), refused.get("id")) == ("error", "ALREADY_CLAIMED", 2)
        await rival.close()
