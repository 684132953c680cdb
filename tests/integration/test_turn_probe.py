"""The relay's TURN probe against a real coturn: granted with the shared secret, rejected
with another one (the failure SignalingTurnCredentialsRejected pages for), unreachable where
nothing listens; and a running relay probes by itself and exports what it saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Literal

import httpx
import pytest
from pydantic import SecretStr

from conftest import RelayFactory
from coturn import coturn_server
from devstack.ports import refusing_port
from signaling_shared.settings import CommonSettings, Environment
from signaling_shared.turn import rest_credentials
from support import TIMEOUT, scaled
from ws_relay.turnprobe import Outcome, TurnServer, allocate

pytestmark = pytest.mark.integration

SECRET = "the-secret-coturn-and-the-relay-share-0123"
OTHER = "a-secret-coturn-never-heard-of-0123456789"


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with coturn_server(tmp_path_factory.mktemp("coturn"), [SECRET]) as address:
        yield address


def signed(secret: str, url: str) -> tuple[str, str]:
    settings = CommonSettings(environment=Environment.DEVELOPMENT, turn_urls=[url], turn_secrets=[SecretStr(secret)])
    credentials = rest_credentials(settings, "probe", time.time())
    assert credentials is not None
    return credentials


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_the_shared_secret_gets_an_allocation(turn: tuple[str, int], transport: str) -> None:
    url = f"turn:{turn[0]}:{turn[1]}?transport={transport}"
    assert await allocate(TurnServer.parse(url), *signed(SECRET, url), TIMEOUT) is Outcome.OK


async def test_another_secret_is_rejected(turn: tuple[str, int]) -> None:
    url = f"turn:{turn[0]}:{turn[1]}"
    assert await allocate(TurnServer.parse(url), *signed(OTHER, url), TIMEOUT) is Outcome.REJECTED


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_port_where_nothing_listens_is_unreachable(transport: Literal["udp", "tcp"]) -> None:
    """A port held where nothing listens, refusing datagrams or connections: UNREACHABLE."""
    with refusing_port(transport=transport) as port:
        url = f"turn:127.0.0.1:{port}?transport={transport}"
        assert await allocate(TurnServer.parse(url), *signed(SECRET, url), scaled(2.0)) is Outcome.UNREACHABLE


async def test_a_relay_probes_by_itself_and_exports_each_outcome(
    turn: tuple[str, int], relay_with: RelayFactory
) -> None:
    """The relay probes each TURN URL by itself and exports each outcome (the dead port held throughout)."""
    with refusing_port(transport="udp") as dead_port:
        good = f"turn:{turn[0]}:{turn[1]}?transport=udp"
        dead = f"turn:127.0.0.1:{dead_port}?transport=udp"
        overrides = {
            "turn_urls": [good, dead],
            "turn_probe_interval_seconds": scaled(0.2),
            "turn_probe_timeout_seconds": scaled(2.0),
        }
        async with relay_with(**overrides, turn_secrets=[SECRET]) as server:
            async with asyncio.timeout(4 * TIMEOUT):
                outcomes = await server.turn_probe.wait_for_rounds(2)
            assert outcomes == {good: Outcome.OK, dead: Outcome.UNREACHABLE}
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                metrics = (await client.get(f"http://127.0.0.1:{server.port}/metrics")).text
        assert f'signaling_turn_probe_total{{outcome="ok",url="{good}"}}' in metrics
        assert f'signaling_turn_probe_total{{outcome="unreachable",url="{dead}"}}' in metrics
        async with relay_with(**overrides, turn_secrets=[OTHER]) as server:
            async with asyncio.timeout(4 * TIMEOUT):
                outcomes = await server.turn_probe.wait_for_rounds(1)
            assert outcomes[good] is Outcome.REJECTED
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                metrics = (await client.get(f"http://127.0.0.1:{server.port}/metrics")).text
        assert f'signaling_turn_probe_total{{outcome="rejected",url="{good}"}}' in metrics
        assert f'signaling_turn_probe_total{{outcome="ok",url="{good}"}}' not in metrics


async def test_without_turn_or_with_interval_zero_nothing_is_probed(relay_with: RelayFactory) -> None:
    async with relay_with(turn_urls=[], turn_secrets=[]) as server:
        assert not server.turn_probe.enabled
    async with relay_with(turn_urls=["turn:127.0.0.1:3478"], turn_probe_interval_seconds=0) as server:
        assert not server.turn_probe.enabled
