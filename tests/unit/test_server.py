"""The relay's process over real loopback sockets, on the in-memory repository: the
handshake's caps, health and metrics, the client's address, a frame's way through the
websocket link and its confirmation, the graceful stop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fakes.relay_world import ROOM_TOKEN, FakeVerifier, World
from support import TIMEOUT
from ws_relay.close_codes import CloseCode
from ws_relay.server import RelayServer


@asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[RelayServer, World]]:
    world = World(port=0, host="127.0.0.1", **overrides)
    await world.room()
    server = RelayServer(world.settings, metrics=world.metrics, repository=world.repository, verifier=FakeVerifier())  # type: ignore[arg-type]
    await server.start()
    try:
        yield server, world
    finally:
        await server.stop()


def url(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}/"


async def registered(server: RelayServer, peer_id: str, **headers: str) -> ClientConnection:
    ws = await connect(url(server), additional_headers=headers, open_timeout=TIMEOUT)
    register = {"type": "register", "protocol": 2, "peer_id": peer_id, "room_id": "room-1", "token": ROOM_TOKEN}
    await ws.send(json.dumps({**register, "id_token": peer_id.lower()}))
    assert json.loads(await ws.recv())["type"] == "registered_auth"
    return ws


async def frame_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == kind:
            return frame  # type: ignore[no-any-return]


async def test_health_readiness_and_metrics_answer_on_the_relays_port() -> None:
    async with (
        serving() as (server, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=TIMEOUT) as http,
    ):
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["failing"] == []
        a = await registered(server, "A")
        metrics = (await http.get("/metrics")).text
        assert "signaling_registered_peers 1.0" in metrics
        assert "signaling_ws_connections 1.0" in metrics
        await a.close()


async def test_a_relayed_offer_is_acked_once_the_targets_pong_confirms_it() -> None:
    async with serving() as (server, _):
        a, b = await registered(server, "A"), await registered(server, "B")
        await a.send(json.dumps({"type": "offer", "target": "B", "sdp": "v=0", "id": "o"}))
        offer = await frame_of(b, "offer")
        assert offer["sender"] == "A"
        assert offer["seq"] >= 1
        assert (await frame_of(a, "ack"))["id"] == "o"  # b's client answered the relay's ping
        for ws in (a, b):
            await ws.close()


async def test_the_handshake_refuses_past_capacity_and_past_an_addresss_caps() -> None:
    async with serving(max_connections=1) as (server, world):
        a = await registered(server, "A")
        with pytest.raises(InvalidStatus) as full:
            await connect(url(server), open_timeout=TIMEOUT)
        assert full.value.response.status_code == 503
        await a.close()
    async with serving(max_unregistered_per_ip=1) as (server, world):
        idle = await connect(url(server), open_timeout=TIMEOUT)
        with pytest.raises(InvalidStatus) as per_ip:
            await connect(url(server), open_timeout=TIMEOUT)
        assert per_ip.value.response.status_code == 429
        assert 'signaling_ws_connections_refused_total{reason="per_ip"} 1.0' in world.metrics.render()[0].decode()
        await idle.close()


async def test_the_handshake_refuses_a_browser_origin_not_in_cors_origins() -> None:
    """An Origin in cors_origins registers; another, two, or any with the default empty list
    get 403 and signaling_ws_connections_refused_total{reason="origin"}; no Origin is allowed."""
    page = "http://127.0.0.1:8003"
    refused_origins: list[list[tuple[str, str]]] = [
        [("Origin", "http://evil.example")],
        [("Origin", "http://127.0.0.1:8004")],  # same host, another port: another origin
        [("Origin", "null")],  # a sandboxed frame or a file:// page
        [("Origin", page), ("Origin", "http://evil.example")],
    ]
    async with serving(cors_origins=[page]) as (server, world):
        allowed = await registered(server, "A", Origin=page)
        no_origin = await registered(server, "B")  # the Python SDK, the CLI: no Origin
        for headers in refused_origins:
            with pytest.raises(InvalidStatus) as refused:
                await connect(url(server), additional_headers=headers, open_timeout=TIMEOUT)
            assert refused.value.response.status_code == 403, headers
        metrics = world.metrics.render()[0].decode()
        assert f'signaling_ws_connections_refused_total{{reason="origin"}} {len(refused_origins)}.0' in metrics
        for ws in (allowed, no_origin):
            await ws.close()
    async with serving() as (server, world):  # cors_origins empty: no page may connect
        with pytest.raises(InvalidStatus) as refused:
            await connect(url(server), origin=page, open_timeout=TIMEOUT)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        await (await registered(server, "C")).close()


async def test_the_client_address_comes_from_trusted_proxies_only() -> None:
    async with serving(forwarded_allow_ips="127.0.0.1", max_unregistered_per_ip=1) as (server, _):
        # Behind the trusted proxy, two clients are two addresses: neither is refused.
        one = await connect(url(server), additional_headers={"X-Forwarded-For": "198.51.100.1"})
        two = await connect(url(server), additional_headers={"X-Forwarded-For": "198.51.100.2"})
        # A spoofed hop to the left of a real one does not make a new address.
        with pytest.raises(InvalidStatus):
            await connect(url(server), additional_headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.2"})
        for ws in (one, two):
            await ws.close()


async def test_a_stop_sends_go_away_closes_with_4500_and_saves_each_session() -> None:
    async with serving(drain_seconds=0.05) as (server, world):
        a = await registered(server, "A")
        await server.stop()
        assert (await frame_of(a, "go_away"))["reason"] == "SERVER_SHUTDOWN"
        with pytest.raises(ConnectionClosed):
            await a.recv()
        assert a.close_code == CloseCode.SERVER_SHUTDOWN
        assert await world.repository.load_session("room-1", "A") is not None
