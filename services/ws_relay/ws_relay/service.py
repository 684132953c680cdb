"""The relay's workflow: registration, relaying, leaving, leases. No socket code here.

Each connection is a ``Session`` over a ``Link``; the server feeds it frames in order
and calls ``close_session`` once. Every failure is answered with a typed error frame
and never ends the connection (limits aside), so one bad client cannot hurt others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from signaling_shared import turn
from signaling_shared.auth import TokenVerifier
from signaling_shared.dynamo import PeerRecord, Repository
from signaling_shared.errors import (
    AlreadyRegistered,
    ConditionFailed,
    DeliveryFailed,
    InvalidMessage,
    InvalidRoomToken,
    NotFound,
    NotRegistered,
    PeerIdTaken,
    PeerNotFound,
    RateLimited,
    RepositoryError,
    RoomExpired,
    RoomNotFound,
    SenderMismatch,
    ServerBusy,
    SignalingError,
    as_signaling_error,
)
from signaling_shared.ratelimit import KeyedRateLimiter, TokenBucket
from signaling_shared.settings import RelaySettings
from signaling_shared.tokens import room_token_matches
from ws_relay import discovery, protocol
from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.hub import Hub, Link, Member
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay")

LEASE_REFRESH_CONCURRENCY = 16
ICE_REFRESH_AT = 0.8  # of the credentials' lifetime


@dataclass(eq=False)
class Session:
    link: Link
    remote_ip: str
    bucket: TokenBucket
    member: Member | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    ice_timer: asyncio.TimerHandle | None = None


class RelayService:
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
        self.repository = repository
        self.verifier = verifier
        self.metrics = metrics
        self.hub = Hub(max_peers_per_room=settings.max_peers_per_room)
        self._clock = clock
        self._ip_limiter = KeyedRateLimiter.per_minute(
            settings.register_rate_per_minute_per_ip, settings.register_burst_per_ip
        )
        self._room_limiter = KeyedRateLimiter.per_minute(
            settings.register_rate_per_minute_per_room, settings.register_burst_per_room
        )
        self.sessions: set[Session] = set()
        self.closing = False
        metrics.track(self)

    # Connections -------------------------------------------------------------------

    def open_session(self, link: Link, remote_ip: str) -> Session:
        session = Session(
            link=link,
            remote_ip=remote_ip,
            bucket=TokenBucket(
                self.settings.messages_per_second, self.settings.message_burst, updated=time.monotonic()
            ),
        )
        self.sessions.add(session)
        loop = asyncio.get_running_loop()
        session.timers.append(
            loop.call_later(self.settings.register_timeout_seconds, self._registration_deadline, session)
        )
        return session

    def _registration_deadline(self, session: Session) -> None:
        if session.member is None:
            self._close(session.link, CloseCode.REGISTRATION_TIMEOUT)

    def _close(self, link: Link, code: CloseCode) -> None:
        self.metrics.closes.labels(str(int(code))).inc()
        link.close(code, REASONS[code])

    async def close_session(self, session: Session) -> None:
        """The connection is gone: leave the room, tell the others, free the routing entry."""
        self.sessions.discard(session)
        for timer in (*session.timers, session.ice_timer):
            if timer is not None:
                timer.cancel()
        member = session.member
        if member is None or not self.hub.leave(member):
            return
        log.info("peer_left")
        if not self.closing:
            frame = protocol.peer_left(member.peer_id, "disconnected")
            for other in self.hub.others(member):
                other.link.send(frame)
        await self._release_quietly(member.room_id, member.peer_id, member.link.connection_id)

    # Frames ------------------------------------------------------------------------

    async def handle_frame(self, session: Session, frame: str | bytes) -> None:
        started = time.perf_counter()
        correlation_id: str | int | None = None
        try:
            if not session.bucket.take(time.monotonic()):
                raise RateLimited(
                    f"more than {self.settings.messages_per_second:g} messages per second",
                    retry_after=session.bucket.retry_after(time.monotonic()),
                )
            data = protocol.decode_frame(frame)
            correlation_id = protocol.correlation_id_of(data)
            message = protocol.parse_message(data)
            await self._dispatch(session, message, data, started)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed reply
            self._reply_error(session, exc, correlation_id)

    async def _dispatch(
        self, session: Session, message: protocol.AnyClientMessage, data: dict[str, Any], started: float
    ) -> None:
        if isinstance(message, protocol.Register):
            await self._register(session, message)
            return
        if isinstance(message, protocol.Ping):
            session.link.send(protocol.pong(message.id))
            return
        member = session.member
        if member is None:
            raise NotRegistered()
        if isinstance(message, protocol.DiscoverPeers):
            session.link.send(protocol.peer_list(self._discover(member, message.filters), message.id))
            return
        if isinstance(message, protocol.UpdateMetadata):
            await self._update_metadata(member, message.metadata)
        elif isinstance(message, protocol.PeerMessage):
            target = self.hub.route(member, message.to_peer_id)
            self._deliver(target, protocol.peer_message(member.peer_id, target.peer_id, message.payload), started)
        elif isinstance(message, protocol.Broadcast):
            frame = protocol.broadcast(member.peer_id, message.payload)
            for other in self.hub.others(member):
                other.link.send(frame, started)
        else:
            self._relay(member, message, data, started)
        self.metrics.relayed.labels(message.type).inc()
        if message.id is not None:
            session.link.send(protocol.ack(message.id))

    def _reply_error(self, session: Session, exc: Exception, correlation_id: str | int | None) -> None:
        error = as_signaling_error(exc)
        if not isinstance(exc, SignalingError | RepositoryError):
            log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
        self.metrics.errors.labels(error.code.value).inc()
        session.link.send(protocol.error_frame(error, correlation_id))

    # Relay -------------------------------------------------------------------------

    def _relay(self, member: Member, message: protocol.RelayedMessage, data: dict[str, Any], started: float) -> None:
        if message.sender is not None and message.sender != member.peer_id:
            raise SenderMismatch(f"sender must be {member.peer_id!r}, the peer registered on this connection")
        target = self.hub.route(member, message.target)
        self._deliver(target, protocol.relayed_frame(data, member.peer_id), started)

    def _deliver(self, target: Member, frame: str, started: float) -> None:
        if not target.link.send(frame, started):
            raise DeliveryFailed(f"peer {target.peer_id!r} is not reading its messages")

    # Metadata and discovery --------------------------------------------------------

    def _check_metadata(self, metadata: dict[str, Any]) -> None:
        size = len(protocol.encode(metadata))
        if size > self.settings.max_metadata_bytes:
            raise InvalidMessage(f"metadata is {size} bytes; the limit is {self.settings.max_metadata_bytes}")

    async def _update_metadata(self, member: Member, metadata: dict[str, Any]) -> None:
        self._check_metadata(metadata)
        try:
            await self.repository.update_peer_metadata(
                member.room_id, member.peer_id, member.link.connection_id, metadata
            )
        except ConditionFailed:
            raise PeerNotFound("this connection no longer holds its peer id") from None
        if not self.hub.is_current(member):
            raise PeerNotFound("this connection no longer holds its peer id")
        member.metadata = metadata
        frame = protocol.metadata_updated(self._view(member))
        for other in self.hub.others(member):
            other.link.send(frame)

    def _discover(self, member: Member, filters: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            discovery.validate_filters(filters)
        except discovery.FilterError as exc:
            raise InvalidMessage(str(exc)) from None
        return [
            self._view(other)
            for other in self.hub.others(member)
            if discovery.matches(filters, other.role, other.metadata)
        ]

    @staticmethod
    def _view(member: Member) -> dict[str, Any]:
        return protocol.peer_view(member.peer_id, member.role, member.metadata, member.connected_at)

    # Registration ------------------------------------------------------------------

    async def _register(self, session: Session, message: protocol.Register) -> None:
        try:
            outcome = await self._do_register(session, message)
        except (SignalingError, RepositoryError) as exc:
            code = as_signaling_error(exc).code.value
            self.metrics.registrations.labels(code).inc()
            log.info("registration_refused", code=code, room_id=message.room_id, remote_ip=session.remote_ip)
            raise
        self.metrics.registrations.labels(outcome).inc()

    async def _do_register(self, session: Session, message: protocol.Register) -> str:
        """Register the socket's peer; the outcome label ('ok', or 'abandoned' if the socket left)."""
        if session.member is not None:
            raise AlreadyRegistered()
        if self.closing:
            raise ServerBusy("server is shutting down; reconnect")
        self._check_metadata(message.metadata)
        self._ip_limiter.enforce(session.remote_ip, "registrations from this address")
        identity = await self.verifier.verify(message.id_token)
        try:
            room = await self.repository.get_room(message.room_id)
        except NotFound:
            raise RoomNotFound() from None
        if not room_token_matches(message.token, room.token_hash):
            # Only failures count against the room: knowing a room id must not let anyone
            # lock its members out.
            self._room_limiter.enforce(message.room_id, "failed registrations in this room")
            raise InvalidRoomToken()
        now = self._clock()
        if room.is_expired(now):
            raise RoomExpired()

        if not session.link.is_open():  # the socket left while we checked: claim nothing
            return "abandoned"
        reservation = self.hub.reserve(message.room_id, message.peer_id, identity.sub)
        member = Member(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=identity.sub,
            owner_username=identity.username,
            link=session.link,
            connected_at=int(now),
            room_expires_at=room.expires_at,
            role=message.role,
            metadata=message.metadata,
        )
        connection_id = session.link.connection_id
        record = self._record(member, now)
        try:
            await self.repository.claim_peer(record, now=int(now))
        except ConditionFailed:
            self.hub.cancel(reservation)
            raise PeerIdTaken() from None
        except NotFound:
            self.hub.cancel(reservation)
            raise RoomNotFound("room was deleted") from None
        except Exception:
            # The write may have landed before the failure: take back what may be ours.
            self.hub.cancel(reservation)
            await self._release_quietly(message.room_id, message.peer_id, connection_id)
            raise
        except BaseException:
            self.hub.cancel(reservation)
            raise
        if not session.link.is_open():
            # The socket went away during the write (or its deadline passed): this attempt
            # must not take the peer id from whoever holds it now, nor keep its entry.
            self.hub.cancel(reservation)
            holder = reservation.replaces
            if holder is not None and self.hub.is_current(holder):
                await self._restore(holder, now)
            else:
                await self._release_quietly(message.room_id, message.peer_id, connection_id)
            return "abandoned"

        replaced = self.hub.commit(reservation, member)
        session.member = member
        if replaced is not None:
            self._close(replaced.link, CloseCode.REPLACED)
        session.timers.append(
            asyncio.get_running_loop().call_later(max(0.0, room.expires_at - now), self._room_expired, session, member)
        )
        structlog.contextvars.bind_contextvars(room_id=member.room_id, peer_id=member.peer_id)
        log.info("peer_registered", takeover=replaced is not None)
        others = self.hub.others(member)
        ice = turn.ice_servers(self.settings, member.peer_id, now)
        session.link.send(
            protocol.registered_auth(
                message.room_id,
                message.token,
                message.peer_id,
                peers=[self._view(other) for other in others],
                ice=ice,
                correlation_id=message.id,
            )
        )
        self._schedule_ice_refresh(session, member, ice["ttl"])
        joined = protocol.peer_joined(self._view(member))
        for other in others:
            other.link.send(joined)
        return "ok"

    def _record(self, member: Member, now: float) -> PeerRecord:
        """The routing-table entry of ``member`` with a fresh lease."""
        return PeerRecord(
            room_id=member.room_id,
            peer_id=member.peer_id,
            owner_sub=member.owner_sub,
            owner_username=member.owner_username,
            connection_id=member.link.connection_id,
            node_id=self.settings.node_id,
            connected_at=member.connected_at,
            expires_at=self._lease_end(now, member.room_expires_at),
            role=member.role,
            metadata=member.metadata,
        )

    async def _restore(self, member: Member, now: float) -> None:
        """Write back the entry of a live member that an abandoned takeover overwrote."""
        try:
            await self.repository.claim_peer(self._record(member, now), now=int(now))
        except RepositoryError as exc:
            log.warning("restore_failed", room_id=member.room_id, error=type(exc).__name__)

    async def _release_quietly(self, room_id: str, peer_id: str, connection_id: str) -> None:
        try:
            await self.repository.release_peer(room_id, peer_id, connection_id)
        except RepositoryError as exc:  # the entry's lease runs out on its own
            log.warning("release_failed", room_id=room_id, error=type(exc).__name__)

    def _schedule_ice_refresh(self, session: Session, member: Member, ttl: int) -> None:
        """Push fresh TURN credentials well before the current ones expire."""
        if not self.settings.turn_urls:
            return
        session.ice_timer = asyncio.get_running_loop().call_later(
            ttl * ICE_REFRESH_AT, self._refresh_ice, session, member
        )

    def _refresh_ice(self, session: Session, member: Member) -> None:
        if not self.hub.is_current(member):
            return
        ice = turn.ice_servers(self.settings, member.peer_id, self._clock())
        member.link.send(protocol.ice_servers(ice))
        self._schedule_ice_refresh(session, member, ice["ttl"])

    def _lease_end(self, now: float, room_expires_at: int) -> int:
        return min(room_expires_at, int(now) + self.settings.peer_lease_seconds)

    def _room_expired(self, session: Session, member: Member) -> None:
        if self.hub.is_current(member):
            self._close(session.link, CloseCode.ROOM_EXPIRED)

    # Leases ------------------------------------------------------------------------

    async def refresh_leases(self) -> None:
        """Extend every live member's routing entry; close those whose room or entry is gone.

        This is how a room's deletion through rooms-api reaches the relay: within a third
        of the lease (40 s by default), its peers are closed with 4003.
        """
        now = self._clock()
        limit = asyncio.Semaphore(LEASE_REFRESH_CONCURRENCY)

        async def refresh(member: Member) -> None:
            async with limit:
                try:
                    record = self._record(member, now)
                    await self.repository.refresh_peer(
                        record.room_id, record.peer_id, record.connection_id, record.expires_at
                    )
                except NotFound:
                    if self.hub.is_current(member):
                        self._close(member.link, CloseCode.ROOM_DELETED)
                except ConditionFailed:
                    if self.hub.is_current(member):
                        self._close(member.link, CloseCode.REPLACED)
                except RepositoryError as exc:
                    log.warning("lease_refresh_failed", room_id=member.room_id, error=type(exc).__name__)

        await asyncio.gather(*(refresh(m) for m in list(self.hub.members())))

    # Shutdown ----------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new registrations and stop announcing departures."""
        self.closing = True
