"""Two SDK peers open a data channel through the local stack (trickle ICE over the relay)
and move a multi-megabyte file whose SHA-256 matches on both ends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from conftest import RelayFactory
from signaling_sdk import Ack, Backoff, ServiceClient, Session
from signaling_sdk.webrtc import accept, connect
from support import TIMEOUT, closed_after_test, scaled_whole

pytestmark = pytest.mark.e2e

CHUNK = 16 * 1024


@asynccontextmanager
async def session_pair(
    api: str, relay_url: str, *, client_backoff: Backoff | None = None
) -> AsyncIterator[tuple[Session, Session]]:
    """A worker ("Worker") and a client ("Client") session in a new room; closed at the end."""
    async with ServiceClient(api) as service:
        worker_id, client_id = await service.sign_in(), await service.sign_in()
        room = await service.create_room(client_id)
    worker = await Session.open(relay_url, room, worker_id, "Worker", role="worker")
    try:
        client = await Session.open(relay_url, room, client_id, "Client", role="client", backoff=client_backoff)
        try:
            yield worker, client
        finally:
            await client.close()
    finally:
        await worker.close()


@asynccontextmanager
async def turn_pair(
    api: str, relay_with: RelayFactory, turn_server: str, **overrides: Any
) -> AsyncIterator[tuple[Session, Session]]:
    """A session pair on a relay whose only ICE server is ``turn_server``."""
    async with (
        relay_with(turn_urls=[turn_server], stun_urls=[], **overrides) as server,
        session_pair(api, f"ws://127.0.0.1:{server.port}") as pair,
    ):
        yield pair


@pytest.mark.usefixtures("loopback_ice")
async def test_two_sdk_peers_move_a_file_over_a_data_channel(api: str, relay: str) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    async with session_pair(api, relay) as (worker, client):
        async with asyncio.timeout(6 * TIMEOUT):
            # No STUN/TURN here: host candidates on loopback (the TURN path has its own test).
            accepted = asyncio.create_task(accept(worker, ice_servers=[]))
            client_link = closed_after_test(await connect(client, "Worker", label="files", ice_servers=[]))
            worker_link = closed_after_test(await accepted)
            assert (worker_link.peer_id, client_link.peer_id) == ("Client", "Worker")
            assert worker_link.channel.label == "files"

            received: asyncio.Queue[bytes | str] = asyncio.Queue()
            worker_link.channel.on("message", received.put_nowait)
            replies: asyncio.Queue[bytes | str] = asyncio.Queue()
            client_link.channel.on("message", replies.put_nowait)
            for start in range(0, len(payload), CHUNK):
                client_link.channel.send(payload[start : start + CHUNK])
            client_link.channel.send("end")

            digest = hashlib.sha256()
            size = 0
            while (chunk := await received.get()) != "end":
                assert isinstance(chunk, bytes)
                digest.update(chunk)
                size += len(chunk)
            worker_link.channel.send(digest.hexdigest())
            assert size == len(payload)
            assert await replies.get() == hashlib.sha256(payload).hexdigest()
        await client_link.close()
        await worker_link.close()


@pytest.mark.usefixtures("loopback_ice")
async def test_the_relay_counts_how_the_connection_came_out(api: str, relay_with: RelayFactory) -> None:
    """The offering side reports the connection (connected: host to host, with the time it
    took; then closed) and the relay counts it by outcome and path."""
    async with (
        relay_with(stun_urls=[], turn_urls=[]) as server,
        session_pair(api, f"ws://127.0.0.1:{server.port}") as (worker, client),
    ):
        async with asyncio.timeout(6 * TIMEOUT):
            accepted = asyncio.create_task(accept(worker, ice_servers=[]))
            client_link = closed_after_test(await connect(client, "Worker", ice_servers=[]))
            worker_link = closed_after_test(await accepted)
            assert client_link.path == {"local_candidate": "host", "remote_candidate": "host", "transport": "udp"}
            await client_link.close()
            await worker_link.close()
        counted = server.metrics.peer_connections
        assert counted.labels("connected", "direct")._value.get() == 1
        assert counted.labels("closed", "direct")._value.get() == 1
        waited = {
            s.name: s.value
            for s in next(iter(server.metrics.time_to_connect.collect())).samples
            if s.labels.get("path") == "direct"
        }
        assert waited["signaling_peer_connection_seconds_count"] == 1


@pytest.mark.usefixtures("loopback_ice")
async def test_a_signaling_socket_cut_mid_negotiation_resumes_and_completes(
    api: str, relay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's signaling connection fails after its offer reached the worker and before
    any candidate did: the session resumes, what the worker sent meanwhile (answer,
    candidates) is replayed, the client's candidates go out after the resume, and the data
    channel opens."""
    async with session_pair(api, relay, client_backoff=Backoff(initial=0.05, maximum=0.2)) as (worker, client):
        send_signal = client.signal

        async def cut_before_the_first_candidate(kind: str, peer_id: str, **fields: object) -> Ack:
            if kind == "candidate" and client.state.resumes == 0 and client._ws is not None:
                client._ws.transport.abort()  # the network fails under the client, its offer delivered
            return await send_signal(kind, peer_id, **fields)

        monkeypatch.setattr(client, "signal", cut_before_the_first_candidate)
        async with asyncio.timeout(6 * TIMEOUT):
            accepted = asyncio.create_task(accept(worker, ice_servers=[]))
            client_link = closed_after_test(await connect(client, "Worker", ice_servers=[]))
            worker_link = closed_after_test(await accepted)
            assert client.state.resumes == 1
            pong: asyncio.Queue[bytes | str] = asyncio.Queue()
            client_link.channel.on("message", pong.put_nowait)
            worker_link.channel.on("message", lambda message: worker_link.channel.send(f"echo {message}"))
            client_link.channel.send("ping")
            assert await pong.get() == "echo ping"
        await client_link.close()
        await worker_link.close()


@pytest.mark.usefixtures("loopback_ice")
async def test_relay_only_ice_goes_through_turn_with_the_services_credentials(
    api: str, relay_with: RelayFactory, turn_server: str
) -> None:
    """ICE restricted to relay candidates: the data channel opens through a real coturn, with
    the ephemeral credentials the relay handed out in registered_auth."""
    async with turn_pair(api, relay_with, turn_server) as (worker, client):
        assert [entry["urls"] for entry in client.state.ice_servers] == [[turn_server]]
        async with asyncio.timeout(8 * TIMEOUT):
            accepted = asyncio.create_task(accept(worker, relay_only=True))
            client_link = closed_after_test(await connect(client, "Worker", relay_only=True))
            worker_link = closed_after_test(await accepted)
            for link in (client_link, worker_link):
                assert link.pc.sctp is not None
                ice = link.pc.sctp.transport.transport
                assert {c.type for c in ice.iceGatherer.getLocalCandidates()} == {"relay"}
            assert client_link.path["local_candidate"] == "relay"  # what its connection_report said
            payload = os.urandom(256 * 1024)
            received: asyncio.Queue[bytes | str] = asyncio.Queue()
            worker_link.channel.on("message", received.put_nowait)
            for start in range(0, len(payload), CHUNK):
                client_link.channel.send(payload[start : start + CHUNK])
            got = b""
            while len(got) < len(payload):
                chunk = await received.get()
                assert isinstance(chunk, bytes)
                got += chunk
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
        await client_link.close()
        await worker_link.close()


def expiry(ice_servers: list[dict[str, Any]]) -> int:
    """When the TURN entry's credentials expire (the username is ``expiry:peer``)."""
    (turn,) = [entry for entry in ice_servers if "credential" in entry]
    return int(turn["username"].partition(":")[0])


@pytest.mark.usefixtures("loopback_ice")
async def test_sessions_take_refreshed_turn_credentials_and_connect_with_them(
    api: str, relay_with: RelayFactory, turn_server: str
) -> None:
    """With short-lived TURN credentials (2 s, scaled) the relay pushes fresh ones at 80 %; each session keeps the
    newest, and once the first ones have expired (after the second push) a relay-only data
    channel opens through coturn with the fresh ones (coturn refuses expired ones)."""
    async with turn_pair(api, relay_with, turn_server, turn_credential_ttl_seconds=scaled_whole(2)) as (worker, client):
        async with asyncio.timeout(8 * TIMEOUT):
            first = (expiry(worker.state.ice_servers), expiry(client.state.ice_servers))
            refreshed = await asyncio.gather(worker.next_ice_servers(), client.next_ice_servers())
            assert all(expiry(new) > old for new, old in zip(refreshed, first, strict=True))
            refreshed = await asyncio.gather(worker.next_ice_servers(), client.next_ice_servers())
            assert max(first) < time.time()  # the credentials the sessions started with have expired
            assert (worker.state.ice_servers, client.state.ice_servers) == tuple(refreshed)
            accepted = asyncio.create_task(accept(worker, relay_only=True))
            client_link = closed_after_test(await connect(client, "Worker", relay_only=True))
            worker_link = closed_after_test(await accepted)
            client_link.channel.send("with refreshed credentials")
            assert await worker_link.recv() == "with refreshed credentials"
        await client_link.close()
        await worker_link.close()
