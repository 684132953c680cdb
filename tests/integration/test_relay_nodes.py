"""Several relay nodes on the shared tables: each registers itself, rooms-api places every new
room on the least-loaded live node and says where, a peer that dials another node is sent
there (redirect, close 4502; resumes too) and the SDK follows. A stopping node gets no new
rooms but keeps its own until its entry lapses; then they move to the node their next peer
dials, by a conditional write only one node can win. Long-silent entries are pruned."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from devstack.ports import entered_retrying_on_conflict, free_port, listening_socket
from devstack.stack import StackInfo
from signaling_sdk import Identity, Room, Session
from signaling_sdk.session import Backoff
from signaling_shared.dynamo import RelayNode, Repository
from signaling_shared.errors import ConditionFailed, Unavailable
from support import (
    FACTOR,
    TIMEOUT,
    Peer,
    RoomGrant,
    ServiceProcess,
    closed_after_test,
    create_room_body,
    relay_process,
    relay_settings,
    running_relay,
    scaled,
    scaled_whole,
    sign_in,
)
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration

NODES = ("node-a", "node-b", "node-c")


@asynccontextmanager
async def nodes(
    stack: StackInfo, names: tuple[str, ...] = NODES, **overrides: Any
) -> AsyncIterator[dict[str, RelayServer]]:
    """Relay nodes, each handed a socket bound before it starts (its public URL names the
    port), by default heartbeating rarely so the test alone moves the placement counters."""
    async with AsyncExitStack() as running:
        servers: dict[str, RelayServer] = {}
        for name in names:
            sock = listening_socket()
            running.callback(sock.close)  # the relay closes it when it stops; this, if it never starts
            url = f"ws://127.0.0.1:{sock.getsockname()[1]}"
            rarely = {"node_heartbeat_seconds": scaled(300), "node_ttl_seconds": scaled_whole(600)}
            settings = relay_settings(stack, node_id=name, public_ws_url=url, **{**rarely, **overrides})
            servers[name] = await running.enter_async_context(running_relay(settings, sock=sock))
        yield servers


def url_of(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def test_rooms_spread_over_the_live_nodes(api: str, stack: StackInfo) -> None:
    async with nodes(stack) as servers:
        user = await sign_in(api)
        placed = Counter([(await create_room_body(api, user))["ws_url"] for _ in range(30)])
        assert placed == {url_of(server): 10 for server in servers.values()}  # least loaded first, in turn
    after = await create_room_body(api, user)
    assert after.get("ws_url") is None  # stopping nodes (draining) get no new rooms at once


async def test_a_peer_that_dials_another_node_is_redirected_and_the_sdk_follows(api: str, stack: StackInfo) -> None:
    async with nodes(stack) as servers:
        user = await sign_in(api)
        body = await create_room_body(api, user)
        home = next(name for name, server in servers.items() if url_of(server) == body["ws_url"])
        other = next(name for name in servers if name != home)
        peer = await Peer.connect(url_of(servers[other]))
        await peer.send(
            {
                "type": "register",
                "protocol": 2,
                "id": "r1",
                "peer_id": "P",
                "room_id": body["room_id"],
                "token": body["token"],
                "id_token": user.id_token,
            }
        )
        assert await peer.recv() == {"type": "redirect", "ws_url": body["ws_url"], "node_id": home, "id": "r1"}
        assert await peer.closed() == (4502, "the room is served by another relay node: register at redirect's ws_url")
        assert servers[other].relay.hub.member_count == 0

        # A joining peer knows only the room id and token, and a relay URL: the SDK follows.
        room = Room(body["room_id"], body["token"])
        async with await Session.open(url_of(servers[other]), room, Identity(user.id_token, user.username), "Q") as q:
            assert q.url == body["ws_url"]
            assert servers[home].relay.hub.member_count == 1


async def lapse(stack: StackInfo, name: str, url: str) -> None:
    """What a node that died looks like once its TTL passed: an entry that expired."""
    await Repository.from_settings(stack.common).heartbeat_node(
        RelayNode(name, url, rooms=0, capacity=1, expires_at=int(time.time()) - 1, draining=True)
    )


async def test_a_stopping_node_keeps_its_rooms_until_its_entry_lapses_then_they_move(
    api: str, stack: StackInfo
) -> None:
    user = await sign_in(api)
    async with nodes(stack, ("node-a",)) as first:
        body = await create_room_body(api, user)
        gone_url = url_of(first["node-a"])
        assert body["ws_url"] == gone_url
        grant = RoomGrant(body["room_id"], body["token"], 0)
    async with nodes(stack, ("node-b",)) as second:  # node-a stopped: draining, not lapsed
        peer = await Peer.connect(url_of(second["node-b"]))
        await peer.send(
            {
                "type": "register",
                "protocol": 2,
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


async def test_a_resume_on_another_node_is_redirected_to_the_room_s_node(api: str, stack: StackInfo) -> None:
    async with nodes(stack, ("node-a", "node-b")) as servers:
        user = await sign_in(api)
        body = await create_room_body(api, user)
        home = next(server for server in servers.values() if url_of(server) == body["ws_url"])
        other = next(server for server in servers.values() if server is not home)
        grant = RoomGrant(body["room_id"], body["token"], 0)
        peer = await Peer.connect(url_of(home))
        registered = await peer.register("P", grant, user)
        stray = await Peer.connect(url_of(other))
        resume = {
            "type": "register",
            "protocol": 2,
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


async def test_entries_silent_for_ten_ttls_are_pruned(stack: StackInfo) -> None:
    repository = Repository.from_settings(stack.common)
    await repository.heartbeat_node(RelayNode("node-crashed", "ws://gone", 0, 1, expires_at=int(time.time()) - 100_000))
    async with nodes(stack, ("node-a",)):
        names = [node.node_id for node in await repository.relay_nodes()]
    assert "node-crashed" not in names
    assert "node-a" in names


async def test_two_nodes_never_both_take_a_room(api: str, stack: StackInfo) -> None:
    """move_room is conditional on the previous owner: of two takeovers, the second fails."""
    user = await sign_in(api)
    async with nodes(stack, ("node-a",)):
        body = await create_room_body(api, user)
    repository = Repository.from_settings(stack.common)
    await repository.move_room(body["room_id"], from_node="node-a", to_node="node-x")
    with pytest.raises(ConditionFailed):
        await repository.move_room(body["room_id"], from_node="node-a", to_node="node-y")
    assert (await repository.get_room(body["room_id"])).node_id == "node-x"


async def test_a_wrong_token_on_another_node_gets_the_error_not_the_node(api: str, stack: StackInfo) -> None:
    """The room token is checked before a redirect: without it nobody learns where a room lives."""
    async with nodes(stack, ("node-a", "node-b")) as servers:
        user = await sign_in(api)
        body = await create_room_body(api, user)
        other = next(server for server in servers.values() if url_of(server) != body["ws_url"])
        peer = await Peer.connect(url_of(other))
        await peer.register_expecting_error(
            "P", RoomGrant(body["room_id"], "not-the-token", 0), user, "INVALID_ROOM_TOKEN"
        )
        await peer.close()


async def test_a_room_of_no_node_is_taken_by_the_first_node_a_peer_dials(api: str, stack: StackInfo) -> None:
    """Rooms created before any node registered (ws_url absent) get a home all the same."""
    user = await sign_in(api)
    body = await create_room_body(api, user)
    assert "ws_url" not in body
    async with nodes(stack, ("node-a", "node-b")) as servers:
        first = await Peer.connect(url_of(servers["node-b"]))
        await first.register("P", RoomGrant(body["room_id"], body["token"], 0), user)
        assert (await Repository.from_settings(stack.common).get_room(body["room_id"])).node_id == "node-b"
        second = await Peer.connect(url_of(servers["node-a"]))
        await second.send(
            {
                "type": "register",
                "protocol": 2,
                "peer_id": "Q",
                "room_id": body["room_id"],
                "token": body["token"],
                "id_token": user.id_token,
            }
        )
        assert (await second.recv())["type"] == "redirect"
        for peer in (first, second):
            await peer.close()


# Failover and rolling restarts: relay processes, as deployed -------------------------------

ROOMS = 100
MESSAGES = 12  # each way, per room
# Short heartbeats, so a killed node's entry lapses within seconds (a node fences itself when
# a renewal is more than TTL - 2 heartbeats late: 2 s of slack, scaled for a busy machine).
FAST_NODES = {"node_heartbeat_seconds": scaled(0.5), "node_ttl_seconds": scaled_whole(3)}
# Some 50 s of reconnection attempts (0.25 s apart on average), scaled like any time window.
PATIENT = Backoff(initial=0.05, maximum=0.5, attempts=round(200 * FACTOR))


class Cluster:
    """Relay processes on ports chosen before they start (a node's public URL names its port
    before it listens), each of which can be killed, stopped and started again as the same
    node, on the same port. A process cannot be handed a socket: a port taken before its
    first start makes ``cluster`` start all three again on others (AddressInUse); one taken
    while its node is down, before the restart, fails that test with AddressInUse (the node
    must come back at its own URL, as a restarted node does)."""

    def __init__(self, stack: StackInfo, names: tuple[str, ...], **overrides: Any) -> None:
        self.stack = stack
        self.ports = {name: free_port() for name in names}
        self.overrides = overrides
        self.processes: dict[str, ServiceProcess] = {}
        self._stacks: dict[str, AsyncExitStack] = {}

    def url(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.ports[name]}"

    def name_of(self, url: str) -> str:
        return next(name for name in self.ports if self.url(name) == url)

    async def start(self, name: str) -> ServiceProcess:
        stack = AsyncExitStack()
        process = await stack.enter_async_context(
            relay_process(
                self.stack,
                node_id=name,
                port=self.ports[name],
                public_ws_url=self.url(name),
                **self.overrides,
            )
        )
        self.processes[name], self._stacks[name] = process, stack
        return process

    async def stop(self, name: str, sig: signal.Signals) -> int:
        process = self.processes.pop(name)
        if process.process.returncode is None:
            process.process.send_signal(sig)
        code = await process.wait()
        await self._stacks.pop(name).aclose()
        return code

    async def close(self) -> None:
        """Stopped as an operator would (SIGTERM: draining entries), so that no later test's
        room is placed on a node that no longer listens."""
        for name in list(self.processes):
            await self.stop(name, signal.SIGTERM)


@asynccontextmanager
async def cluster(stack: StackInfo, **overrides: Any) -> AsyncIterator[Cluster]:
    """The three nodes running; started again on other ports if one was taken meanwhile."""
    async with entered_retrying_on_conflict(lambda: started(Cluster(stack, NODES, **overrides))) as nodes:
        yield nodes


@asynccontextmanager
async def started(nodes: Cluster) -> AsyncIterator[Cluster]:
    try:
        for name in nodes.ports:
            await nodes.start(name)
        yield nodes
    finally:
        await nodes.close()


@dataclass
class Pair:
    """A worker and a client in one room, each sending the other numbered messages."""

    room: dict[str, Any]
    worker: Session
    client: Session
    sent: dict[str, int] = field(default_factory=dict)  # by sender
    received: dict[str, list[int]] = field(default_factory=lambda: {"Worker": [], "Client": []})  # by receiver

    def session(self, peer_id: str) -> Session:
        return self.worker if peer_id == "Worker" else self.client


async def open_pairs(entry: str, bodies: list[dict[str, Any]], identity: Identity) -> list[Pair]:
    """Both peers of every room dial ``entry`` (not the room's node: they get redirected)."""
    gate = asyncio.Semaphore(20)

    async def session(body: dict[str, Any], peer_id: str) -> Session:
        async with gate:
            room = Room(body["room_id"], body["token"])
            return closed_after_test(await Session.open(entry, room, identity, peer_id, backoff=PATIENT))

    async def pair(body: dict[str, Any]) -> Pair:
        return Pair(body, await session(body, "Worker"), await session(body, "Client"))

    return list(await asyncio.gather(*(pair(body) for body in bodies)))


async def exchange(
    pairs: list[Pair], *, midway: Callable[[], Awaitable[None]], until: asyncio.Event | None = None
) -> None:
    """Every peer sends its partner numbered messages, each send awaited (acked), then an end
    marker (-1); ``midway`` runs once every sender has had two messages acked. Without
    ``until``, MESSAGES each; with it, until it is set. Receivers read up to the marker."""
    going = asyncio.Event()
    started = 0

    async def send(pair: Pair, sender: str, to: str) -> None:
        nonlocal started
        n = 0
        while (n < MESSAGES) if until is None else not until.is_set():
            await pair.session(sender).send_to(to, n)
            n += 1
            if n == 2:
                started += 1
                if started == 2 * len(pairs):
                    going.set()
        await pair.session(sender).send_to(to, -1)
        pair.sent[sender] = n

    async def receive(pair: Pair, receiver: str) -> None:
        while True:
            message = await pair.session(receiver).recv()
            if message["type"] == "peer_message":
                if message["payload"] == -1:
                    return
                pair.received[receiver].append(message["payload"])

    async def run_midway() -> None:
        await going.wait()
        await midway()

    tasks = [run_midway()]
    for pair in pairs:
        tasks += [send(pair, "Worker", "Client"), send(pair, "Client", "Worker")]
        tasks += [receive(pair, "Worker"), receive(pair, "Client")]
    async with asyncio.timeout(30 * TIMEOUT):
        await asyncio.gather(*tasks)


def each_message_arrived_once_in_order(pair: Pair) -> bool:
    return pair.received == {
        "Worker": list(range(pair.sent["Client"])),
        "Client": list(range(pair.sent["Worker"])),
    }


async def test_a_killed_node_s_peers_resume_on_live_nodes_and_every_message_arrives_once(
    api: str, stack: StackInfo
) -> None:
    """Three relay processes, 100 rooms, a worker and a client in each exchanging numbered
    messages both ways, every peer entering through node-a. Mid-stream node-b is killed
    (SIGKILL): once its entry lapses its rooms move to a live node, its peers resume there
    (recovered: nothing was saved), and every message is acked and arrives exactly once."""
    user = await sign_in(api)
    identity = Identity(user.id_token, user.username)
    async with cluster(stack, **FAST_NODES) as nodes:
        bodies = [await create_room_body(api, user) for _ in range(ROOMS)]
        placed = Counter(nodes.name_of(body["ws_url"]) for body in bodies)
        # Spread over the nodes: with heartbeats this frequent, rooms not used yet count only
        # until the next one (exact turns: test_rooms_spread_over_the_live_nodes).
        assert set(placed) == set(NODES)
        assert min(placed.values()) >= 15

        pairs = await open_pairs(nodes.url("node-a"), bodies, identity)
        for pair in pairs:  # those of rooms on node-b and node-c were redirected there
            assert pair.worker.url == pair.client.url == pair.room["ws_url"]
        on_b = [pair for pair in pairs if pair.room["ws_url"] == nodes.url("node-b")]

        async def kill_b() -> None:
            assert await nodes.stop("node-b", signal.SIGKILL) == -signal.SIGKILL

        try:
            await exchange(pairs, midway=kill_b)
            repository = Repository.from_settings(stack.common)
            for pair in pairs:
                assert pair.sent == {"Worker": MESSAGES, "Client": MESSAGES}
                assert each_message_arrived_once_in_order(pair)
                affected = pair in on_b
                for session in (pair.worker, pair.client):
                    assert (session.state.resumes >= 1) is affected
                    assert session.url != nodes.url("node-b")
                if affected:  # moved to the node its peers dialled: the entry
                    assert (await repository.get_room(pair.room["room_id"])).node_id == "node-a"
            recovered = [e for e in nodes.processes["node-a"].events if e.get("event") == "peer_recovered"]
            assert len(recovered) == 2 * len(on_b)
            assert {e["from_node"] for e in recovered} == {"node-b"}
        finally:
            for pair in pairs:
                await pair.worker.close()
                await pair.client.close()


async def test_a_rolling_restart_of_every_node_under_load_loses_no_message(api: str, stack: StackInfo) -> None:
    """Three relay processes, 30 rooms with messages flowing both ways the whole time; each
    node in turn is stopped (SIGTERM: go_away, drain, sessions saved) and started again as
    the same node. Every peer resumes on its node's next process and every message is acked
    and arrives once, in order."""
    user = await sign_in(api)
    identity = Identity(user.id_token, user.username)
    async with cluster(stack) as nodes:
        bodies = [await create_room_body(api, user) for _ in range(30)]
        pairs = await open_pairs(nodes.url("node-a"), bodies, identity)
        done = asyncio.Event()

        async def restart_every_node() -> None:
            for name in NODES:
                assert await nodes.stop(name, signal.SIGTERM) == 0
                await nodes.start(name)
            done.set()

        try:
            await exchange(pairs, midway=restart_every_node, until=done)
            for pair in pairs:
                assert min(pair.sent.values()) >= 2
                assert each_message_arrived_once_in_order(pair)
                for session in (pair.worker, pair.client):
                    assert session.state.resumes >= 1
                    assert session.url == pair.room["ws_url"]  # the same node, restarted
            for process in nodes.processes.values():
                assert not [e for e in process.events if e.get("event") == "peer_recovered"]
        finally:
            for pair in pairs:
                await pair.worker.close()
                await pair.client.close()


async def test_a_node_that_cannot_renew_its_entry_fences_itself_before_it_lapses(
    api: str, stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node-a's heartbeats fail (its table access is cut, say) while it serves two peers: it is
    fenced before its entry lapses and stops as for a SIGTERM (main then exits 1), so its
    peers move on with the room to node-b instead of staying on a node that lost it."""
    user = await sign_in(api)
    identity = Identity(user.id_token, user.username)
    async with nodes(stack, ("node-a", "node-b"), **FAST_NODES) as servers:
        a, b = servers["node-a"], servers["node-b"]
        body = await create_room_body(api, user)
        while body["ws_url"] != url_of(a):
            body = await create_room_body(api, user)
        room = Room(body["room_id"], body["token"])
        p = closed_after_test(await Session.open(url_of(b), room, identity, "P", backoff=PATIENT))
        q = closed_after_test(await Session.open(url_of(b), room, identity, "Q", backoff=PATIENT))
        try:
            assert p.url == q.url == url_of(a)

            async def cut_off(node: RelayNode) -> None:
                raise Unavailable("the table cannot be reached", operation="heartbeat_node")

            monkeypatch.setattr(a.repository, "heartbeat_node", cut_off)
            async with asyncio.timeout(4 * TIMEOUT):
                await a.fenced.wait()
            entry = next(node for node in await a.repository.relay_nodes() if node.node_id == "node-a")
            assert time.time() < entry.expires_at  # fenced before its entry lapsed
            await a.stop()  # what main does once fenced

            async with asyncio.timeout(6 * TIMEOUT):
                ack = await p.send_to("Q", "on node-b")
                assert await q.recv() == {
                    "type": "peer_message",
                    "from_peer_id": "P",
                    "to_peer_id": "Q",
                    "payload": "on node-b",
                    "message_id": ack.id,
                }
            assert p.url == q.url == url_of(b)
            assert (p.state.resumes, q.state.resumes) == (1, 1)
            assert (await Repository.from_settings(stack.common).get_room(room.room_id)).node_id == "node-b"
        finally:
            await p.close()
            await q.close()
