"""The Python SDK against the real stack: sign-in and rooms over HTTP, a signaling session
with acks, typed errors, and resumes after a cut connection and after a relay restart."""

from __future__ import annotations

import asyncio

import pytest

from conftest import RelayFactory
from devstack.stack import StackInfo
from signaling_sdk import Ack, Backoff, InvalidRequest, Room, RoomError, ServiceClient, Session
from signaling_shared.settings import RelaySettings
from support import FACTOR, GENEROUS_LIMITS, TIMEOUT, closed_after_test
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration


def url(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def test_two_sdk_peers_talk_with_acks_discovery_and_typed_errors(api: str, relay: str) -> None:
    async with ServiceClient(api) as service:
        worker_id, client_id = await service.sign_in(), await service.sign_in()
        room = await service.create_room(client_id)
        ice = await service.ice_servers(client_id)
        assert ice["ttl"] > 0
        worker = closed_after_test(
            await Session.open(relay, room, worker_id, "Worker", role="worker", metadata={"tags": ["gpu"]})
        )
        client = closed_after_test(await Session.open(relay, room, client_id, "Client", role="client"))
        async with asyncio.timeout(TIMEOUT):
            joined = await worker.recv()
            assert (joined["type"], joined["peer_id"]) == ("peer_joined", "Client")
            assert [p["peer_id"] for p in await client.discover({"role": "worker", "tags": ["gpu"]})] == ["Worker"]
            ack = await client.send_to("Worker", {"job": 1})
            assert ack == Ack(ack.id, queued=False)
            assert await worker.recv() == {
                "type": "peer_message",
                "from_peer_id": "Client",
                "to_peer_id": "Worker",
                "payload": {"job": 1},
                "message_id": ack.id,
            }
            assert (await client.send_to("NotYet", "hi")).queued is True
            with pytest.raises(InvalidRequest) as invalid:
                await client.send_to("Worker", 1, ttl_seconds=10**6)
            assert invalid.value.code == "INVALID_MESSAGE"
            with pytest.raises(RoomError) as refused:
                await Session.open(relay, Room(room.room_id, "wrong", room.expires_at), client_id, "Other")
            assert refused.value.code == "INVALID_ROOM_TOKEN"
        await client.close()
        await worker.close()


async def test_the_sdk_resumes_after_a_cut_and_sends_again_without_duplicates(
    api: str, relay_with: RelayFactory
) -> None:
    """The client's connection is cut; what it sends meanwhile is sent after the resume, once."""
    async with relay_with() as server, ServiceClient(api) as service:
        a_id, b_id = await service.sign_in(), await service.sign_in()
        room = await service.create_room(a_id)
        fast = Backoff(initial=0.05, maximum=0.2, attempts=round(30 * FACTOR))  # some 3 s, scaled
        a = closed_after_test(await Session.open(url(server), room, a_id, "A", backoff=fast))
        b = closed_after_test(await Session.open(url(server), room, b_id, "B", backoff=fast))
        async with asyncio.timeout(3 * TIMEOUT):
            assert (await a.recv())["type"] == "peer_joined"
            assert a._ws is not None
            a._ws.transport.abort()  # the network fails under A
            sends = [asyncio.create_task(a.send_to("B", i)) for i in range(3)]
            acks = await asyncio.gather(*sends)
            assert [ack.queued for ack in acks] == [False] * 3
            assert [(await b.recv())["payload"] for _ in range(3)] == [0, 1, 2]
            assert a.state.resumes == 1
            await b.send_to("A", "still here")
            assert (await a.recv())["payload"] == "still here"
        assert b._inbox.empty()  # nothing twice
        await a.close()
        await b.close()


async def test_the_sdk_follows_go_away_to_the_next_relay_process(api: str, stack: StackInfo) -> None:
    """The relay drains (go_away, 4500) and a new process starts on the same port: both SDK
    sessions resume there and keep talking; the room saw no leave or join."""
    settings = RelaySettings(**{**stack.common.model_dump(), **GENEROUS_LIMITS, "port": 0, "drain_jitter_ms": 100})
    first = RelayServer(settings)
    port = await first.start()
    second: RelayServer | None = None
    try:
        async with ServiceClient(api) as service:
            a_id, b_id = await service.sign_in(), await service.sign_in()
            room = await service.create_room(a_id)
            relay_url = f"ws://127.0.0.1:{port}"
            backoff = Backoff(initial=0.05, maximum=0.3, attempts=round(30 * FACTOR))  # some 4 s, scaled
            a = closed_after_test(await Session.open(relay_url, room, a_id, "A", backoff=backoff))
            b = closed_after_test(await Session.open(relay_url, room, b_id, "B", backoff=backoff))
            async with asyncio.timeout(4 * TIMEOUT):
                assert (await a.recv())["type"] == "peer_joined"
                await first.stop()
                # The same port, free since first stopped: a program taking it in between
                # would fail this start with OSError, as it would the real restart.
                second = RelayServer(settings.model_copy(update={"port": port}))
                await second.start()
                # Acked either way: received by B, or (B's resume still on its way) held for B.
                ack = await a.send_to("B", "after the restart")
                assert await b.recv() == {
                    "type": "peer_message",
                    "from_peer_id": "A",
                    "to_peer_id": "B",
                    "payload": "after the restart",
                    "message_id": ack.id,
                }
                assert (a.state.resumes, b.state.resumes) == (1, 1)
            assert a._inbox.empty()  # no peer_left, no peer_joined
            await a.close()
            await b.close()
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


async def test_a_rate_limited_sdk_waits_the_relays_hint_and_sends_again(api: str, relay_with: RelayFactory) -> None:
    """Five frames a second would be refused by a relay allowing one a second past a burst of
    three: the relay answers RATE_LIMITED with the wait, the session sends again after it,
    and every ping gets its pong."""
    async with relay_with(messages_per_second=1, message_burst=3) as server, ServiceClient(api) as service:
        identity = await service.sign_in()
        room = await service.create_room(identity)
        session = closed_after_test(
            await Session.open(url(server), room, identity, "Busy")
        )  # the register is one frame
        async with asyncio.timeout(4 * TIMEOUT):
            for _ in range(4):
                assert (await session.send({"type": "ping"}))["type"] == "pong"
        refused = server.metrics.registry.get_sample_value("signaling_errors_total", {"code": "RATE_LIMITED"})
        assert refused is not None
        assert refused >= 1  # it was refused, and the session got through anyway
        await session.close()
