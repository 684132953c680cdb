"""ICE servers with ephemeral TURN credentials, proven against a real coturn.

coturn (Debian package ``coturn``) runs on loopback with ``use-auth-secret`` and two
static secrets (an old one and the current one, as during a rotation). A real TURN
client (aioice) allocates a relay with the credentials our services hand out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from jose import jwt

from conftest import RelayFactory
from coturn import coturn_server
from devstack.stack import StackInfo
from signaling_shared.settings import CommonSettings
from signaling_shared.turn import ice_servers, identity_tag
from support import TIMEOUT, Peer, create_room, scaled_whole, sign_in

pytestmark = pytest.mark.integration

OLD_SECRET = "an-older-secret-still-accepted-during-rotation"


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory, stack: StackInfo) -> Iterator[tuple[str, int]]:
    """A coturn on loopback accepting the stack's TURN secret and an older one."""
    current = stack.common.turn_secrets[0].get_secret_value()
    with coturn_server(tmp_path_factory.mktemp("coturn"), [OLD_SECRET, current]) as address:
        yield address


async def allocate(server: tuple[str, int], username: str, credential: str) -> tuple[str, int]:
    """A TURN allocation with these credentials; the relayed address."""
    transport, _ = await asyncio.wait_for(
        create_turn_endpoint(asyncio.DatagramProtocol, server, username, credential), 4 * TIMEOUT
    )
    try:
        relayed: tuple[str, int] = transport.get_extra_info("sockname")
        return relayed
    finally:
        transport.close()


def turn_entry(ice: dict[str, Any]) -> dict[str, Any]:
    entries = [server for server in ice["ice_servers"] if "credential" in server]
    assert len(entries) == 1, ice
    entry: dict[str, Any] = entries[0]
    return entry


async def test_issued_credentials_are_accepted_by_coturn(api: str, coturn: tuple[str, int]) -> None:
    """GET /ice-servers hands out STUN and TURN entries whose credentials coturn accepts."""
    user = await sign_in(api)
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        response = await client.get("/ice-servers", headers=user.bearer)
        unauthenticated = await client.get("/ice-servers")
    assert unauthenticated.status_code == 401
    assert response.status_code == 200, response.text
    ice = response.json()
    assert ice["ttl"] == 3600
    assert {"urls": ["stun:127.0.0.1:3478"]} in ice["ice_servers"]  # no null username/credential
    entry = turn_entry(ice)
    assert all(url.startswith("turn:") for url in entry["urls"])
    expiry, _, peer = entry["username"].partition(":")
    assert int(expiry) > 0
    assert peer
    host, port = await allocate(coturn, entry["username"], entry["credential"])
    assert host == "127.0.0.1"
    assert port > 0


async def test_expired_or_forged_credentials_are_refused(stack: StackInfo, coturn: tuple[str, int]) -> None:
    """coturn refuses credentials past their expiry and credentials signed with another secret."""
    settings = stack.common
    expired = turn_entry(ice_servers(settings, "peer-1", now=time.time() - 2 * settings.turn_credential_ttl_seconds))
    with pytest.raises(TransactionFailed) as refused:
        await allocate(coturn, expired["username"], expired["credential"])
    assert "401" in str(refused.value)
    forged_settings = CommonSettings(**{**settings.model_dump(), "turn_secrets": ["not-the-secret-coturn-knows-xxxx"]})
    forged = turn_entry(ice_servers(forged_settings, "peer-1", now=time.time()))
    with pytest.raises(TransactionFailed):
        await allocate(coturn, forged["username"], forged["credential"])


async def test_a_rotated_secret_keeps_working(stack: StackInfo, coturn: tuple[str, int]) -> None:
    """During a rotation coturn accepts credentials signed with the older secret too."""
    older = CommonSettings(**{**stack.common.model_dump(), "turn_secrets": [OLD_SECRET]})
    entry = turn_entry(ice_servers(older, "peer-1", now=time.time()))
    await allocate(coturn, entry["username"], entry["credential"])


async def test_registration_carries_ice_servers_and_the_relay_refreshes_them(
    api: str, relay_with: RelayFactory, coturn: tuple[str, int]
) -> None:
    """registered_auth includes ICE servers; fresh credentials are pushed before they expire."""
    ttl = scaled_whole(2)
    async with relay_with(turn_credential_ttl_seconds=ttl) as server:
        user = await sign_in(api)
        room = await create_room(api, user)
        peer = await Peer.connect(f"ws://127.0.0.1:{server.port}")
        registered = await peer.register("P", room, user)
        first = turn_entry(registered)
        assert registered["ttl"] == ttl
        assert first["username"].partition(":")[2] == identity_tag(jwt.get_unverified_claims(user.id_token)["sub"])
        await allocate(coturn, first["username"], first["credential"])
        pushed = await peer.expect("ice_servers")  # at 80% of their lifetime
        second = turn_entry(pushed)
        assert int(second["username"].split(":")[0]) > int(first["username"].split(":")[0])
        await allocate(coturn, second["username"], second["credential"])
        await peer.close()
