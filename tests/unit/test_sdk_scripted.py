"""The SDK's session against scripted relays (real WebSocket servers on port 0, no AWS):
resume and retransmission without duplicates, go_away and rate-limit hints honoured."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from signaling_sdk import Ack, Backoff, Identity, PeerBusy, RateLimited, Room, Session, Unavailable
from support import TIMEOUT, closed_after_test


class ScriptedRelay:
    """First connection: registers the peer, takes two messages, then fails (no close frame).
    Second: a resume whose replay acks the first message only; then records what comes."""

    def __init__(self) -> None:
        self.connections = 0
        self.sent: list[str] = []  # ids of the messages taken on the first connection
        self.after_resume: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.resume_request: dict[str, Any] = {}

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        register = json.loads(await ws.recv())
        if self.connections == 1:
            await ws.send(json.dumps(_registered(register, resumed=False, last_seq=0)))
            for _ in range(2):
                self.sent.append(json.loads(await ws.recv())["id"])
            ws.transport.abort()
            return
        self.resume_request = register
        await ws.send(json.dumps(_registered(register, resumed=True, last_seq=1)))
        await ws.send(json.dumps({"seq": 1, "type": "ack", "id": self.sent[0], "queued": False}))
        async for frame in ws:
            await self.after_resume.put(json.loads(frame))


def _registered(register: dict[str, Any], *, resumed: bool, last_seq: int) -> dict[str, Any]:
    return {
        "type": "registered_auth",
        "room_id": register["room_id"],
        "token": register["token"],
        "peer_id": register["peer_id"],
        "peers": [],
        "ice_servers": [],
        "ttl": 60,
        "resume_token": "resume-1",
        "resumed": resumed,
        "last_seq": last_seq,
    }


async def open_session(server: Server, backoff: Backoff | None = None) -> Session:
    """A session to ``server``, closed when the test ends if the test does not close it."""
    port = server.sockets[0].getsockname()[1]
    session = await Session.open(
        f"ws://127.0.0.1:{port}",
        Room("room-1", "room-token"),
        Identity("id-token", "user"),
        "A",
        backoff=backoff or Backoff(initial=0.01, maximum=0.05),
    )
    return closed_after_test(session)


# asyncio may wake a timer up to one clock tick early; the waits checked here are far longer.
EARLY = 0.02


async def test_after_a_resume_only_what_the_replay_did_not_answer_is_sent_again() -> None:
    relay = ScriptedRelay()
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            first = asyncio.create_task(session.send_to("B", "acked in the replay"))
            second = asyncio.create_task(session.send_to("B", "not answered"))
            assert await first == Ack(relay.sent[0], queued=False)
            resent = await relay.after_resume.get()
            assert (resent["id"], resent["payload"]) == (relay.sent[1], "not answered")  # only this one
            assert (relay.resume_request["resume_token"], relay.resume_request["last_seq"]) == ("resume-1", 0)
            assert not second.done()
            second.cancel()
        await session.close()


class RateLimitingRelay:
    """Registers the peer, then answers the first ``limited`` messages ``code`` (RATE_LIMITED
    with the wait ``retry_after_ms``, or PEER_BUSY without one) and acks the rest; records
    when each message came."""

    def __init__(self, limited: int, retry_after_ms: int | None, code: str = "RATE_LIMITED") -> None:
        self.limited = limited
        self.retry_after_ms = retry_after_ms
        self.code = code
        self.received: list[tuple[float, dict[str, Any]]] = []

    async def handle(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps(_registered(json.loads(await ws.recv()), resumed=False, last_seq=0)))
        async for frame in ws:
            message = json.loads(frame)
            self.received.append((asyncio.get_running_loop().time(), message))
            if len(self.received) <= self.limited:
                error: dict[str, Any] = {"code": self.code, "reason": "slow down"}
                if self.retry_after_ms is not None:
                    error["retry_after_ms"] = self.retry_after_ms
                await ws.send(json.dumps({"type": "error", "id": message["id"], **error}))
            else:
                await ws.send(json.dumps({"type": "ack", "id": message["id"], "queued": False}))


async def test_a_rate_limited_message_is_sent_again_after_the_wait_the_relay_names() -> None:
    relay = RateLimitingRelay(limited=1, retry_after_ms=200)
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            ack = await session.send_to("B", "job")
        (first_at, first), (second_at, second) = relay.received
        assert ack == Ack(second["id"], queued=False)
        assert (first["payload"], second["payload"]) == ("job", "job")
        assert first["id"] != second["id"]  # the refused one was never delivered: a new id
        assert second_at - first_at >= 0.2 - EARLY
        await session.close()


async def test_a_message_refused_for_a_busy_peer_is_sent_again_after_the_initial_backoff() -> None:
    relay = RateLimitingRelay(limited=1, retry_after_ms=None, code="PEER_BUSY")
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server, Backoff(initial=0.1))
        async with asyncio.timeout(TIMEOUT):
            ack = await session.send_to("B", "job")
        (first_at, first), (second_at, second) = relay.received
        assert ack == Ack(second["id"], queued=False)
        assert (first["payload"], second["payload"]) == ("job", "job")
        assert second_at - first_at >= 0.1 - EARLY
        await session.close()


async def test_past_its_retries_a_send_to_a_busy_peer_raises_peer_busy() -> None:
    relay = RateLimitingRelay(limited=10, retry_after_ms=None, code="PEER_BUSY")
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server, Backoff(initial=0.01, rate_limited_retries=2))
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(PeerBusy):
                await session.send_to("B", "job")
        assert len(relay.received) == 3  # the first try and two more
        await session.close()


async def test_past_its_retries_a_rate_limited_send_raises_with_the_wait() -> None:
    relay = RateLimitingRelay(limited=10, retry_after_ms=5)
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server, Backoff(rate_limited_retries=2))
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(RateLimited) as raised:
                await session.send_to("B", "job")
        assert raised.value.retry_after == 0.005
        assert len(relay.received) == 3  # the first try and two more
        await session.close()


class DrainingRelay:
    """First connection: registers, delivers one numbered message, says go_away (wait 300
    ms) and closes 4500. Second: refuses the resume RATE_LIMITED (wait 250 ms). Third:
    resumes and delivers the next message. Records every registration and when it came."""

    def __init__(self) -> None:
        self.registrations: list[tuple[float, dict[str, Any]]] = []

    async def handle(self, ws: ServerConnection) -> None:
        register = json.loads(await ws.recv())
        self.registrations.append((asyncio.get_running_loop().time(), register))
        if len(self.registrations) == 1:
            await ws.send(json.dumps(_registered(register, resumed=False, last_seq=0)))
            message = {"seq": 1, "type": "peer_message", "from_peer_id": "B", "payload": "before the restart"}
            await ws.send(json.dumps(message))
            await ws.send(json.dumps({"type": "go_away", "reason": "restart", "reconnect_after_ms": 300}))
            await ws.close(4500, "server shutting down")
        elif len(self.registrations) == 2:
            error = {"type": "error", "code": "RATE_LIMITED", "reason": "slow down", "retry_after_ms": 250}
            await ws.send(json.dumps(error))
            await ws.close()
        else:
            await ws.send(json.dumps(_registered(register, resumed=True, last_seq=1)))
            message = {"seq": 2, "type": "peer_message", "from_peer_id": "B", "payload": "after the restart"}
            await ws.send(json.dumps(message))
            await ws.wait_closed()


async def test_go_away_and_a_rate_limited_resume_are_waited_out_then_the_session_resumes() -> None:
    relay = DrainingRelay()
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        session = await open_session(server)
        async with asyncio.timeout(TIMEOUT):
            assert (await session.recv())["payload"] == "before the restart"
            assert (await session.recv())["payload"] == "after the restart"
        assert session.state.resumes == 1
        (opened_at, _), (retried_at, first_resume), (resumed_at, second_resume) = relay.registrations
        for resume in (first_resume, second_resume):
            assert (resume["resume_token"], resume["last_seq"]) == ("resume-1", 1)
        assert retried_at - opened_at >= 0.3 - EARLY  # go_away's reconnect_after_ms
        assert resumed_at - retried_at >= 0.25 - EARLY  # the RATE_LIMITED answer's retry_after_ms
        await session.close()


async def test_a_redirect_is_followed_and_the_session_stays_at_the_node_it_was_sent_to() -> None:
    """One node redirects (and closes 4502); the other registers: the session lives there."""
    registered: list[dict[str, Any]] = []

    async def home(ws: ServerConnection) -> None:
        registered.append(json.loads(await ws.recv()))
        await ws.send(json.dumps(_registered(registered[-1], resumed=False, last_seq=0)))
        await ws.wait_closed()

    async with serve(home, "127.0.0.1", 0) as home_server:
        home_url = f"ws://127.0.0.1:{home_server.sockets[0].getsockname()[1]}"

        async def elsewhere(ws: ServerConnection) -> None:
            register = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "redirect", "ws_url": home_url, "node_id": "home", "id": register["id"]}))
            await ws.close(4502, "the room is served by another relay node")

        async with serve(elsewhere, "127.0.0.1", 0) as other_server:
            session = await open_session(other_server)
            try:
                assert session.url == home_url
                assert [r["peer_id"] for r in registered] == ["A"]
            finally:
                await session.close()


async def test_redirects_that_never_end_fail_with_a_typed_error() -> None:
    async def loop(ws: ServerConnection) -> None:
        await ws.recv()
        port = ws.local_address[1]
        await ws.send(json.dumps({"type": "redirect", "ws_url": f"ws://127.0.0.1:{port}", "node_id": "me"}))
        await ws.close(4502, "elsewhere")

    async with serve(loop, "127.0.0.1", 0) as server:
        with pytest.raises(Unavailable, match="TOO_MANY_REDIRECTS"):
            await open_session(server)


async def test_when_the_node_it_was_sent_to_is_gone_the_session_starts_again_from_its_url() -> None:
    """A creator's room names a node (ws_url) that no longer listens: the entry URL answers."""
    from devstack.ports import refusing_port

    async def entry(ws: ServerConnection) -> None:
        register = json.loads(await ws.recv())
        await ws.send(json.dumps(_registered(register, resumed=False, last_seq=0)))
        await ws.wait_closed()

    with refusing_port() as gone_port:
        async with serve(entry, "127.0.0.1", 0) as server:
            entry_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            gone = Room("room-1", "room-token", ws_url=f"ws://127.0.0.1:{gone_port}")
            session = await Session.open(entry_url, gone, Identity("id-token", "user"), "A")
            try:
                assert session.url == entry_url
            finally:
                await session.close()


async def test_a_redirect_from_wss_to_plain_ws_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens never leave TLS: the session refuses before dialling the plain URL."""
    dialled: list[str] = []

    async def register_at(self: Session, url: str, *, resume: bool) -> tuple[Any, dict[str, Any]]:
        dialled.append(url)
        return None, {"type": "redirect", "ws_url": "ws://attacker.example:8080", "node_id": "x"}

    monkeypatch.setattr(Session, "_register_at", register_at)
    with pytest.raises(Unavailable, match="INSECURE_REDIRECT"):
        await Session.open("wss://signaling.example.org", Room("r", "t"), Identity("i", "u"), "A")
    assert dialled == ["wss://signaling.example.org"]


def _peer_message(seq: int, sender: str, payload: str, message_id: str | None) -> dict[str, Any]:
    message = {"seq": seq, "type": "peer_message", "from_peer_id": sender, "to_peer_id": "A", "payload": payload}
    return message if message_id is None else {**message, "message_id": message_id}


async def test_a_message_that_arrives_twice_is_received_once() -> None:
    """After a relay node fails, a message its sender sent again may arrive twice: the same
    sender and message_id is one message. Another sender's same id, and messages without an
    id (v1 senders), are never dropped; the sender is what the server stamps."""

    async def relay(ws: ServerConnection) -> None:
        await ws.send(json.dumps(_registered(json.loads(await ws.recv()), resumed=False, last_seq=0)))
        frames = [
            _peer_message(1, "B", "first", "m1"),
            _peer_message(2, "B", "first, again", "m1"),
            _peer_message(3, "C", "C's own m1", "m1"),
            _peer_message(4, "B", "no id", None),
            _peer_message(5, "B", "no id", None),
            {"seq": 6, "type": "offer", "target": "A", "sdp": "v=0", "sender": "B", "message_id": 7},
            {"seq": 7, "type": "offer", "target": "A", "sdp": "v=0", "sender": "B", "message_id": 7},
            # C claims to be B in a field the server does not stamp on offers: it must not
            # make B's own m2 look like a duplicate (the server strips it too).
            {
                "seq": 8,
                "type": "offer",
                "target": "A",
                "sdp": "v=0",
                "sender": "C",
                "from_peer_id": "B",
                "message_id": "m2",
            },
            _peer_message(9, "B", "last", "m2"),
        ]
        for frame in frames:
            await ws.send(json.dumps(frame))
        await ws.wait_closed()

    async with serve(relay, "127.0.0.1", 0) as server:
        session = await open_session(server)
        try:
            async with asyncio.timeout(TIMEOUT):
                received = [(await session.recv())["payload"] for _ in range(5)]
                offer = await session.next_signal()
        finally:
            await session.close()
    assert received == ["first", "C's own m1", "no id", "no id", "last"]
    assert offer["message_id"] == 7
    assert session.state.last_seq == 9


async def test_redirects_to_a_node_that_died_are_retried_until_a_live_node_takes_the_room() -> None:
    """The room's node died and its entry has not lapsed yet: the entry keeps redirecting to
    it (TOO_MANY_REDIRECTS on each attempt); the session waits that out, then resumes."""
    from devstack.ports import refusing_port

    redirects = 0

    async def entry(ws: ServerConnection) -> None:
        nonlocal redirects
        register = json.loads(await ws.recv())
        if "resume_token" not in register:
            await ws.send(json.dumps(_registered(register, resumed=False, last_seq=0)))
            ws.transport.abort()  # the node serving the session dies
        elif redirects < 6:  # more than one attempt's worth of redirects
            redirects += 1
            await ws.send(json.dumps({"type": "redirect", "ws_url": dead, "node_id": "dead"}))
            await ws.close(4502, "elsewhere")
        else:
            await ws.send(json.dumps({**_registered(register, resumed=True, last_seq=0), "recovered": True}))
            async for frame in ws:
                await ws.send(json.dumps({"seq": 1, "type": "ack", "id": json.loads(frame)["id"], "queued": False}))

    with refusing_port() as dead_port:
        dead = f"ws://127.0.0.1:{dead_port}"
        async with serve(entry, "127.0.0.1", 0) as server:
            session = await open_session(server)
            try:
                async with asyncio.timeout(TIMEOUT):
                    ack = await session.send_to("B", "after the failover")  # waits for the resume
            finally:
                await session.close()
    assert ack.queued is False
    assert session.state.resumes == 1
    assert redirects == 6
    assert session.url == session.entry_url
