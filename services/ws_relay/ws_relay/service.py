"""The relay's workflow: registration, relaying, leaving, leases. No socket code here.

Each connection is a ``Session`` over a ``Link``; the server feeds it frames in order
and calls ``close_session`` once. Every failure is answered with a typed error frame
and never ends the connection (limits aside), so one bad client cannot hurt others.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import structlog

from signaling_shared import turn
from signaling_shared.auth import TokenVerifier
from signaling_shared.dynamo import PeerRecord, QueuedMessage, RelayNode, Repository, Room, SavedSession
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
    ResumeFailed,
    RoomExpired,
    RoomNotFound,
    SenderMismatch,
    ServerBusy,
    SignalingError,
    UnsupportedByPeer,
    as_signaling_error,
)
from signaling_shared.ratelimit import KeyedRateLimiter, TokenBucket
from signaling_shared.settings import RelaySettings
from signaling_shared.tokens import hash_room_token, new_room_token, room_token_matches
from ws_relay import compat, discovery, protocol
from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.hub import Hub, Link, Member, Owed, Reservation
from ws_relay.mailbox import Mailbox
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay")

LEASE_REFRESH_CONCURRENCY = 16
DEPARTED_SESSIONS_KEPT = 10_000
SAVE_ATTEMPTS = 3
LOST = frozenset({"timeout", "overflow"})  # departures in which the client surely missed frames
ICE_REFRESH_AT = 0.8  # of the credentials' lifetime
UNHANDLED_LOGS_PER_MINUTE, UNHANDLED_LOGS_BURST = 6, 3  # tracebacks logged per kind of unhandled error
MAX_REFUSED_PAUSE = 0.25  # seconds a socket over its rate limit is not read, at most


@dataclass(eq=False)
class Session:
    link: Link
    remote_ip: str
    bucket: TokenBucket
    member: Member | None = None
    deadline: asyncio.TimerHandle | None = None
    profile: compat.Profile = compat.Profile.V2  # set by its register (ws_relay.compat)
    registering: bool = False  # a register is being handled


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
        self.mailbox = Mailbox(
            settings, repository, clock=clock, on_expired=self._held_expired, sender_present=self._sender_present
        )
        self._ip_limiter = KeyedRateLimiter.per_minute(
            settings.register_rate_per_minute_per_ip, settings.register_burst_per_ip
        )
        self._room_limiter = KeyedRateLimiter.per_minute(
            settings.register_rate_per_minute_per_room, settings.register_burst_per_room
        )
        self._hold_limiter = KeyedRateLimiter.per_minute(settings.queue_holds_per_minute, settings.queue_hold_burst)
        self._unhandled_logs = KeyedRateLimiter.per_minute(UNHANDLED_LOGS_PER_MINUTE, UNHANDLED_LOGS_BURST)
        self.sessions: set[Session] = set()
        # Per client address: open sockets, and those not registered yet (the handshake's caps).
        self._open_by_ip: Counter[str] = Counter()
        self._unregistered_by_ip: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        # Rooms whose sessions saved by a previous process are watched, and their timers.
        self._watched: set[str] = set()
        self._lapses: set[asyncio.TimerHandle] = set()
        # Sessions that left this process for good, newest last: nothing waits for them.
        self._departed: OrderedDict[str, None] = OrderedDict()
        self.closing = False
        self.drained = asyncio.Event()  # set once closing and every connection is gone
        metrics.track(self)

    # Connections -------------------------------------------------------------------

    def refuses(self, remote_ip: str) -> str | None:
        """Why a new socket from ``remote_ip`` is refused at the handshake (HTTP 429), if it is:
        one address may hold only so many sockets, and fewer that have not registered, so it
        cannot take the relay's capacity from everyone else."""
        if self._open_by_ip[remote_ip] >= self.settings.max_connections_per_ip:
            return f"more than {self.settings.max_connections_per_ip} connections from this address"
        if self._unregistered_by_ip[remote_ip] >= self.settings.max_unregistered_per_ip:
            return f"more than {self.settings.max_unregistered_per_ip} unregistered connections from this address"
        return None

    def _registered_once(self, session: Session) -> None:
        """``session`` holds a member for the first time: it no longer counts as unregistered."""
        if session.deadline is not None:
            session.deadline.cancel()
            session.deadline = None
            self._count_down(self._unregistered_by_ip, session.remote_ip)

    @staticmethod
    def _count_down(counts: Counter[str], key: str) -> None:
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]

    def open_session(self, link: Link, remote_ip: str) -> Session:
        session = Session(
            link=link,
            remote_ip=remote_ip,
            bucket=TokenBucket(
                self.settings.messages_per_second, self.settings.message_burst, updated=time.monotonic()
            ),
        )
        self.sessions.add(session)
        self._open_by_ip[remote_ip] += 1
        self._unregistered_by_ip[remote_ip] += 1
        session.deadline = asyncio.get_running_loop().call_later(
            self.settings.register_timeout_seconds, self._registration_deadline, session
        )
        return session

    def _registration_deadline(self, session: Session) -> None:
        if session.member is not None:
            return
        if session.registering:
            # A register is under way (its storage calls may be slow): it ends with its own
            # answer (registered_auth, or a typed, retryable error), not with 4001. The
            # socket gets one more period to register after that.
            session.deadline = asyncio.get_running_loop().call_later(
                self.settings.register_timeout_seconds, self._registration_deadline, session
            )
            return
        self._close(session.link, CloseCode.REGISTRATION_TIMEOUT)

    def _close(self, link: Link | None, code: CloseCode) -> None:
        if link is not None:
            self.metrics.closes.labels(str(int(code))).inc()
            link.close(code, REASONS[code])

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_session(self, session: Session, *, resumable: bool = False, reason: str = "closed") -> None:
        """The connection is gone. A dropped connection (``resumable``) detaches its member for
        the resume window; otherwise the member leaves the room now, with ``reason``."""
        if session in self.sessions:
            self.sessions.discard(session)
            self._count_down(self._open_by_ip, session.remote_ip)
            self._registered_once(session)  # no longer unregistered either: it is gone
        if self.closing and not self.sessions:
            self.drained.set()
        member = session.member
        if member is None or member.link is not session.link or not self.hub.is_current(member):
            return  # never registered, resumed elsewhere, or replaced
        if self.closing and resumable:
            member.link = None  # saved at the end of the shutdown, for the next process
            return
        if resumable:
            member.link = None
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
        self._settle_departed(member, reason)
        frame = protocol.peer_left(member.peer_id, reason)
        for other in self.hub.others(member):
            self._push(other, frame, kind="peer_left")
        await self._release_quietly(member.room_id, member.peer_id, member.connection_id)

    def _settle_departed(self, member: Member, reason: str) -> None:
        """``member`` left or was replaced: what was sent to it and not confirmed was not
        delivered. Its senders are told; held messages are held again for its next registration.

        A message without an id is reported (in the v1 shape) only when its target was lost
        (``timeout``, ``overflow``): a client that closes properly, or is replaced, may well
        have read it, and a v1 sender could not tell which message an error is about."""
        member.gone = True
        self._departed[member.session_id] = None
        while len(self._departed) > DEPARTED_SESSIONS_KEPT:
            self._departed.popitem(last=False)
        if not self.hub.in_room(member.room_id):
            self._watched.discard(member.room_id)
        waiting, member.waiting = member.waiting or [], None
        owed = member.unsettled() + [item for _, _, item, _, _ in waiting if item is not None]
        for item in owed:
            if item.correlation_id is not None or item.held_key is not None or reason in LOST:
                self._fail(member.room_id, member.peer_id, item)

    def _fail(self, room_id: str, target_peer_id: str, owed: Owed) -> None:
        """A frame someone waits on will not reach ``target_peer_id``."""
        if owed.held_key is not None:
            self.mailbox.release(room_id, [owed.held_key])
        else:
            error = DeliveryFailed(f"peer {target_peer_id!r} left before receiving the message")
            self._answer(room_id, owed, protocol.error_frame(error, owed.correlation_id), kind="error")

    def _answer(self, room_id: str, owed: Owed, frame: str, *, kind: str) -> None:
        """Send the outcome of a message to its sender's session: now if it is here, else
        held for it (it may be resuming here after a relay restart) for the resume window."""
        if owed.sender_peer_id is None or owed.sender_session is None:
            return
        sender = self.hub.get(room_id, owed.sender_peer_id)
        if sender is not None and sender.session_id == owed.sender_session:
            if owed.correlation_id is not None:
                sender.in_flight.discard(owed.correlation_id)
            self._push(sender, frame, kind=kind, answer=True)
        elif sender is None and owed.sender_session not in self._departed:
            self._spawn(self._hold_answer(room_id, owed.sender_peer_id, owed.sender_session, owed, frame, kind))

    async def _hold_answer(
        self, room_id: str, peer_id: str, session_id: str, owed: Owed, frame: str, kind: str
    ) -> None:
        def arrived() -> bool:
            return self.hub.get(room_id, peer_id) is not None

        try:
            held = await self.mailbox.hold(
                room_id=room_id,
                to_peer_id=peer_id,
                from_peer_id=peer_id,
                from_session="",
                correlation_id=owed.correlation_id if owed.correlation_id is not None else "",
                frame=frame,
                expires_at_ms=int((self._clock() + self.settings.resume_window_seconds) * 1000),
                target_arrived=arrived,
                for_session=session_id,
            )
        except RepositoryError as exc:
            log.warning("answer_hold_failed", room_id=room_id, error=type(exc).__name__)
            return
        if not held:  # it came back meanwhile
            self._answer(room_id, owed, frame, kind=kind)

    def _confirmed(self, member: Member, seq: int) -> None:
        """``member``'s client has received every frame up to ``seq``: ack their senders."""
        held: list[str] = []
        for owed in member.confirm(seq):
            if owed.held_key is not None:
                held.append(owed.held_key)
            elif owed.correlation_id is not None:
                self._answer(member.room_id, owed, protocol.ack(owed.correlation_id), kind="ack")
        if held:
            self.metrics.held.labels("delivered").inc(len(held))
            self._spawn(self.mailbox.delivered(member.room_id, held))

    def _push(
        self,
        member: Member,
        frame: str,
        started: float | None = None,
        owed: Owed | None = None,
        *,
        kind: str,
        answer: bool = False,
    ) -> bool:
        """Number ``frame`` for ``member`` and send it, or keep it for a resume if detached.

        False when the member has left, or cannot hold more unconfirmed frames: then it is
        dropped from the room (``overflow``). Either way the frame is not delivered.
        ``owed`` is settled when the client confirms receipt (or fails if it never does).
        An ``answer`` (ack, expired, a failed delivery: one at most per message the member
        sent) is owed to it already and passes the buffer limits, which exist for what
        others send it. A frame of a ``kind`` the member's client does not know (a v1 peer's:
        ``ws_relay.compat``) is not sent either.
        """
        if member.gone or not compat.receives(member.profile, kind):
            return False
        if member.waiting is not None:  # behind the messages held for it, being read
            if not answer and len(member.waiting) >= self.settings.resume_buffer_messages:
                self._end(member, CloseCode.OVERFLOW, "overflow")
                return False
            member.waiting.append((frame, started, owed, answer, kind))
            return True
        if not answer:
            frames, size = member.kept()
            if frames >= self.settings.resume_buffer_messages or size + len(frame) > self.settings.resume_buffer_bytes:
                self._end(member, CloseCode.OVERFLOW, "overflow")
                return False
        seq, stamped = member.stamp(frame, owed, answer=answer)
        if member.link is not None:
            member.link.send(stamped, started, seq, replay=answer)  # a slow reader is cut off and detached
        return True

    def _reply(self, session: Session, frame: str, *, kind: str) -> None:
        """A reply on this connection: numbered once the connection holds a member; not sent
        at all if the client does not know its ``kind``."""
        member = session.member
        if member is not None and member.link is session.link:
            self._push(member, frame, kind=kind)
        elif compat.receives(session.profile, kind):
            session.link.send(frame)

    # Frames ------------------------------------------------------------------------

    async def handle_frame(self, session: Session, frame: str | bytes) -> None:
        started = time.perf_counter()
        correlation_id: str | int | None = None
        if not session.bucket.take(time.monotonic()):
            # Refused on cheap facts, without decoding; answered with the request's id (found by
            # one scan) so a v2 client can match it and send it again. The socket is then not
            # read until a token is due: a flood is held back by TCP, not paid for frame by frame.
            retry_after = session.bucket.retry_after(time.monotonic())
            error = RateLimited(
                f"more than {self.settings.messages_per_second:g} messages per second", retry_after=retry_after
            )
            self._reply_error(session, error, protocol.scan_correlation_id(frame))
            await asyncio.sleep(min(retry_after, MAX_REFUSED_PAUSE))
            return
        try:
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
            await self._register(session, message, data)
            return
        if isinstance(message, protocol.Ping):
            self._reply(session, protocol.pong(message.id), kind="pong")
            return
        member = session.member
        if member is None:
            raise NotRegistered()
        # The successor's messages name their sender: from_peer_id (the server's field on
        # whatever it relays), or peer_id in update_metadata. It must be this socket's peer.
        named = data.get("from_peer_id", message.peer_id if isinstance(message, protocol.UpdateMetadata) else None)
        if named is not None and named != member.peer_id:
            raise SenderMismatch(f"sender must be {member.peer_id!r}, the peer registered on this connection")
        if isinstance(message, protocol.DiscoverPeers):
            peers = self._discover(member, message.filters, any_tag=compat.successor_shaped(data))
            self._reply(session, protocol.peer_list(peers, message.id), kind="peer_list")
            return
        if isinstance(message, protocol.Query):
            peer_ids = [other.peer_id for other in self.hub.others(member)]
            self._reply(session, protocol.available_peers(peer_ids, message.id), kind="available_peers")
            return
        if isinstance(message, protocol.Quit):
            self._end(member, CloseCode.QUIT, "quit")
            return
        if isinstance(message, protocol.UpdateMetadata):
            self._charge_fan_out(session, len(self.hub.others(member)), "an update_metadata")  # a frame to each
            merge = message.merge or compat.successor_shaped(data)
            view = await self._update_metadata(member, message.metadata, merge=merge)
            if compat.successor_shaped(data):  # the successor confirms to the sender
                self._reply(session, protocol.metadata_updated(view), kind="metadata_updated")
        elif isinstance(message, protocol.Broadcast):
            others = self.hub.others(member)
            self._charge_fan_out(session, len(others), "a broadcast")
            frame = protocol.broadcast(member.peer_id, message.payload)
            for other in others:
                self._push(other, frame, started, kind="broadcast")
        else:
            await self._direct(session, member, message, data, started)
            self.metrics.relayed.labels(message.type).inc()
            return  # acked when the target confirms receipt, or when held
        self.metrics.relayed.labels(message.type).inc()
        if message.id is not None:
            self._reply(session, protocol.ack(message.id), kind="ack")

    def _charge_fan_out(self, session: Session, recipients: int, what: str) -> None:
        """A frame sent to ``recipients`` peers costs one message per recipient (the first was
        paid on arrival), at most the burst; RateLimited, before anything is sent, if short."""
        extra = recipients - 1
        now = time.monotonic()
        if extra > 0 and not session.bucket.take(now, extra):
            raise RateLimited(
                f"{what} to {recipients} peers counts as {recipients} messages;"
                f" more than {self.settings.messages_per_second:g} per second",
                retry_after=session.bucket.retry_after(now, extra),
            )

    def _reply_error(self, session: Session, exc: Exception, correlation_id: str | int | None) -> None:
        error = as_signaling_error(exc)
        # A bug a client can trigger at will: logged with its traceback a few times per kind,
        # then counted only (the errors metric, INTERNAL_ERROR), so logs cannot be flooded.
        unhandled = not isinstance(exc, SignalingError | RepositoryError)
        if unhandled and self._unhandled_logs.hit(type(exc).__name__) is None:
            log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
        self.metrics.errors.labels(error.code.value).inc()
        self._reply(session, protocol.error_frame(error, correlation_id), kind="error")

    # Relay -------------------------------------------------------------------------

    async def _direct(
        self,
        session: Session,
        member: Member,
        message: protocol.DirectMessage,
        data: dict[str, Any],
        started: float,
    ) -> None:
        """A message for one peer of the room. With an id, it is acked once the target confirms
        receipt; and if the target is not in the room yet, it is held for it instead."""
        kind: str = message.type
        if isinstance(message, protocol.PeerMessage):
            to_peer_id = message.to_peer_id
            frame = protocol.peer_message(member.peer_id, to_peer_id, message.payload, message.id)
        elif isinstance(message, protocol.MeshConnect | protocol.MeshAnswer | protocol.IceCandidate):
            to_peer_id = message.target_peer_id
            kind = protocol.MESH_RELAYED_AS[message.type]
            frame = protocol.mesh_frame(message, member.peer_id)
        else:
            if message.sender is not None and message.sender != member.peer_id:
                raise SenderMismatch(f"sender must be {member.peer_id!r}, the peer registered on this connection")
            to_peer_id = message.target
            if isinstance(message, protocol.PeerError):
                kind = compat.PEER_ERROR_KIND  # not the relay's error: never for a v1 peer
                frame = protocol.peer_error_frame(data, member.peer_id, message.id)
            else:
                frame = protocol.relayed_frame(data, member.peer_id, message.id)
        if message.ttl_seconds is not None and message.ttl_seconds > self.settings.queue_ttl_max_seconds:
            raise InvalidMessage(f"ttl_seconds: at most {self.settings.queue_ttl_max_seconds}")
        if message.ttl_seconds is not None and message.ttl_seconds < self.settings.queue_ttl_min_seconds:
            raise InvalidMessage(f"ttl_seconds: at least {self.settings.queue_ttl_min_seconds}")
        if message.id is not None and message.id in member.in_flight:
            return  # sent again after a resume: already on its way, its outcome will come
        target = self.hub.get(member.room_id, to_peer_id)
        if target is None and message.id is not None:
            if await self._hold(member, to_peer_id, message.id, message.ttl_seconds, frame):
                self.metrics.held.labels("held").inc()
                self._reply(session, protocol.ack(message.id, queued=True), kind="ack")
                return
            target = self.hub.get(member.room_id, to_peer_id)  # it registered while we checked
        if target is None:
            if message.id is None and isinstance(message, protocol.IceCandidate | protocol.PeerError):
                return  # as the successor: a candidate or error for a peer gone is dropped, not answered
            raise PeerNotFound(f"peer {to_peer_id!r} is not in this room")
        if not compat.receives(target.profile, kind):
            raise UnsupportedByPeer(f"peer {target.peer_id!r} is a v1 (seed) client: it cannot receive {kind!r}")
        # Its receipt acks it (with an id); if it never arrives, the sender is told (v1 too).
        owed = Owed(member.peer_id, member.session_id, message.id)
        if not self._push(target, frame, started, owed, kind=kind):
            raise DeliveryFailed(f"peer {target.peer_id!r} cannot take more messages")
        if message.id is not None:
            member.in_flight.add(message.id)

    async def _hold(
        self, member: Member, to_peer_id: str, correlation_id: str | int, ttl_seconds: int | None, frame: str
    ) -> bool:
        # Each hold is a write (and later a delete) in DynamoDB: an identity has only so many.
        self._hold_limiter.enforce(member.owner_sub, "messages held by this identity")
        lifetime_ms = self.mailbox.lifetime_ms(ttl_seconds)
        return await self.mailbox.hold(
            room_id=member.room_id,
            to_peer_id=to_peer_id,
            from_peer_id=member.peer_id,
            from_session=member.session_id,
            correlation_id=correlation_id,
            frame=frame,
            # Nobody can register in the room after it expires.
            expires_at_ms=min(int(self._clock() * 1000) + lifetime_ms, member.room_expires_at * 1000),
            target_arrived=lambda: self.hub.get(member.room_id, to_peer_id) is not None,
        )

    def _sender_of(self, message: QueuedMessage) -> Member | None:
        sender = self.hub.get(message.room_id, message.from_peer_id)
        return sender if sender is not None and sender.session_id == message.from_session and not sender.gone else None

    def _sender_present(self, message: QueuedMessage) -> bool:
        return self._sender_of(message) is not None

    def _held_expired(self, message: QueuedMessage) -> None:
        sender = self._sender_of(message)
        if sender is None:  # left between the check and the delete: nobody left to tell
            log.info("expired_sender_gone", room_id=message.room_id, peer_id=message.from_peer_id)
            return
        self.metrics.held.labels("expired").inc()
        self._push(sender, protocol.expired(message.correlation_id, message.to_peer_id), kind="expired", answer=True)

    async def _open_inbox(self, member: Member) -> None:
        """Deliver what is held for a newly registered member, then what arrived meanwhile."""
        held = []
        try:
            held = await self.mailbox.arrived(member.room_id, member.peer_id, member.session_id)
        except RepositoryError as exc:  # they stay held: delivered at a later registration, or expire
            log.warning("held_read_failed", room_id=member.room_id, error=type(exc).__name__)
        finally:
            waiting, member.waiting = member.waiting or [], None
            self._flush_inbox(member, held, waiting)

    def _flush_inbox(
        self,
        member: Member,
        held: list[QueuedMessage],
        waiting: list[tuple[str, float | None, Owed | None, bool, str]],
    ) -> None:
        for message in held:
            answer = bool(message.for_session)
            if answer:
                member.in_flight.discard(message.correlation_id)
            kind = compat.kind_of(protocol.frame_type(message.frame) or "error", message.frame)
            if not self._push(member, message.frame, owed=Owed(held_key=message.key), kind=kind, answer=answer):
                self.mailbox.release(member.room_id, [message.key])  # held on (a v1 peer's: until it expires)
        for frame, started, owed, answer, kind in waiting:
            if not self._push(member, frame, started, owed, kind=kind, answer=answer) and owed is not None:
                self._fail(member.room_id, member.peer_id, owed)
        if held:
            log.info("held_delivered", count=len(held))

    # Metadata and discovery --------------------------------------------------------

    def _check_metadata(self, metadata: dict[str, Any]) -> None:
        """Metadata is stored and sent to every peer of the room: it must stay small and
        shallow enough for every reply that embeds it."""
        if protocol.depth_exceeds(metadata, self.settings.max_metadata_depth):
            raise InvalidMessage(f"metadata nests deeper than {self.settings.max_metadata_depth} levels")
        size = len(protocol.encode(metadata))
        if size > self.settings.max_metadata_bytes:
            raise InvalidMessage(f"metadata is {size} bytes; the limit is {self.settings.max_metadata_bytes}")

    async def _update_metadata(self, member: Member, update: dict[str, Any], *, merge: bool) -> dict[str, Any]:
        """Replace (or ``merge`` into: ``compat.merge_metadata``) ``member``'s metadata; the
        room hears it. The member's view after the update."""
        metadata = compat.merge_metadata(member.metadata, update) if merge else update
        self._check_metadata(metadata)
        try:
            await self.repository.update_peer_metadata(member.room_id, member.peer_id, member.connection_id, metadata)
        except ConditionFailed:
            raise PeerNotFound("this connection no longer holds its peer id") from None
        if not self.hub.is_current(member):
            raise PeerNotFound("this connection no longer holds its peer id")
        member.metadata = metadata
        view = self._view(member)
        frame = protocol.metadata_updated(view)
        for other in self.hub.others(member):
            self._push(other, frame, kind="metadata_updated")
        return view

    def _discover(self, member: Member, filters: dict[str, Any], *, any_tag: bool) -> list[dict[str, Any]]:
        """The room's other peers that match ``filters`` (``room_id``, if given, must be this
        room's: discovery never looks into another room)."""
        size = len(protocol.encode(filters))  # evaluated against every peer: bounded first
        if size > self.settings.max_filter_bytes:
            raise InvalidMessage(f"filters are {size} bytes; the limit is {self.settings.max_filter_bytes}")
        try:
            discovery.validate_filters(filters)
        except discovery.FilterError as exc:
            raise InvalidMessage(str(exc)) from None
        if filters.get("room_id", member.room_id) != member.room_id:
            return []
        return [
            self._view(other)
            for other in self.hub.others(member)
            if discovery.matches(filters, other.role, other.metadata, any_tag=any_tag)
        ]

    @staticmethod
    def _view(member: Member) -> dict[str, Any]:
        return protocol.peer_view(member.peer_id, member.role, member.metadata, member.connected_at)

    # Registration ------------------------------------------------------------------

    async def _register(self, session: Session, message: protocol.Register, data: dict[str, Any]) -> None:
        if session.member is None:
            session.profile = compat.profile_of(data)
        session.registering = True
        try:
            if session.member is not None and session.profile is compat.Profile.SUCCESSOR:
                outcome = await self._register_again(session, session.member, message)
            else:
                outcome = await self._do_register(session, message)
        except (SignalingError, RepositoryError) as exc:
            code = as_signaling_error(exc).code.value
            self.metrics.registrations.labels(code).inc()
            log.info("registration_refused", code=code, room_id=message.room_id, remote_ip=session.remote_ip)
            raise
        finally:
            session.registering = False
        self.metrics.registrations.labels(outcome).inc()

    async def _do_register(self, session: Session, message: protocol.Register) -> str:
        """Register the socket's peer; the outcome label ('ok', 'resumed', or 'abandoned'
        if the socket left meanwhile)."""
        if session.member is not None:
            raise AlreadyRegistered()
        if self.closing:
            raise ServerBusy("server is shutting down; reconnect")
        self._check_metadata(message.metadata)
        self._ip_limiter.enforce(session.remote_ip, "registrations from this address")
        identity = await self.verifier.verify(message.id_token)
        if message.resume_token is not None:
            return await self._resume(session, message, identity.sub)
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
        elsewhere = await self._serving_node(room, now)
        if elsewhere is not None:
            return self._redirect(session, elsewhere, room.room_id, message.id)

        if self.hub.get(message.room_id, message.peer_id) is None:
            # A session a previous process saved for this peer id (ours, or lapsed) ends now.
            previous = await self.repository.load_session(message.room_id, message.peer_id, whole=False)
            ours = previous is not None and (previous.peer.owner_sub == identity.sub or previous.peer.expires_at <= now)
            if previous is not None and ours and await self.repository.drop_session(previous):
                self._spawn(self._settle_saved(previous, left=previous.peer.owner_sub != identity.sub))
        if not session.link.is_open():  # the socket left while we checked: claim nothing
            return "abandoned"
        reservation = self.hub.reserve(message.room_id, message.peer_id, identity.sub)
        resume_token = new_room_token()
        member = Member(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=identity.sub,
            owner_username=identity.username,
            link=session.link,
            connection_id=session.link.connection_id,
            connected_at=int(now),
            room_expires_at=room.expires_at,
            role=message.role,
            metadata=message.metadata,
            resume_hashes=(hash_room_token(resume_token),),
            waiting=[],  # until the messages held for it are read
        )
        connection_id = member.connection_id
        try:
            await self.repository.claim_peer(self._record(member, now), now=int(now))
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

        replaced = self._seat(session, reservation, member, now)
        if replaced is not None:
            for timer in replaced.timers.values():
                timer.cancel()
            self._close(replaced.link, CloseCode.REPLACED)
            self._settle_departed(replaced, "replaced")
        structlog.contextvars.bind_contextvars(room_id=member.room_id, peer_id=member.peer_id)
        log.info("peer_registered", takeover=replaced is not None)
        others = self.hub.others(member)
        self._send_registered(session, member, message, resume_token, now)
        joined = protocol.peer_joined(self._view(member))
        for other in others:
            self._push(other, joined, kind="peer_joined")
        await self._open_inbox(member)
        return "ok"

    def _send_registered(
        self, session: Session, member: Member, message: protocol.Register, resume_token: str, now: float
    ) -> None:
        """``registered_auth`` for a new registration (after ``admin_conflict``, if its admin
        claim was refused), with the successor's extras for a successor's client."""
        others = self.hub.others(member)
        ice = self._ice(member, now)
        extras: dict[str, Any] | None = None
        if member.profile is compat.Profile.SUCCESSOR:
            admin = self.hub.admin_of(member.room_id)
            if message.is_admin:
                admin = self.hub.claim_admin(member)
                if admin != member.peer_id:
                    session.link.send(protocol.admin_conflict(member.room_id, admin))
            extras = {
                "admin_peer_id": admin,
                "peer_list": [other.peer_id for other in others],
                "peer_metadata": {other.peer_id: other.metadata for other in others},
                "mesh_ice_servers": compat.mesh_ice_servers(ice["ice_servers"]),
            }
        session.link.send(
            protocol.registered_auth(
                member.room_id,
                message.token,
                member.peer_id,
                peers=[self._view(other) for other in others],
                ice=ice,
                resume_token=resume_token,
                correlation_id=message.id,
                last_seq=member.seq,  # 0 when new; a second register's numbering goes on
                extras=extras,
            )
        )

    async def _register_again(self, session: Session, member: Member, message: protocol.Register) -> str:
        """The successor's second ``register`` on a registered socket (a worker announcing
        itself admin, or discoverable again after a job): the same peer in the same room, by
        the same identity, with the room's token. Its metadata is replaced (the room
        hears ``metadata_updated``), its admin claim is judged, and ``registered_auth`` answers.
        A change of role is refused: the role is what others discovered it by."""
        if (message.room_id, message.peer_id) != (member.room_id, member.peer_id):
            raise AlreadyRegistered("this connection is registered as another peer or in another room")
        if message.role != member.role:
            raise AlreadyRegistered(f"this connection is registered with role {member.role!r}")
        # Budgeted as a registration, before the identity check and the room read it causes.
        self._check_metadata(message.metadata)
        self._ip_limiter.enforce(session.remote_ip, "registrations from this address")
        self._charge_fan_out(session, len(self.hub.others(member)), "a register again")
        identity = await self.verifier.verify(message.id_token)
        if identity.sub != member.owner_sub:
            raise AlreadyRegistered("this connection is registered by another identity")
        try:
            room = await self.repository.get_room(message.room_id)
        except NotFound:
            raise RoomNotFound() from None
        if not room_token_matches(message.token, room.token_hash):
            self._room_limiter.enforce(message.room_id, "failed registrations in this room")
            raise InvalidRoomToken()
        await self._update_metadata(member, message.metadata, merge=False)
        resume_token = new_room_token()
        member.resume_hashes = (hash_room_token(resume_token), *member.resume_hashes[:1])
        log.info("peer_registered_again", room_id=member.room_id, peer_id=member.peer_id)
        self._send_registered(session, member, message, resume_token, self._clock())
        return "ok"

    def _seat(self, session: Session, reservation: Reservation, member: Member, now: float) -> Member | None:
        """Seat ``member`` on ``session``'s socket: in the hub, its room watched for saved
        sessions, due to leave when the room expires. The member it replaced, if any."""
        replaced = self.hub.commit(reservation, member)
        self._watch(member.room_id)
        self._attach(session, member)
        member.timers["room_expiry"] = asyncio.get_running_loop().call_later(
            max(0.0, member.room_expires_at - now), self._room_expired, member
        )
        return replaced

    def _redirect(self, session: Session, node: RelayNode, room_id: str, correlation_id: str | int | None) -> str:
        if compat.receives(session.profile, "redirect"):  # a v1 client is closed (4502), no more
            session.link.send(protocol.redirect(node.ws_url, node.node_id, correlation_id))
        self._close(session.link, CloseCode.REDIRECTED)
        log.info("peer_redirected", room_id=room_id, node_id=node.node_id)
        return "redirected"

    async def _serving_node(self, room: Room, now: float) -> RelayNode | None:
        """The live node other than this one that serves ``room``, if any. A node with a public
        URL takes a room of no node, or of a node that stopped heartbeating, by a write
        conditional on the previous owner: of two nodes that try, one wins and the other
        redirects to it. A node peers cannot be sent to serves such rooms without taking them."""
        me = self.settings.node_id
        for _ in range(3):
            if room.node_id == me:
                return None
            if room.node_id:
                nodes = await self.repository.relay_nodes()
                owner = next((node for node in nodes if node.node_id == room.node_id), None)
                if owner is not None and owner.is_live(now) and owner.ws_url:
                    return owner
            if not self.settings.public_ws_url:
                return None
            try:
                await self.repository.move_room(room.room_id, from_node=room.node_id, to_node=me)
            except ConditionFailed:  # another node moved it first (or the room is gone): look again
                try:
                    room = await self.repository.get_room(room.room_id)
                except NotFound:
                    raise RoomNotFound("room was deleted") from None
                continue
            log.info("room_taken_over", room_id=room.room_id, from_node=room.node_id or None)
            return None
        raise ServerBusy("the room is changing relay nodes; retry")

    async def _resume(self, session: Session, message: protocol.Register, sub: str) -> str:
        """Reattach a detached (or half-open) member: no leave or join for the room, and
        everything after the client's ``last_seq`` is sent again, in order.

        The routing entry is written first; the member changes only after the write, once
        it is certain that nothing moved meanwhile, so a failed resume changes nothing.
        """
        token = message.resume_token or ""
        member = self.hub.get(message.room_id, message.peer_id)
        if member is None:
            return await self._resume_saved(session, message, sub)
        if member.owner_sub != sub or not any(room_token_matches(token, known) for known in member.resume_hashes):
            raise ResumeFailed("no session to resume here: register without resume_token")
        if member.resuming:
            raise ResumeFailed("this session is being resumed from another connection")
        if member.missed_since(message.last_seq) is None:
            raise ResumeFailed(f"frames after seq {message.last_seq} are no longer kept: register again")
        if not session.link.is_open():
            return "abandoned"
        now = self._clock()
        record = replace(self._record(member, now), connection_id=session.link.connection_id)
        hashes = member.resume_hashes
        member.resuming = True
        try:
            await self.repository.claim_peer(record, now=int(now))
        except (ConditionFailed, NotFound) as exc:
            raise ResumeFailed("the session's room or routing entry is gone: register again") from exc
        except Exception:
            await self._restore(member, now)  # our write may have landed: put the holder's back
            raise
        finally:
            member.resuming = False
        missed = member.missed_since(message.last_seq)
        moved = not self.hub.is_current(member) or member.resume_hashes != hashes
        if moved or missed is None or not session.link.is_open():
            # The member left, was taken over, resumed elsewhere, or was sent (and confirmed)
            # more than the client saw, while we wrote: undo our write, change nothing.
            if self.hub.is_current(member):
                await self._restore(member, now)
            else:
                await self._release_quietly(member.room_id, member.peer_id, record.connection_id)
            if not session.link.is_open():
                return "abandoned"
            raise ResumeFailed("the session changed while resuming: register again")

        # From here on nothing awaits: no frame can slip between registered_auth and the replay.
        previous = member.link
        member.connection_id = record.connection_id
        self._attach(session, member)
        if previous is not None:  # a half-open socket the client gave up on
            self._close(previous, CloseCode.REPLACED)
        resume_token = new_room_token()
        member.resume_hashes = (hash_room_token(resume_token), *hashes[:1])
        self._confirmed(member, message.last_seq)  # the client says it has these
        structlog.contextvars.bind_contextvars(room_id=member.room_id, peer_id=member.peer_id)
        log.info("peer_resumed", replayed=len(missed))
        self._send_resumed(session, member, message, resume_token, missed, now)
        return "resumed"

    async def _resume_saved(self, session: Session, message: protocol.Register, sub: str) -> str:
        """Resume a session a previous relay process saved when it shut down: the peer comes
        back with its seq, the frames it had not confirmed and what they settle."""
        token = message.resume_token or ""
        try:
            room = await self.repository.get_room(message.room_id)
        except NotFound:
            raise ResumeFailed("the session's room is gone: register again") from None
        if not room_token_matches(message.token, room.token_hash):
            raise InvalidRoomToken()
        # The session lives (or was saved) where the room is served: resume there.
        elsewhere = await self._serving_node(room, self._clock())
        if elsewhere is not None:
            return self._redirect(session, elsewhere, room.room_id, message.id)
        saved = await self.repository.load_session(message.room_id, message.peer_id)
        if saved is None:
            return await self._recover(session, message, sub, room)
        now = self._clock()
        if (
            saved.peer.owner_sub != sub
            or saved.peer.expires_at <= now
            or not any(room_token_matches(token, known) for known in saved.resume_hashes)
        ):
            raise ResumeFailed("no session to resume here: register without resume_token")
        oldest = saved.frames[0][0] if saved.frames else saved.seq + 1
        if message.last_seq > saved.seq or message.last_seq + 1 < oldest:
            raise ResumeFailed(f"frames after seq {message.last_seq} are no longer kept: register again")
        if not session.link.is_open():
            return "abandoned"
        resume_token = new_room_token()
        member = Member(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=sub,
            owner_username=saved.peer.owner_username,
            link=session.link,
            connection_id=session.link.connection_id,
            connected_at=saved.peer.connected_at,
            room_expires_at=room.expires_at,
            role=saved.peer.role,
            metadata=saved.peer.metadata,
            resume_hashes=(hash_room_token(resume_token), *saved.resume_hashes[:1]),
            session_id=saved.session_id,
            in_flight=set(saved.in_flight),
            seq=saved.seq,
            waiting=[],  # frames for it wait behind the replay and what is held for it
        )
        answers = set(saved.answers)
        for seq, frame in saved.frames:
            member.unconfirmed.append((seq, frame))
            member.unconfirmed_bytes += len(frame)
            if seq in answers:
                member.answers.append((seq, len(frame)))
                member.answers_bytes += len(frame)
        member.owed.extend((seq, Owed.from_json(owed)) for seq, owed in saved.owed)
        reservation = self.hub.reserve(message.room_id, message.peer_id, sub)
        try:
            await self.repository.take_session(self._record(member, now), saved, now=int(now))
        except (ConditionFailed, NotFound) as exc:
            self.hub.cancel(reservation)
            raise ResumeFailed("the session was resumed elsewhere or its room is gone: register again") from exc
        except Exception:
            self.hub.cancel(reservation)
            # The write may have landed: then the session is spent and must end properly.
            self._spawn(self._settle_if_taken(saved, member.connection_id))
            raise
        except BaseException:
            self.hub.cancel(reservation)
            raise
        if not session.link.is_open():
            # Gone during the write: the saved session is spent; it ends (the client registers anew).
            self.hub.cancel(reservation)
            await self._release_quietly(member.room_id, member.peer_id, member.connection_id)
            self._spawn(self._settle_saved(saved, left=True))
            return "abandoned"
        self._seat(session, reservation, member, now)
        held = [owed.held_key for _, owed in member.owed if owed.held_key is not None]
        try:
            if held:
                await self.mailbox.claim(member.room_id, held)
        except RepositoryError as exc:  # unclaimed, they may be delivered twice: at least once
            log.warning("held_claim_failed", room_id=member.room_id, error=type(exc).__name__)
        missed = member.missed_since(message.last_seq) or []
        self._confirmed(member, message.last_seq)
        structlog.contextvars.bind_contextvars(room_id=member.room_id, peer_id=member.peer_id)
        log.info("peer_resumed", replayed=len(missed), saved=True)
        self._send_resumed(session, member, message, resume_token, missed, now)
        await self._open_inbox(member)
        return "resumed"

    async def _recover(self, session: Session, message: protocol.Register, sub: str, room: Room) -> str:
        """Resume a session whose relay process died without saving it (SIGKILL, a lost host):
        its routing entry is still there, of this identity, left by a process that is gone
        (this node's previous one, or a node whose heartbeat lapsed and whose room this node
        took over). Nothing can be replayed: numbering goes on after the client's ``last_seq``;
        what the dead process had not confirmed is sent again by its senders (whose acks never
        came) or is still held in the table; a message that arrives twice carries the same
        ``message_id`` and the client drops the second. Without the resume token, which only
        the dead process knew, the identity vouches: as it would for registering the peer id
        afresh."""
        now = self._clock()
        entry = await self.repository.peer_entry(message.room_id, message.peer_id)
        if entry is None or entry.saved or entry.owner_sub != sub or entry.expires_at <= now:
            raise ResumeFailed("no session to resume here: register without resume_token")
        if entry.node_id != self.settings.node_id:
            nodes = await self.repository.relay_nodes()
            holder = next((node for node in nodes if node.node_id == entry.node_id), None)
            if holder is not None and holder.is_live(now):  # it still holds (or saves) the session
                raise ResumeFailed("the session is held by another relay node: register without resume_token")
        if not session.link.is_open():
            return "abandoned"
        resume_token = new_room_token()
        member = Member(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=sub,
            owner_username=entry.owner_username,
            link=session.link,
            connection_id=session.link.connection_id,
            connected_at=entry.connected_at,
            room_expires_at=room.expires_at,
            role=entry.role,
            metadata=entry.metadata,
            resume_hashes=(hash_room_token(resume_token),),
            seq=message.last_seq,
            waiting=[],  # live frames for it wait behind what is held for it
        )
        if entry.session_id:
            member.session_id = entry.session_id
        reservation = self.hub.reserve(message.room_id, message.peer_id, sub)
        if self.hub.get(message.room_id, message.peer_id) is not None:  # registered meanwhile
            self.hub.cancel(reservation)
            raise ResumeFailed("the peer registered again meanwhile: register without resume_token")
        # On any failure the entry is left as it is (ours if the write landed): the client's
        # next resume recovers from it all the same.
        try:
            await self.repository.recover_peer(
                self._record(member, now), from_connection=entry.connection_id, now=int(now)
            )
        except (ConditionFailed, NotFound) as exc:
            self.hub.cancel(reservation)
            raise ResumeFailed("the session changed meanwhile or its room is gone: register again") from exc
        except BaseException:
            self.hub.cancel(reservation)
            raise
        if not session.link.is_open():
            self.hub.cancel(reservation)
            return "abandoned"
        self._seat(session, reservation, member, now)
        structlog.contextvars.bind_contextvars(room_id=member.room_id, peer_id=member.peer_id)
        log.info("peer_recovered", from_node=entry.node_id)
        others = self.hub.others(member)
        session.link.send(
            protocol.registered_auth(
                member.room_id,
                message.token,
                member.peer_id,
                peers=[self._view(other) for other in others],
                ice=self._ice(member, now),
                resume_token=resume_token,
                correlation_id=message.id,
                resumed=True,
                last_seq=member.seq,
                recovered=True,
            )
        )
        # The peers already here lost it with the dead node (their lists came from this one).
        joined = protocol.peer_joined(self._view(member))
        for other in others:
            self._push(other, joined, kind="peer_joined")
        await self._open_inbox(member)
        return "resumed"

    def _send_resumed(
        self,
        session: Session,
        member: Member,
        message: protocol.Register,
        resume_token: str,
        missed: list[tuple[int, str]],
        now: float,
    ) -> None:
        """``registered_auth`` (resumed) and then every frame the client missed, in order."""
        session.link.send(
            protocol.registered_auth(
                member.room_id,
                message.token,
                member.peer_id,
                peers=[self._view(other) for other in self.hub.others(member)],
                ice=self._ice(member, now),
                resume_token=resume_token,
                correlation_id=message.id,
                resumed=True,
                last_seq=member.seq,
            ),
            replay=True,
        )
        for seq, frame in missed:
            session.link.send(frame, seq=seq, replay=True)

    async def _settle_if_taken(self, saved: SavedSession, connection_id: str) -> None:
        """After a failed take of ``saved``: if the write landed after all, end the session."""
        try:
            entry = await self.repository.peer_entry(saved.peer.room_id, saved.peer.peer_id)
        except RepositoryError:
            return  # its senders are not told; the entry expires with its lease
        if entry is not None and entry.connection_id == connection_id:
            await self._release_quietly(saved.peer.room_id, saved.peer.peer_id, connection_id)
            await self._settle_saved(saved, left=True)

    def _watch(self, room_id: str) -> None:
        """Once per room: find the sessions a previous process saved in it, so that those
        nobody resumes end properly (``peer_left``, their senders told)."""
        if room_id not in self._watched:
            self._watched.add(room_id)
            self._spawn(self._watch_saved(room_id))

    async def _watch_saved(self, room_id: str) -> None:
        now = self._clock()
        try:
            peers = await self.repository.list_peers(room_id, now=now, include_expired=True)
        except RepositoryError as exc:
            log.warning("saved_sessions_unknown", room_id=room_id, error=type(exc).__name__)
            self._watched.discard(room_id)
            return
        for record in peers:
            if record.saved and self.hub.get(room_id, record.peer_id) is None:
                self._lapse_at(record, record.expires_at - now)

    def _lapse_at(self, record: PeerRecord, delay: float) -> None:
        def due() -> None:
            self._lapses.discard(timer)
            self._spawn(self._saved_lapsed(record))

        timer = asyncio.get_running_loop().call_later(max(0.0, delay), due)
        self._lapses.add(timer)

    async def _saved_lapsed(self, record: PeerRecord) -> None:
        """A saved session's window is over: unless it was resumed, its peer has left."""
        if self.closing or self.hub.get(record.room_id, record.peer_id) is not None:
            return
        try:
            saved = await self.repository.load_session(record.room_id, record.peer_id, whole=False)
            if saved is None or saved.peer.connection_id != record.connection_id:
                return  # resumed or registered again, here or elsewhere
            if saved.peer.expires_at > self._clock():
                self._lapse_at(record, saved.peer.expires_at - self._clock())
                return
            if not await self.repository.drop_session(saved):
                return
        except RepositoryError as exc:  # the entry expires on its own; try once more later
            log.warning("saved_session_lapse_failed", room_id=record.room_id, error=type(exc).__name__)
            self._lapse_at(record, self.settings.resume_window_seconds)
            return
        await self._settle_saved(saved, left=True)

    async def _settle_saved(self, saved: SavedSession, *, left: bool) -> None:
        """A saved session that will not be resumed: what it had not received never will be.
        Its senders are told; held messages in it are held again (their claim lapses)."""
        room_id, peer_id = saved.peer.room_id, saved.peer.peer_id
        log.info("saved_session_ended", room_id=room_id, peer_id=peer_id, left=left)
        for _, data in saved.owed:
            owed = Owed.from_json(data)
            if owed.held_key is None:
                self._fail(room_id, peer_id, owed)
        if left:
            frame = protocol.peer_left(peer_id, "timeout")
            for member in self.hub.in_room(room_id):
                self._push(member, frame, kind="peer_left")
        await self.repository.delete_session_frames(saved)

    def _attach(self, session: Session, member: Member) -> None:
        self._registered_once(session)
        session.member = member
        member.profile = session.profile
        member.link = session.link
        session.link.on_confirm = lambda seq: self._confirmed(member, seq)
        detached = member.timers.pop("detached", None)
        if detached is not None:
            detached.cancel()

    def _ice(self, member: Member, now: float) -> dict[str, Any]:
        """ICE servers for ``member``, with a refresh scheduled before the credentials expire."""
        ice = turn.ice_servers(self.settings, turn.identity_tag(member.owner_sub), now)
        previous = member.timers.pop("ice", None)
        if previous is not None:
            previous.cancel()
        if self.settings.turn_urls and self.settings.turn_secrets:
            member.timers["ice"] = asyncio.get_running_loop().call_later(
                ice["ttl"] * ICE_REFRESH_AT, self._refresh_ice, member
            )
        return ice

    def _refresh_ice(self, member: Member) -> None:
        if self.hub.is_current(member):
            self._push(member, protocol.ice_servers(self._ice(member, self._clock())), kind="ice_servers")

    def _record(self, member: Member, now: float) -> PeerRecord:
        """The routing-table entry of ``member`` with a fresh lease."""
        return PeerRecord(
            room_id=member.room_id,
            peer_id=member.peer_id,
            owner_sub=member.owner_sub,
            owner_username=member.owner_username,
            connection_id=member.connection_id,
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

    def _lease_end(self, now: float, room_expires_at: int) -> int:
        return min(room_expires_at, int(now) + self.settings.peer_lease_seconds)

    def _room_expired(self, member: Member) -> None:
        if self.hub.is_current(member):
            self._end(member, CloseCode.ROOM_EXPIRED, "room_expired")

    def _end(self, member: Member, code: CloseCode, reason: str) -> None:
        """End a member's session for good: close its socket (if any) and leave the room."""
        self._close(member.link, code)
        member.link = None
        member.gone = True  # nothing more is delivered to it
        self._spawn(self._leave(member, reason))

    # Leases ------------------------------------------------------------------------

    async def refresh_leases(self) -> None:
        """Extend every live member's routing entry; close those whose room or entry is gone.

        This is how a room's deletion through rooms-api reaches the relay: within a third
        of the lease (40 s by default), its peers are closed with 4003.
        """
        now = self._clock()
        limit = asyncio.Semaphore(LEASE_REFRESH_CONCURRENCY)
        gone: dict[str, asyncio.Task[bool]] = {}  # room -> whether it was deleted (one read per room)

        async def deleted(room_id: str) -> bool:
            if room_id not in gone:
                gone[room_id] = asyncio.ensure_future(self.repository.was_deleted(room_id))
            try:
                return await asyncio.shield(gone[room_id])
            except RepositoryError:
                return True  # unknown: the creator's deletion is the likely one

        async def refresh(member: Member) -> None:
            async with limit:
                if member.resuming:
                    return  # the resume writes the entry itself
                record = self._record(member, now)
                try:
                    await self.repository.refresh_peer(
                        record.room_id, record.peer_id, record.connection_id, record.expires_at
                    )
                except NotFound:
                    if await deleted(member.room_id):
                        if self.hub.is_current(member):
                            self._end(member, CloseCode.ROOM_DELETED, "room_deleted")
                    elif self.hub.is_current(member):  # lost in a storage fault, or expired
                        code, reason = (
                            (CloseCode.ROOM_EXPIRED, "room_expired")
                            if member.room_expires_at <= self._clock()
                            else (CloseCode.ROOM_LOST, "room_lost")
                        )
                        self._end(member, code, reason)
                except ConditionFailed:
                    # Taken over elsewhere; unless it was our own resume that moved the entry.
                    if self.hub.is_current(member) and member.connection_id == record.connection_id:
                        self._end(member, CloseCode.REPLACED, "replaced")
                except RepositoryError as exc:
                    log.warning("lease_refresh_failed", room_id=member.room_id, error=type(exc).__name__)

        await asyncio.gather(*(refresh(m) for m in list(self.hub.members())))

    # Shutdown ----------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new registrations, and tell every peer to go away and come back later:
        ``go_away`` with a jittered ``reconnect_after_ms``, so they do not return at once."""
        self.closing = True
        if not self.sessions:
            self.drained.set()
        drain_ms = int(self.settings.drain_seconds * 1000)
        for session in list(self.sessions):
            frame = protocol.go_away("SERVER_SHUTDOWN", drain_ms + secrets.randbelow(self.settings.drain_jitter_ms + 1))
            self._reply(session, frame, kind="go_away")

    async def _finish_tasks(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def save_sessions(self) -> None:
        """At shutdown, once every socket is closed: leave each member's session in the
        table for the resume window, so that it resumes on the next process losing nothing.
        A member whose session cannot be saved leaves (its senders were told already)."""
        # Nothing may change a member once its snapshot is taken: stop every timer and
        # let what is under way (expiries, leaves) finish first.
        for member in self.hub.members():
            for timer in member.timers.values():
                timer.cancel()
        await self._finish_tasks()  # with the mailbox open: they may hold answers
        await self.mailbox.close()
        await self._finish_tasks()
        for lapse in self._lapses:
            lapse.cancel()
        now = self._clock()
        limit = asyncio.Semaphore(LEASE_REFRESH_CONCURRENCY)

        async def save(member: Member) -> None:
            expires_at = min(member.room_expires_at, int(now + self.settings.resume_window_seconds))
            saved = SavedSession(
                peer=replace(self._record(member, now), expires_at=expires_at),
                session_id=member.session_id,
                resume_hashes=member.resume_hashes,
                seq=member.seq,
                frames=list(member.unconfirmed),
                owed=[(seq, owed.to_json()) for seq, owed in member.owed],
                answers=[seq for seq, _ in member.answers],
                in_flight=sorted(member.in_flight, key=str),
            )
            held = [owed.held_key for _, owed in member.owed if owed.held_key is not None]
            async with limit:
                for attempt in range(SAVE_ATTEMPTS):
                    try:
                        if held:  # in this session now: no process may expire them meanwhile
                            await self.repository.claim_messages(member.room_id, held, expires_at * 1000)
                        await self.repository.save_session(saved)
                        return
                    except RepositoryError as exc:
                        log.warning("session_save_failed", room_id=member.room_id, error=type(exc).__name__)
                        if attempt + 1 < SAVE_ATTEMPTS:
                            await asyncio.sleep(0.5 * 2**attempt)
                # Lost: its entry is released; what it owed is not reported (logged above).
                await self._release_quietly(member.room_id, member.peer_id, member.connection_id)

        members = [m for m in self.hub.members() if not m.gone]
        await asyncio.gather(*(save(m) for m in members))
        log.info("sessions_saved", count=len(members))
