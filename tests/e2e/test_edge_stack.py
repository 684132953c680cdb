"""The production shape: auth-api, rooms-api and ws-relay each in its own process, behind the
real Caddy edge running the deployment's Caddyfile (TLS from Caddy's local CA). Peers know
one URL, the edge's: the SDK signs in and manages rooms over https, registers over wss, and
two peers open a data channel and move a file through it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from api_checks import cors_headers, preflight_headers
from cli_checks import cli_transfer
from devstack.ports import entered_retrying_on_conflict
from devstack.stack import StackInfo
from edge import Edge, caddy_edge
from signaling_sdk import ServiceClient, Session
from signaling_sdk.errors import SignalingError
from support import TIMEOUT, ServiceProcess, closed_after_test, service_process
from tools import require

pytestmark = pytest.mark.e2e

PAGE = "https://app.example.org"  # a browser page allowed by every service (cors_origins)


@pytest.fixture
async def deployed(stack: StackInfo, tmp_path: Path) -> AsyncIterator[tuple[Edge, dict[str, ServiceProcess]]]:
    """The three services as processes on the stack's tables, and the edge in front of them."""
    require("caddy")  # before any service starts
    async with AsyncExitStack() as running:
        pages = {"cors_origins": [PAGE]}
        overrides: dict[str, dict[str, Any]] = {
            "auth-api": pages,
            "rooms-api": pages,
            "ws-relay": {"stun_urls": [], "turn_urls": [], **pages},  # host candidates on loopback
        }
        services = {
            name: await running.enter_async_context(service_process(stack, name, **options))
            for name, options in overrides.items()
        }
        edge = await running.enter_async_context(
            entered_retrying_on_conflict(  # on other free ports if one was taken before Caddy listened
                lambda: caddy_edge(
                    tmp_path / "caddy",
                    auth_api=services["auth-api"].address,
                    rooms_api=services["rooms-api"].address,
                    ws_relay=services["ws-relay"].address,
                )
            )
        )
        yield edge, services


def trusting(edge: Edge) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=edge.ca_file)


async def test_the_edge_serves_tls_from_its_ca_and_keeps_operations_private(
    deployed: tuple[Edge, dict[str, ServiceProcess]],
) -> None:
    edge, services = deployed
    async with httpx.AsyncClient(verify=trusting(edge), timeout=TIMEOUT) as http:
        assert (await http.get(edge.health_url)).text == "ok"
        for path in ("/metrics", "/readyz"):
            response = await http.get(edge.url + path)
            assert response.status_code == 404, path
            assert response.json()["error"] == "ROUTE_NOT_FOUND"
        # The same paths on the services themselves (the internal network) answer.
        assert (await http.get(f"http://{services['rooms-api'].address}/readyz")).status_code == 200
    # A client that does not trust the edge's CA gets a clear TLS error, not a response.
    async with ServiceClient(edge.url) as untrusting:
        with pytest.raises(SignalingError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.sign_in()


async def test_sdk_peers_meet_through_the_edge_over_https_and_wss(
    deployed: tuple[Edge, dict[str, ServiceProcess]],
) -> None:
    """Sign-in, rooms and ICE servers over https; two sessions over wss exchange a message."""
    edge, services = deployed
    tls = trusting(edge)
    async with ServiceClient(edge.url, ssl=tls) as api:
        worker_id, client_id = await api.sign_in(), await api.sign_in()
        room = await api.create_room(client_id)
        assert (await api.room(client_id, room.room_id))["room_id"] == room.room_id
        assert "ice_servers" in await api.ice_servers(client_id)
        worker = closed_after_test(await Session.open(edge.ws_url, room, worker_id, "Worker", role="worker", ssl=tls))
        client = closed_after_test(await Session.open(edge.ws_url, room, client_id, "Client", role="client", ssl=tls))
        try:
            assert [p["peer_id"] for p in await client.discover({"role": "worker"})] == ["Worker"]
            ack = await client.send_to("Worker", {"job": 1})
            assert not ack.queued
            message = await worker.recv()
            while message["type"] != "peer_message":  # room events (peer_joined) come first
                message = await worker.recv()
            assert (message["from_peer_id"], message["payload"]) == ("Client", {"job": 1})
        finally:
            await client.close()
            await worker.close()
        await api.delete_room(client_id, room.room_id)
    assert await services["ws-relay"].logged("peer_registered")


@pytest.mark.usefixtures("loopback_ice")
async def test_cli_worker_and_client_move_a_file_through_the_edge(
    deployed: tuple[Edge, dict[str, ServiceProcess]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edge, _ = deployed
    await cli_transfer(["--api", edge.url, "--relay", edge.ws_url, "--ca-file", str(edge.ca_file)], tmp_path, capsys)


async def test_cors_and_the_relays_origin_check_pass_through_the_edge_once(
    deployed: tuple[Edge, dict[str, ServiceProcess]],
) -> None:
    """Through Caddy: the services' CORS answers reach the page unchanged, each header once
    (the edge adds none); a refused origin gets none; the relay's 403 reaches it too."""
    edge, _ = deployed
    tls = trusting(edge)
    async with httpx.AsyncClient(base_url=edge.url, verify=tls, timeout=TIMEOUT) as http:
        signin = await http.options("/anonymous-signin", headers=preflight_headers(PAGE, "POST", "Content-Type"))
        assert signin.status_code == 200, signin.text
        assert cors_headers(signin)["access-control-allow-methods"] == "POST"
        rooms = await http.options("/create-room", headers=preflight_headers(PAGE, "POST", "Authorization"))
        assert rooms.status_code == 200, rooms.text
        assert cors_headers(rooms)["access-control-allow-origin"] == PAGE
        signed_in = await http.post("/anonymous-signin", headers={"Origin": PAGE})
        assert signed_in.status_code == 200, signed_in.text
        assert cors_headers(signed_in)["access-control-allow-origin"] == PAGE
        other = "https://evil.example"
        refused = await http.options("/anonymous-signin", headers=preflight_headers(other, "POST"))
        assert (refused.status_code, refused.headers["Allow"], cors_headers(refused)) == (405, "POST", {})
        assert cors_headers(await http.post("/anonymous-signin", headers={"Origin": other})) == {}
    async with websockets.connect(edge.ws_url, ssl=tls, origin=PAGE, open_timeout=TIMEOUT):  # type: ignore[arg-type]
        pass
    with pytest.raises(InvalidStatus) as forbidden:
        await websockets.connect(edge.ws_url, ssl=tls, origin=other, open_timeout=TIMEOUT)  # type: ignore[arg-type]
    assert forbidden.value.response.status_code == 403
