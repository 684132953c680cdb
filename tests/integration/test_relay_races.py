"""Registrations racing a closed socket, a retry, or the room's deletion.

The relay runs on the real tables; its repository is the real one with a gate that holds
a chosen call until the test has lined up the other side of the race.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from devstack.stack import StackInfo
from support import TIMEOUT, Peer, User, create_room, gated_relay, peer_ids_in_table, repository, sign_in

pytestmark = pytest.mark.integration


def register(peer_id: str, room_id: str, token: str, user: User) -> dict[str, str | int]:
    return {
        "type": "register",
        "protocol": 2,
        "peer_id": peer_id,
        "room_id": room_id,
        "token": token,
        "id_token": user.id_token,
    }


@pytest.mark.parametrize("held", ["get_room", "claim_peer"])
async def test_an_abandoned_registration_evicts_no_one(api: str, stack: StackInfo, held: str) -> None:
    """A takeover whose socket closed mid-way leaves the live holder its peer id and its routing entry."""
    async with gated_relay(stack, held) as (server, gated):
        url = f"ws://127.0.0.1:{server.port}"
        user, other_user = await sign_in(api), await sign_in(api)
        room = await create_room(api, user)
        other, holder = await Peer.connect(url), await Peer.connect(url)
        await other.register("Other", room, other_user)
        await holder.register("X", room, user)
        assert (await other.expect("peer_joined"))["peer_id"] == "X"

        late = await Peer.connect(url)  # the same identity, e.g. a stale retry
        server.relay.registrar.rooms.forget(room.room_id)  # it reads the room, as a first one does
        gated.arm()
        await late.send(register("X", room.room_id, room.token, user))
        await asyncio.wait_for(gated.reached.wait(), TIMEOUT)
        await late.close()  # ...whose socket is gone before its registration finishes
        gated.gate.set()
        # The held call, and for a held write the write that puts the holder's entry back.
        expected = ["get_room"] if held == "get_room" else ["claim_peer", "claim_peer"]
        assert [await asyncio.wait_for(gated.completed.get(), TIMEOUT) for _ in expected] == expected

        await other.send({"type": "offer", "target": "X", "sdp": "to the holder"})
        assert (await holder.expect("offer"))["sdp"] == "to the holder"
        await other.barrier()  # no peer_left/peer_joined churn
        await server.relay.refresh_leases()
        await holder.barrier()  # still open: its lease refresh found its own entry
        holder_member = next(m for m in server.relay.hub.members() if m.peer_id == "X")
        entries = {e.peer_id: e for e in await repository(stack).list_peers(room.room_id, now=0)}
        assert set(entries) == {"Other", "X"}
        assert entries["X"].connection_id == holder_member.connection_id
        for peer in (holder, other):
            await peer.close()


async def test_registration_racing_the_rooms_deletion_leaves_nothing(api: str, stack: StackInfo) -> None:
    """A register that read the room before its creator deleted it gets ROOM_NOT_FOUND and writes no entry."""
    async with gated_relay(stack, "claim_peer") as (server, gated):
        user = await sign_in(api)
        room = await create_room(api, user)
        peer = await Peer.connect(f"ws://127.0.0.1:{server.port}")
        gated.arm()
        await peer.send(register("Late", room.room_id, room.token, user))
        await asyncio.wait_for(gated.reached.wait(), TIMEOUT)
        async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
            deleted = await client.delete(f"/rooms/{room.room_id}", headers=user.bearer)
        assert deleted.status_code == 200, deleted.text
        gated.gate.set()
        error = await peer.expect_error("ROOM_NOT_FOUND")
        assert "deleted" in error["reason"]
        assert await peer_ids_in_table(stack, room.room_id) == set()
        await peer.close()
