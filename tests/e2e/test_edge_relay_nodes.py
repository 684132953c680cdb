"""Three relay nodes on one host, as the signaling role deploys them (relay_nodes = 3): three
relay processes configured from the rendered compose override (node id and public URL), and
the real Caddy edge with the rendered relay node routes and entry. A peer knows the edge's
one entry URL: it reaches the room's node through that node's own URL, /nodes/relay-<k>."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from container_checks import ROOT
from devstack.ports import entered_retrying_on_conflict, free_port
from devstack.stack import StackInfo
from edge import Edge, caddy_edge
from signaling_sdk import Identity, Room, Session
from signaling_shared.dynamo import RelayNode, Repository
from support import (
    TIMEOUT,
    Peer,
    ServiceProcess,
    User,
    create_room_body,
    relay_process,
    scaled,
    scaled_whole,
    sign_in,
    terminate,
)
from tools import require

pytestmark = pytest.mark.e2e

NODES = ("relay-1", "relay-2", "relay-3")
TEMPLATES = ROOT / "ansible" / "roles" / "signaling" / "templates"


async def render(template: str, destination: Path, variables: dict[str, Any]) -> None:
    """The signaling role's template, rendered by Ansible's own template module."""
    (destination.parent / "vars.json").write_text(json.dumps(variables))
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("ansible")),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        "ansible.builtin.template",
        "-a",
        f"src={TEMPLATES / template} dest={destination} mode=0644",
        "-e",
        f"@{destination.parent / 'vars.json'}",
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 12 * TIMEOUT)
    assert process.returncode == 0, output.decode()


@dataclass(frozen=True)
class Host:
    edge: Edge
    nodes: dict[str, ServiceProcess]  # by node id
    public_urls: dict[str, str]  # by node id

    def node_of(self, ws_url: str) -> str:
        return next(node for node, url in self.public_urls.items() if url == ws_url)


@pytest.fixture
async def host(stack: StackInfo, tmp_path: Path) -> AsyncIterator[Host]:
    """The rendered override's three relays and the edge in front of them (the APIs are the
    stack's), on free ports: on other ones if a port was taken before its program listened."""
    require("caddy")  # before any node starts: a skipped test leaves no node behind
    attempts = itertools.count(1)

    def on_free_ports() -> AbstractAsyncContextManager[Host]:
        return running_host(stack, tmp_path / f"attempt-{next(attempts)}")

    async with entered_retrying_on_conflict(on_free_ports) as running:
        yield running


@asynccontextmanager
async def running_host(stack: StackInfo, directory: Path) -> AsyncIterator[Host]:
    https_port = free_port()
    ports = {node: free_port() for node in NODES}  # the public URLs must be known before anything listens
    rendered = directory / "rendered"
    (rendered / "relay-nodes").mkdir(parents=True)
    variables = {
        "signaling_relay_nodes": len(NODES),
        "signaling_domain": f"localhost:{https_port}",
        "signaling_relay_upstreams": {node: f"127.0.0.1:{port}" for node, port in ports.items()},
        "signaling_loopback_ports": {"auth-api": 18001, "rooms-api": 18002, "ws-relay": 18080},
        "ansible_managed": "Managed by Ansible (rendered for a test).",
        "ansible_python_interpreter": sys.executable,
    }
    await asyncio.gather(
        render("compose.override.yaml.j2", rendered / "compose.override.yaml", variables),
        render("relay-nodes.caddy.j2", rendered / "relay-nodes" / "routes.caddy", variables),
    )
    services = yaml.safe_load((rendered / "compose.override.yaml").read_text())["services"]
    environments = {
        service["environment"]["SIGNALING_NODE_ID"]: service["environment"]
        for name, service in services.items()
        if name.startswith("ws-relay")
    }
    assert sorted(environments) == list(NODES)
    async with AsyncExitStack() as running:
        nodes = {
            node: await running.enter_async_context(
                relay_process(
                    stack,
                    port=ports[node],
                    node_id=node,
                    public_ws_url=env["SIGNALING_PUBLIC_WS_URL"],
                    node_heartbeat_seconds=scaled(300),  # the placement counters move with this test's rooms only
                    node_ttl_seconds=scaled_whole(600),
                    stun_urls=[],
                    turn_urls=[],
                )
            )
            for node, env in sorted(environments.items())
        }
        urls = {node: env["SIGNALING_PUBLIC_WS_URL"] for node, env in environments.items()}
        running.push_async_callback(leave_no_placeable_node, stack, nodes, urls)
        edge = await running.enter_async_context(
            caddy_edge(
                directory / "caddy",
                auth_api="127.0.0.1:9",  # not used: the stack's APIs are reached directly
                rooms_api="127.0.0.1:9",
                ws_relay=services["edge"]["environment"]["EDGE_WS_RELAY"],
                https_port=https_port,
                relay_nodes_dir=rendered / "relay-nodes",
                log_level="DEBUG",  # each dial of a relay node logged: test_the_entry_skips_a_dead_node reads them
            )
        )
        yield Host(edge, nodes, urls)


async def leave_no_placeable_node(stack: StackInfo, nodes: dict[str, ServiceProcess], urls: dict[str, str]) -> None:
    """Leave no entry placement could still pick (the tables are the session's): the live nodes
    stop as an operator stops them (draining), a killed one's entry lapses."""
    repository = Repository.from_settings(stack.common)
    for node, running_node in nodes.items():
        if running_node.process.returncode is None:
            await terminate(running_node.process)
        else:
            expired = int(time.time()) - 1
            await repository.heartbeat_node(RelayNode(node, urls[node], 0, 1, expired, draining=True))
    entries = await repository.relay_nodes()
    placeable = [e.node_id for e in entries if e.node_id in nodes and e.is_live(time.time()) and not e.draining]
    assert placeable == []


def trusting(edge: Edge) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=edge.ca_file)


def register(room: dict[str, Any], user: User, peer_id: str) -> dict[str, Any]:
    return {
        "type": "register",
        "protocol": 2,
        "peer_id": peer_id,
        "room_id": room["room_id"],
        "token": room["token"],
        "id_token": user.id_token,
    }


async def test_each_node_s_own_url_reaches_that_node_and_the_entry_leads_there(host: Host, api: str) -> None:
    """Rooms go to the three nodes, each at its /nodes/<node id> URL through the edge; dialled
    there a peer registers at once, dialled at another node's URL it is redirected, and an
    SDK session opened at the entry URL joins the peer on the room's node (redirected there
    unless the entry happened to pick that node)."""
    tls = trusting(host.edge)
    user = await sign_in(api)
    identity = Identity(user.id_token, user.username)
    rooms = [await create_room_body(api, user) for _ in NODES]
    assert sorted(host.node_of(room["ws_url"]) for room in rooms) == list(NODES)  # least loaded first
    assert {room["ws_url"] for room in rooms} == {f"{host.edge.ws_url}/nodes/{node}" for node in NODES}
    for room in rooms:
        home = host.node_of(room["ws_url"])
        direct = await Peer.connect(room["ws_url"], ssl=tls)
        await direct.send(register(room, user, "Direct"))
        assert (await direct.expect("registered_auth"))["room_id"] == room["room_id"]
        assert (await host.nodes[home].logged("peer_registered"))["room_id"] == room["room_id"]
        other = next(node for node in NODES if node != home)
        stray = await Peer.connect(host.public_urls[other], ssl=tls)
        await stray.send(register(room, user, "Stray"))
        assert await stray.recv() == {"type": "redirect", "ws_url": room["ws_url"], "node_id": home}
        assert (await stray.closed())[0] == 4502
        grant = Room(room["room_id"], room["token"])
        async with await Session.open(host.edge.ws_url, grant, identity, "ViaEntry", ssl=tls) as session:
            assert session.url in (host.edge.ws_url, room["ws_url"])
            # Any other node would have redirected it: joined, it is on the home node.
            assert (await direct.expect("peer_joined"))["peer_id"] == "ViaEntry"
        await direct.close()


async def upstream_dials(edge: Edge, peer: Peer) -> list[dict[str, Any]]:
    """The upstreams the edge dialled for ``peer``'s WebSocket, in order, up to the one that
    answered (Caddy logs each round trip at DEBUG, with the client's address)."""
    port = str(peer.ws.local_address[1])

    def of_peer(entry: dict[str, Any]) -> bool:
        return entry.get("msg") == "upstream roundtrip" and str(entry["request"]["remote_port"]) == port

    await edge.logged(lambda entry: of_peer(entry) and "error" not in entry)  # the dial that answered
    return [entry for entry in edge.log if of_peer(entry)]


async def test_the_entry_skips_a_dead_node(host: Host) -> None:
    """relay-1 and relay-2 killed: every WebSocket dialled at the entry URL still opens, on
    relay-3, and Caddy's log shows why: a dial the edge sent to a dead node was refused and
    it dialled again (without the retry, it would answer 502 to that peer)."""
    dead, (alive,) = ("relay-1", "relay-2"), set(NODES) - {"relay-1", "relay-2"}
    for node in dead:
        host.nodes[node].process.kill()
        await host.nodes[node].wait()
    tls = trusting(host.edge)
    retried = 0
    for dials in itertools.count(1):
        peer = await Peer.connect(host.edge.ws_url, ssl=tls)
        await peer.send({"type": "ping"})
        await peer.expect("pong")
        *refused, answered = await upstream_dials(host.edge, peer)
        await peer.close()
        assert (answered["upstream"], answered["status"]) == (host.nodes[alive].address, 101)
        assert {entry["upstream"] for entry in refused} <= {host.nodes[node].address for node in dead}
        assert all("connection refused" in entry["error"] for entry in refused)
        retried += bool(refused)
        # The entry picks at random: each dial goes to a dead node first with odds 2/3, so
        # 5 dials see a retry unless 1 in 3**5 = 243; the last of 50 dials, 1 in 3**50.
        if (retried and dials >= 5) or dials == 50:
            break
    assert retried > 0
