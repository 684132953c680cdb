"""Room membership and routing on one relay node. Pure: no I/O, no clock, no asyncio.

A ``Member`` is a peer's place in a room. It outlives its connection: when the socket
drops, the member is detached (``link`` is None) and keeps numbering and logging what
is sent to it, so a resume within the window replays exactly what the client missed.

A member is in one ``MemberState`` at a time::

    OPENING --take_waiting()--> LIVE <--detach() / attach()--> DETACHED
    OPENING, LIVE, DETACHED --begin_resume()--> RESUMING --end_resume()--> the state it left
    any state --leave()--> GONE (terminal)

OPENING: just seated, the messages held for it are being read; live frames wait behind
them (``waiting``). LIVE: attached to a link. DETACHED: its link dropped, within the resume
window. RESUMING: a resume's routing-table write is under way (from any of those three).
GONE: it left the room; nothing more is delivered to it.

A registration is two-phase because it writes the routing table in between:
``reserve`` checks the rules and holds the place (so concurrent registrations cannot
overfill a room or both take one peer id), then ``commit`` or ``cancel``. Nothing
changes for the peer already holding the id until ``commit``: a failed registration
evicts no one.
"""

from __future__ import annotations

import bisect
import enum
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from asyncio import TimerHandle

from signaling_shared.errors import PeerIdTaken, RoomFull
from ws_relay.compat import Profile
from ws_relay.frames import peer_view


class Link(Protocol):
    """One client connection as the relay logic sees it."""

    connection_id: str
    # Told the highest seq the client has certainly received (its pong arrived after it).
    on_confirm: Callable[[int], None] | None

    def is_open(self) -> bool:
        """False once the connection is closing or closed."""

    def send(
        self,
        frame: str,
        relay_started: float | None = None,
        seq: int | None = None,
        *,
        replay: bool = False,
        awaited: bool = True,
    ) -> bool:
        """Queue ``frame``; False if the connection is closing or cannot keep up.

        ``replay`` frames (a resume's, answers to what the peer sent, and what was held or
        waited for it while it opened) are owed already and bypass the outbox limit. A
        numbered frame that is not ``awaited`` (its receipt settles nothing) may be
        confirmed a little later, together with others."""

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued."""


# A frame kept until confirmed: seq, frame, whether it is an answer, and Owed's fields (or None).
Kept = tuple[int, str, bool, tuple[str | None, str | None, str | int | None, str | None] | None]


def _seq_of(kept: Kept) -> int:
    return kept[0]


@dataclass(frozen=True, slots=True)
class Owed:
    """What the confirmed receipt of a frame settles: its sender's ack, or a held message's removal.

    The sender is named (peer id and identity), not referenced, so that what is owed can be
    saved at shutdown and settled by the next process."""

    sender_peer_id: str | None = None
    sender_session: str | None = None
    correlation_id: str | int | None = None
    held_key: str | None = None

    @property
    def awaited(self) -> bool:
        """Whether something waits on the receipt: an ack, a held message's removal (not so
        for a message without an id, whose sender hears only if its target is lost)."""
        return self.correlation_id is not None or self.held_key is not None

    def to_json(self) -> dict[str, Any]:
        if self.held_key is not None:
            return {"held_key": self.held_key}
        return {"sender_peer_id": self.sender_peer_id, "sender_session": self.sender_session, "id": self.correlation_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Owed:
        if "held_key" in data:
            return cls(held_key=str(data["held_key"]))
        return cls(data.get("sender_peer_id"), data.get("sender_session"), data.get("id"))


class MemberState(enum.Enum):
    OPENING = "opening"
    LIVE = "live"
    DETACHED = "detached"
    RESUMING = "resuming"
    GONE = "gone"


@dataclass(eq=False, slots=True)
class Member:
    room_id: str
    peer_id: str
    owner_sub: str
    owner_username: str
    link: Link | None  # None while detached, waiting for a resume
    connection_id: str  # the connection that holds the routing-table entry
    connected_at: int
    room_expires_at: int
    role: str = "peer"
    metadata: dict[str, Any] = field(default_factory=dict)
    profile: Profile = Profile.V2  # what its client understands (ws_relay.compat)
    # One registration and its resumes: what is owed to this member is owed to this session,
    # not to a later registration of the same peer id (whose ids may start over).
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Hashes of the resume tokens accepted: the current one and the one before it (the
    # client may not have received the newest before its socket dropped again).
    resume_hashes: tuple[str, ...] = ()
    seq: int = 0
    # Frames sent and not yet confirmed received, oldest first: what a resume replays. One
    # plain tuple each (``Kept``: seq, frame, whether it answers the member's own message,
    # what its receipt settles). A list is cheap while empty, as for an idle peer, and tuples
    # of strings and ints are untracked by the garbage collector: under load tens of thousands
    # are kept at once, and full collections had walked each one (50-60 ms pauses).
    unconfirmed: list[Kept] = field(default_factory=list)
    unconfirmed_bytes: int = 0
    # Of those, the answers to what the member itself sent: they do not count against the
    # limits on what others may send it.
    answers_count: int = 0
    answers_bytes: int = 0
    # While OPENING (the messages held for it are read), live frames wait here behind them
    # (frame, relay start, what it settles, whether it is an answer, its type).
    waiting: list[tuple[str, float | None, Owed | None, bool, str]] | None = None
    state: MemberState = MemberState.LIVE
    # Ids of the messages this member sent that are on their way (no outcome yet): a resent
    # one (a client retransmitting after a resume) is not delivered twice.
    in_flight: set[str | int] = field(default_factory=set)
    # Timer handles owned by the service (room expiry, ICE refresh, resume window).
    timers: dict[str, TimerHandle] = field(default_factory=dict)
    # Booking (ws_relay.booking): how many leases it may be under at once; the leases on it
    # granted by this node (lease id -> expiry); the leases it holds (lease id -> peer id).
    max_claims: int = 1
    booked: dict[str, int] = field(default_factory=dict)
    holding: dict[str, str] = field(default_factory=dict)
    # Connection reports it sent (ws_relay.outcomes), per other peer id; the last outcome
    # per other peer, as kept on its routing entry (rooms-api shows them to the creator).
    reports: dict[str, int] = field(default_factory=dict)
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.waiting is not None:
            self.state = MemberState.OPENING
        elif self.link is None:
            self.state = MemberState.DETACHED

    # States ------------------------------------------------------------------------

    @property
    def gone(self) -> bool:
        return self.state is MemberState.GONE

    @property
    def resuming(self) -> bool:
        return self.state is MemberState.RESUMING

    def _settled_state(self) -> MemberState:
        if self.waiting is not None:
            return MemberState.OPENING
        return MemberState.LIVE if self.link is not None else MemberState.DETACHED

    def attach(self, link: Link) -> None:
        """Served by ``link`` from now on (a registration, or a resume's new socket)."""
        self.link = link
        if self.state is MemberState.DETACHED:
            self.state = MemberState.LIVE

    def detach(self) -> None:
        """Its link dropped: it waits for a resume (OPENING stays so: its inbox is being read)."""
        self.link = None
        if self.state is MemberState.LIVE:
            self.state = MemberState.DETACHED

    def take_waiting(self) -> list[tuple[str, float | None, Owed | None, bool, str]]:
        """The frames that waited behind the held messages, in order; OPENING is over."""
        waiting, self.waiting = self.waiting or [], None
        if self.state is MemberState.OPENING:
            self.state = self._settled_state()
        return waiting

    def begin_resume(self) -> None:
        if self.state is not MemberState.GONE:  # an ended member is not brought back
            self.state = MemberState.RESUMING

    def end_resume(self) -> None:
        if self.state is MemberState.RESUMING:
            self.state = self._settled_state()

    def leave(self) -> None:
        """GONE for good: nothing more is delivered to it."""
        self.state = MemberState.GONE

    def view(self) -> dict[str, Any]:
        """What other peers see of this member (discovery, peer_joined, metadata_updated)."""
        return peer_view(self.peer_id, self.role, self.metadata, self.connected_at)

    # Delivery ----------------------------------------------------------------------

    def stamp(self, frame: str, owed: Owed | None = None, *, answer: bool = False) -> tuple[int, str]:
        """Number a frame (an encoded JSON object) and keep it until confirmed."""
        self.seq += 1
        stamped = f'{{"seq":{self.seq},{frame[1:]}'
        self.keep(self.seq, stamped, answer=answer, owed=owed)
        return self.seq, stamped

    def keep(self, seq: int, frame: str, *, answer: bool = False, owed: Owed | None = None) -> None:
        """Keep frame ``seq`` until confirmed (just stamped, or restored from a saved session)
        with what its receipt settles."""
        fields = (
            None if owed is None else (owed.sender_peer_id, owed.sender_session, owed.correlation_id, owed.held_key)
        )
        self.unconfirmed.append((seq, frame, answer, fields))
        self.unconfirmed_bytes += len(frame)
        if answer:
            self.answers_count += 1
            self.answers_bytes += len(frame)

    def kept(self) -> tuple[int, int]:
        """Frames and bytes kept for a resume, answers left out: what the limits apply to."""
        return len(self.unconfirmed) - self.answers_count, self.unconfirmed_bytes - self.answers_bytes

    def confirm(self, seq: int) -> list[Owed]:
        """The client has received everything up to ``seq``: forget it; what that settles."""
        count = bisect.bisect_right(self.unconfirmed, seq, key=_seq_of)
        settled = []
        for index in range(count):
            _, frame, answer, owed = self.unconfirmed[index]
            self.unconfirmed_bytes -= len(frame)
            if answer:
                self.answers_count -= 1
                self.answers_bytes -= len(frame)
            if owed is not None:
                settled.append(Owed(*owed))
        del self.unconfirmed[:count]
        return settled

    def frames(self) -> list[tuple[int, str]]:
        """The frames kept, with their seq, oldest first."""
        return [(seq, frame) for seq, frame, _, _ in self.unconfirmed]

    def answer_seqs(self) -> list[int]:
        """The seqs of the kept frames that are answers."""
        return [seq for seq, _, answer, _ in self.unconfirmed if answer]

    def owed_items(self) -> list[tuple[int, Owed]]:
        """What the kept frames' receipt settles, by seq, oldest first (left on the member)."""
        return [(seq, Owed(*owed)) for seq, _, _, owed in self.unconfirmed if owed is not None]

    def held_keys(self) -> list[str]:
        """The held messages among what is owed (removed from the table once confirmed)."""
        return [owed[3] for _, _, _, owed in self.unconfirmed if owed is not None and owed[3] is not None]

    def unsettled(self) -> list[Owed]:
        """Everything still owed, taken off the member (it is leaving)."""
        owed = [Owed(*fields) for _, _, _, fields in self.unconfirmed if fields is not None]
        self.unconfirmed = [(seq, frame, answer, None) for seq, frame, answer, _ in self.unconfirmed]
        return owed

    def missed_since(self, last_seq: int) -> list[tuple[int, str]] | None:
        """The frames after ``last_seq`` (with their seq), or None if some are no longer kept."""
        if last_seq < 0 or last_seq > self.seq:
            return None
        oldest = self.unconfirmed[0][0] if self.unconfirmed else self.seq + 1
        if last_seq + 1 < oldest:
            return None
        return [(seq, frame) for seq, frame, _, _ in self.unconfirmed if seq > last_seq]


@dataclass(frozen=True, slots=True)
class Reservation:
    room_id: str
    peer_id: str
    owner_sub: str
    replaces: Member | None


@dataclass
class Hub:
    max_peers_per_room: int
    _rooms: dict[str, dict[str, Member]] = field(default_factory=dict)
    # (room, peer) -> whether the pending registration takes over a live member
    _pending: dict[tuple[str, str], bool] = field(default_factory=dict)
    # room -> the peer id of its admin (the successor's mesh: one admin worker per room)
    _admins: dict[str, str] = field(default_factory=dict)

    def reserve(self, room_id: str, peer_id: str, owner_sub: str) -> Reservation:
        """Hold ``peer_id`` in ``room_id`` for ``owner_sub`` or raise why it cannot be had.

        The same identity may take over its own peer id (the older connection is
        replaced at commit); another identity gets PeerIdTaken.
        """
        if (room_id, peer_id) in self._pending:
            raise PeerIdTaken("a registration for this peer id is in progress")
        members = self._rooms.get(room_id, {})
        current = members.get(peer_id)
        if current is not None and current.owner_sub != owner_sub:
            raise PeerIdTaken()
        arriving = sum(1 for (room, _), takeover in self._pending.items() if room == room_id and not takeover)
        if current is None and len(members) + arriving >= self.max_peers_per_room:
            raise RoomFull(f"room is full ({self.max_peers_per_room} peers)")
        self._pending[(room_id, peer_id)] = current is not None
        return Reservation(room_id, peer_id, owner_sub, current)

    def cancel(self, reservation: Reservation) -> None:
        self._pending.pop((reservation.room_id, reservation.peer_id), None)

    def commit(self, reservation: Reservation, member: Member) -> Member | None:
        """Seat ``member``; returns the member it replaced, if any."""
        self.cancel(reservation)
        members = self._rooms.setdefault(member.room_id, {})
        replaced = members.get(member.peer_id)
        members[member.peer_id] = member
        return replaced

    def leave(self, member: Member) -> bool:
        """Remove ``member`` if it still holds its place (not if it was replaced)."""
        members = self._rooms.get(member.room_id)
        if members is None or members.get(member.peer_id) is not member:
            return False
        del members[member.peer_id]
        if not members:
            del self._rooms[member.room_id]
        if self._admins.get(member.room_id) == member.peer_id:
            del self._admins[member.room_id]
        return True

    def claim_admin(self, member: Member) -> str:
        """``member`` claims to be its room's admin: granted unless another peer of the room
        holds it. The room's admin after the claim (``member``'s peer id if granted)."""
        return self._admins.setdefault(member.room_id, member.peer_id)

    def admin_of(self, room_id: str) -> str | None:
        return self._admins.get(room_id)

    def get(self, room_id: str, peer_id: str) -> Member | None:
        return self._rooms.get(room_id, {}).get(peer_id)

    def is_current(self, member: Member) -> bool:
        return self._rooms.get(member.room_id, {}).get(member.peer_id) is member

    def in_room(self, room_id: str) -> list[Member]:
        return list(self._rooms.get(room_id, {}).values())

    def others(self, member: Member) -> list[Member]:
        return [m for m in self._rooms.get(member.room_id, {}).values() if m is not member]

    def members(self) -> Iterator[Member]:
        for members in self._rooms.values():
            yield from members.values()

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def member_count(self) -> int:
        return sum(len(m) for m in self._rooms.values())
