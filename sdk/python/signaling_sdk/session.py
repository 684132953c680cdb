"""A signaling session: one peer in one room over the relay's WebSocket, that survives drops.

    session = await Session.open(relay_url, room, identity, "Worker-1", role="worker")
    ack = await session.send_to("Client-1", {"hello": 1})      # ack.queued: held for it
    message = await session.recv()                             # peer_message, offer, ...

Every message is sent with an ``id`` and ``send`` returns when the service answers: the
target received it (``Ack``), it is held for a peer not in the room yet (``Ack.queued``),
or a typed ``SignalingError``. When the connection drops, or the relay sends ``go_away``
before a restart, the session reconnects with jittered backoff and resumes (resume token
and the last ``seq`` seen): nothing sent to it is lost, and every message still without an
outcome is sent again with its id, which the relay never delivers twice. When the relay node
that serves the room dies, the session resumes on the node that takes the room over; what
the dead node had not confirmed is sent again, and a message that arrives twice (same
sender and ``message_id``) is dropped.

A worker registers with ``max_claims`` (how many clients may book it at once); a client books
one with ``claim``, which the relay answers with a ``Lease``:

    async with session.claim("Worker-1") as lease:   # AlreadyClaimed if it is fully booked
        ...                                          # renewed before it expires, released on exit
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from signaling_sdk.errors import (
    Expired,
    LeaseNotFound,
    PeerBusy,
    RateLimited,
    SessionLost,
    SignalingError,
    Unavailable,
    error_from_frame,
)
from signaling_sdk.http import Identity, Room

log = logging.getLogger("signaling_sdk")

# Close codes after which resuming cannot work (docs/protocol.md, "Close codes").
TERMINAL_CLOSES = range(4000, 4500)
MAX_REDIRECTS = 3  # a room is served by one node: one redirect is the norm, more means churn
# Relayed messages remembered by (sender, message_id): one sent again after a relay node
# failed (its ack never came) may arrive twice; the second is dropped.
SEEN_MESSAGES = 4096
# A kept lease is renewed once this share of its remaining time has passed (2/3: a renewal
# that fails has the last third to try again), and never sooner than MIN_RENEW_SECONDS after
# the last one (the relay grants at least 5 s; a clock far behind the relay's would otherwise
# renew in a loop).
RENEW_AT = 2 / 3
MIN_RENEW_SECONDS = 1.0


@dataclass(frozen=True)
class Ack:
    """The relay's answer to a sent message: its target received it, or it is held for it."""

    id: str
    queued: bool  # held for a peer not in the room yet; ``expired`` may follow in ``recv``


@dataclass
class Backoff:
    """Jittered exponential backoff between reconnection attempts; a message refused with
    RATE_LIMITED or PEER_BUSY is sent again up to ``rate_limited_retries`` times, after the
    wait the relay asked for (or ``initial``, doubled at each attempt)."""

    initial: float = 0.2
    maximum: float = 10.0
    attempts: int = 30
    rate_limited_retries: int = 3

    def delay(self, attempt: int, *, at_least: float | None = None) -> float:
        """Full jitter up to the exponential cap; with a server hint, the hint plus up to 20 %."""
        if at_least is not None:
            return at_least * random.uniform(1.0, 1.2)  # noqa: S311 - jitter
        return random.uniform(0, min(self.maximum, self.initial * 2**attempt))  # noqa: S311 - jitter


class Lease:
    """A claim the relay granted: this session holds one of ``peer_id``'s ``max_claims`` slots
    until ``expires_at`` (epoch seconds, the relay's clock) unless renewed. ``ended`` is
    ``None`` while it is live, then why it ended: the relay's ``lease_ended`` reason
    (``"released"``, ``"expired"``, ``"holder_left"``, ``"peer_left"``: the worker left),
    ``"released"`` for its own release, or ``"left"`` when this session ended.

    ``async with lease:`` keeps it renewed (at 2/3 of the remaining time) and releases it on
    exit; outside that, renewing and releasing are the caller's (``renew``, ``release``)."""

    def __init__(
        self, session: Session, peer_id: str, lease_id: str, expires_at: int, *, ttl_seconds: int | None
    ) -> None:
        self.session = session
        self.peer_id = peer_id
        self.lease_id = lease_id
        self.expires_at = expires_at
        self.ttl_seconds = ttl_seconds  # what renewals ask for (None: the relay's default)
        self.ended: str | None = None
        self._ended = asyncio.Event()
        self._renewing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = f"ended={self.ended!r}" if self.ended else f"expires_at={self.expires_at}"
        return f"Lease(peer_id={self.peer_id!r}, lease_id={self.lease_id!r}, {state})"

    async def renew(self, ttl_seconds: int | None = None) -> Lease:
        """Extend the lease by ``ttl_seconds`` from now (default: what it was claimed with) and
        update ``expires_at``; LeaseNotFound once it has ended (without asking the relay)."""
        if self.ended is not None:
            raise LeaseNotFound("LEASE_NOT_FOUND", f"the lease ended ({self.ended})")
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        message: dict[str, Any] = {"type": "renew", "lease_id": self.lease_id}
        if ttl is not None:
            message["ttl_seconds"] = ttl
        try:
            await self.session.send(message)  # its ``claimed`` answer updates ``expires_at``
        except LeaseNotFound:
            self._end("expired")  # the relay no longer has it: it lapsed (or its end is on the way)
            raise
        return self

    async def release(self) -> None:
        """Give the slot back (the relay answers ``released``, the worker gets ``lease_ended``).
        Does nothing once the lease has ended; LeaseNotFound if the relay no longer has it."""
        if self.ended is not None:
            return
        try:
            await self.session.send({"type": "release", "lease_id": self.lease_id})
        except LeaseNotFound:
            self._end("expired")
            raise

    async def wait_ended(self) -> str:
        """Wait until the lease ends (released, expired, or its worker left); the reason."""
        await self._ended.wait()
        assert self.ended is not None
        return self.ended

    async def __aenter__(self) -> Lease:
        if self._renewing is None and self.ended is None:
            self._renewing = asyncio.get_running_loop().create_task(self._keep_renewed())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        # Gone already, or the session with it (the relay ends a leaving holder's leases).
        with contextlib.suppress(LeaseNotFound, SessionLost):
            await self.release()

    async def _keep_renewed(self) -> None:
        while self.ended is None:
            delay = max(MIN_RENEW_SECONDS, (self.expires_at - time.time()) * RENEW_AT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), delay)
                return
            try:
                await self.renew()
            except (LeaseNotFound, SessionLost):
                return  # ended: ``ended`` says why
            except SignalingError as exc:  # RATE_LIMITED past its retries, SERVER_BUSY, ...
                log.warning("renewing lease %s failed (%s); trying again", self.lease_id, exc.code)

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._ended.set()
        self.session._leases.pop(self.lease_id, None)


class Claim:
    """What ``Session.claim`` returns. ``await`` it for a ``Lease`` that is yours to renew and
    release; or enter it, ``async with session.claim(worker) as lease:``, for one the session
    keeps renewed and releases on exit (the same as ``async with await session.claim(...)``).
    Either raises AlreadyClaimed when the worker has no free slot, PeerError when it is not in
    the room."""

    def __init__(self, session: Session, peer_id: str, ttl_seconds: int | None) -> None:
        self.session = session
        self.peer_id = peer_id
        self.ttl_seconds = ttl_seconds
        self._lease: Lease | None = None

    def __await__(self) -> Generator[Any, None, Lease]:
        return self._claim().__await__()

    async def __aenter__(self) -> Lease:
        self._lease = await self._claim()
        return await self._lease.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        if self._lease is not None:
            await self._lease.__aexit__(*exc)

    async def _claim(self) -> Lease:
        message: dict[str, Any] = {"type": "claim", "peer_id": self.peer_id}
        if self.ttl_seconds is not None:
            message["ttl_seconds"] = self.ttl_seconds
        lease = await self.session.send(message)
        assert isinstance(lease, Lease)
        return lease


@dataclass
class _Pending:
    message: dict[str, Any]
    future: asyncio.Future[Any]


@dataclass
class SessionState:
    """What the session knows of itself and its room."""

    peer_id: str
    resume_token: str | None = None
    last_seq: int = 0
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    resumes: int = 0


class Session:
    """One registered peer. Use ``Session.open``; close with ``close`` (or ``async with``)."""

    def __init__(
        self,
        url: str,
        room: Room,
        identity: Identity,
        peer_id: str,
        *,
        role: str = "peer",
        metadata: Mapping[str, Any] | None = None,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        ssl: SSLContext | None = None,
        max_claims: int | None = None,
    ) -> None:
        """``url``: the relay (``ws://`` or, behind the edge, ``wss://``); with several relay
        nodes, any of them (a redirect leads to the room's node, and ``url`` is dialled again
        when that node is gone). ``ssl``: the TLS context to verify a ``wss`` URL with
        (default: the system's CAs; unused for ``ws``). ``max_claims``: how many clients may
        hold a lease on this peer at once (1 to 64; the relay's default is 1)."""
        self.entry_url = url  # where to start again when the node serving the room is gone
        self.url = room.ws_url or url  # the node that serves the room, when its creator knows it
        self.ssl = ssl
        self.room = room
        self.identity = identity
        self.role = role
        self.metadata = dict(metadata or {})
        self.backoff = backoff or Backoff()
        self.open_timeout = open_timeout
        self.max_claims = max_claims
        self.state = SessionState(peer_id)
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]
        self._pending: dict[str, _Pending] = {}  # by id, in the order sent
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # the last SEEN_MESSAGES received
        self._inbox: asyncio.Queue[dict[str, Any] | SignalingError] = asyncio.Queue()
        # offer, answer and candidate: for ``connect``/``accept`` (or ``next_signal``).
        self._signals: asyncio.Queue[dict[str, Any] | SignalingError] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._reconnect_after: float | None = None
        self._ice_waiters: list[asyncio.Future[list[dict[str, Any]]]] = []
        self._leases: dict[str, Lease] = {}  # the live leases this session holds, by lease_id

    @classmethod
    async def open(cls, url: str, room: Room, identity: Identity, peer_id: str, **options: Any) -> Session:
        """Connect and register; raises the typed error if the registration is refused."""
        session = cls(url, room, identity, peer_id, **options)
        ws, registered = await session._register(resume=False)
        session._start(ws, registered)
        return session

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def peer_id(self) -> str:
        """This peer's id in the room."""
        return self.state.peer_id

    # Sending -------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> Any:
        """Send ``message`` with a fresh id; its answer (``Ack``, ``peer_list``, ``pong``) or
        the typed error. Waits through reconnections, and through RATE_LIMITED and PEER_BUSY
        (it sends again after the wait the relay names, or else ``Backoff.initial`` doubled
        at each attempt, ``Backoff.rate_limited_retries`` times); bound it with
        ``asyncio.timeout``."""
        for attempt in itertools.count():
            try:
                return await self._send_once(message)
            except (RateLimited, PeerBusy) as exc:  # not sent: it may be sent again
                if attempt >= self.backoff.rate_limited_retries:
                    raise
                # The relay's hint as it is; without one, doubling up to the maximum.
                wait = exc.retry_after or min(self.backoff.initial * 2**attempt, self.backoff.maximum)
                await asyncio.sleep(self.backoff.delay(attempt, at_least=wait))
        raise AssertionError("unreachable")

    async def _send_once(self, message: Mapping[str, Any]) -> Any:
        if self._closing:
            raise SessionLost("CLOSED", "the session is closed")
        correlation_id = f"{self._prefix}-{next(self._ids)}"
        # The id first: a frame the relay refuses unread (RATE_LIMITED) is answered with the
        # first "id" it finds in the text, which must be this one, not one inside the payload.
        pending = _Pending({"id": correlation_id, **message}, asyncio.get_running_loop().create_future())
        self._pending[correlation_id] = pending
        if self._connected.is_set() and self._ws is not None:
            with contextlib.suppress(ConnectionClosed):  # sent again after the resume
                await self._ws.send(json.dumps(pending.message))
        try:
            return await asyncio.shield(pending.future)
        finally:
            if pending.future.done():
                self._pending.pop(correlation_id, None)

    async def send_to(self, peer_id: str, payload: Any, *, ttl_seconds: int | None = None) -> Ack:
        """An application message to one peer (held for it up to ``ttl_seconds`` if it is not here yet)."""
        message: dict[str, Any] = {"type": "peer_message", "to_peer_id": peer_id, "payload": payload}
        if ttl_seconds is not None:
            message["ttl_seconds"] = ttl_seconds
        ack = await self.send(message)
        assert isinstance(ack, Ack)
        return ack

    async def signal(self, kind: str, peer_id: str, **fields: Any) -> Ack:
        """An ``offer``, ``answer`` or ``candidate`` for ``peer_id``."""
        ack = await self.send({"type": kind, "target": peer_id, **fields})
        assert isinstance(ack, Ack)
        return ack

    async def discover(self, filters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The other peers of the room that match ``filters`` (role, tags, properties)."""
        answer = await self.send({"type": "discover_peers", "filters": dict(filters or {})})
        return list(answer["peers"])

    def claim(self, peer_id: str, ttl_seconds: int | None = None) -> Claim:
        """Book ``peer_id`` (a worker registered with ``max_claims``) for ``ttl_seconds`` (the
        relay's default is 300, its bounds 5 to 3600): ``async with session.claim(w) as lease``
        keeps the lease renewed and releases it on exit; ``lease = await session.claim(w)``
        leaves both to the caller. AlreadyClaimed when every slot of the worker is taken."""
        return Claim(self, peer_id, ttl_seconds)

    @property
    def leases(self) -> list[Lease]:
        """The live leases this session holds (each leaves once it ends)."""
        return list(self._leases.values())

    async def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace this peer's metadata (tags, properties); the room sees ``metadata_updated``."""
        self.metadata = dict(metadata)
        await self.send({"type": "update_metadata", "metadata": self.metadata})

    # Receiving -----------------------------------------------------------------------

    async def recv(self) -> dict[str, Any]:
        """The next message for the application: ``peer_message``, ``broadcast``, room events
        (``peer_joined``, ``peer_left``, ``metadata_updated``, ``peer_availability``), booking
        events (``booked`` and ``lease_ended``: the session has already marked its own leases
        ended) and ``expired`` notices (offers, answers and candidates go to ``next_signal``).
        Raises SessionLost once the session has ended."""
        return await _next(self._inbox)

    async def next_signal(self) -> dict[str, Any]:
        """The next relayed ``offer``, ``answer`` or ``candidate`` (what ``connect`` and ``accept`` read)."""
        return await _next(self._signals)

    async def next_ice_servers(self) -> list[dict[str, Any]]:
        """The next ICE servers the relay pushes: fresh TURN credentials, sent at 80 % of the
        old ones' lifetime. The session keeps the latest in ``state.ice_servers`` by itself
        (``connect``/``accept`` use them); wait here to know when they change."""
        if self._closing:
            raise SessionLost("CLOSED", "the session is closed")
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._ice_waiters.append(future)
        return await future

    # Lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        """Leave the room (a clean close) and stop reconnecting."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._end(SessionLost("CLOSED", "the session is closed"))

    def _start(self, ws: ClientConnection, registered: dict[str, Any]) -> None:
        self._attach(ws, registered)
        self._runner = asyncio.get_running_loop().create_task(self._run())

    def _attach(self, ws: ClientConnection, registered: dict[str, Any]) -> None:
        self._ws = ws
        self.state.resume_token = registered.get("resume_token")
        self.state.peers = {p["peer_id"]: p for p in registered.get("peers", [])}
        self.state.ice_servers = list(registered.get("ice_servers", []))
        self._connected.set()

    async def _register(self, *, resume: bool) -> tuple[ClientConnection, dict[str, Any]]:
        """Connect and register (or resume), following up to ``MAX_REDIRECTS`` redirects to
        the relay node that serves the room; the socket and ``registered_auth``."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                ws, reply = await self._register_at(self.url, resume=resume)
            except OSError:
                if self.url == self.entry_url:
                    raise
                self.url = self.entry_url  # the node it was sent to is gone: the entry knows the new one
                continue
            if reply.get("type") == "registered_auth":
                return ws, reply
            target = str(reply["ws_url"])
            if self.url.startswith("wss:") and not target.startswith("wss:"):
                # Tokens never leave TLS: a redirect from wss to anything else is refused.
                raise Unavailable("INSECURE_REDIRECT", f"refused a redirect from a wss URL to {target!r}")
            self.url = target  # that node serves the room from now on
        raise Unavailable("TOO_MANY_REDIRECTS", f"more than {MAX_REDIRECTS} redirects registering in the room")

    async def _register_at(self, url: str, *, resume: bool) -> tuple[ClientConnection, dict[str, Any]]:
        tls: dict[str, Any] = {"ssl": self.ssl} if self.ssl is not None and url.startswith("wss:") else {}
        ws = await connect(url, open_timeout=self.open_timeout, max_size=None, **tls)
        message: dict[str, Any] = {
            "type": "register",
            "protocol": 2,  # every frame of this page (docs/protocol.md, Versions)
            "id": f"{self._prefix}-register-{next(self._ids)}",  # errors then say when to retry
            "peer_id": self.state.peer_id,
            "room_id": self.room.room_id,
            "token": self.room.token,
            "id_token": self.identity.id_token,
            "role": self.role,
            "metadata": self.metadata,
        }
        if self.max_claims is not None:
            message["max_claims"] = self.max_claims
        if resume and self.state.resume_token:
            message.update(resume_token=self.state.resume_token, last_seq=self.state.last_seq)
        try:
            await ws.send(json.dumps(message))
            while True:  # frames of the old session may not come first: only the answer counts
                reply = json.loads(await asyncio.wait_for(ws.recv(), self.open_timeout))
                if reply.get("type") == "registered_auth":
                    if not resume:
                        self.state.last_seq = 0
                    return ws, reply
                if reply.get("type") == "redirect" and isinstance(reply.get("ws_url"), str):
                    await ws.close()
                    return ws, reply
                if reply.get("type") == "error" and "seq" not in reply:
                    raise error_from_frame(reply)
        except BaseException:
            await ws.close()
            raise

    async def _run(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            try:
                async for frame in ws:
                    self._dispatch(json.loads(frame))
            except ConnectionClosed:
                pass
            self._connected.clear()
            if self._closing:
                return
            code = ws.close_code
            if code is not None and code in TERMINAL_CLOSES:
                self._end(SessionLost(f"CLOSED_{code}", ws.close_reason or ""))
                return
            try:
                await self._reconnect()
            except SignalingError as exc:
                self._end(exc)
                return

    async def _reconnect(self) -> None:
        """Resume on a new connection (after ``go_away``'s delay, else with backoff), then send
        again every message without an outcome, in order, with its id."""
        # go_away's reconnect_after_ms, then a RATE_LIMITED answer's retry_after: the relay's word.
        hint, self._reconnect_after = self._reconnect_after, None
        for attempt in range(self.backoff.attempts):
            await asyncio.sleep(hint if hint is not None else self.backoff.delay(attempt))
            hint = None
            try:
                ws, registered = await self._register(resume=True)
            except (OSError, TimeoutError, InvalidHandshake, InvalidStatus, ConnectionClosed):
                continue  # the relay is not back yet
            except SignalingError as exc:
                # TOO_MANY_REDIRECTS: sent back and forth to a node that died and has not
                # lapsed yet; once it has, a live node takes its rooms over.
                if exc.code in ("SERVER_BUSY", "STORAGE_UNAVAILABLE", "RATE_LIMITED", "TOO_MANY_REDIRECTS"):
                    if exc.retry_after is not None:
                        hint = self.backoff.delay(attempt, at_least=exc.retry_after)
                    continue
                raise  # RESUME_FAILED and the like: the session is over
            self.state.resumes += 1
            log.info("signaling session resumed (attempt %d)", attempt + 1)
            self._attach(ws, registered)
            # The replay first: it may answer some of what is pending (an ack sent while the
            # connection was failing), and those must not be sent again.
            replayed_to = int(registered.get("last_seq", 0))
            while self.state.last_seq < replayed_to:
                self._dispatch(json.loads(await asyncio.wait_for(ws.recv(), self.open_timeout)))
            for pending in list(self._pending.values()):
                if not pending.future.done():
                    await ws.send(json.dumps(pending.message))
            return
        raise SessionLost("RECONNECT_FAILED", f"no relay answered after {self.backoff.attempts} attempts")

    def _dispatch(self, message: dict[str, Any]) -> None:
        seq = message.pop("seq", None)
        if seq is not None:
            if seq <= self.state.last_seq:
                return  # seen before the drop
            self.state.last_seq = seq
        if "message_id" in message and self._seen_before(message):
            return
        kind = message.get("type")
        correlation_id = message.get("id")
        answer = kind in ("ack", "error", "peer_list", "pong", "claimed", "released") and isinstance(
            correlation_id, str
        )
        pending = self._pending.pop(str(correlation_id), None) if answer else None
        if kind == "ack" and pending is not None:
            _settle(pending, Ack(str(correlation_id), bool(message.get("queued"))))
        elif kind == "error" and pending is not None:
            _settle(pending, error_from_frame(message))
        elif kind in ("peer_list", "pong") and pending is not None:
            _settle(pending, message)
        elif kind == "claimed" and pending is not None:
            # Here, not in ``claim``: a lease_ended read right after it must find the lease.
            _settle(pending, self._hold(message, pending.message))
        elif kind == "released" and pending is not None:
            lease = self._leases.get(str(message.get("lease_id")))
            if lease is not None:
                lease._end("released")
            _settle(pending, message)
        elif kind == "lease_ended":
            lease = self._leases.get(str(message.get("lease_id")))
            if lease is not None:
                lease._end(str(message.get("reason", "expired")))
            self._inbox.put_nowait(message)
        elif kind == "go_away":
            self._reconnect_after = float(message.get("reconnect_after_ms", 0)) / 1000
        elif kind == "ice_servers":
            self.state.ice_servers = list(message.get("ice_servers", []))
            waiters, self._ice_waiters = self._ice_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(self.state.ice_servers)
        elif kind == "expired":
            self._inbox.put_nowait(message)
        elif kind in ("offer", "answer", "candidate"):
            self._signals.put_nowait(message)
        else:
            if kind == "peer_joined" or kind == "metadata_updated":
                self.state.peers[message["peer_id"]] = {k: v for k, v in message.items() if k != "type"}
            elif kind == "peer_availability" and message.get("peer_id") in self.state.peers:
                known = self.state.peers[message["peer_id"]]
                known.update({k: message[k] for k in ("available", "claims", "max_claims") if k in message})
            elif kind == "peer_left":
                self.state.peers.pop(message.get("peer_id", ""), None)
            self._inbox.put_nowait(message)

    def _hold(self, claimed: dict[str, Any], request: dict[str, Any]) -> Lease | dict[str, Any]:
        """The lease a ``claimed`` frame grants (a claim), now held, or the one it extends (a
        renewal: the frame itself if that lease has ended here meanwhile)."""
        lease_id = str(claimed["lease_id"])
        expires_at = int(claimed["expires_at"])
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.expires_at = expires_at
            return lease
        if request.get("type") == "renew":
            return claimed
        lease = Lease(self, str(claimed["peer_id"]), lease_id, expires_at, ttl_seconds=request.get("ttl_seconds"))
        self._leases[lease_id] = lease
        return lease

    def _seen_before(self, message: dict[str, Any]) -> bool:
        """Whether this relayed message arrived already (sent again after a relay node failed).
        Keyed on what the server stamps, never on a field the sender could set: ``sender`` on
        relayed offers, answers and candidates, ``from_peer_id`` on peer messages, broadcasts
        and mesh messages (the server strips each from the other kind)."""
        stamped = "sender" if message.get("type") in ("offer", "answer", "candidate", "error") else "from_peer_id"
        key = (str(message.get("type")), str(message.get(stamped)), json.dumps(message["message_id"]))
        if key in self._seen:
            log.info("dropped a message that arrived twice (from %s)", key[1])
            return True
        self._seen[key] = None
        if len(self._seen) > SEEN_MESSAGES:
            self._seen.popitem(last=False)
        return False

    def _end(self, error: SignalingError) -> None:
        self._closing = True
        for pending in self._pending.values():
            _settle(pending, error)
        self._pending.clear()
        self._inbox.put_nowait(error)
        self._signals.put_nowait(error)
        waiters, self._ice_waiters = self._ice_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        for lease in list(self._leases.values()):
            lease._end("left")  # the relay ends the leases of a holder that leaves


async def _next(queue: asyncio.Queue[dict[str, Any] | SignalingError]) -> dict[str, Any]:
    item = await queue.get()
    if isinstance(item, SignalingError):
        queue.put_nowait(item)  # every later call raises too
        raise item
    return item


def _settle(pending: _Pending, outcome: Any) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)


__all__ = ["Ack", "Backoff", "Claim", "Expired", "Lease", "Session", "SessionState"]
