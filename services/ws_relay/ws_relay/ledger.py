"""Per-member delivery: numbering, sending, confirmation, and what each confirmation settles.

Every frame for a member goes through ``push``: it is numbered (``seq``), kept until the
client confirms receipt (a resume replays what it missed), and what its receipt settles is
noted (``Owed``: the sender's ack, or a held message's removal). A connected member
with most of that buffer unconfirmed is ``busy``: direct messages for it are refused
(``PEER_BUSY``) until it confirms. When a member leaves without confirming, its senders
are told (``DELIVERY_FAILED``) and held messages are held again. Messages for a peer
not in the room yet are held in the ``Mailbox``; a new member reads them first
(OPENING), live frames waiting behind them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from signaling_shared.dynamo import QueuedMessage, Repository
from signaling_shared.errors import DeliveryFailed, RepositoryError
from signaling_shared.settings import RelaySettings
from ws_relay import compat, frames, protocol
from ws_relay.close_codes import CloseCode
from ws_relay.connections import Connection
from ws_relay.hub import Hub, Member, Owed
from ws_relay.mailbox import Mailbox
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay")

DEPARTED_SESSIONS_KEPT = 10_000
LOST = frozenset({"timeout", "overflow"})  # departures in which the client surely missed frames

Waiting = tuple[str, float | None, Owed | None, bool, str]


class Ledger:
    def __init__(
        self,
        settings: RelaySettings,
        hub: Hub,
        repository: Repository,
        metrics: RelayMetrics,
        *,
        clock: Callable[[], float],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        end: Callable[[Member, CloseCode, str], None],
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.metrics = metrics
        self._clock = clock
        self._spawn = spawn
        self._end = end  # a member that overflows is ended (relay.Relay.end)
        self.mailbox = Mailbox(
            settings, repository, clock=clock, on_expired=self._held_expired, sender_present=self._sender_present
        )
        # Sessions that left this process for good, newest last: nothing waits for them.
        self._departed: OrderedDict[str, None] = OrderedDict()

    # Sending -----------------------------------------------------------------------

    def push(
        self,
        member: Member,
        frame: str,
        started: float | None = None,
        owed: Owed | None = None,
        *,
        kind: str,
        answer: bool = False,
        reply: bool = False,
        flushed: bool = False,
    ) -> bool:
        """Number ``frame`` for ``member`` and send it, or keep it for a resume if detached.

        False when the member has left, or cannot hold more unconfirmed frames: then it is
        dropped from the room (``overflow``). Either way the frame is not delivered.
        ``owed`` is settled when the client confirms receipt (or fails if it never does).
        An ``answer`` (ack, expired, a failed delivery: one at most per message the member
        sent) is owed to it already and passes the buffer limits, which exist for what
        others send it; answers have a budget of their own in bytes, as large. A ``reply``
        (to a request of the member's own, an error included) is an answer for those
        limits, but not for the outbox limit. A ``flushed`` frame (held for the member, or
        waiting behind what was held) was accepted for it already, within the resume
        buffer's bound: it passes the outbox limit, which is for a reader that stops
        reading. A frame of a ``kind`` the member's client does not know (a v1 peer's:
        ``ws_relay.compat``) is not sent either.
        """
        if member.gone or not compat.receives(member.profile, kind):
            return False
        owed_already = answer or reply
        if member.waiting is not None:  # OPENING: behind the messages held for it, being read
            if not owed_already and len(member.waiting) >= self.settings.resume_buffer_messages:
                self._end(member, CloseCode.OVERFLOW, "overflow")
                return False
            member.waiting.append((frame, started, owed, owed_already, kind))
            return True
        if not owed_already:
            frames, size = member.kept()
            if frames >= self.settings.resume_buffer_messages or size + len(frame) > self.settings.resume_buffer_bytes:
                self._end(member, CloseCode.OVERFLOW, "overflow")
                return False
        elif member.answers_bytes + len(frame) > self.settings.resume_buffer_bytes:
            # Answers have a budget of their own, as large: only a client that confirms
            # almost none of them (it reads, and never answers a ping) reaches it.
            self._end(member, CloseCode.OVERFLOW, "overflow")
            return False
        seq, stamped = member.stamp(frame, owed, answer=owed_already)
        if member.link is not None:
            awaited = owed is not None and owed.awaited  # else its ping may wait for others
            member.link.send(
                stamped, started, seq, replay=answer or flushed, awaited=awaited
            )  # a slow reader is cut off
        return True

    def busy(self, member: Member, frame: str) -> bool:
        """Whether ``member`` is connected with three quarters of what may be kept for it
        unconfirmed (frames or bytes, ``frame`` included): it then takes no more direct
        messages with an id from v2 senders (they get ``PEER_BUSY``) until its client
        confirms. The last quarter is for the room's events and broadcasts. A client
        confirms in its own stream, behind what it sends, so one that sends faster than the
        relay reads it confirms late: it is refused messages for a while, not dropped. A
        member detached, or being cut off (its link closing), is never busy: what comes for
        it is kept for a resume, and past the whole buffer it leaves (``overflow``)."""
        if member.link is None or member.waiting is not None or not member.link.is_open():
            return False
        kept, size = member.kept()
        messages, limit = self.settings.resume_buffer_messages, self.settings.resume_buffer_bytes
        # A frame too large for the three quarters alone is refused only behind others: sent
        # again, it would be refused for ever.
        return kept >= messages - messages // 4 or (kept > 0 and size + len(frame) > limit - limit // 4)

    def reply(self, connection: Connection, frame: str, *, kind: str) -> None:
        """A reply on this connection: numbered once the connection holds a member; not sent
        at all if the client does not know its ``kind``. A reply (an error included) answers
        a message of the member's own: a member that sends faster than it confirms is not
        dropped for the answers to what it sent."""
        member = connection.member
        if member is not None and member.link is connection.link:
            self.push(member, frame, kind=kind, reply=True)
        elif compat.receives(connection.profile, kind):
            connection.link.send(frame)

    def to_others(self, member: Member, frame: str, *, kind: str, started: float | None = None) -> None:
        """``frame`` to every other member of ``member``'s room."""
        for other in self.hub.others(member):
            self.push(other, frame, started, kind=kind)

    # Settling ----------------------------------------------------------------------

    def confirmed(self, member: Member, seq: int) -> None:
        """``member``'s client has received every frame up to ``seq``: ack their senders."""
        held: list[str] = []
        for owed in member.confirm(seq):
            if owed.held_key is not None:
                held.append(owed.held_key)
            elif owed.correlation_id is not None:
                self.answer(member.room_id, owed, frames.ack(owed.correlation_id), kind="ack")
        if held:
            self.metrics.held.labels("delivered").inc(len(held))
            self._spawn(self.mailbox.delivered(member.room_id, held))

    def settle_departed(self, member: Member, reason: str) -> None:
        """``member`` left or was replaced: what was sent to it and not confirmed was not
        delivered. Its senders are told; held messages are held again for its next registration.

        A message without an id is reported (in the v1 shape) only when its target was lost
        (``timeout``, ``overflow``): a client that closes properly, or is replaced, may well
        have read it, and a v1 sender could not tell which message an error is about."""
        waiting = member.take_waiting()
        member.leave()
        self._departed[member.session_id] = None
        while len(self._departed) > DEPARTED_SESSIONS_KEPT:
            self._departed.popitem(last=False)
        owed = member.unsettled() + [item for _, _, item, _, _ in waiting if item is not None]
        for item in owed:
            if item.correlation_id is not None or item.held_key is not None or reason in LOST:
                self.fail(member.room_id, member.peer_id, item)

    def fail(self, room_id: str, target_peer_id: str, owed: Owed) -> None:
        """A frame someone waits on will not reach ``target_peer_id``."""
        if owed.held_key is not None:
            self.mailbox.release(room_id, [owed.held_key])
        else:
            error = DeliveryFailed(f"peer {target_peer_id!r} left before receiving the message")
            self.answer(room_id, owed, frames.error_frame(error, owed.correlation_id), kind="error")

    def answer(self, room_id: str, owed: Owed, frame: str, *, kind: str) -> None:
        """Send the outcome of a message to its sender's session: now if it is here, else
        held for it (it may be resuming here after a relay restart) for the resume window."""
        if owed.sender_peer_id is None or owed.sender_session is None:
            return
        sender = self.hub.get(room_id, owed.sender_peer_id)
        if sender is not None and sender.session_id == owed.sender_session:
            if owed.correlation_id is not None:
                sender.in_flight.discard(owed.correlation_id)
            self.push(sender, frame, kind=kind, answer=True)
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
            self.answer(room_id, owed, frame, kind=kind)

    # Held messages -----------------------------------------------------------------

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
        self.push(sender, frames.expired(message.correlation_id, message.to_peer_id), kind="expired", answer=True)

    async def open_inbox(self, member: Member, *, may_hold: bool = True) -> None:
        """Deliver what is held for a newly registered member, then what arrived meanwhile
        (``may_hold`` False: its room, as read at registration, held nothing)."""
        held = []
        try:
            held = await self.mailbox.arrived(member.room_id, member.peer_id, member.session_id, may_hold=may_hold)
        except RepositoryError as exc:  # they stay held: delivered at a later registration, or expire
            log.warning("held_read_failed", room_id=member.room_id, error=type(exc).__name__)
        finally:
            self._flush_inbox(member, held, member.take_waiting())

    def _flush_inbox(self, member: Member, held: list[QueuedMessage], waiting: list[Waiting]) -> None:
        for message in held:
            answer = bool(message.for_session)
            if answer:
                member.in_flight.discard(message.correlation_id)
            kind = compat.kind_of(protocol.frame_type(message.frame) or "error", message.frame)
            if not self.push(
                member, message.frame, owed=Owed(held_key=message.key), kind=kind, answer=answer, flushed=True
            ):
                self.mailbox.release(member.room_id, [message.key])  # held on (a v1 peer's: until it expires)
        for frame, started, owed, answer, kind in waiting:
            if not self.push(member, frame, started, owed, kind=kind, answer=answer, flushed=True) and owed is not None:
                self.fail(member.room_id, member.peer_id, owed)
        if held:
            log.info("held_delivered", count=len(held))
