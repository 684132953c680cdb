"""Messages for peers that are not in the room yet: held in DynamoDB, delivered in order when
the peer registers, expired otherwise, bounded; and none lost when the relay process dies."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from conftest import RelayFactory
from devstack.stack import StackInfo
from signaling_shared.dynamo import QueuedMessage
from support import TIMEOUT, Peer, create_room, gated_relay, relay_process, repository, scaled_whole, sign_in
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration


def url(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def held(stack: StackInfo, room_id: str) -> list[QueuedMessage]:
    return await repository(stack).held_messages(room_id)


async def test_messages_for_a_peer_not_yet_here_arrive_in_order_when_it_registers(api: str, stack: StackInfo) -> None:
    """A client dials a worker that is still booting: offer, candidates and an app message are
    acked as queued, stored, and delivered in order (sender stamped, no id or ttl) at its
    registration; then taken off the table."""
    client_user, worker_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, client_user)
    async with gated_relay(stack, "nothing gated") as (server, gated):
        client = await Peer.connect(url(server))
        await client.register("Client", room, client_user)
        sent: list[dict[str, Any]] = [
            {"type": "offer", "target": "Worker", "sdp": "v=0 offer", "id": "o1", "ttl_seconds": 600},
            {"type": "candidate", "target": "Worker", "candidate": {"candidate": "c1", "sdpMid": "0"}, "id": "c1"},
            {"type": "candidate", "target": "Worker", "candidate": None, "id": "c2"},
            {"type": "peer_message", "to_peer_id": "Worker", "payload": {"job": 1}, "id": 4},
        ]
        for message in sent:
            await client.send(message)
            assert await client.expect("ack") == {"type": "ack", "id": message["id"], "queued": True}
        stored = await held(stack, room.room_id)
        assert [m.correlation_id for m in stored] == ["o1", "c1", "c2", 4]
        assert {m.to_peer_id for m in stored} == {"Worker"}

        worker = await Peer.connect(url(server))
        registered = await worker.register("Worker", room, worker_user)
        assert [p["peer_id"] for p in registered["peers"]] == ["Client"]
        assert await worker.recv() == {
            "type": "offer",
            "target": "Worker",
            "sdp": "v=0 offer",
            "sender": "Client",
            "message_id": "o1",
        }
        assert await worker.recv() == {
            "type": "candidate",
            "target": "Worker",
            "candidate": {"candidate": "c1", "sdpMid": "0"},
            "sender": "Client",
            "message_id": "c1",
        }
        assert await worker.recv() == {
            "type": "candidate",
            "target": "Worker",
            "candidate": None,
            "sender": "Client",
            "message_id": "c2",
        }
        assert await worker.recv() == {
            "type": "peer_message",
            "from_peer_id": "Client",
            "to_peer_id": "Worker",
            "payload": {"job": 1},
            "message_id": 4,
        }
        assert (await client.expect("peer_joined"))["peer_id"] == "Worker"

        assert len(await asyncio.wait_for(gated.deleted.get(), TIMEOUT)) == 4  # the worker confirmed receipt
        assert await held(stack, room.room_id) == []
        await client.send({"type": "peer_message", "to_peer_id": "Worker", "payload": "live", "id": 5})
        assert (await worker.expect("peer_message"))["payload"] == "live"  # nothing held comes twice
        assert await client.expect("ack") == {"type": "ack", "id": 5, "queued": False}
        await worker.barrier()
        await client.barrier()
        for peer in (client, worker):
            await peer.close()


async def test_a_held_message_expires_and_its_sender_is_told(
    api: str, relay_with: RelayFactory, stack: StackInfo
) -> None:
    """Past its ttl_seconds a held message is never delivered: the sender gets expired {id, to_peer_id}."""
    users = [await sign_in(api) for _ in range(2)]
    room = await create_room(api, users[0])
    async with relay_with() as server:
        sender = await Peer.connect(url(server))
        await sender.register("Sender", room, users[0])
        await sender.send(
            {
                "type": "peer_message",
                "to_peer_id": "Late",
                "payload": "short",
                "id": "e",
                "ttl_seconds": scaled_whole(1),
            }
        )
        await sender.expect("ack")
        await sender.send({"type": "peer_message", "to_peer_id": "Late", "payload": "long", "id": "k"})
        await sender.expect("ack")
        assert await sender.expect("expired") == {"type": "expired", "id": "e", "to_peer_id": "Late"}
        assert [m.correlation_id for m in await held(stack, room.room_id)] == ["k"]

        late = await Peer.connect(url(server))
        await late.register("Late", room, users[1])
        assert (await late.expect("peer_message"))["payload"] == "long"
        await late.barrier()  # "short" never comes
        await sender.expect("peer_joined")
        await sender.barrier()
        for peer in (sender, late):
            await peer.close()


async def test_held_messages_are_bounded_and_checked(api: str, relay_with: RelayFactory) -> None:
    """Per target and per room bounds answer QUEUE_FULL; a lifetime past the maximum is
    INVALID_MESSAGE; without an id (v1) nothing is held: PEER_NOT_FOUND as before. What
    was held before the bound is still delivered."""
    users = [await sign_in(api) for _ in range(2)]
    room = await create_room(api, users[0])
    async with relay_with(queue_max_per_peer=2, queue_max_per_room=3) as server:
        sender = await Peer.connect(url(server))
        await sender.register("Sender", room, users[0])

        async def send(to: str, correlation_id: int, **extra: int) -> None:
            await sender.send(
                {"type": "peer_message", "to_peer_id": to, "payload": correlation_id, "id": correlation_id, **extra}
            )

        for i in (1, 2):
            await send("X", i)
            await sender.expect("ack")
        await send("X", 3)
        await sender.expect_error_with_id("QUEUE_FULL", 3)
        await send("Y", 4)
        await sender.expect("ack")
        await send("Z", 5)
        await sender.expect_error_with_id("QUEUE_FULL", 5)  # the room holds 3
        await send("Z", 6, ttl_seconds=901)
        await sender.expect_error_with_id("INVALID_MESSAGE", 6)
        await sender.send({"type": "peer_message", "to_peer_id": "Z", "payload": 7})
        await sender.expect_error("PEER_NOT_FOUND")

        x = await Peer.connect(url(server))
        await x.register("X", room, users[1])
        assert [(await x.expect("peer_message"))["payload"] for _ in range(2)] == [1, 2]
        await x.barrier()
        for peer in (sender, x):
            await peer.close()


async def test_a_message_held_while_its_target_registers_is_delivered_once(api: str, stack: StackInfo) -> None:
    """The hold's write is slow and the target registers meanwhile: its registration waits for
    the write and then delivers the message: once, and without waiting for it to expire."""
    sender_user, target_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, sender_user)
    async with gated_relay(stack, "hold_message") as (server, gated):
        sender = await Peer.connect(url(server))
        await sender.register("Sender", room, sender_user)
        gated.arm()
        await sender.send({"type": "peer_message", "to_peer_id": "Target", "payload": "racing", "id": "r"})
        await asyncio.wait_for(gated.reached.wait(), TIMEOUT)
        target = await Peer.connect(url(server))
        await target.send(
            {
                "type": "register",
                "protocol": 2,
                "peer_id": "Target",
                "room_id": room.room_id,
                "token": room.token,
                "id_token": target_user.id_token,
            }
        )
        await sender.expect("peer_joined")  # the target is in: its held messages are read next
        gated.gate.set()
        await target.expect("registered_auth")
        assert (await target.expect("peer_message"))["payload"] == "racing"
        assert await sender.expect("ack") == {"type": "ack", "id": "r", "queued": True}

        assert len(await asyncio.wait_for(gated.deleted.get(), TIMEOUT)) == 1
        assert await held(stack, room.room_id) == []
        await target.barrier()
        await sender.barrier()
        for peer in (sender, target):
            await peer.close()


async def test_deleting_a_room_deletes_what_is_held_in_it(api: str, relay: str, stack: StackInfo) -> None:
    user = await sign_in(api)
    room = await create_room(api, user)
    sender = await Peer.connect(relay)
    await sender.register("Sender", room, user)
    await sender.send({"type": "peer_message", "to_peer_id": "Nobody", "payload": 1, "id": 1})
    await sender.expect("ack")
    assert len(await held(stack, room.room_id)) == 1
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as http:
        response = await http.delete(f"/rooms/{room.room_id}", headers=user.bearer)
    assert response.status_code == 200, response.text
    assert await held(stack, room.room_id) == []
    await sender.close()


async def test_a_relay_killed_and_restarted_loses_no_accepted_message(api: str, stack: StackInfo) -> None:
    """SIGKILL with messages acked as delivered and as held: the delivered ones had arrived;
    after a restart the held ones reach their target in order."""
    a_user, b_user, c_user = await sign_in(api), await sign_in(api), await sign_in(api)
    room = await create_room(api, a_user)
    async with relay_process(stack) as first:
        a, c = await Peer.connect(first.url), await Peer.connect(first.url)
        await a.register("A", room, a_user)
        await c.register("C", room, c_user)
        await a.expect("peer_joined")
        await a.send({"type": "peer_message", "to_peer_id": "C", "payload": "live", "id": "live"})
        assert (await c.expect("peer_message"))["payload"] == "live"
        assert await a.expect("ack") == {"type": "ack", "id": "live", "queued": False}  # acked: C has it
        for i in range(3):
            await a.send({"type": "peer_message", "to_peer_id": "B", "payload": i, "id": f"h{i}"})
            assert await a.expect("ack") == {"type": "ack", "id": f"h{i}", "queued": True}
        first.process.kill()
        assert await first.wait() == -9
        for peer in (a, c):
            await peer.closed()

    async with relay_process(stack) as second:
        b = await Peer.connect(second.url)
        await b.register("B", room, b_user)  # loads the room's held messages and their timers
        assert [(await b.expect("peer_message"))["payload"] for _ in range(3)] == [0, 1, 2]
        await b.barrier()
        a2 = await Peer.connect(second.url)
        registered = await a2.register("A", room, a_user)  # its session died with the process
        assert [p["peer_id"] for p in registered["peers"]] == ["B"]
        assert (await b.expect("peer_joined"))["peer_id"] == "A"
        await a2.barrier()  # a new session: nothing owed to the old one comes to it

        await second.logged("held_removed")  # B confirmed receipt
        assert await held(stack, room.room_id) == []
        for peer in (a2, b):
            await peer.close()
