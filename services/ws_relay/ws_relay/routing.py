"""A message for one peer of the room: found, sent, or held for it if it is not there yet.

With an id, a message is acked once its target confirms receipt (``ledger``), or acked
``queued`` once held. Each hold is a write (and later a delete) in DynamoDB: an identity
may hold only so many per minute. A target that has not confirmed most of what it was
sent is busy: the message is refused (``PEER_BUSY``) and its sender may send it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from signaling_shared.errors import (
    DeliveryFailed,
    InvalidMessage,
    PeerBusy,
    PeerNotFound,
    SenderMismatch,
    UnsupportedByPeer,
)
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.settings import RelaySettings
from ws_relay import compat, frames, protocol
from ws_relay.connections import Connection
from ws_relay.hub import Hub, Member, Owed
from ws_relay.ledger import Ledger
from ws_relay.metrics import RelayMetrics


class Router:
    def __init__(
        self, settings: RelaySettings, hub: Hub, ledger: Ledger, metrics: RelayMetrics, *, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.ledger = ledger
        self.metrics = metrics
        self._clock = clock
        self._hold_limiter = KeyedRateLimiter.per_minute(settings.queue_holds_per_minute, settings.queue_hold_burst)

    def direct(
        self,
        connection: Connection,
        member: Member,
        message: protocol.DirectMessage,
        data: dict[str, Any],
        started: float,
    ) -> Awaitable[None] | None:
        """Send ``message`` to its target now; or, if the target is not in the room yet and
        the message has an id, return the hold (acked ``queued``) to await."""
        kind: str = message.type
        if isinstance(message, protocol.PeerMessage):
            to_peer_id = message.to_peer_id
            frame = frames.peer_message(member.peer_id, to_peer_id, message.payload, message.id)
        elif isinstance(message, protocol.MeshConnect | protocol.MeshAnswer | protocol.IceCandidate):
            to_peer_id = message.target_peer_id
            kind = frames.MESH_RELAYED_AS[message.type]
            frame = frames.mesh_frame(message, member.peer_id)
        else:
            if message.sender is not None and message.sender != member.peer_id:
                raise SenderMismatch(f"sender must be {member.peer_id!r}, the peer registered on this connection")
            to_peer_id = message.target
            if isinstance(message, protocol.PeerError):
                kind = compat.PEER_ERROR_KIND  # not the relay's error: never for a v1 peer
                frame = frames.peer_error_frame(data, member.peer_id, message.id)
            else:
                frame = frames.relayed_frame(data, member.peer_id, message.id)
        if message.ttl_seconds is not None and message.ttl_seconds > self.settings.queue_ttl_max_seconds:
            raise InvalidMessage(f"ttl_seconds: at most {self.settings.queue_ttl_max_seconds}")
        if message.ttl_seconds is not None and message.ttl_seconds < self.settings.queue_ttl_min_seconds:
            raise InvalidMessage(f"ttl_seconds: at least {self.settings.queue_ttl_min_seconds}")
        if message.id is not None and message.id in member.in_flight:
            return None  # sent again after a resume: already on its way, its outcome will come
        target = self.hub.get(member.room_id, to_peer_id)
        if target is None and message.id is not None:
            return self._hold_or_send(connection, member, message, kind, frame, to_peer_id, started)
        self._send(connection, member, message, kind, frame, to_peer_id, target, started)
        return None

    async def _hold_or_send(
        self,
        connection: Connection,
        member: Member,
        message: protocol.DirectMessage,
        kind: str,
        frame: str,
        to_peer_id: str,
        started: float,
    ) -> None:
        assert message.id is not None
        if await self._hold(member, to_peer_id, message.id, message.ttl_seconds, frame):
            self.metrics.held.labels("held").inc()
            self.ledger.reply(connection, frames.ack(message.id, queued=True), kind="ack")
            return
        target = self.hub.get(member.room_id, to_peer_id)  # it registered while we checked
        self._send(connection, member, message, kind, frame, to_peer_id, target, started)

    def _send(
        self,
        connection: Connection,
        member: Member,
        message: protocol.DirectMessage,
        kind: str,
        frame: str,
        to_peer_id: str,
        target: Member | None,
        started: float,
    ) -> None:
        if target is None:
            if message.id is None and isinstance(message, protocol.IceCandidate | protocol.PeerError):
                return  # as the successor: a candidate or error for a peer gone is dropped, not answered
            raise PeerNotFound(f"peer {to_peer_id!r} is not in this room")
        if not compat.receives(target.profile, kind):
            raise UnsupportedByPeer(f"peer {target.peer_id!r} is a v1 (seed) client: it cannot receive {kind!r}")
        # Refused, not kept: memory stays bounded. Only a v2 sender's message with an id: the
        # seed's clients and the successor's know no PEER_BUSY and could not tell which
        # message it is about; theirs are kept as before, up to the whole buffer (overflow).
        if message.id is not None and member.profile is compat.Profile.V2 and self.ledger.busy(target, frame):
            raise PeerBusy(f"peer {target.peer_id!r} has not confirmed the messages it has yet: send again shortly")
        # Its receipt acks it (with an id); if it never arrives, the sender is told (v1 too).
        owed = Owed(member.peer_id, member.session_id, message.id)
        if not self.ledger.push(target, frame, started, owed, kind=kind):
            raise DeliveryFailed(f"peer {target.peer_id!r} cannot take more messages")
        if message.id is not None:
            member.in_flight.add(message.id)

    async def _hold(
        self, member: Member, to_peer_id: str, correlation_id: str | int, ttl_seconds: int | None, frame: str
    ) -> bool:
        self._hold_limiter.enforce(member.owner_sub, "messages held by this identity")
        mailbox = self.ledger.mailbox
        lifetime_ms = mailbox.lifetime_ms(ttl_seconds)
        return await mailbox.hold(
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
