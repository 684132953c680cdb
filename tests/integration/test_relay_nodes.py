"""Several relay nodes on the shared tables: each registers itself, rooms-api places every new
room on the least-loaded live node and says where, a peer that dials another node is sent
there (redirect, close 4502; resumes too) and the SDK follows. A stopping node gets no new
rooms but keeps its own until its entry lapses; then they move to the node their next peer
dials, by a conditional write only one node can win. Long-silent entries are pruned."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest

from conftest import RelayFactory
from devstack.coturn import free_port
from devstack.stack import StackInfo
from signaling_sdk import Identity, Room, Session
from signaling_shared.dynamo import RelayNode, Repository
from signaling_shared.errors import ConditionFailed
from support import TIMEOUT, Peer, RoomGrant, User, sign_in
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration

NODES = ("node-a", "node-b", "node-c")


@asynccontextmanager
async def nodes(relay_with: RelayFactory, names: tuple[str, ...] = NODES) -> AsyncIterator[dict[str, RelayServer]]:
    """Relay nodes on fixed free ports (their public URL must be known before they listen),
    heartbeating rarely so the test alone moves the placement counters."""
    async with AsyncExitStack() as stack:
        servers: dict[str, RelayServer] = {}
        for name in names:
            port = free_port()
            servers[name] = await stack.enter_async_context(
                relay_with(
                    node_id=name,
                    port=port,
                    public_ws_url=f"ws://127.0.0.1:{port}",
                    node_heartbeat_seconds=300,
                    node_ttl_seconds=600,
                )
            )
        yield servers


async def create_room(api: str, user: User) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        response = await client.post("/create-room", headers=user.bearer)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def url_of(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def test_rooms_spread_over_the_live_nodes(api: str, relay_with: RelayFactory) -> None:
    async with nodes(relay_with) as servers:
        user = await sign_in(api)
        placed = Counter([(await create_room(api, user))["ws_url"] for _ in range(30)])
        assert placed == {url_of(server): 10 for server in servers.values()}  # least loaded first, in turn
    after = await create_room(api, user)
    assert after.get("ws_url") is None  # stopping nodes (draining) get no new rooms at once


async def test_a_peer_that_dials_another_node_is_redirected_and_the_sdk_follows(
    api: str, relay_with: RelayFactory
) -> None:
    async with nodes(relay_with) as servers:
        user = await sign_in(api)
        body = await create_room(api, user)
        home = next(name for name, server in servers.items() if url_of(server) == body["ws_url"])
        other = next(name for name in servers if name != home)
        peer = await Peer.connect(url_of(servers[other]))
        await peer.send(
            {
                "type": "register",
                "id": "r1",
                "peer_id": "P",
                "room_id": body["room_id"],
                "token": body["token"],
                "id_token": user.id_token,
            }
        )
        assert await peer.recv() == {"type": "redirect", "ws_url": body["ws_url"], "node_id": home, "id": "r1"}
        assert await peer.closed() == (4502, "the room is served by another relay node: register at redirect's ws_url")
        assert servers[other].service.hub.member_count == 0

        # A joining peer knows only the room id and token, and a relay URL: the SDK follows.
        room = Room(body["room_id"], body["token"])
        async with await Session.open(url_of(servers[other]), room, Identity(user.id_token, user.username), "Q") as q:
            assert q.url == body["ws_url"]
            assert servers[home].service.hub.member_count == 1


async def lapse(stack: StackInfo, name: str, url: str) -> None:
    """What a node that died looks like once its TTL passed: an entry that expired."""
    await Repository.from_settings(stack.common).heartbeat_node(
        RelayNode(name, url, rooms=0, capacity=1, expires_at=int(time.time()) - 1, draining=True)
    )


async def test_a_stopping_node_keeps_its_rooms_until_its_entry_lapses_then_they_move(
    api: str, relay_with: RelayFactory, stack: StackInfo
) -> None:
    user = await sign_in(api)
    async with nodes(relay_with, ("node-a",)) as first:
        body = await create_room(api, user)
        gone_url = url_of(first["node-a"])
        assert body["ws_url"] == gone_url
        grant = RoomGrant(body["room_id"], body["token"], 0)
    async with nodes(relay_with, ("node-b",)) as second:  # node-a stopped: draining, not lapsed
        peer = await Peer.connect(url_of(second["node-b"]))
        await peer.send(
            {
                "type": "register",
                "peer_id": "P",
                "room_id": grant.room_id,
                "token": grant.token,
                "id_token": user.id_token,
            }
        )
        assert await peer.recv() == {"type": "redirect", "ws_url": gone_url, "node_id": "node-a"}
        await lapse(stack, "node-a", gone_url)
        peer = await Peer.connect(url_of(second["node-b"]))
        await peer.register("P", grant, user)
        assert (await Repository.from_settings(stack.common).get_room(grant.room_id)).node_id == "node-b"
        await peer.close()


async def test_a_resume_on_another_node_is_redirected_to_the_room_s_node(api: str, relay_with: RelayFactory) -> None:
    async with nodes(relay_with, ("node-a", "node-b")) as servers:
        user = await sign_in(api)
        body = await create_room(api, user)
        home = next(server for server in servers.values() if url_of(server) == body["ws_url"])
        other = next(server for server in servers.values() if server is not home)
        grant = RoomGrant(body["room_id"], body["token"], 0)
        peer = await Peer.connect(url_of(home))
        registered = await peer.register("P", grant, user)
        stray = await Peer.connect(url_of(other))
        resume = {
            "type": "register",
            "id": 7,
            "peer_id": "P",
            "room_id": grant.room_id,
            "token": grant.token,
            "id_token": user.id_token,
            "resume_token": registered["resume_token"],
            "last_seq": 0,
        }
        await stray.send(resume)
        assert (await stray.recv())["ws_url"] == body["ws_url"]
        wrong = await Peer.connect(url_of(other))
        await wrong.send(resume | {"token": "not-the-token"})
        await wrong.expect_error_with_id("INVALID_ROOM_TOKEN", 7)
        for each in (peer, wrong):
            await each.close()


async def test_entries_silent_for_ten_ttls_are_pruned(relay_with: RelayFactory, stack: StackInfo) -> None:
    repository = Repository.from_settings(stack.common)
    await repository.heartbeat_node(RelayNode("node-crashed", "ws://gone", 0, 1, expires_at=int(time.time()) - 100_000))
    async with nodes(relay_with, ("node-a",)):
        names = [node.node_id for node in await repository.relay_nodes()]
    assert "node-crashed" not in names
    assert "node-a" in names


async def test_two_nodes_never_both_take_a_room(api: str, relay_with: RelayFactory, stack: StackInfo) -> None:
    """move_room is conditional on the previous owner: of two takeovers, the second fails."""
    user = await sign_in(api)
    async with nodes(relay_with, ("node-a",)):
        body = await create_room(api, user)
    repository = Repository.from_settings(stack.common)
    await repository.move_room(body["room_id"], from_node="node-a", to_node="node-x")
    with pytest.raises(ConditionFailed):
        await repository.move_room(body["room_id"], from_node="node-a", to_node="node-y")
    assert (await repository.get_room(body["room_id"])).node_id == "node-x"


async def test_a_wrong_token_on_another_node_gets_the_error_not_the_node(api: str, relay_with: RelayFactory) -> None:
    """The room token is checked before a redirect: without it nobody learns where a room lives."""
    async with nodes(relay_with, ("node-a", "node-b")) as servers:
        user = await sign_in(api)
        body = await create_room(api, user)
        other = next(server for server in servers.values() if url_of(server) != body["ws_url"])
        peer = await Peer.connect(url_of(other))
        await peer.register_expecting_error(
            "P", RoomGrant(body["room_id"], "not-the-token", 0), user, "INVALID_ROOM_TOKEN"
        )
        await peer.close()


async def test_a_room_of_no_node_is_taken_by_the_first_node_a_peer_dials(
    api: str, relay_with: RelayFactory, stack: StackInfo
) -> None:
    """Rooms created before any node registered (ws_url absent) get a home all the same."""
    user = await sign_in(api)
    body = await create_room(api, user)
    assert "ws_url" not in body
    async with nodes(relay_with, ("node-a", "node-b")) as servers:
        first = await Peer.connect(url_of(servers["node-b"]))
        await first.register("P", RoomGrant(body["room_id"], body["token"], 0), user)
        assert (await Repository.from_settings(stack.common).get_room(body["room_id"])).node_id == "node-b"
        second = await Peer.connect(url_of(servers["node-a"]))
        await second.send(
            {
                "type": "register",
                "peer_id": "Q",
                "room_id": body["room_id"],
                "token": body["token"],
                "id_token": user.id_token,
            }
        )
        assert (await second.recv())["type"] == "redirect"
        for peer in (first, second):
            await peer.close()
