"""Booking a peer (a worker): ``claim``, ``renew``, ``release``, and how a lease ends.

A lease is granted by a write over the version of the peer's booking that was read, in
one transaction with a check that the peer is live in the room (``dynamo.bookings``): of
two clients claiming the last free slot at once, on one relay node or two, exactly one
wins; the other gets ``ALREADY_CLAIMED``. The booking's state is in DynamoDB, so a lease
outlives a relay restart; what this node keeps (``Member.booked``, ``Member.holding``, a
timer per held lease) only says whom to tell and when to look.

A lease id names its peer (``<token>~<peer id>``; ``~`` is in no peer id), so a renew or
release needs nothing this node might have lost. A lease ends when its holder releases it,
when it expires unrenewed, when its holder leaves the room (after the resume window), or
when the booked peer leaves: the booked peer and the holder hear ``lease_ended``, the room
``peer_availability``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import structlog

from signaling_shared.dynamo import HELD_TTL_MARGIN_SECONDS, Booking, Lease, Repository
from signaling_shared.errors import (
    AlreadyClaimed,
    ConditionFailed,
    InvalidMessage,
    LeaseNotFound,
    NotFound,
    PeerNotFound,
    RepositoryError,
    ServerBusy,
)
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.settings import RelaySettings
from ws_relay import frames, protocol
from ws_relay.hub import Hub, Member
from ws_relay.ledger import Ledger
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay")

WRITE_ATTEMPTS = 4  # reads and writes of one booking before SERVER_BUSY (others keep writing it)
LEASE_SEPARATOR = "~"


def lease_peer(lease_id: str) -> str:
    """The peer a lease id names, or LeaseNotFound for an id the relay never made."""
    token, separator, peer_id = lease_id.partition(LEASE_SEPARATOR)
    if not token or not separator or not peer_id:
        raise LeaseNotFound("no such lease: lease ids come from 'claimed'")
    return peer_id


class Bookings:
    def __init__(
        self,
        settings: RelaySettings,
        hub: Hub,
        ledger: Ledger,
        repository: Repository,
        metrics: RelayMetrics,
        *,
        clock: Callable[[], float],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.ledger = ledger
        self.repository = repository
        self.metrics = metrics
        self._clock = clock
        self._spawn = spawn
        self._limiter = KeyedRateLimiter.per_minute(settings.claims_per_minute, settings.claim_burst)

    # Requests ----------------------------------------------------------------------

    async def claim(self, member: Member, message: protocol.Claim) -> str:
        """Grant ``member`` a lease on ``message.peer_id``: the ``claimed`` frame."""
        peer_id = message.peer_id
        if peer_id == member.peer_id:
            raise InvalidMessage("a peer cannot claim itself")
        ttl = self._ttl(message.ttl_seconds)
        if len(member.holding) >= self.settings.max_leases_per_peer:
            raise InvalidMessage(f"a peer may hold at most {self.settings.max_leases_per_peer} leases; release one")
        self._limiter.enforce(member.owner_sub, "claims by this identity")
        capacity = await self._capacity(member.room_id, peer_id)
        for _ in range(WRITE_ATTEMPTS):
            now = int(self._clock())
            booking = await self.repository.booking(member.room_id, peer_id)
            live = booking.live(now)
            held = next((lease for lease in live if self._holds(member, lease)), None)
            if held is not None:  # claimed again (a retry after a resume): the lease it has
                self._track(member, peer_id, held)
                return frames.claimed(peer_id, held.lease_id, held.expires_at, message.id)
            if len(live) >= capacity:
                self.metrics.claims.labels("refused").inc()
                raise AlreadyClaimed(f"peer {peer_id!r} is claimed by {len(live)} of {capacity}")
            lease = Lease(
                f"{secrets.token_urlsafe(12)}{LEASE_SEPARATOR}{peer_id}", member.peer_id, member.owner_sub, now + ttl
            )
            updated = self._next(booking, (*live, lease), member.room_expires_at)
            try:
                await self.repository.write_booking(updated, read_version=booking.version, peer_live_at=now)
            except ConditionFailed:
                continue  # written meanwhile (another claim, here or on another node): look again
            except NotFound:
                raise PeerNotFound(f"peer {peer_id!r} is not in this room") from None
            self.metrics.claims.labels("granted").inc()
            log.info("peer_claimed", room_id=member.room_id, peer_id=peer_id, holder=member.peer_id, ttl=ttl)
            self._track(member, peer_id, lease)
            self._tell_booked(member.room_id, peer_id, lease, len(live) + 1, capacity)
            return frames.claimed(peer_id, lease.lease_id, lease.expires_at, message.id)
        raise ServerBusy("the peer's booking is changing; retry")

    async def renew(self, member: Member, message: protocol.Renew) -> str:
        """Extend a lease ``member`` holds: the ``claimed`` frame with the new expiry."""
        peer_id = lease_peer(message.lease_id)
        ttl = self._ttl(message.ttl_seconds)
        self._limiter.enforce(member.owner_sub, "claims by this identity")
        for _ in range(WRITE_ATTEMPTS):
            now = int(self._clock())
            booking = await self.repository.booking(member.room_id, peer_id)
            lease = booking.lease(message.lease_id)
            if lease is None or lease.expires_at <= now or not self._holds(member, lease):
                self._forget(member, message.lease_id)
                raise LeaseNotFound()
            renewed = replace(lease, expires_at=now + ttl)
            leases = tuple(renewed if other.lease_id == lease.lease_id else other for other in booking.live(now))
            try:
                await self.repository.write_booking(
                    self._next(booking, leases, member.room_expires_at), read_version=booking.version, peer_live_at=now
                )
            except ConditionFailed:
                continue
            except NotFound:
                self._forget(member, message.lease_id)
                raise LeaseNotFound(f"peer {peer_id!r} left the room") from None
            self._track(member, peer_id, renewed)
            return frames.claimed(peer_id, renewed.lease_id, renewed.expires_at, message.id)
        raise ServerBusy("the peer's booking is changing; retry")

    async def release(self, member: Member, message: protocol.Release) -> str:
        """End a lease ``member`` holds: the ``released`` frame."""
        peer_id = lease_peer(message.lease_id)
        self._limiter.enforce(member.owner_sub, "claims by this identity")
        lease = await self._end(member.room_id, peer_id, message.lease_id, holder=member, reason="released")
        self._forget(member, message.lease_id)
        if lease is None:
            raise LeaseNotFound()
        return frames.released(peer_id, message.lease_id, message.id)

    # Ends --------------------------------------------------------------------------

    def departed(self, member: Member) -> None:
        """``member`` left the room: the leases it holds end, and so do the leases on it."""
        for lease_id, peer_id in list(member.holding.items()):
            self._forget(member, lease_id)
            self._spawn(self._end_quietly(member.room_id, peer_id, lease_id, holder=member, reason="holder_left"))
        if member.booked:
            member.booked.clear()
            self._spawn(self._clear(member))

    def _expiry_due(self, member: Member, peer_id: str, lease_id: str) -> None:
        member.timers.pop(f"lease:{lease_id}", None)
        self._spawn(self._expire(member, peer_id, lease_id))

    async def _expire(self, member: Member, peer_id: str, lease_id: str) -> None:
        """The lease's time is up: end it, unless it was renewed (then look again later)."""
        try:
            booking = await self.repository.booking(member.room_id, peer_id)
        except RepositoryError as exc:
            log.warning("lease_check_failed", room_id=member.room_id, error=type(exc).__name__)
            self._arm(member, peer_id, lease_id, int(self._clock()) + self.settings.claim_ttl_min_seconds)
            return
        lease = booking.lease(lease_id)
        if lease is not None and lease.expires_at > self._clock():
            self._arm(member, peer_id, lease_id, lease.expires_at)  # renewed (by another node) meanwhile
            return
        self._forget(member, lease_id)
        await self._end_quietly(member.room_id, peer_id, lease_id, holder=member, reason="expired")

    async def _end_quietly(self, room_id: str, peer_id: str, lease_id: str, *, holder: Member, reason: str) -> None:
        try:
            await self._end(room_id, peer_id, lease_id, holder=holder, reason=reason)
        except (RepositoryError, ServerBusy) as exc:  # the lease lapses at its expiry anyway
            log.warning("lease_end_failed", room_id=room_id, reason=reason, error=type(exc).__name__)

    async def _end(self, room_id: str, peer_id: str, lease_id: str, *, holder: Member, reason: str) -> Lease | None:
        """Remove the lease (if ``holder`` holds it) and tell who should hear it; the lease,
        or None if there was none to end."""
        for _ in range(WRITE_ATTEMPTS):
            now = int(self._clock())
            booking = await self.repository.booking(room_id, peer_id)
            lease = booking.lease(lease_id)
            if lease is None or not self._holds(holder, lease):
                return None
            if reason == "expired" and lease.expires_at > now:
                return None  # renewed (on another node) since its timer here was armed
            live = tuple(other for other in booking.live(now) if other.lease_id != lease_id)
            try:
                await self.repository.write_booking(
                    self._next(booking, live, holder.room_expires_at), read_version=booking.version
                )
            except ConditionFailed:
                continue
            self.metrics.claims.labels(reason).inc()
            log.info("lease_ended", room_id=room_id, peer_id=peer_id, holder=holder.peer_id, reason=reason)
            ended = frames.lease_ended(peer_id, lease_id, holder.peer_id, reason)
            if reason != "released" and self.hub.is_current(holder):
                self.ledger.push(holder, ended, kind="lease_ended")
            peer = self.hub.get(room_id, peer_id)
            if peer is not None:
                peer.booked.pop(lease_id, None)
                self.ledger.push(peer, ended, kind="lease_ended")
                self._tell_room(peer, len(live))
            return lease
        raise ServerBusy("the peer's booking is changing; retry")

    async def _clear(self, peer: Member) -> None:
        """The booked peer left: its leases end; the holders here hear ``lease_ended``."""
        try:
            booking = await self.repository.booking(peer.room_id, peer.peer_id)
            if not booking.leases:
                return
            await self.repository.write_booking(
                self._next(booking, (), peer.room_expires_at), read_version=booking.version
            )
        except (RepositoryError, ConditionFailed) as exc:  # its leases lapse at their expiry
            log.warning("booking_clear_failed", room_id=peer.room_id, error=type(exc).__name__)
            return
        now = self._clock()
        for lease in booking.live(now):
            holder = self.hub.get(peer.room_id, lease.holder_peer_id)
            if holder is not None and self._holds(holder, lease):
                self._forget(holder, lease.lease_id)
                frame = frames.lease_ended(peer.peer_id, lease.lease_id, holder.peer_id, "peer_left")
                self.ledger.push(holder, frame, kind="lease_ended")
            self.metrics.claims.labels("peer_left").inc()

    # This node's view --------------------------------------------------------------

    def available(self, peer: Member) -> bool:
        """Whether ``peer`` has a free slot, as far as the leases granted here say."""
        now = self._clock()
        return sum(1 for expires_at in peer.booked.values() if expires_at > now) < peer.max_claims

    def _track(self, holder: Member, peer_id: str, lease: Lease) -> None:
        holder.holding[lease.lease_id] = peer_id
        self._arm(holder, peer_id, lease.lease_id, lease.expires_at)
        peer = self.hub.get(holder.room_id, peer_id)
        if peer is not None:
            peer.booked[lease.lease_id] = lease.expires_at

    def _arm(self, holder: Member, peer_id: str, lease_id: str, at: float) -> None:
        name = f"lease:{lease_id}"
        previous = holder.timers.pop(name, None)
        if previous is not None:
            previous.cancel()
        delay = max(0.0, at - self._clock())
        holder.timers[name] = asyncio.get_running_loop().call_later(delay, self._expiry_due, holder, peer_id, lease_id)

    def _forget(self, holder: Member, lease_id: str) -> None:
        holder.holding.pop(lease_id, None)
        timer = holder.timers.pop(f"lease:{lease_id}", None)
        if timer is not None:
            timer.cancel()

    def _tell_booked(self, room_id: str, peer_id: str, lease: Lease, claims: int, capacity: int) -> None:
        peer = self.hub.get(room_id, peer_id)
        if peer is None:  # served by another node: it learns of the lease from a renew or end only
            return
        self.ledger.push(peer, frames.booked(lease.lease_id, lease.holder_peer_id, lease.expires_at), kind="booked")
        self._tell_room(peer, claims, capacity)

    def _tell_room(self, peer: Member, claims: int, capacity: int | None = None) -> None:
        frame = frames.peer_availability(peer.peer_id, claims, capacity if capacity is not None else peer.max_claims)
        self.ledger.to_others(peer, frame, kind="peer_availability")

    # Rules -------------------------------------------------------------------------

    @staticmethod
    def _holds(member: Member, lease: Lease) -> bool:
        return lease.holder_peer_id == member.peer_id and lease.holder_sub == member.owner_sub

    def _ttl(self, asked: int | None) -> int:
        s = self.settings
        ttl = asked if asked is not None else s.claim_ttl_default_seconds
        if not s.claim_ttl_min_seconds <= ttl <= s.claim_ttl_max_seconds:
            raise InvalidMessage(f"ttl_seconds: between {s.claim_ttl_min_seconds} and {s.claim_ttl_max_seconds}")
        return ttl

    async def _capacity(self, room_id: str, peer_id: str) -> int:
        """How many leases the peer takes: from its member here, else from its routing entry."""
        peer = self.hub.get(room_id, peer_id)
        if peer is not None:
            return peer.max_claims
        entry = await self.repository.peer_entry(room_id, peer_id)
        if entry is None or entry.expires_at <= self._clock():
            raise PeerNotFound(f"peer {peer_id!r} is not in this room")
        return entry.max_claims

    @staticmethod
    def _next(booking: Booking, leases: tuple[Lease, ...], room_expires_at: int) -> Booking:
        return replace(
            booking,
            leases=leases,
            version=booking.version + 1,
            expires_at=max(booking.expires_at, room_expires_at + HELD_TTL_MARGIN_SECONDS),
        )
