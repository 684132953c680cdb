"""The SDK's worker booking against a scripted relay (a real WebSocket server on port 0):
claim, renew and release frames, leases kept renewed and released by ``async with``, the
relay's lease_ended, booked and peer_availability, and the CLI's choice among workers."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from signaling_sdk import AlreadyClaimed, Backoff, Identity, Lease, LeaseNotFound, Room, Session
from signaling_sdk.cli import book_worker
from support import TIMEOUT, closed_after_test, scaled_whole

Frame = dict[str, Any]
Answer = Callable[[Frame], list[Frame]]


def claimed(message: Frame, *, lease_id: str = "L1", peer_id: str = "W", expires_in: int = 300) -> Frame:
    """The relay's ``claimed`` answer to a claim or renewal, expiring ``expires_in`` from now."""
    expires_at = int(time.time()) + expires_in
    return {"type": "claimed", "peer_id": peer_id, "lease_id": lease_id, "expires_at": expires_at, "id": message["id"]}


def error(message: Frame, code: str) -> Frame:
    return {"type": "error", "code": code, "reason": "scripted", "id": message["id"]}


def grant(message: Frame) -> list[Frame]:
    """The relay's answers by default: every claim and renewal granted, every release done,
    no peers found."""
    if message["type"] in ("claim", "renew"):
        return [claimed(message, lease_id=message.get("lease_id", "L1"))]
    if message["type"] == "release":
        return [{"type": "released", "peer_id": "W", "lease_id": message["lease_id"], "id": message["id"]}]
    if message["type"] == "discover_peers":
        return [{"type": "peer_list", "peers": [], "id": message["id"]}]
    return []


class BookingRelay:
    """Registers the peer (worker W is in the room), then records every frame with the time
    it came and sends what ``answer`` makes of it (``grant`` for what it does not know)."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer or grant
        self.register: Frame = {}
        self.frames: asyncio.Queue[tuple[float, Frame]] = asyncio.Queue()

    async def handle(self, ws: ServerConnection) -> None:
        self.register = json.loads(await ws.recv())
        registered = {
            "type": "registered_auth",
            "room_id": self.register["room_id"],
            "peer_id": self.register["peer_id"],
            "peers": [{"peer_id": "W", "role": "worker", "metadata": {}}],
            "ice_servers": [],
            "resume_token": "resume-1",
            "resumed": False,
            "last_seq": 0,
        }
        await ws.send(json.dumps(registered))
        async for raw in ws:
            message = json.loads(raw)
            self.frames.put_nowait((time.time(), message))
            for frame in self.answer(message):
                await ws.send(json.dumps(frame))

    async def next_frame(self) -> Frame:
        """The next frame the session sent."""
        return (await self.frames.get())[1]


def answering(**by_type: Answer) -> Answer:
    """``grant``, except for the message types given."""
    return lambda message: by_type[message["type"]](message) if message["type"] in by_type else grant(message)


async def open_session(server: Server, **options: Any) -> Session:
    port = server.sockets[0].getsockname()[1]
    session = await Session.open(
        f"ws://127.0.0.1:{port}",
        Room("room-1", "room-token"),
        Identity("id-token", "user"),
        "C",
        backoff=Backoff(initial=0.01, maximum=0.05),
        **options,
    )
    return closed_after_test(session)


async def test_a_claim_sends_its_frame_and_the_answer_becomes_a_lease() -> None:
    """The claim frame has type, peer_id, ttl_seconds and an id; ``claimed`` is the Lease."""
    relay = BookingRelay()
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            before = int(time.time())
            lease = await session.claim("W", ttl_seconds=60)
            frame = await relay.next_frame()
        assert frame == {"type": "claim", "peer_id": "W", "ttl_seconds": 60, "id": frame["id"]}
        assert isinstance(lease, Lease)
        assert (lease.peer_id, lease.lease_id, lease.ended) == ("W", "L1", None)
        assert before + 300 <= lease.expires_at <= int(time.time()) + 300
        assert session.leases == [lease]
        await session.close()


async def test_a_claim_without_a_ttl_leaves_it_to_the_relay() -> None:
    relay = BookingRelay()
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            await session.claim("W")
            frame = await relay.next_frame()
        assert "ttl_seconds" not in frame
        await session.close()


async def test_already_claimed_raises_already_claimed_and_the_body_never_runs() -> None:
    relay = BookingRelay(answering(claim=lambda m: [error(m, "ALREADY_CLAIMED")]))
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        ran = False
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(AlreadyClaimed) as raised:
                await session.claim("W")
            with pytest.raises(AlreadyClaimed):
                async with session.claim("W"):
                    ran = True
        assert raised.value.code == "ALREADY_CLAIMED"
        assert not ran
        assert session.leases == []
        await session.close()


async def test_renew_and_release_send_their_frames() -> None:
    """renew asks for the claim's ttl (or the one given) and takes the new expires_at; release
    ends the lease; a renewal after that raises LeaseNotFound without asking the relay."""
    renewals = iter([600, 900])

    def renew(message: Frame) -> list[Frame]:
        return [claimed(message, expires_in=next(renewals))]

    relay = BookingRelay(answering(renew=renew))
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            lease = await session.claim("W", ttl_seconds=30)
            await relay.next_frame()
            assert await lease.renew() is lease
            first = await relay.next_frame()
            assert lease.expires_at >= int(time.time()) + 600 - 1
            await lease.renew(ttl_seconds=90)
            second = await relay.next_frame()
            assert lease.expires_at >= int(time.time()) + 900 - 1
            await lease.release()
            released = await relay.next_frame()
            with pytest.raises(LeaseNotFound):
                await lease.renew()
            await session.discover()  # the next frame the relay sees: no renewal went out
            after = await relay.next_frame()
        assert first == {"type": "renew", "lease_id": "L1", "ttl_seconds": 30, "id": first["id"]}
        assert (second["type"], second["ttl_seconds"]) == ("renew", 90)
        assert released == {"type": "release", "lease_id": "L1", "id": released["id"]}
        assert lease.ended == "released"
        assert session.leases == []
        assert after["type"] == "discover_peers"
        await session.close()


async def test_lease_not_found_on_renewal_raises_and_ends_the_lease() -> None:
    relay = BookingRelay(answering(renew=lambda m: [error(m, "LEASE_NOT_FOUND")]))
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            lease = await session.claim("W")
            with pytest.raises(LeaseNotFound):
                await lease.renew()
        assert lease.ended == "expired"
        assert session.leases == []
        await session.close()


async def test_inside_async_with_the_lease_is_renewed_before_it_expires() -> None:
    """The relay grants a few seconds at a time: a renewal comes before each expiry."""
    window = scaled_whole(3)  # at least 2 s left when granted; renewed at 2/3 of that
    relay = BookingRelay(
        answering(
            claim=lambda m: [claimed(m, expires_in=window)],
            renew=lambda m: [claimed(m, expires_in=window + 100)],
        )
    )
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT + window):
            async with session.claim("W") as lease:
                granted_until = lease.expires_at
                await relay.next_frame()  # the claim
                renewed_at, renewal = await relay.frames.get()
                await session.discover()  # answered after the renewal: its answer is in
                await relay.next_frame()
                assert lease.expires_at > granted_until
        assert renewal == {"type": "renew", "lease_id": "L1", "id": renewal["id"]}  # the relay's ttl
        assert renewed_at < granted_until
        await session.close()


async def test_leaving_async_with_releases_the_lease_even_on_an_error() -> None:
    relay = BookingRelay()
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        held: list[Lease] = []

        async def failing_job() -> None:
            async with session.claim("W", ttl_seconds=300) as lease:
                held.append(lease)
                raise RuntimeError("job failed")

        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(RuntimeError, match="job failed"):
                await failing_job()
            assert (await relay.next_frame())["type"] == "claim"
            released = await relay.next_frame()
        assert released == {"type": "release", "lease_id": "L1", "id": released["id"]}
        assert held[0].ended == "released"
        await session.close()


async def test_leaving_async_with_ignores_a_lease_the_relay_no_longer_has() -> None:
    relay = BookingRelay(answering(release=lambda m: [error(m, "LEASE_NOT_FOUND")]))
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            async with session.claim("W") as lease:
                pass
            assert (await relay.next_frame())["type"] == "claim"
            assert (await relay.next_frame())["type"] == "release"
        assert lease.ended == "expired"
        await session.close()


async def test_lease_ended_marks_the_lease_ended_and_reaches_recv() -> None:
    """The relay ends the lease right after granting it (its worker left): the lease says so,
    the application sees lease_ended, renew raises LeaseNotFound, and no release goes out."""

    def claim(message: Frame) -> list[Frame]:
        ended = {"type": "lease_ended", "peer_id": "W", "lease_id": "L1", "holder_peer_id": "C", "reason": "left"}
        return [claimed(message), {"seq": 1, **ended}]

    relay = BookingRelay(answering(claim=claim))
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            async with session.claim("W") as lease:
                event = await session.recv()
                assert await lease.wait_ended() == "left"
                with pytest.raises(LeaseNotFound):
                    await lease.renew()
            await session.discover()
            assert (await relay.next_frame())["type"] == "claim"
            after = await relay.next_frame()
        assert (event["type"], event["lease_id"], event["reason"]) == ("lease_ended", "L1", "left")
        assert lease.ended == "left"
        assert session.leases == []
        assert after["type"] == "discover_peers"  # no renewal, no release
        await session.close()


async def test_booked_and_peer_availability_reach_recv() -> None:
    """The worker hears who booked it; the room hears how booked it is (state.peers too)."""

    def discover(message: Frame) -> list[Frame]:
        booked = {"type": "booked", "lease_id": "L1", "by_peer_id": "D", "expires_at": int(time.time()) + 60}
        availability = {"type": "peer_availability", "peer_id": "W", "available": False, "claims": 1, "max_claims": 1}
        return [
            {"seq": 1, **booked},
            {"seq": 2, **availability},
            {"type": "peer_list", "peers": [], "id": message["id"]},
        ]

    relay = BookingRelay(answering(discover_peers=discover))
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            await session.discover()
            first, second = await session.recv(), await session.recv()
        assert (first["type"], first["by_peer_id"]) == ("booked", "D")
        assert (second["type"], second["available"], second["claims"]) == ("peer_availability", False, 1)
        assert (session.state.peers["W"]["available"], session.state.peers["W"]["max_claims"]) == (False, 1)
        await session.close()


@pytest.mark.parametrize(("max_claims", "sent"), [(4, 4), (None, "absent")])
async def test_register_carries_max_claims_when_given(max_claims: int | None, sent: object) -> None:
    relay = BookingRelay()
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server, max_claims=max_claims)
        assert relay.register.get("max_claims", "absent") == sent
        await session.close()


def client_args(worker: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(worker=worker, tag=["gpu"], min_gpu_memory_mb=None)


async def test_the_cli_client_books_the_next_discovered_worker_when_one_is_busy() -> None:
    """Discovery asks for available workers; W1 was booked meanwhile, W2 is claimed."""

    def discover(message: Frame) -> list[Frame]:
        return [{"type": "peer_list", "peers": [{"peer_id": "W1"}, {"peer_id": "W2"}], "id": message["id"]}]

    def claim(message: Frame) -> list[Frame]:
        if message["peer_id"] == "W1":
            return [error(message, "ALREADY_CLAIMED")]
        return [claimed(message, peer_id=message["peer_id"])]

    relay = BookingRelay(answering(discover_peers=discover, claim=claim))
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            lease = await book_worker(session, client_args())
            asked = [await relay.next_frame() for _ in range(3)]
        assert asked[0]["filters"] == {"role": "worker", "tags": ["gpu"], "available": True}
        assert [(f["type"], f.get("peer_id")) for f in asked[1:]] == [("claim", "W1"), ("claim", "W2")]
        assert lease.peer_id == "W2"
        await session.close()


async def test_the_cli_client_given_a_busy_worker_raises_already_claimed() -> None:
    relay = BookingRelay(answering(claim=lambda m: [error(m, "ALREADY_CLAIMED")]))
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(AlreadyClaimed):
                await book_worker(session, client_args("W"))
            assert (await relay.next_frame())["peer_id"] == "W"
        await session.close()
