"""The sources of a session, each a ``Claim``: found and checked by its ``of``, claimed by
``registration.Registrar._complete`` through the same steps.

- ``FreshClaim``: no session yet (a new registration); writes ``claim_peer``; replays
  nothing; the room hears ``peer_joined``.
- ``LiveClaim``: a member of this process (detached, or on a half-open socket); writes
  ``claim_peer``; replays after ``last_seq``; the room hears nothing.
- ``SavedClaim``: saved by the previous process at shutdown; writes ``take_session``;
  replays after ``last_seq``; the room hears nothing.
- ``OrphanClaim``: the routing entry of a process that died; writes ``recover_peer``;
  replays nothing (numbering goes on); the room hears ``peer_joined``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import structlog

from signaling_shared.auth import Identity
from signaling_shared.dynamo import PeerRecord, Repository, Room, SavedSession
from signaling_shared.errors import (
    ConditionFailed,
    NotFound,
    PeerIdTaken,
    RepositoryError,
    ResumeFailed,
    RoomNotFound,
    SignalingError,
)
from signaling_shared.tokens import hash_room_token, new_room_token, room_token_matches
from ws_relay import protocol
from ws_relay.close_codes import CloseCode
from ws_relay.cluster import Cluster
from ws_relay.connections import Connection, Connections, close_link
from ws_relay.handoff import Handoff, restored_member
from ws_relay.hub import Hub, Member, Reservation
from ws_relay.ledger import Ledger
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay")

NO_SESSION = "no session to resume here: register without resume_token"


@dataclass
class Seats:
    """What every claim works with, and how a member is seated on a connection."""

    repository: Repository
    hub: Hub
    connections: Connections
    ledger: Ledger
    cluster: Cluster
    handoff: Handoff
    metrics: RelayMetrics
    spawn: Callable[[Coroutine[Any, Any, None]], None]
    end: Callable[[Member, CloseCode, str], None]

    def seat(
        self, connection: Connection, reservation: Reservation, member: Member, now: float, room: Room | None
    ) -> Member | None:
        """Seat ``member`` on ``connection``'s socket: in the hub, its room (as read, if it was)
        watched for saved sessions, due to leave when the room expires. The member it
        replaced, if any."""
        replaced = self.hub.commit(reservation, member)
        if room is None or room.may_have_saved_sessions(now):
            self.handoff.watch(member.room_id)
        self.attach(connection, member)
        member.timers["room_expiry"] = asyncio.get_running_loop().call_later(
            max(0.0, member.room_expires_at - now), self._room_expired, member
        )
        return replaced

    def attach(self, connection: Connection, member: Member) -> None:
        self.connections.registered(connection)
        connection.member = member
        member.profile = connection.profile
        member.attach(connection.link)
        connection.link.on_confirm = lambda seq: self.ledger.confirmed(member, seq)
        detached = member.timers.pop("detached", None)
        if detached is not None:
            detached.cancel()

    def _room_expired(self, member: Member) -> None:
        if self.hub.is_current(member):
            self.end(member, CloseCode.ROOM_EXPIRED, "room_expired")


class Claim:
    """How one session is claimed; the defaults are a resume's."""

    outcome = "resumed"  # the registrations metric's label
    event = "peer_resumed"  # what the log says
    resumed = True  # registered_auth says resumed (and replays after replay_from)
    recovered = False
    announce = False  # the room hears peer_joined
    opens_inbox = True  # held messages are delivered after the reply
    replay_from: int | None = None  # the client's last_seq: confirmed, and replayed after
    now: float | None = None  # when the source was read, if its checks used that time
    room: Room | None = None  # the room as read for this claim, if it was

    def __init__(self, seats: Seats, connection: Connection, member: Member, resume_token: str) -> None:
        self.seats = seats
        self.connection = connection
        self.member = member
        self.resume_token = resume_token
        self.reservation: Reservation | None = None

    def reserve(self) -> None:
        self.reservation = self.seats.hub.reserve(self.member.room_id, self.member.peer_id, self.member.owner_sub)

    def cancel(self) -> None:
        if self.reservation is not None:
            self.seats.hub.cancel(self.reservation)

    def record(self, now: float) -> PeerRecord:
        return self.seats.cluster.record(self.member, now)

    async def write(self, now: float) -> None:
        raise NotImplementedError

    def refusal(self, exc: RepositoryError) -> SignalingError:
        """The typed error for a write refused by its condition (or a room gone)."""
        return ResumeFailed("the session changed meanwhile or its room is gone: register again")

    async def undo_failed(self, now: float) -> None:
        """After the write failed unexpectedly (it may have landed)."""

    async def undo_landed(self, now: float) -> None:
        """After the write landed, but the socket left or the session moved meanwhile."""

    def unchanged(self) -> bool:
        return True

    def may_hold_messages(self, now: float) -> bool:
        """Whether the inbox must be read. Always for a resume: the session's own messages
        that expired while it was away (kept for it past the room's mark) are reported
        then."""
        return True

    def seat(self, now: float) -> Member:
        assert self.reservation is not None
        self.seats.seat(self.connection, self.reservation, self.member, now, self.room)
        return self.member

    async def after_seat(self) -> None:
        pass

    def log_fields(self, replayed: int) -> dict[str, Any]:
        return {"replayed": replayed}

    async def _release(self) -> None:
        await self.seats.cluster.release_quietly(self.member.room_id, self.member.peer_id, self.member.connection_id)


class FreshClaim(Claim):
    outcome, event, resumed, announce = "ok", "peer_registered", False, True

    def __init__(
        self,
        seats: Seats,
        connection: Connection,
        message: protocol.Register,
        identity: Identity,
        room: Room,
        now: float,
        *,
        cached: bool = False,
    ) -> None:
        resume_token = new_room_token()
        member = Member(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=identity.sub,
            owner_username=identity.username,
            link=connection.link,
            connection_id=connection.link.connection_id,
            connected_at=int(now),
            room_expires_at=room.expires_at,
            role=message.role,
            metadata=message.metadata,
            max_claims=message.max_claims,
            resume_hashes=(hash_room_token(resume_token),),
            waiting=[],  # until the messages held for it are read
        )
        super().__init__(seats, connection, member, resume_token)
        self.now = now
        self.room = room
        # A room from the cache, not read for this registration: the claim checks it is unchanged.
        self.as_read = room if cached else None
        self.replaced: Member | None = None

    async def write(self, now: float) -> None:
        repository = self.seats.repository
        try:
            await repository.claim_peer(self.record(now), now=int(now), as_read=self.as_read)
        except ConditionFailed:
            # The id is another identity's, or its entry carries a session the previous
            # process saved: that one, if this identity's (or lapsed), ends, and we try again.
            member = self.member
            if not await self.seats.handoff.end_previous(member.room_id, member.peer_id, member.owner_sub, now):
                raise
            await repository.claim_peer(self.record(now), now=int(now), as_read=self.as_read)

    def refusal(self, exc: RepositoryError) -> SignalingError:
        return PeerIdTaken() if isinstance(exc, ConditionFailed) else RoomNotFound("room was deleted")

    def may_hold_messages(self, now: float) -> bool:
        """A new session: only messages held for its peer id matter, and the room, as read,
        says whether any can be there."""
        return self.room is None or self.room.may_hold_messages(now)

    async def undo_failed(self, now: float) -> None:
        await self._release()

    async def undo_landed(self, now: float) -> None:
        holder = self.reservation.replaces if self.reservation is not None else None
        if holder is not None and self.seats.hub.is_current(holder):
            await self.seats.cluster.restore(holder, now)
        else:
            await self._release()

    def seat(self, now: float) -> Member:
        assert self.reservation is not None
        self.replaced = self.seats.seat(self.connection, self.reservation, self.member, now, self.room)
        if self.replaced is not None:
            for timer in self.replaced.timers.values():
                timer.cancel()
            close_link(self.replaced.link, CloseCode.REPLACED, self.seats.metrics)
            self.seats.ledger.settle_departed(self.replaced, "replaced")
        return self.member

    def log_fields(self, replayed: int) -> dict[str, Any]:
        return {"takeover": self.replaced is not None}


class LiveClaim(Claim):
    """Reattach a detached (or half-open) member: no leave or join for the room. The routing
    entry is written first; the member changes only after the write, once it is certain that
    nothing moved meanwhile, so a failed resume changes nothing."""

    opens_inbox = False

    @classmethod
    def of(
        cls, seats: Seats, connection: Connection, message: protocol.Register, sub: str, member: Member
    ) -> LiveClaim:
        token = message.resume_token or ""
        if member.owner_sub != sub or not any(room_token_matches(token, known) for known in member.resume_hashes):
            raise ResumeFailed(NO_SESSION)
        if member.gone:  # ended, its leave under way
            raise ResumeFailed("the session has ended: register again")
        if member.resuming:
            raise ResumeFailed("this session is being resumed from another connection")
        if member.missed_since(message.last_seq) is None:
            raise ResumeFailed(f"frames after seq {message.last_seq} are no longer kept: register again")
        return cls(seats, connection, member, new_room_token(), message.last_seq)

    def __init__(self, seats: Seats, connection: Connection, member: Member, resume_token: str, last_seq: int) -> None:
        super().__init__(seats, connection, member, resume_token)
        self.replay_from = last_seq
        self.hashes = member.resume_hashes
        self.connection_id = connection.link.connection_id

    def reserve(self) -> None:
        self.member.begin_resume()

    def cancel(self) -> None:
        self.member.end_resume()

    def record(self, now: float) -> PeerRecord:
        return replace(super().record(now), connection_id=self.connection_id)

    async def write(self, now: float) -> None:
        try:
            await self.seats.repository.claim_peer(self.record(now), now=int(now))
        except (ConditionFailed, NotFound):
            raise
        except Exception:
            # Our write may have landed: put the holder's entry back, still RESUMING (so no
            # lease refresh or second resume acts on the member meanwhile).
            await self.seats.cluster.restore(self.member, now)
            raise
        self.member.end_resume()

    def refusal(self, exc: RepositoryError) -> SignalingError:
        return ResumeFailed("the session's room or routing entry is gone: register again")

    def unchanged(self) -> bool:
        """The member is still here and has not ended, was not resumed elsewhere, and has
        not been sent (and confirmed) more than the client saw, while we wrote."""
        member = self.member
        return (
            self.seats.hub.is_current(member)
            and not member.gone
            and member.resume_hashes == self.hashes
            and member.missed_since(self.replay_from or 0) is not None
        )

    async def undo_landed(self, now: float) -> None:
        if self.seats.hub.is_current(self.member):
            await self.seats.cluster.restore(self.member, now)
        else:
            await self.seats.cluster.release_quietly(self.member.room_id, self.member.peer_id, self.connection_id)

    def seat(self, now: float) -> Member:
        member = self.member
        previous = member.link
        member.connection_id = self.connection_id
        self.seats.attach(self.connection, member)
        if previous is not None:  # a half-open socket the client gave up on
            close_link(previous, CloseCode.REPLACED, self.seats.metrics)
        member.resume_hashes = (hash_room_token(self.resume_token), *self.hashes[:1])
        return member


class SavedClaim(Claim):
    """Resume a session the previous relay process saved when it shut down: the peer comes
    back with its seq, the frames it had not confirmed and what they settle."""

    @classmethod
    def of(
        cls,
        seats: Seats,
        connection: Connection,
        message: protocol.Register,
        sub: str,
        room: Room,
        saved: SavedSession,
        now: float,
    ) -> SavedClaim:
        token = message.resume_token or ""
        if (
            saved.peer.owner_sub != sub
            or saved.peer.expires_at <= now
            or not any(room_token_matches(token, known) for known in saved.resume_hashes)
        ):
            raise ResumeFailed(NO_SESSION)
        oldest = saved.frames[0][0] if saved.frames else saved.seq + 1
        if message.last_seq > saved.seq or message.last_seq + 1 < oldest:
            raise ResumeFailed(f"frames after seq {message.last_seq} are no longer kept: register again")
        resume_token = new_room_token()
        member = Member(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=sub,
            owner_username=saved.peer.owner_username,
            link=connection.link,
            connection_id=connection.link.connection_id,
            connected_at=saved.peer.connected_at,
            room_expires_at=room.expires_at,
            role=saved.peer.role,
            metadata=saved.peer.metadata,
            max_claims=saved.peer.max_claims,
            connections=dict(saved.peer.connections),
            resume_hashes=(hash_room_token(resume_token), *saved.resume_hashes[:1]),
            session_id=saved.session_id,
            in_flight=set(saved.in_flight),
            seq=saved.seq,
            waiting=[],  # frames for it wait behind the replay and what is held for it
        )
        claim = cls(seats, connection, restored_member(member, saved), resume_token)
        claim.now = now
        claim.room = room
        claim.saved = saved
        claim.replay_from = message.last_seq
        return claim

    saved: SavedSession

    async def write(self, now: float) -> None:
        await self.seats.repository.take_session(self.record(now), self.saved, now=int(now))

    def refusal(self, exc: RepositoryError) -> SignalingError:
        return ResumeFailed("the session was resumed elsewhere or its room is gone: register again")

    async def undo_failed(self, now: float) -> None:
        # The write may have landed: then the session is spent and must end properly.
        self.seats.spawn(self.seats.handoff.settle_if_taken(self.saved, self.member.connection_id))

    async def undo_landed(self, now: float) -> None:
        # Gone during the write: the saved session is spent; it ends (the client registers anew).
        await self._release()
        self.seats.spawn(self.seats.handoff.settle(self.saved, left=True))

    async def after_seat(self) -> None:
        held = self.member.held_keys()
        try:
            if held:
                await self.seats.ledger.mailbox.claim(self.member.room_id, held)
        except RepositoryError as exc:  # unclaimed, they may be delivered twice: at least once
            log.warning("held_claim_failed", room_id=self.member.room_id, error=type(exc).__name__)

    def log_fields(self, replayed: int) -> dict[str, Any]:
        return {"replayed": replayed, "saved": True}


class OrphanClaim(Claim):
    """Resume a session whose relay process died without saving it (SIGKILL, a lost host):
    its routing entry is still there, of this identity, left by a process that is gone
    (this node's previous one, or a node whose heartbeat lapsed and whose room this node
    took over). Nothing can be replayed: numbering goes on after the client's ``last_seq``;
    what the dead process had not confirmed is sent again by its senders (whose acks never
    came) or is still held in the table; a message that arrives twice carries the same
    ``message_id`` and the client drops the second. Without the resume token, which only
    the dead process knew, the identity vouches: as it would for registering the peer id
    afresh. On any failure the entry is left as it is (ours if the write landed): the
    client's next resume recovers from it all the same."""

    event, recovered, announce = "peer_recovered", True, True  # the room lost it with the dead node

    @classmethod
    async def of(
        cls, seats: Seats, connection: Connection, message: protocol.Register, sub: str, room: Room, now: float
    ) -> OrphanClaim:
        entry = await seats.repository.peer_entry(message.room_id, message.peer_id)
        if entry is None or entry.saved or entry.owner_sub != sub or entry.expires_at <= now:
            raise ResumeFailed(NO_SESSION)
        if entry.node_id != seats.cluster.settings.node_id and await seats.cluster.live_node(entry.node_id, now):
            # It still holds (or saves) the session.
            raise ResumeFailed("the session is held by another relay node: register without resume_token")
        resume_token = new_room_token()
        member = Member(
            room_id=message.room_id,
            peer_id=message.peer_id,
            owner_sub=sub,
            owner_username=entry.owner_username,
            link=connection.link,
            connection_id=connection.link.connection_id,
            connected_at=entry.connected_at,
            room_expires_at=room.expires_at,
            role=entry.role,
            metadata=entry.metadata,
            max_claims=entry.max_claims,
            connections=dict(entry.connections),
            resume_hashes=(hash_room_token(resume_token),),
            seq=message.last_seq,
            waiting=[],  # live frames for it wait behind what is held for it
        )
        if entry.session_id:
            member.session_id = entry.session_id
        claim = cls(seats, connection, member, resume_token)
        claim.now = now
        claim.room = room
        claim.entry = entry
        return claim

    entry: PeerRecord

    def reserve(self) -> None:
        super().reserve()
        if self.seats.hub.get(self.member.room_id, self.member.peer_id) is not None:  # registered meanwhile
            self.cancel()
            raise ResumeFailed("the peer registered again meanwhile: register without resume_token")

    async def write(self, now: float) -> None:
        await self.seats.repository.recover_peer(
            self.record(now), from_connection=self.entry.connection_id, now=int(now)
        )

    def log_fields(self, replayed: int) -> dict[str, Any]:
        return {"from_node": self.entry.node_id}
