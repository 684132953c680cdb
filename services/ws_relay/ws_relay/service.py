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

import structlog

from signaling_shared.auth import TokenVerifier
from signaling_shared.dynamo import PeerRecord, Repository
from signaling_shared.errors import (
    AlreadyRegistered,
    ConditionFailed,
    DeliveryFailed,
    InvalidRoomToken,
    NotFound,
    NotRegistered,
    PeerIdTaken,
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
from ws_relay import protocol
from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.hub import Hub, Link, Member
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay")

LEASE_REFRESH_CONCURRENCY = 16


@dataclass(eq=False)
class Session:
    link: Link
    remote_ip: str
    bucket: TokenBucket
    member: Member | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


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
        for timer in session.timers:
            timer.cancel()
        member = session.member
        if member is None or not self.hub.leave(member):
            return
        log.info("peer_left", room_id=member.room_id, peer_id=member.peer_id)
        if not self.closing:
            frame = protocol.peer_left(member.peer_id, "disconnected")
            for other in self.hub.others(member):
                other.link.send(frame)
        try:
            await self.repository.release_peer(member.room_id, member.peer_id, member.link.connection_id)
        except RepositoryError as exc:
            # The entry's lease runs out on its own; nothing else depends on it.
            log.warning("release_failed", room_id=member.room_id, error=type(exc).__name__)

    # Frames ------------------------------------------------------------------------

    async def handle_frame(self, session: Session, frame: str | bytes) -> None:
        started = time.perf_counter()
        try:
            if not session.bucket.take(time.monotonic()):
                raise RateLimited(
                    f"more than {self.settings.messages_per_second:g} messages per second",
                    retry_after=session.bucket.retry_after(time.monotonic()),
                )
            parsed = protocol.parse_frame(frame)
            message = parsed.message
            if isinstance(message, protocol.Register):
                await self._register(session, message)
            else:
                self._relay(session, message, parsed, started)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed reply
            self._reply_error(session, exc)

    def _reply_error(self, session: Session, exc: Exception) -> None:
        error = as_signaling_error(exc)
        if not isinstance(exc, SignalingError | RepositoryError):
            log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
        self.metrics.errors.labels(error.code.value).inc()
        session.link.send(protocol.error_frame(error))

    # Relay -------------------------------------------------------------------------

    def _relay(
        self, session: Session, message: protocol.RelayedMessage, parsed: protocol.Parsed, started: float
    ) -> None:
        member = session.member
        if member is None:
            raise NotRegistered()
        if message.sender is not None and message.sender != member.peer_id:
            raise SenderMismatch(f"sender must be {member.peer_id!r}, the peer registered on this connection")
        target = self.hub.route(member, message.target)
        if not target.link.send(protocol.relayed_frame(parsed.data, member.peer_id), started):
            raise DeliveryFailed(f"peer {message.target!r} is not reading its messages")
        self.metrics.relayed.labels(message.type).inc()

    # Registration ------------------------------------------------------------------

    async def _register(self, session: Session, message: protocol.Register) -> None:
        try:
            await self._do_register(session, message)
        except SignalingError as exc:
            self.metrics.registrations.labels(exc.code.value.lower()).inc()
            raise
        except RepositoryError:
            self.metrics.registrations.labels("storage_unavailable").inc()
            raise
        self.metrics.registrations.labels("ok").inc()

    async def _do_register(self, session: Session, message: protocol.Register) -> None:
        if session.member is not None:
            raise AlreadyRegistered()
        if self.closing:
            raise ServerBusy("server is shutting down; reconnect")
        self._ip_limiter.enforce(session.remote_ip, "registrations from this address")
        self._room_limiter.enforce(message.room_id, "registrations in this room")
        identity = await self.verifier.verify(message.id_token)
        try:
            room = await self.repository.get_room(message.room_id)
        except NotFound:
            raise RoomNotFound() from None
        if not room_token_matches(message.token, room.token_hash):
            raise InvalidRoomToken()
        now = self._clock()
        if room.is_expired(now):
            raise RoomExpired()

        reservation = self.hub.reserve(message.room_id, message.peer_id, identity.sub)
        connected_at = int(now)
        record = PeerRecord(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=identity.sub,
            owner_username=identity.username,
            connection_id=session.link.connection_id,
            node_id=self.settings.node_id,
            connected_at=connected_at,
            expires_at=self._lease_end(now, room.expires_at),
        )
        try:
            await self.repository.claim_peer(record, now=int(now))
        except ConditionFailed:
            self.hub.cancel(reservation)
            raise PeerIdTaken() from None
        except BaseException:
            self.hub.cancel(reservation)
            raise
        member = Member(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=identity.sub,
            link=session.link,
            connected_at=connected_at,
            room_expires_at=room.expires_at,
        )
        replaced = self.hub.commit(reservation, member)
        session.member = member
        if replaced is not None:
            self._close(replaced.link, CloseCode.REPLACED)
        session.timers.append(
            asyncio.get_running_loop().call_later(max(0.0, room.expires_at - now), self._room_expired, session, member)
        )
        log.info("peer_registered", room_id=member.room_id, peer_id=member.peer_id, takeover=replaced is not None)
        session.link.send(protocol.registered_auth(message.room_id, message.token, message.peer_id))
        joined = protocol.peer_joined(member.peer_id)
        for other in self.hub.others(member):
            other.link.send(joined)

    def _lease_end(self, now: float, room_expires_at: int) -> int:
        return min(room_expires_at, int(now) + self.settings.peer_lease_seconds)

    def _room_expired(self, session: Session, member: Member) -> None:
        if self.hub.is_current(member):
            self._close(session.link, CloseCode.ROOM_EXPIRED)

    # Leases ------------------------------------------------------------------------

    async def refresh_leases(self) -> None:
        """Extend every live member's routing entry; close those whose entry is gone.

        An entry disappears when the room's creator deletes the room (rooms-api
        removes the entries first), so this is also how deletions reach the relay.
        """
        now = self._clock()
        limit = asyncio.Semaphore(LEASE_REFRESH_CONCURRENCY)

        async def refresh(member: Member) -> None:
            async with limit:
                try:
                    await self.repository.refresh_peer(
                        member.room_id,
                        member.peer_id,
                        member.link.connection_id,
                        self._lease_end(now, member.room_expires_at),
                    )
                except ConditionFailed:
                    if self.hub.is_current(member):
                        self._close(member.link, await self._gone_reason(member.room_id))
                except RepositoryError as exc:
                    log.warning("lease_refresh_failed", room_id=member.room_id, error=type(exc).__name__)

        await asyncio.gather(*(refresh(m) for m in list(self.hub.members())))

    async def _gone_reason(self, room_id: str) -> CloseCode:
        try:
            await self.repository.get_room(room_id)
        except NotFound:
            return CloseCode.ROOM_DELETED
        except RepositoryError:
            pass
        return CloseCode.REPLACED

    # Shutdown ----------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new registrations and stop announcing departures."""
        self.closing = True
