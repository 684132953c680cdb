"""The load generator: one scenario against one system, in its own process, loopback only.

    python -m bench.loadgen '<job JSON>'      # prints the result as one JSON line

The job names the system (``relay``, ``peerjs`` or ``null``), its WebSocket URL (and for the
relay the HTTP API it signs in and creates rooms with), the server's pid (to read its CPU
time) and the scenario with its parameters. ``hold`` prints ``HELD <json>`` once its
connections are registered and keeps them until a line arrives on stdin.

Every peer speaks the system's own wire protocol: ours (``register`` -> ``registered_auth``,
``offer``/``answer``/``candidate`` with ``target``), PeerJS's (``OPEN``; ``OFFER``/``ANSWER``/
``CANDIDATE`` with ``dst``), or the null relay's (``OPEN``; frames forwarded unread). Each
relayed message carries its send time (``ts``, CLOCK_MONOTONIC ns, shared by every process).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.nullrelay import raise_fd_limit
from signaling_sdk.http import Identity, Room, ServiceClient

SYSTEMS = ("relay", "peerjs", "null")
TS = re.compile(r'"ts":\s*(\d+)')
# A data-channel-only offer as browsers and aiortc write it (about 600 bytes), and a host candidate.
SDP = (
    "v=0\r\no=- 3921904380 3921904380 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "a=msid-semantic:WMS *\r\nm=application 9 DTLS/SCTP 5000\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=sctpmap:5000 webrtc-datachannel 65535\r\na=max-message-size:65536\r\n"
    "a=ice-ufrag:Hq8Z\r\na=ice-pwd:bV2Kq7v0cG1wz3ZpQm4sYx\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CD:87:32:BE:DD:8C:66:A5:8E:50:"
    "55:EA:8C:D3:B6:5C:09:5E:79:F2\r\na=setup:actpass\r\n"
)
CANDIDATE = "candidate:3b5fa4c8 1 udp 2130706431 127.0.0.1 49732 typ host"
SDP_JSON = json.dumps(SDP)
CANDIDATE_JSON = json.dumps({"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0})
# One negotiation: offer, answer, then two candidates each way (the pattern repeats).
PATTERN = (("offer", 0), ("answer", 1), ("candidate", 0), ("candidate", 1), ("candidate", 0), ("candidate", 1))
TIMEOUT = 60.0


class Refused(Exception):
    """The server answered the registration with an error."""


@dataclass
class System:
    """How to address, register on and relay through one system."""

    kind: str
    url: str
    rooms: list[Room] = field(default_factory=list)
    identity: Identity | None = None
    peers_per_room: int = 10

    def address(self, peer_id: str, partner: str) -> str:
        if self.kind == "peerjs":
            return f"{self.url}/peerjs?key=peerjs&id={peer_id}&token=t{peer_id}"
        if self.kind == "null":
            return f"{self.url}/{peer_id}/{partner}"
        return self.url

    def register(self, peer_id: str, index: int) -> str | None:
        if self.kind != "relay":
            return None  # PeerJS and the null relay register by URL
        assert self.identity is not None
        room = self.rooms[(index // self.peers_per_room) % len(self.rooms)]
        return json.dumps(
            {
                "type": "register",
                "peer_id": peer_id,
                "room_id": room.room_id,
                "token": room.token,
                "id_token": self.identity.id_token,
            }
        )

    def registered(self, frame: str | bytes) -> bool:
        """True for the registration's answer; Refused for an error; False for anything else."""
        message = json.loads(frame)
        kind = message.get("type")
        if kind in ("registered_auth", "OPEN"):
            return True
        if kind in ("error", "ERROR", "ID-TAKEN"):
            raise Refused(str(message.get("code") or message.get("payload") or kind))
        return False

    def message(self, kind: str, src: str, dst: str) -> str:
        ts = time.monotonic_ns()
        body = f'"candidate":{CANDIDATE_JSON}' if kind == "candidate" else f'"sdp":{SDP_JSON}'
        if self.kind == "relay":
            return f'{{"type":"{kind}","sender":"{src}","target":"{dst}",{body},"ts":{ts}}}'
        return f'{{"type":"{kind.upper()}","dst":"{dst}","payload":{{"type":"{kind}",{body},"ts":{ts}}}}}'

    def heartbeat(self) -> str | None:
        """What an idle client must send to stay connected (PeerJS drops silent ones after 60 s)."""
        return '{"type":"HEARTBEAT"}' if self.kind == "peerjs" else None


async def open_peer(system: System, peer_id: str, partner: str, index: int) -> tuple[ClientConnection, float]:
    """Connect and register one peer; the connection and the seconds from connect to registered."""
    started = time.perf_counter()
    ws = await connect(
        system.address(peer_id, partner),
        compression=None,
        open_timeout=TIMEOUT,
        ping_interval=None,  # the servers ping; the client answers
        max_size=None,
        max_queue=64,
        close_timeout=5,
    )
    try:
        frame = system.register(peer_id, index)
        if frame is not None:
            await ws.send(frame)
        async with asyncio.timeout(TIMEOUT):
            while not system.registered(await ws.recv()):
                pass
    except BaseException:
        await ws.close()
        raise
    return ws, time.perf_counter() - started


def percentiles(samples: Sequence[float]) -> dict[str, float | int]:
    """count, mean, p50, p99, p99.9 and max of ``samples`` (seconds), in milliseconds."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 4)

    return {
        "count": len(ordered),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 4),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": round(ordered[-1] * 1000, 4),
    }


class CpuClock:
    """CPU seconds used by the server (from /proc/PID/stat) and by this generator."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, server_pid: int | None, stack_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.stack_pid = stack_pid  # ws-relay's storage: the dev stack's process (the AWS emulator)
        self._start = self._read()

    def _cpu(self, pid: int | None) -> float:
        if pid is None:
            return 0.0
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / self.TICK  # utime, stime

    def _read(self) -> tuple[float, float, float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), self._cpu(self.server_pid), own.ru_utime + own.ru_stime, self._cpu(self.stack_pid)

    def lap(self) -> dict[str, float]:
        """Each process's CPU use since the last lap, as a fraction of one core."""
        now = self._read()
        wall = max(now[0] - self._start[0], 1e-9)
        result = {
            "server_cpu": round((now[1] - self._start[1]) / wall, 3),
            "generator_cpu": round((now[2] - self._start[2]) / wall, 3),
        }
        if self.stack_pid is not None:
            result["stack_cpu"] = round((now[3] - self._start[3]) / wall, 3)
        self._start = now
        return result


async def bounded(count: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> None:
    """``work(0..count-1)`` with at most ``concurrency`` at once."""
    indices = iter(range(count))

    async def worker() -> None:
        for index in indices:
            await work(index)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


async def close_all(connections: Sequence[ClientConnection]) -> None:
    async def close(index: int) -> None:
        with contextlib.suppress(Exception):
            await connections[index].close()

    await bounded(len(connections), 200, close)


def run_id() -> str:
    return uuid.uuid4().hex[:8]


async def open_peers(
    system: System, prefix: str, count: int, concurrency: int
) -> tuple[list[ClientConnection], list[float], dict[str, int], float]:
    """Connect and register ``count`` peers (paired by index), ``concurrency`` at a time: the
    open connections, each one's registration latency, errors by kind, and the seconds taken."""
    connections: list[ClientConnection] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one(index: int) -> None:
        try:
            ws, seconds = await open_peer(system, f"{prefix}-{index}", f"{prefix}-{index ^ 1}", index)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            key = f"{type(exc).__name__}: {str(exc)[:60]}"
            errors[key] = errors.get(key, 0) + 1
            return
        connections.append(ws)
        latencies.append(seconds)

    started = time.monotonic()
    await bounded(count, concurrency, one)
    return connections, latencies, errors, time.monotonic() - started


# Scenarios ------------------------------------------------------------------------


async def register_scenario(system: System, params: dict[str, Any], clock: CpuClock) -> dict[str, Any]:
    """connect -> registered, ``count`` peers, ``concurrency`` at a time; all kept open until the end."""
    count, concurrency = int(params["count"]), int(params["concurrency"])
    if params.get("announce"):
        print("PAIRED", flush=True)  # the profiler starts now: registrations only
    connections, latencies, errors, elapsed = await open_peers(system, f"r{run_id()}", count, concurrency)
    result = {"concurrency": concurrency, "latency": percentiles(latencies), "errors": errors}
    result.update(registrations_per_second=round(len(latencies) / elapsed, 1), **clock.lap())
    await close_all(connections)
    return result


async def churn_scenario(system: System, params: dict[str, Any], clock: CpuClock) -> dict[str, Any]:
    """connect, register, close, again, from ``concurrency`` workers for ``duration`` seconds."""
    duration, concurrency = float(params["duration"]), int(params["concurrency"])
    prefix = f"c{run_id()}"
    counter = itertools.count()
    done: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + duration
    clock.lap()

    async def worker(slot: int) -> None:
        while time.monotonic() < deadline:
            index = next(counter)
            started = time.perf_counter()
            try:
                # One room per worker: peers come and go in it one at a time.
                ws, _ = await open_peer(system, f"{prefix}-{index}", f"{prefix}-x", slot * system.peers_per_room)
                await ws.close()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            done.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    elapsed = time.monotonic() - started
    return {
        "concurrency": concurrency,
        "duration_s": round(elapsed, 2),
        "cycles": len(done),
        "cycles_per_second": round(len(done) / elapsed, 1),
        "cycle": percentiles(done),
        "errors": errors,
        **clock.lap(),
    }


@dataclass
class Pair:
    """Two connected peers exchanging the offer/answer/candidate pattern."""

    ids: tuple[str, str]
    sockets: tuple[ClientConnection, ClientConnection]
    step: int = 0

    def next(self, system: System) -> tuple[ClientConnection, str]:
        kind, side = PATTERN[self.step % len(PATTERN)]
        self.step += 1
        return self.sockets[side], system.message(kind, self.ids[side], self.ids[1 - side])


@dataclass
class Receipts:
    """What the readers saw: relayed messages (with their latency, when in the window) and others."""

    received: int = 0
    measure_from: int = 0  # monotonic ns: messages sent before are not sampled
    samples: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


async def read(ws: ClientConnection, receipts: Receipts) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for frame in ws:
            text = frame if isinstance(frame, str) else frame.decode()
            match = TS.search(text)
            if match is None:
                if '"error"' in text or '"ERROR"' in text:
                    receipts.errors += 1
                    receipts.first_error = receipts.first_error or text[:200]
                continue
            now = time.monotonic_ns()
            receipts.received += 1
            sent = int(match[1])
            if sent >= receipts.measure_from:
                receipts.samples.append((now - sent) / 1e9)


async def latency_scenario(system: System, params: dict[str, Any], clock: CpuClock) -> dict[str, Any]:
    """One-hop latency at each rate of ``rates`` (messages/s over ``pairs`` pairs) for ``duration``
    seconds each; with ``stop_on_fail``, the steps end at the first rate not sustained."""
    pairs_count, duration = int(params["pairs"]), float(params["duration"])
    warmup = float(params.get("warmup", min(1.0, duration / 5)))
    prefix = f"l{run_id()}"
    pairs: list[Pair] = []

    async def make_pair(index: int) -> None:
        a, b = f"{prefix}-{index}a", f"{prefix}-{index}b"
        # Both peers of a pair in the same room (the relay routes within a room).
        wa, _ = await open_peer(system, a, b, index * system.peers_per_room)
        wb, _ = await open_peer(system, b, a, index * system.peers_per_room)
        pairs.append(Pair((a, b), (wa, wb)))

    await bounded(pairs_count, 8, make_pair)
    if params.get("announce"):
        print("PAIRED", flush=True)  # the profiler starts now: the steady state only
    receipts = Receipts()
    readers = [asyncio.create_task(read(ws, receipts)) for pair in pairs for ws in pair.sockets]
    steps: list[dict[str, Any]] = []
    sent_total = 0
    try:
        for rate in params["rates"]:
            step = await one_rate(system, pairs, receipts, float(rate), duration, warmup, sent_total, clock)
            sent_total += step["sent"]
            steps.append(step)
            if step["closed"] or (params.get("stop_on_fail") and not step["sustained"]):
                break
    finally:
        for task in readers:
            task.cancel()
        await close_all([ws for pair in pairs for ws in pair.sockets])
    return {"pairs": pairs_count, "duration_s": duration, "steps": steps}


async def one_rate(
    system: System,
    pairs: list[Pair],
    receipts: Receipts,
    rate: float,
    duration: float,
    warmup: float,
    sent_before: int,
    clock: CpuClock,
) -> dict[str, Any]:
    """Open loop: every millisecond, send what the schedule says is due by now."""
    receipts.samples = []
    received_before = receipts.received
    errors_before = receipts.errors
    started = time.monotonic()
    receipts.measure_from = time.monotonic_ns() + int(warmup * 1e9)
    clock.lap()
    sent = 0
    lag = 0.0  # how far behind schedule the sender fell, at worst
    closed = ""  # the server closed a connection: the step fails there
    while not closed and (elapsed := time.monotonic() - started) < duration:
        due = int(elapsed * rate) - sent
        if due > 1:
            lag = max(lag, (due - 1) / rate)
        for _ in range(due):
            ws, frame = pairs[(sent_before + sent) % len(pairs)].next(system)
            try:
                await ws.send(frame)
            except ConnectionClosed as exc:
                closed = f"the server closed a connection: {exc}"[:200]
                break
            sent += 1
        await asyncio.sleep(0.001)
    sending = time.monotonic() - started
    cpu = clock.lap()
    # Wait for the stragglers (at most 5 s): a message still missing then counts as lost.
    waited = time.monotonic()
    while receipts.received - received_before < sent and time.monotonic() - waited < 5:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # the readers count; a benchmark may poll
    received = receipts.received - received_before
    latency = percentiles(receipts.samples)
    achieved = sent / sending
    p99 = float(latency.get("p99_ms", float("inf")))
    return {
        "rate": rate,
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "errors": receipts.errors - errors_before,
        "first_error": receipts.first_error or closed,
        "closed": bool(closed),
        "achieved_rate": round(achieved, 1),
        "max_sender_lag_ms": round(lag * 1000, 2),
        "latency": latency,
        # Sustained: the schedule was kept (95%), nothing was lost and p99 stayed under 50 ms.
        "sustained": not closed and achieved >= 0.95 * rate and received >= sent and p99 < 50.0,
        **cpu,
    }


async def hold_scenario(system: System, params: dict[str, Any], clock: CpuClock) -> dict[str, Any]:
    """Register ``count`` peers and keep them idle until told (a line on stdin)."""
    count, concurrency = int(params["count"]), int(params["concurrency"])
    connections, latencies, errors, elapsed = await open_peers(system, f"h{run_id()}", count, concurrency)
    held = {
        "count": count,
        "registered": len(connections),
        "seconds": round(elapsed, 2),
        "latency": percentiles(latencies),
        "errors": errors,
    }
    heartbeat = system.heartbeat()

    async def keep_alive() -> None:
        while heartbeat is not None:
            await asyncio.sleep(20)
            for ws in connections:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(heartbeat)

    beating = asyncio.create_task(keep_alive())
    print("HELD " + json.dumps(held), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    beating.cancel()
    still_open = sum(1 for ws in connections if ws.close_code is None)
    await close_all(connections)
    return {**held, "still_open_at_release": still_open}


async def datachannel_scenario(api: str, url: str, params: dict[str, Any]) -> dict[str, Any]:
    """Sign-in (both peers) -> room -> both registered -> aiortc data channel open, ``repeat`` times."""
    import aioice.ice  # the webrtc extra; imported only for this scenario

    from signaling_sdk.session import Session
    from signaling_sdk.webrtc import accept
    from signaling_sdk.webrtc import connect as offer_channel

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only  # this process only: traffic stays on loopback
    totals: list[float] = []
    signed: list[float] = []
    registered: list[float] = []
    async with ServiceClient(api) as http:
        for index in range(int(params["repeat"])):
            started = time.perf_counter()
            worker_identity, client_identity = await asyncio.gather(http.sign_in(), http.sign_in())
            room = await http.create_room(worker_identity)
            signed.append(time.perf_counter() - started)
            worker_id, client_id = f"Worker-{index}", f"Client-{index}"
            worker, client = await asyncio.gather(
                Session.open(url, room, worker_identity, worker_id), Session.open(url, room, client_identity, client_id)
            )
            registered.append(time.perf_counter() - started)
            try:
                accepting = asyncio.create_task(accept(worker))
                link = await offer_channel(client, worker_id)
                other = await accepting
                totals.append(time.perf_counter() - started)
                await asyncio.gather(link.close(), other.close())
            finally:
                await asyncio.gather(worker.close(), client.close())
    return {
        "repeat": int(params["repeat"]),
        "signed_in_and_room": percentiles(signed),
        "both_registered": percentiles(registered),
        "channel_open": percentiles(totals),
    }


# Abuse: one identity at its allowed maximum, a bystander in another room ---------------

ABUSE_ATTACKS = ("discovery", "deep_frames", "connections", "broadcast", "flood")


def _register_frame(peer_id: str, room: Room, identity: Identity, **extra: Any) -> str:
    message = {"type": "register", "protocol": 2, "peer_id": peer_id, "room_id": room.room_id}
    message.update(token=room.token, id_token=identity.id_token, **extra)
    return json.dumps(message)


async def _member(
    url: str, peer_id: str, room: Room, identity: Identity, source: str = "127.0.0.1", **extra: Any
) -> ClientConnection:
    """A registered relay peer, from the loopback address ``source``."""
    ws = await connect(url, open_timeout=TIMEOUT, max_size=None, compression=None, local_addr=(source, 0))
    await ws.send(_register_frame(peer_id, room, identity, **extra))
    async with asyncio.timeout(TIMEOUT):
        while (reply := json.loads(await ws.recv())).get("type") != "registered_auth":
            if reply.get("type") == "error":
                raise Refused(str(reply.get("code")))
    return ws


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def _paced(rate: float, until: float, send: Callable[[], Awaitable[None]]) -> int:
    """``send()`` at ``rate`` per second until ``until`` (monotonic); how many were sent."""
    sent, started = 0, time.monotonic()
    while time.monotonic() < until:
        await send()
        sent += 1
        delay = started + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent


async def _ping(bystander: ClientConnection, until: float, interval: float, rtts: list[float]) -> None:
    """The bystander's pings, one at a time, every ``interval``: their round trips in ``rtts``."""
    sequence = itertools.count()
    with contextlib.suppress(ConnectionClosed):
        while time.monotonic() < until:
            sent = time.perf_counter()
            await bystander.send(json.dumps({"type": "ping", "id": next(sequence)}))
            reply = json.loads(await bystander.recv())
            if reply.get("type") != "pong":  # the bystander keeps within its own limits
                raise RuntimeError(f"the bystander's ping was answered by {reply}")
            rtts.append(time.perf_counter() - sent)
            await asyncio.sleep(interval)


async def _flood(ws: ClientConnection, frame: str, until: float) -> int:
    """``frame`` as fast as the socket takes it (the relay refuses, then stops reading)."""
    sent = 0
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while time.monotonic() < until:
            await asyncio.wait_for(ws.send(frame), max(0.01, until - time.monotonic()))
            sent += 1
    return sent


async def _connection_flood(url: str, until: float, opened: list[ClientConnection]) -> int:
    """Unregistered sockets opened as fast as they are accepted, and tried again when refused."""
    attempts = 0
    while time.monotonic() < until:
        attempts += 1
        try:
            opened.append(await connect(url, open_timeout=TIMEOUT))
        except Exception:  # noqa: BLE001 - refusals (HTTP 429) are the point
            await asyncio.sleep(0.01)
    return attempts


async def abuse_scenario(system: System, params: dict[str, Any], clock: CpuClock) -> dict[str, Any]:
    """Attacks 1, 3, 5, 8 and 9 of issue 16, each for ``duration`` seconds, by one identity at
    the relay's default limits (``rate``: its messages per second), while a bystander in
    another room, from another address (127.0.0.2), pings every ``ping_interval``: the
    bystander's round trips and the relay's CPU per abusive frame, per attack."""
    assert system.identity is not None
    assert len(system.rooms) >= 3
    identity, (room_a, room_b, quiet) = system.identity, system.rooms[:3]
    duration, rate = float(params["duration"]), float(params["rate"])
    url = system.url
    bystander = await _member(url, "Bystander", quiet, identity, "127.0.0.2")
    metadata = {"tags": ["gpu"], "properties": {f"p{i}": "x" * 100 for i in range(36)}}  # about 4 KB
    # The rooms' other peers come from addresses of their own: the attacker's budget is its own.
    fillers = [await _member(url, f"A{i}", room_a, identity, f"127.0.1.{i + 1}", metadata=metadata) for i in range(19)]
    audience = [
        await _member(url, f"B{i}", room_b, identity, f"127.0.2.{i + 1}") for i in range(int(params["audience"]))
    ]
    readers = [asyncio.create_task(_drain(ws)) for ws in fillers + audience]
    attacker_a = await _member(url, "Mallory-A", room_a, identity)
    attacker_b = await _member(url, "Mallory-B", room_b, identity)
    readers += [asyncio.create_task(_drain(attacker_a)), asyncio.create_task(_drain(attacker_b))]
    big_filter = {"properties": {f"p{i}": {"$in": [f"v{j}" for j in range(12)]} for i in range(6)}}
    deep = '{"type":"update_metadata","metadata":' + '{"n":' * 40 + "1" + "}" * 40 + "}"
    payload = "y" * 32_000
    frames = {
        "discovery": (attacker_a, json.dumps({"type": "discover_peers", "filters": big_filter})),
        "deep_frames": (attacker_a, deep),
        "broadcast": (attacker_b, json.dumps({"type": "broadcast", "payload": payload})),
        "flood": (attacker_a, json.dumps({"type": "ping", "id": "x"})),
    }
    results: dict[str, Any] = {}
    for attack in ABUSE_ATTACKS:
        until = time.monotonic() + duration
        rtts: list[float] = []
        opened: list[ClientConnection] = []
        clock.lap()
        if attack == "connections":
            attempt = _connection_flood(url, until, opened)
        elif attack == "flood":
            attempt = _flood(*frames[attack], until)
        else:
            ws, frame = frames[attack]
            attempt = _paced(rate, until, partial(ws.send, frame))
        sent, _ = await asyncio.gather(attempt, _ping(bystander, until, float(params["ping_interval"]), rtts))
        cpu = clock.lap()
        await close_all(opened)
        results[attack] = {
            "abusive_frames": sent,
            "bystander_rtt": percentiles(rtts),
            "relay_cpu_per_frame_us": round(cpu["server_cpu"] * duration / max(sent, 1) * 1e6, 1),
            **cpu,
        }
    for task in readers:
        task.cancel()
    await close_all([bystander, attacker_a, attacker_b, *fillers, *audience])
    return {"attacks": results}


# Overload: more than the relay can take, every message accounted for ------------------

N = re.compile(r'"n":(\d+)')


@dataclass
class Outcomes:
    """What became of the overload scenario's messages, by their number ``n`` (= their id)."""

    delivered: set[int] = field(default_factory=set)  # seen by their target
    acked: set[int] = field(default_factory=set)  # acked to their sender
    errors: dict[int, str] = field(default_factory=dict)  # an error (or expired) to their sender
    unnumbered: list[str] = field(default_factory=list)  # errors without an id (at most 20 kept)
    closes: list[str] = field(default_factory=list)  # connections the relay closed

    def settled(self, sent: int) -> bool:
        """Every message sent has reached its target or been reported, and has its answer."""
        reported = self.errors.keys()
        return len(self.acked | reported) >= sent and len(self.delivered | reported) >= sent


async def _account(ws: ClientConnection, outcomes: Outcomes) -> None:
    """Read one peer's socket: messages relayed to it, answers to what it sent."""
    try:
        async for frame in ws:
            text = frame if isinstance(frame, str) else frame.decode()
            if (match := N.search(text)) is not None and '"ts":' in text:
                outcomes.delivered.add(int(match[1]))
                continue
            message = json.loads(text)
            kind, number = message.get("type"), message.get("id")
            if kind == "ack" and isinstance(number, int):
                outcomes.acked.add(number)
            elif kind in ("error", "expired") and isinstance(number, int):
                outcomes.errors[number] = str(message.get("code", kind))
            elif kind == "error" and len(outcomes.unnumbered) < 20:
                outcomes.unnumbered.append(text[:200])
    except ConnectionClosed as exc:
        outcomes.closes.append(f"{exc.rcvd.code if exc.rcvd else 1006}")


async def overload_scenario(system: System, params: dict[str, Any], clock: CpuClock) -> dict[str, Any]:
    """``rate`` messages/s offered over ``pairs`` pairs for ``duration`` seconds, more than the
    relay can relay; then up to ``settle`` seconds for each message's outcome.

    Every message carries an id, so the relay owes its sender an answer for it: an ``ack``
    once the target has it, or an error. A message neither seen by its target nor reported
    to its sender is lost silently; an ack for a message its target never saw breaks the
    meaning of an ack. Senders are open loop per socket: when the relay stops reading
    them (TCP backpressure), they fall behind, and ``offered_rate`` says what got out."""
    assert system.identity is not None
    pairs_count, duration, rate = int(params["pairs"]), float(params["duration"]), float(params["rate"])
    prefix = f"o{run_id()}"
    sockets: list[tuple[ClientConnection, str, str]] = []  # socket, own id, partner's id
    for index in range(pairs_count):
        room = system.rooms[index % len(system.rooms)]
        a, b = f"{prefix}-{index}a", f"{prefix}-{index}b"
        wa = await _member(system.url, a, room, system.identity)
        wb = await _member(system.url, b, room, system.identity)
        sockets += [(wa, a, b), (wb, b, a)]
    outcomes = Outcomes()
    readers = [asyncio.create_task(_account(ws, outcomes)) for ws, _, _ in sockets]
    numbers = itertools.count()
    each = rate / len(sockets)
    lags: list[float] = []

    async def sender(ws: ClientConnection, own: str, partner: str) -> int:
        sent, lag, started = 0, 0.0, time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            while (elapsed := time.monotonic() - started) < duration:
                due = int(elapsed * each) - sent
                lag = max(lag, due / each)
                for _ in range(due):
                    n = next(numbers)
                    kind, _ = PATTERN[n % len(PATTERN)]
                    await ws.send(f'{system.message(kind, own, partner)[:-1]},"id":{n},"n":{n}}}')
                    sent += 1
                await asyncio.sleep(0.001)
        lags.append(lag)
        return sent

    clock.lap()
    started = time.monotonic()
    counts = await asyncio.gather(*(sender(ws, own, partner) for ws, own, partner in sockets))
    sending = time.monotonic() - started
    cpu = clock.lap()
    sent = sum(counts)
    settle = float(params.get("settle", 75.0))  # past the relay's resume window (60 s)
    waited = time.monotonic()
    while not outcomes.settled(sent) and time.monotonic() - waited < settle:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # the readers count; a benchmark may poll
    settling = time.monotonic() - waited
    window = [round(started, 3), round(time.monotonic(), 3)]  # load and settling, CLOCK_MONOTONIC
    for task in readers:
        task.cancel()
    await close_all([ws for ws, _, _ in sockets])
    everything = set(range(sent))
    reported = set(outcomes.errors)
    return {
        "rate": rate,
        "pairs": pairs_count,
        "duration_s": duration,
        "sent": sent,
        "offered_rate": round(sent / sending, 1),
        "delivered": len(outcomes.delivered & everything),
        "delivered_rate": round(len(outcomes.delivered) / (sending + settling), 1),
        "acked": len(outcomes.acked),
        "errors": dict(Counter(outcomes.errors.values())),
        "unnumbered_errors": outcomes.unnumbered,
        "lost_silently": len(everything - outcomes.delivered - reported),
        "acked_undelivered": len(outcomes.acked - outcomes.delivered),
        "unanswered": len(everything - outcomes.acked - reported),
        "closes": outcomes.closes,
        "settle_s": round(settling, 2),
        "window": window,
        "max_sender_lag_ms": round(max(lags, default=0.0) * 1000, 1),
        **cpu,
    }


async def relay_setup(api: str, rooms: int) -> tuple[Identity, list[Room]]:
    """One identity and ``rooms`` rooms created through rooms-api."""
    async with ServiceClient(api, timeout=TIMEOUT) as http:
        identity = await http.sign_in()
        created: list[Room] = []

        async def one(_: int) -> None:
            created.append(await http.create_room(identity))

        await bounded(rooms, 8, one)
    return identity, created


def rooms_needed(scenario: str, params: dict[str, Any], per_room: int) -> int:
    if scenario in ("register", "hold"):
        return -(-int(params["count"]) // per_room)
    if scenario == "churn":
        return int(params["concurrency"])
    if scenario == "latency":
        return int(params["pairs"])
    if scenario == "abuse":
        return 3
    if scenario == "overload":
        return -(-2 * int(params["pairs"]) // per_room)
    return 0


async def run(job: dict[str, Any]) -> dict[str, Any]:
    scenario, params = str(job["scenario"]), dict(job["params"])
    kind, url = str(job["system"]), str(job["url"])
    if kind not in SYSTEMS:
        raise SystemExit(f"unknown system {kind!r}")
    if urlsplit(url).hostname != "127.0.0.1":
        raise SystemExit("the load generator sends traffic to 127.0.0.1 only")
    if scenario == "datachannel":
        return await datachannel_scenario(str(job["api"]), url, params)
    system = System(kind, url, peers_per_room=int(params.get("peers_per_room", 10)))
    if kind == "relay":
        started = time.monotonic()
        needed = rooms_needed(scenario, params, system.peers_per_room)
        system.identity, system.rooms = await relay_setup(str(job["api"]), needed)
        params["setup_seconds"] = round(time.monotonic() - started, 2)
    clock = CpuClock(job.get("server_pid"), job.get("stack_pid"))
    scenarios = {
        "register": register_scenario,
        "churn": churn_scenario,
        "latency": latency_scenario,
        "hold": hold_scenario,
        "abuse": abuse_scenario,
        "overload": overload_scenario,
    }
    result = await scenarios[scenario](system, params, clock)
    return {"params": params, **result}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    raise_fd_limit()
    job = json.loads(args[0])
    print(json.dumps(asyncio.run(run(job))), flush=True)


if __name__ == "__main__":
    main()
