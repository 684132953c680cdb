"""Clients and helpers the tests share: real HTTP and WebSocket, no fakes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import socket
import sys
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devstack.ports import AddressInUse, says_address_in_use
from devstack.stack import HttpServer, StackInfo
from signaling_shared.dynamo import PeerRecord, QueuedMessage, Repository, Room
from signaling_shared.logging import configure_logging
from signaling_shared.settings import CommonSettings, RelaySettings
from signaling_shared.tokens import hash_room_token, new_room_id, new_room_token
from ws_relay.schema import SERVER_MESSAGE
from ws_relay.server import RelayServer

# The one timeout factor, for slow machines (SIGNALING_TEST_TIMEOUT_FACTOR=3 on a busy box).
FACTOR = float(os.environ.get("SIGNALING_TEST_TIMEOUT_FACTOR", "1"))


@contextmanager
def logs_into(level: str = "INFO") -> Iterator[io.StringIO]:
    """The service's logging (configure_logging) writing JSON lines into a fresh buffer for the block,
    whatever an earlier test configured; the earlier configuration comes back after it."""
    buffer = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level, saved_config = root.handlers[:], root.level, structlog.get_config()
    saved_websockets = logging.getLogger("websockets").level
    configure_logging(level, stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_config)
        logging.getLogger("websockets").setLevel(saved_websockets)


def scaled(seconds: float) -> float:
    """``seconds`` on this machine: every time window of the tests goes through here (timeouts,
    and the short expiries, windows and intervals given to the servers under test alike), so
    that on a slow machine they all grow together. A window that must be short for its test
    to mean anything scales too: the test then takes longer there."""
    return seconds * FACTOR


def scaled_whole(seconds: int) -> int:
    """``scaled(seconds)`` rounded up, for the settings and fields counted in whole seconds."""
    return math.ceil(scaled(seconds))


# One timeout unit.
TIMEOUT = scaled(5.0)

# The shared stack lets the whole suite sign in and register from one address; the
# limits themselves are tested on servers of their own with small limits.
GENEROUS_LIMITS: dict[str, Any] = {
    "signin_rate_per_minute": 100_000,
    "signin_burst": 10_000,
    "room_create_rate_per_minute": 100_000,
    "room_create_burst": 10_000,
    "register_rate_per_minute_per_ip": 100_000,
    "register_burst_per_ip": 10_000,
    "register_rate_per_minute_per_room": 100_000,
    "register_burst_per_room": 10_000,
    # Every test peer comes from 127.0.0.1 (test_abuse.py sets the per-address caps itself).
    "max_connections_per_ip": 10_000,
    "max_unregistered_per_ip": 10_000,
    # Held messages: tests hold many, and some for a moment (test_abuse.py tests the defaults).
    "queue_ttl_min_seconds": 1,
    "queue_holds_per_minute": 100_000,
    "queue_hold_burst": 10_000,
    # Booking: tests claim many times from one identity (test_booking.py tests the budget).
    "claims_per_minute": 100_000,
    "claim_burst": 10_000,
    # The emulators' first calls can be slow (LocalStack starts DynamoDB Local on the first):
    # the production budget (2 s, 2 attempts) is tested on its own (test_aws_clients.py).
    "aws_timeout_seconds": scaled(10.0),
    "aws_max_attempts": 3,
    # Test relays stop often, mostly with peers still connected: a short drain.
    "drain_seconds": scaled(0.2),
}


@dataclass(frozen=True)
class User:
    id_token: str
    username: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.id_token}"}


@dataclass(frozen=True)
class RoomGrant:
    room_id: str
    token: str
    expires_at: int


async def sign_in(api: str) -> User:
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        response = await client.post("/anonymous-signin")
    assert response.status_code == 200, response.text
    body = response.json()
    return User(body["id_token"], body["username"])


async def create_room_body(api: str, user: User) -> dict[str, Any]:
    """``POST /create-room`` as ``user``: the whole answer (with ``ws_url`` when relay nodes
    place the rooms)."""
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        response = await client.post("/create-room", headers=user.bearer)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def create_room(api: str, user: User) -> RoomGrant:
    body = await create_room_body(api, user)
    return RoomGrant(body["room_id"], body["token"], body["expires_at"])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Closable(Protocol):
    def close(self) -> Awaitable[object]: ...


C = TypeVar("C", bound=Closable)

# What each test's loop opened, to close when the test ends (by loop: a harness that runs
# its peers in a loop of its own, across tests, closes them itself).
_OPENED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Callable[[], Awaitable[object]]]] = (
    weakref.WeakKeyDictionary()
)


def closed_after_test(thing: C) -> C:
    """``thing`` (a Peer, an SDK Session or PeerLink: anything with ``async close()``), closed
    when the test ends however it ends, by the conftest's ``_close_what_the_test_opened``,
    unless the test closed it already (closing twice is harmless). A failed assertion then
    reports itself, and not a transport it leaked as a ResourceWarning in a later test."""
    _OPENED.setdefault(asyncio.get_running_loop(), []).append(thing.close)
    return thing


async def close_what_the_test_opened() -> None:
    """Close, last opened first, everything this loop's test passed to ``closed_after_test``."""
    async with AsyncExitStack() as closing:  # each is closed even if another's close fails
        for close in _OPENED.pop(asyncio.get_running_loop(), []):
            closing.push_async_callback(close)


class Peer:
    """A signaling client over a real WebSocket, closed when the test ends if the test does
    not close it first (``closed_after_test``)."""

    def __init__(self, ws: ClientConnection, *, seed: bool = False) -> None:
        self.ws = ws
        self.seed = seed  # registers with the seed's fields only: a v1 peer (ws_relay.compat)
        self.peer_id: str | None = None
        self.last_seq = 0
        self.resume_token: str | None = None

    @classmethod
    async def connect(cls, url: str, *, seed: bool = False, **options: Any) -> Peer:
        """A client socket; ``options`` go to websockets' ``connect`` (e.g. ``ping_interval``).
        A ``seed`` peer registers as the seed's clients do (v1); others say ``"protocol": 2``."""
        ws = await connect(url, open_timeout=TIMEOUT, max_size=None, **options)
        return closed_after_test(cls(ws, seed=seed))

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def recv(self) -> dict[str, Any]:
        """The next message, checked against the published schema, its ``seq`` checked
        (contiguous, no gap, no duplicate) and removed."""
        frame = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        SERVER_MESSAGE.validate_json(frame)
        message = json.loads(frame)
        assert isinstance(message, dict)
        if message.get("type") == "registered_auth":
            self.last_seq = message.get("last_seq", 0)
            self.resume_token = message.get("resume_token")
        if "seq" in message:
            seq = message.pop("seq")
            assert seq == self.last_seq + 1, (seq, self.last_seq, message)
            self.last_seq = seq
        return message

    async def expect(self, kind: str) -> dict[str, Any]:
        message = await self.recv()
        assert message.get("type") == kind, message
        return message

    async def expect_error(self, code: str) -> dict[str, Any]:
        message = await self.expect("error")
        assert message["code"] == code, message
        assert set(message) == {"type", "code", "reason"}, message  # v1's shape, for a request without id
        assert message["reason"], message
        return message

    async def expect_error_with_id(self, code: str, correlation_id: str | int) -> dict[str, Any]:
        message = await self.expect("error")
        hint = {"retry_after_ms": message.get("retry_after_ms")} if code == "RATE_LIMITED" else {}
        assert message == {"type": "error", "code": code, "reason": message.get("reason"), "id": correlation_id, **hint}
        assert not hint or message["retry_after_ms"] > 0, message
        assert message["reason"], message
        return message

    async def register(self, peer_id: str, room: RoomGrant, user: User) -> dict[str, Any]:
        await self._send_register(peer_id, room, user)
        reply = await self.expect("registered_auth")
        self.peer_id = peer_id
        return reply

    async def register_expecting_error(self, peer_id: str, room: RoomGrant, user: User, code: str) -> None:
        await self._send_register(peer_id, room, user)
        await self.expect_error(code)

    async def _send_register(self, peer_id: str, room: RoomGrant, user: User) -> None:
        await self.send(
            {
                "type": "register",
                "peer_id": peer_id,
                "room_id": room.room_id,
                "token": room.token,
                "id_token": user.id_token,
                **({} if self.seed else {"protocol": 2}),
            }
        )

    async def barrier(self) -> None:
        """Prove nothing else is queued for us: the reply to a probe must come next."""
        await self.send_raw("barrier-probe")
        await self.expect_error("INVALID_JSON")

    async def closed(self) -> tuple[int | None, str | None]:
        """Wait for the server to close us (reading, and numbering, what comes before the
        close); the close code and reason."""
        try:
            while True:
                await self.recv()
        except ConnectionClosed:
            pass
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()


async def drop(peer: Peer) -> None:
    """Cut the TCP connection without a close frame, as a network failure would."""
    peer.ws.transport.abort()
    await peer.ws.wait_closed()


def resume_message(peer: Peer, room: RoomGrant, user: User, **changes: Any) -> dict[str, Any]:
    assert peer.peer_id is not None
    return {
        "type": "register",
        "peer_id": peer.peer_id,
        "room_id": room.room_id,
        "token": room.token,
        "id_token": user.id_token,
        "resume_token": peer.resume_token,
        "last_seq": peer.last_seq,
        **changes,
    }


async def resume(old: Peer, address: str, room: RoomGrant, user: User, **changes: Any) -> tuple[Peer, dict[str, Any]]:
    """Register again on a new socket with the old one's resume token and last seq."""
    new = await Peer.connect(address)
    new.peer_id, new.last_seq = old.peer_id, old.last_seq
    await new.send(resume_message(old, room, user, **changes))
    registered = await new.expect("registered_auth")  # sets last_seq to the server's
    new.last_seq = old.last_seq  # the replay continues from what the old socket saw
    return new, registered


async def joined_pair(api: str, relay: str) -> tuple[RoomGrant, tuple[Peer, User], tuple[Peer, User]]:
    """A fresh room with two registered peers, 'worker' and 'client', each its own identity."""
    worker_user, client_user = await asyncio.gather(sign_in(api), sign_in(api))
    room = await create_room(api, worker_user)
    worker, client = await Peer.connect(relay), await Peer.connect(relay)
    await worker.register(unique("Worker"), room, worker_user)
    await client.register(unique("Client"), room, client_user)
    joined = await worker.expect("peer_joined")
    assert joined["peer_id"] == client.peer_id
    return room, (worker, worker_user), (client, client_user)


@asynccontextmanager
async def serving(app: Any, settings: CommonSettings) -> AsyncIterator[str]:
    """Serve an ASGI app on port 0 in this test's loop, uvicorn configured from ``settings``
    as in production (e.g. ``forwarded_allow_ips``); yields its base URL."""
    server = HttpServer(app, settings, 0)
    port = await server.start()
    try:
        yield f"http://{settings.host}:{port}"
    finally:
        await server.stop()


def repository(stack: StackInfo) -> Repository:
    """Direct access to the tables the services use (to check what they stored)."""
    return Repository.from_settings(stack.common)


async def peer_ids_in_table(stack: StackInfo, room_id: str) -> set[str]:
    return {p.peer_id for p in await repository(stack).list_peers(room_id, now=time.time())}


async def store_room(stack: StackInfo, owner: str, *, expires_in: int) -> RoomGrant:
    """A room written straight to the table (e.g. one that expires in a second)."""
    token = new_room_token()
    now = int(time.time())
    room = Room(new_room_id(), owner, hash_room_token(token), now, now + expires_in)
    await repository(stack).create_room(room)
    return RoomGrant(room.room_id, token, room.expires_at)


def relay_settings(stack: StackInfo, **overrides: Any) -> RelaySettings:
    """A test relay's settings: the stack's tables, generous limits, port 0, ``overrides``."""
    return RelaySettings(**{**stack.common.model_dump(), **GENEROUS_LIMITS, "port": 0, **overrides})


@asynccontextmanager
async def running_relay(
    settings: RelaySettings, *, repository: Repository | None = None, sock: socket.socket | None = None
) -> AsyncIterator[RelayServer]:
    """A relay in this test's loop, on ``sock`` when given (a socket already listening, e.g.
    from ``devstack.ports.listening_socket``, when its port must be known before it starts);
    stopped however the block ends."""
    server = RelayServer(settings, repository=repository)
    await server.start(sock)
    try:
        yield server
    finally:
        await server.stop()


class GatedRepository(Repository):
    """The real repository; once armed, the next call of ``held`` waits at the gate (and
    then raises ``fail_with`` instead of running, when set).

    ``completed`` receives the name of every gated-kind call that finishes after arming, so
    a test can wait for the abandoned attempt's last write instead of guessing.
    """

    held: str = "get_room"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()
        self.completed: asyncio.Queue[str] = asyncio.Queue()
        self.deleted: asyncio.Queue[list[str]] = asyncio.Queue()
        self._armed = False
        self._watching = False
        self.fail_with: Exception | None = None

    def arm(self) -> None:
        self._armed = True
        self._watching = True

    async def _hold(self, name: str) -> None:
        if self._armed and name == self.held:
            self._armed = False
            self.reached.set()
            await self.gate.wait()

    async def get_room(self, room_id: str) -> Room:
        await self._hold("get_room")
        try:
            return await super().get_room(room_id)
        finally:
            self._done("get_room")

    async def claim_peer(self, peer: PeerRecord, *, now: int, as_read: Room | None = None) -> None:
        failure = self.fail_with if self._armed and self.held == "claim_peer" else None
        await self._hold("claim_peer")
        try:
            if failure is not None:
                raise failure
            await super().claim_peer(peer, now=now, as_read=as_read)
        finally:
            self._done("claim_peer")

    async def hold_message(self, message: QueuedMessage, *, held_until_ms: int | None) -> None:
        await self._hold("hold_message")
        try:
            await super().hold_message(message, held_until_ms=held_until_ms)
        finally:
            self._done("hold_message")

    async def delete_messages(self, room_id: str, keys: Iterable[str]) -> None:
        """Held messages taken off the table (delivered): each call's keys go to ``deleted``."""
        keys = list(keys)
        await super().delete_messages(room_id, keys)
        self.deleted.put_nowait(keys)

    def _done(self, name: str) -> None:
        if self._watching and name == self.held:
            self.completed.put_nowait(name)


@asynccontextmanager
async def gated_relay(
    stack: StackInfo, held: str, **overrides: Any
) -> AsyncIterator[tuple[RelayServer, GatedRepository]]:
    """A relay on the real tables whose repository is gated (see GatedRepository)."""
    settings = relay_settings(stack, **overrides)
    gated = GatedRepository.from_settings(settings)
    assert isinstance(gated, GatedRepository)
    gated.held = held
    async with AsyncExitStack() as running:
        server = await running.enter_async_context(running_relay(settings, repository=gated))
        running.callback(gated.gate.set)  # first: a held call must end for the relay to stop
        yield server, gated


class ServiceProcess:
    """A service (``python -m <module>``) in its own process on port 0, on the stack's tables:
    for tests that kill it (SIGKILL) or stop it (SIGTERM) as an operator or a crash would,
    and for the stack run as deployed (one process per service). One told a port that another
    program took meanwhile fails with AddressInUse (see devstack.ports)."""

    def __init__(self, process: asyncio.subprocess.Process, listening: str, scheme: str) -> None:
        self.process = process
        self.scheme = scheme
        self.port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.events: list[dict[str, Any]] = []
        self.output: list[str] = []  # every line it wrote to stdout, JSON or not
        self.errors: list[str] = []  # and to stderr (passed on to this process's stderr too)
        self._listening = listening
        self._logged = asyncio.Condition()  # notified at every log line read
        self._reader = asyncio.create_task(self._read())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.result()}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    async def _read(self) -> None:
        await asyncio.gather(self._read_output(), self._read_errors())
        if not self.port.done():
            errors = "".join(self.errors)
            failure = AddressInUse if says_address_in_use(errors) else RuntimeError
            self.port.set_exception(failure(f"service exited before listening ({self.process.returncode}): {errors}"))

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.errors.append(line.decode(errors="replace"))
            sys.stderr.write(self.errors[-1])

    async def _read_output(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.output.append(line.decode(errors="replace"))
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            async with self._logged:
                self._logged.notify_all()
            if event.get("event") == self._listening and not self.port.done():
                self.port.set_result(int(event["port"]))

    async def logged(self, event: str) -> dict[str, Any]:
        """The first log line of ``event``, once the relay has written it."""

        def first() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("event") == event), None)

        async with asyncio.timeout(TIMEOUT), self._logged:
            found = await self._logged.wait_for(first)
        assert found is not None
        return found

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.process.wait(), 4 * TIMEOUT)
        await self._reader
        return code


async def terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it has not exited within two timeout units."""
    if process.returncode is None:
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 2 * TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()


def process_env(settings: CommonSettings, **overrides: Any) -> dict[str, str]:
    """``settings`` (and ``overrides``) as the SIGNALING_* environment a service process reads."""
    values = {**settings.model_dump(mode="json", exclude={"turn_secrets"}), **GENEROUS_LIMITS, **overrides}
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIGNALING_")}
    for name, value in values.items():
        if value is not None:
            env[f"SIGNALING_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


# Each service's module, the log event that says its port, and its URL scheme.
SERVICE_MODULES = {
    "auth-api": ("auth_api.main", "api_listening", "http"),
    "rooms-api": ("rooms_api.main", "api_listening", "http"),
    "ws-relay": ("ws_relay.main", "relay_listening", "ws"),
}


@asynccontextmanager
async def service_process(stack: StackInfo, service: str, **overrides: Any) -> AsyncIterator[ServiceProcess]:
    module, listening, scheme = SERVICE_MODULES[service]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env=process_env(stack.common, **{"port": 0, **overrides}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    running = ServiceProcess(process, listening, scheme)
    try:
        await asyncio.wait_for(asyncio.shield(running.port), 6 * TIMEOUT)
        yield running
    finally:
        if process.returncode is None:
            process.kill()
        await running.wait()


def relay_process(stack: StackInfo, **overrides: Any) -> AbstractAsyncContextManager[ServiceProcess]:
    return service_process(stack, "ws-relay", **overrides)
