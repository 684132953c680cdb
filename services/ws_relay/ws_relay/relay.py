"""The relay's workflow on one node: connections open and close, frames are dispatched,
messages relayed, members leave, the node shuts down. No socket code here.

Each socket is a ``Connection`` over a ``Link``; the server feeds it frames in order and
calls ``close_connection`` once. Every failure is answered with a typed error frame and
never ends the connection (limits aside), so one bad client cannot hurt others. The parts:
``registration`` (register and resume), ``ledger`` (delivery and acks), ``cluster`` (this
node in the shared tables), ``handoff`` (sessions saved for the next process).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from signaling_shared.auth import TokenVerifier
from signaling_shared.dynamo import Repository
from signaling_shared.errors import (
    InvalidMessage,
    NotRegistered,
    RateLimited,
    RepositoryError,
    SenderMismatch,
    SignalingError,
    as_signaling_error,
)
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.settings import RelaySettings
from ws_relay import compat, discovery, frames, protocol
from ws_relay.booking import Bookings
from ws_relay.claims import Seats
from ws_relay.close_codes import CloseCode
from ws_relay.cluster import Cluster
from ws_relay.connections import Connection, Connections, charge_fan_out, close_link
from ws_relay.handoff import Handoff
from ws_relay.hub import Hub, Link, Member
from ws_relay.ledger import Ledger
from ws_relay.metrics import RelayMetrics
from ws_relay.outcomes import Outcomes
from ws_relay.registration import Registrar
from ws_relay.routing import Router

log = structlog.stdlib.get_logger("ws_relay")

UNHANDLED_LOGS_PER_MINUTE, UNHANDLED_LOGS_BURST = 6, 3  # tracebacks logged per kind of unhandled error
MAX_REFUSED_PAUSE = 0.25  # seconds a socket over its rate limit is not read, at most


class Relay:
    def __init__(
        self,
        settings: RelaySettings,
        repository: Repository,
        verifier: TokenVerifier,
        metrics: RelayMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hub = Hub(max_peers_per_room=settings.max_peers_per_room)
        self.connections = Connections(settings, on_deadline=self._registration_deadline)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.drained = asyncio.Event()  # set once closing and every connection is gone
        self.ledger = Ledger(settings, self.hub, repository, metrics, clock=clock, spawn=self._spawn, end=self.end)
        self.cluster = Cluster(settings, repository, self.hub, clock=clock)
        self.handoff = Handoff(
            settings,
            repository,
            self.hub,
            self.ledger,
            self.cluster,
            clock=clock,
            spawn=self._spawn,
            closing=lambda: self.closing,
        )
        seats = Seats(
            repository,
            self.hub,
            self.connections,
            self.ledger,
            self.cluster,
            self.handoff,
            metrics,
            spawn=self._spawn,
            end=self.end,
        )
        self.registrar = Registrar(
            settings, repository, verifier, seats=seats, clock=clock, closing=lambda: self.closing
        )
        self.router = Router(settings, self.hub, self.ledger, metrics, clock=clock)
        self.bookings = Bookings(settings, self.hub, self.ledger, repository, metrics, clock=clock, spawn=self._spawn)
        self.outcomes = Outcomes(settings, self.hub, repository, metrics, clock=clock)
        self._unhandled_logs = KeyedRateLimiter.per_minute(UNHANDLED_LOGS_PER_MINUTE, UNHANDLED_LOGS_BURST)

    # Connections -------------------------------------------------------------------

    def open_connection(self, link: Link, remote_ip: str) -> Connection:
        return self.connections.add(link, remote_ip)

    def _registration_deadline(self, connection: Connection) -> None:
        if connection.member is not None:
            return
        if connection.registering:
            # A register is under way (its storage calls may be slow): it ends with its own
            # answer (registered_auth, or a typed, retryable error), not with 4001. The
            # socket gets one more period to register after that.
            self.connections.arm_deadline(connection)
            return
        close_link(connection.link, CloseCode.REGISTRATION_TIMEOUT, self.metrics)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_connection(
        self, connection: Connection, *, resumable: bool = False, reason: str = "closed"
    ) -> None:
        """The connection is gone. A dropped connection (``resumable``) detaches its member for
        the resume window; otherwise the member leaves the room now, with ``reason``."""
        self.connections.remove(connection)
        if self.closing and not self.connections:
            self.drained.set()
        member = connection.member
        if member is None or member.link is not connection.link or not self.hub.is_current(member):
            return  # never registered, resumed elsewhere, or replaced
        if self.closing and resumable:
            member.detach()  # saved at the end of the shutdown, for the next process
            return
        if resumable:
            member.detach()
            member.timers["detached"] = asyncio.get_running_loop().call_later(
                self.settings.resume_window_seconds, self._resume_window_over, member
            )
            log.info("peer_detached", room_id=member.room_id, peer_id=member.peer_id)
            return
        await self._leave(member, reason)

    def _resume_window_over(self, member: Member) -> None:
        if member.link is None and self.hub.is_current(member):
            self._spawn(self._leave(member, "timeout"))

    async def _leave(self, member: Member, reason: str = "closed") -> None:
        """Remove ``member`` from its room, tell the others why, free its routing entry."""
        if not self.hub.leave(member):
            return
        for timer in member.timers.values():
            timer.cancel()
        log.info("peer_left", room_id=member.room_id, peer_id=member.peer_id, reason=reason)
        self.ledger.settle_departed(member, reason)
        self.bookings.departed(member)
        if not self.hub.in_room(member.room_id):
            self.handoff.room_emptied(member.room_id)
        self.ledger.to_others(member, frames.peer_left(member.peer_id, reason), kind="peer_left")
        await self.cluster.release_quietly(member.room_id, member.peer_id, member.connection_id)

    def end(self, member: Member, code: CloseCode, reason: str) -> None:
        """End a member's session for good: close its socket (if any) and leave the room."""
        close_link(member.link, code, self.metrics)
        member.link = None
        member.leave()  # nothing more is delivered to it
        self._spawn(self._leave(member, reason))

    # Frames ------------------------------------------------------------------------

    def take_frame(self, connection: Connection, frame: str | bytes) -> Awaitable[None] | None:
        """Handle one frame now. What must wait on I/O (registering, claims, metadata, a
        message held in DynamoDB, a sender held back by its rate limit) is returned, to be
        awaited before the connection's next frame is taken (``reader.RelayConnection``):
        a connection's frames are handled one after another, in order."""
        started = time.perf_counter()
        correlation_id: str | int | None = None
        if not connection.bucket.take(time.monotonic()):
            # Refused on cheap facts, without decoding; answered with the request's id (found by
            # one scan) so a v2 client can match it and send it again. The socket is then not
            # read until a token is due: a flood is held back by TCP, not paid for frame by frame.
            retry_after = connection.bucket.retry_after(time.monotonic())
            error = RateLimited(
                f"more than {self.settings.messages_per_second:g} messages per second", retry_after=retry_after
            )
            self._reply_error(connection, error, protocol.scan_correlation_id(frame))
            return asyncio.sleep(min(retry_after, MAX_REFUSED_PAUSE))
        try:
            data = protocol.decode_frame(frame)
            correlation_id = protocol.correlation_id_of(data)
            message = protocol.parse_message(data)
            work = self._dispatch(connection, message, data, started)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed reply
            self._reply_error(connection, exc, correlation_id)
            return None
        return None if work is None else self._finish(connection, work, correlation_id)

    async def handle_frame(self, connection: Connection, frame: str | bytes) -> None:
        """``take_frame``, and what it leaves, awaited to the end."""
        work = self.take_frame(connection, frame)
        if work is not None:
            await work

    async def _finish(self, connection: Connection, work: Awaitable[None], correlation_id: str | int | None) -> None:
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed reply
            self._reply_error(connection, exc, correlation_id)

    def _dispatch(
        self, connection: Connection, message: protocol.AnyClientMessage, data: dict[str, Any], started: float
    ) -> Awaitable[None] | None:
        """Do what ``message`` asks; return what is left to await, if anything."""
        reply = self.ledger.reply
        if isinstance(message, protocol.Register):
            return self.registrar.register(connection, message, data)
        if isinstance(message, protocol.Ping):
            reply(connection, frames.pong(message.id), kind="pong")
            return None
        member = connection.member
        if member is None:
            raise NotRegistered()
        # The successor's messages name their sender: from_peer_id (the server's field on
        # whatever it relays), or peer_id in update_metadata. It must be this socket's peer.
        named = data.get("from_peer_id", message.peer_id if isinstance(message, protocol.UpdateMetadata) else None)
        if named is not None and named != member.peer_id:
            raise SenderMismatch(f"sender must be {member.peer_id!r}, the peer registered on this connection")
        if isinstance(message, protocol.DiscoverPeers):
            peers = self.discover(member, message.filters, any_tag=compat.successor_shaped(data))
            reply(connection, frames.peer_list(peers, message.id), kind="peer_list")
            return None
        if isinstance(message, protocol.Query):
            peer_ids = [other.peer_id for other in self.hub.others(member)]
            reply(connection, frames.available_peers(peer_ids, message.id), kind="available_peers")
            return None
        if isinstance(message, protocol.Quit):
            self.end(member, CloseCode.QUIT, "quit")
            return None
        if isinstance(message, protocol.Claim):
            return self._replying(connection, self.bookings.claim(member, message), "claimed")
        if isinstance(message, protocol.Renew):
            return self._replying(connection, self.bookings.renew(member, message), "claimed")
        if isinstance(message, protocol.Release):
            return self._replying(connection, self.bookings.release(member, message), "released")
        if isinstance(message, protocol.UpdateMetadata):
            recipients = len(self.hub.others(member))  # a frame to each
            charge_fan_out(connection, recipients, "an update_metadata", self.settings.messages_per_second)
            return self._update_metadata(connection, member, message, data)
        if isinstance(message, protocol.ConnectionReport):
            return self._acked(connection, message, self.outcomes.report(member, message))
        if isinstance(message, protocol.Broadcast):
            recipients = len(self.hub.others(member))
            charge_fan_out(connection, recipients, "a broadcast", self.settings.messages_per_second)
            frame = frames.broadcast(member.peer_id, message.payload)
            self.ledger.to_others(member, frame, kind="broadcast", started=started)
            self._ack(connection, message)
            return None
        # Acked when the target confirms receipt, or when held.
        holding = self.router.direct(connection, member, message, data, started)
        if holding is not None:
            return self._counted(message, holding)
        self.metrics.relayed.labels(message.type).inc()
        return None

    def _ack(self, connection: Connection, message: protocol.AnyClientMessage) -> None:
        self.metrics.relayed.labels(message.type).inc()
        if message.id is not None:
            self.ledger.reply(connection, frames.ack(message.id), kind="ack")

    async def _acked(self, connection: Connection, message: protocol.AnyClientMessage, work: Awaitable[None]) -> None:
        await work
        self._ack(connection, message)

    async def _counted(self, message: protocol.AnyClientMessage, work: Awaitable[None]) -> None:
        await work
        self.metrics.relayed.labels(message.type).inc()

    async def _replying(self, connection: Connection, work: Awaitable[str], kind: str) -> None:
        self.ledger.reply(connection, await work, kind=kind)

    async def _update_metadata(
        self, connection: Connection, member: Member, message: protocol.UpdateMetadata, data: dict[str, Any]
    ) -> None:
        merge = message.merge or compat.successor_shaped(data)
        view = await self.registrar.update_metadata(member, message.metadata, merge=merge)
        if compat.successor_shaped(data):  # the successor confirms to the sender
            self.ledger.reply(connection, frames.metadata_updated(view), kind="metadata_updated")
        self._ack(connection, message)

    def _reply_error(self, connection: Connection, exc: Exception, correlation_id: str | int | None) -> None:
        error = as_signaling_error(exc)
        # A bug a client can trigger at will: logged with its traceback a few times per kind,
        # then counted only (the errors metric, INTERNAL_ERROR), so logs cannot be flooded.
        unhandled = not isinstance(exc, SignalingError | RepositoryError)
        if unhandled and self._unhandled_logs.hit(type(exc).__name__) is None:
            log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
        self.metrics.errors.labels(error.code.value).inc()
        self.ledger.reply(connection, frames.error_frame(error, correlation_id), kind="error")

    def discover(self, member: Member, filters: dict[str, Any], *, any_tag: bool) -> list[dict[str, Any]]:
        """The room's other peers that match ``filters`` (``room_id``, if given, must be this
        room's: discovery never looks into another room)."""
        size = len(frames.encode(filters))  # evaluated against every peer: bounded first
        if size > self.settings.max_filter_bytes:
            raise InvalidMessage(f"filters are {size} bytes; the limit is {self.settings.max_filter_bytes}")
        try:
            discovery.validate_filters(filters)
        except discovery.FilterError as exc:
            raise InvalidMessage(str(exc)) from None
        if filters.get("room_id", member.room_id) != member.room_id:
            return []
        return [
            other.view()
            for other in self.hub.others(member)
            if discovery.matches(
                filters, other.role, other.metadata, any_tag=any_tag, available=self.bookings.available(other)
            )
        ]

    # Leases and shutdown -----------------------------------------------------------

    async def refresh_leases(self) -> None:
        """Extend every live member's routing entry; end those whose room or entry is gone."""
        await self.cluster.refresh_leases(self.end)

    def begin_shutdown(self) -> None:
        """Refuse new registrations, and tell every peer to go away and come back later:
        ``go_away`` with a jittered ``reconnect_after_ms``, so they do not return at once."""
        self.closing = True
        if not self.connections:
            self.drained.set()
        drain_ms = int(self.settings.drain_seconds * 1000)
        for connection in list(self.connections.open):
            frame = frames.go_away("SERVER_SHUTDOWN", drain_ms + secrets.randbelow(self.settings.drain_jitter_ms + 1))
            self.ledger.reply(connection, frame, kind="go_away")

    async def finish_tasks(self) -> None:
        """Once every task the relay spawned (and what those spawned) has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def save_sessions(self) -> None:
        """At shutdown, once every socket is closed: save each member's session for the next
        process (``handoff.Handoff.save_all``)."""
        # Nothing may change a member once its snapshot is taken: stop every timer and
        # let what is under way (expiries, leaves) finish first.
        for member in self.hub.members():
            for timer in member.timers.values():
                timer.cancel()
        await self.finish_tasks()  # with the mailbox open: they may hold answers
        await self.ledger.mailbox.close()
        await self.finish_tasks()
        await self.handoff.save_all([m for m in self.hub.members() if not m.gone])
