"""Registration: a connection takes its peer's place in a room, new or resumed.

A session comes from one of four sources, each a small ``Claim`` that has found it and
knows how to claim it: a fresh registration (nothing to replay), a member live (or
detached) in this process, a session the previous process saved at shutdown, and a routing
entry orphaned by a process that died. ``Registrar._complete`` then runs the one sequence
for all of them, with one exception ladder: reserve, write the routing table, check that
nothing moved meanwhile, seat, reply (and replay), announce, open the inbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from signaling_shared import turn
from signaling_shared.auth import Identity, TokenVerifier
from signaling_shared.dynamo import RelayNode, Repository, Room
from signaling_shared.errors import (
    AlreadyRegistered,
    ConditionFailed,
    InvalidMessage,
    InvalidRoomToken,
    NotFound,
    PeerNotFound,
    RepositoryError,
    ResumeFailed,
    RoomExpired,
    RoomNotFound,
    ServerBusy,
    SignalingError,
    as_signaling_error,
)
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.settings import RelaySettings
from signaling_shared.tokens import hash_room_token, new_room_token, room_token_matches
from ws_relay import compat, frames, protocol
from ws_relay.claims import Claim, FreshClaim, LiveClaim, OrphanClaim, SavedClaim, Seats
from ws_relay.close_codes import CloseCode
from ws_relay.connections import Connection, charge_fan_out, close_link
from ws_relay.hub import Member
from ws_relay.roomcache import RoomCache

log = structlog.stdlib.get_logger("ws_relay")

ICE_REFRESH_AT = 0.8  # of the credentials' lifetime
GONE = "this connection no longer holds its peer id"


class Registrar:
    def __init__(
        self,
        settings: RelaySettings,
        repository: Repository,
        verifier: TokenVerifier,
        *,
        seats: Seats,
        clock: Callable[[], float],
        closing: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.verifier = verifier
        self.seats = seats
        self.hub = seats.hub
        self.ledger = seats.ledger
        self.cluster = seats.cluster
        self.handoff = seats.handoff
        self.metrics = seats.metrics
        self._clock = clock
        self._closing = closing
        self.rooms = RoomCache()
        self._ip_limiter = KeyedRateLimiter.per_minute(
            settings.register_rate_per_minute_per_ip, settings.register_burst_per_ip
        )
        self._room_limiter = KeyedRateLimiter.per_minute(
            settings.register_rate_per_minute_per_room, settings.register_burst_per_room
        )

    async def register(self, connection: Connection, message: protocol.Register, data: dict[str, Any]) -> None:
        """Handle a ``register``: counted by outcome, refusals logged (and raised)."""
        if connection.member is None:
            connection.profile = compat.profile_of(data)
        connection.registering = True
        try:
            if connection.member is not None and connection.profile is compat.Profile.SUCCESSOR:
                outcome = await self._register_again(connection, connection.member, message)
            else:
                outcome = await self._register(connection, message)
        except (SignalingError, RepositoryError) as exc:
            code = as_signaling_error(exc).code.value
            self.metrics.registrations.labels(code).inc()
            log.info("registration_refused", code=code, room_id=message.room_id, remote_ip=connection.remote_ip)
            raise
        finally:
            connection.registering = False
        self.metrics.registrations.labels(outcome).inc()

    async def _register(self, connection: Connection, message: protocol.Register) -> str:
        """The outcome label: 'ok', 'resumed', 'redirected', or 'abandoned' if the socket left."""
        if connection.member is not None:
            raise AlreadyRegistered()
        if self._closing():
            raise ServerBusy("server is shutting down; reconnect")
        self.check_metadata(message.metadata)
        self._ip_limiter.enforce(connection.remote_ip, "registrations from this address")
        identity = await self.verifier.verify(message.id_token)
        claim: Claim
        if message.resume_token is None:
            return await self._register_fresh(connection, message, identity)
        if (member := self.hub.get(message.room_id, message.peer_id)) is not None:
            claim = LiveClaim.of(self.seats, connection, message, identity.sub, member)
        else:
            room = await self._room(message, missing=ResumeFailed("the session's room is gone: register again"))
            # The session lives (or was saved) where the room is served: resume there.
            elsewhere = await self.cluster.serving_node(room, self._clock())
            if elsewhere is not None:
                return self._redirect(connection, elsewhere, room.room_id, message.id)
            saved = await self.repository.load_session(message.room_id, message.peer_id)
            if saved is not None:
                claim = SavedClaim.of(self.seats, connection, message, identity.sub, room, saved, self._clock())
            else:
                claim = await OrphanClaim.of(self.seats, connection, message, identity.sub, room, self._clock())
        return await self._complete(connection, message, claim)

    async def _register_fresh(self, connection: Connection, message: protocol.Register, identity: Identity) -> str:
        """A new session: in a room this node serves and has read before, without reading it
        again (the claim checks the room is unchanged; if it changed, the room is read and
        the registration goes on from there, once)."""
        now = self._clock()
        cached = self.rooms.get(message.room_id, now)
        if cached is not None:
            self._check_token(message, cached, limited=True)
            claim = FreshClaim(self.seats, connection, message, identity, cached, now, cached=True)
            try:
                return await self._complete(connection, message, claim)
            except RoomNotFound:  # deleted, or changed since it was read: read it
                self.rooms.forget(message.room_id)
        room = await self._room(message, missing=RoomNotFound(), limited=True)
        now = self._clock()  # one time for the whole registration
        if room.is_expired(now):
            raise RoomExpired()
        elsewhere = await self.cluster.serving_node(room, now)
        if elsewhere is not None:
            return self._redirect(connection, elsewhere, room.room_id, message.id)
        if (served := self.cluster.served_here(room)) is not None:
            self.rooms.keep(served)
        return await self._complete(
            connection, message, FreshClaim(self.seats, connection, message, identity, room, now)
        )

    async def _room(self, message: protocol.Register, *, missing: SignalingError, limited: bool = False) -> Room:
        """The room ``message`` names, read, if its token matches."""
        try:
            room = await self.repository.get_room(message.room_id)
        except NotFound:
            raise missing from None
        self._check_token(message, room, limited=limited)
        return room

    def _check_token(self, message: protocol.Register, room: Room, *, limited: bool) -> None:
        """InvalidRoomToken unless ``message`` carries the room's token. Only failures count
        against the room (``limited``): knowing a room id must not let anyone lock its members out."""
        if not room_token_matches(message.token, room.token_hash):
            if limited:
                self._room_limiter.enforce(message.room_id, "failed registrations in this room")
            raise InvalidRoomToken()

    async def _complete(self, connection: Connection, message: protocol.Register, claim: Claim) -> str:
        """The one path of every registration and resume, whatever its source."""
        if not connection.link.is_open():  # the socket left while we checked: claim nothing
            return "abandoned"
        now = claim.now if claim.now is not None else self._clock()
        claim.reserve()
        try:
            await claim.write(now)
        except (ConditionFailed, NotFound) as exc:
            claim.cancel()
            raise claim.refusal(exc) from exc
        except Exception:
            claim.cancel()
            await claim.undo_failed(now)  # the write may have landed before the failure
            raise
        except BaseException:
            claim.cancel()
            raise
        if not connection.link.is_open() or not claim.unchanged():
            # The socket went away during the write (or its deadline passed), or the session
            # moved meanwhile: this attempt takes nothing from whoever holds the peer id now.
            claim.cancel()
            await claim.undo_landed(now)
            if not connection.link.is_open():
                return "abandoned"
            raise ResumeFailed("the session changed while resuming: register again")
        member = claim.seat(now)
        await claim.after_seat()
        missed: list[tuple[int, str]] = []
        if claim.replay_from is not None:
            missed = member.missed_since(claim.replay_from) or []
            self.ledger.confirmed(member, claim.replay_from)  # the client says it has these
        structlog.contextvars.bind_contextvars(room_id=member.room_id, peer_id=member.peer_id)
        log.info(claim.event, **claim.log_fields(len(missed)))
        others = self.hub.others(member)
        if claim.resumed:
            self._send_resumed(connection, member, message, claim, missed, now)
        else:
            self.send_registered(connection, member, message, claim.resume_token, now)
        if claim.announce:
            joined = frames.peer_joined(member.view())
            for other in others:
                self.ledger.push(other, joined, kind="peer_joined")
        if claim.opens_inbox:
            await self.ledger.open_inbox(member, may_hold=claim.may_hold_messages(now))
        return claim.outcome

    # Replies -----------------------------------------------------------------------

    def _redirect(self, connection: Connection, node: RelayNode, room_id: str, correlation_id: str | int | None) -> str:
        if compat.receives(connection.profile, "redirect"):  # a v1 client is closed (4502), no more
            connection.link.send(frames.redirect(node.ws_url, node.node_id, correlation_id))
        close_link(connection.link, CloseCode.REDIRECTED, self.metrics)
        log.info("peer_redirected", room_id=room_id, node_id=node.node_id)
        return "redirected"

    def send_registered(
        self, connection: Connection, member: Member, message: protocol.Register, resume_token: str, now: float
    ) -> None:
        """``registered_auth`` for a new registration (after ``admin_conflict``, if its admin
        claim was refused), with the successor's extras for a successor's client."""
        others = self.hub.others(member)
        ice = self.ice(member, now)
        extras: dict[str, Any] | None = None
        if member.profile is compat.Profile.SUCCESSOR:
            admin = self.hub.admin_of(member.room_id)
            if message.is_admin:
                admin = self.hub.claim_admin(member)
                if admin != member.peer_id:
                    connection.link.send(frames.admin_conflict(member.room_id, admin))
            extras = {
                "admin_peer_id": admin,
                "peer_list": [other.peer_id for other in others],
                "peer_metadata": {other.peer_id: other.metadata for other in others},
                "mesh_ice_servers": compat.mesh_ice_servers(ice["ice_servers"]),
            }
        connection.link.send(
            frames.registered_auth(
                member.room_id,
                message.token,
                member.peer_id,
                peers=[other.view() for other in others],
                ice=ice,
                resume_token=resume_token,
                correlation_id=message.id,
                last_seq=member.seq,  # 0 when new; a second register's numbering goes on
                extras=extras,
            )
        )

    def _send_resumed(
        self,
        connection: Connection,
        member: Member,
        message: protocol.Register,
        claim: Claim,
        missed: list[tuple[int, str]],
        now: float,
    ) -> None:
        """``registered_auth`` (resumed) and then every frame the client missed, in order."""
        connection.link.send(
            frames.registered_auth(
                member.room_id,
                message.token,
                member.peer_id,
                peers=[other.view() for other in self.hub.others(member)],
                ice=self.ice(member, now),
                resume_token=claim.resume_token,
                correlation_id=message.id,
                resumed=True,
                last_seq=member.seq,
                recovered=claim.recovered,
            ),
            replay=not claim.recovered,  # nothing of a recovered session is owed
        )
        for seq, frame in missed:
            connection.link.send(frame, seq=seq, replay=True)

    def ice(self, member: Member, now: float) -> dict[str, Any]:
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
            self.ledger.push(member, frames.ice_servers(self.ice(member, self._clock())), kind="ice_servers")

    # Metadata ----------------------------------------------------------------------

    def check_metadata(self, metadata: dict[str, Any]) -> None:
        """Metadata is stored and sent to every peer of the room: it must stay small and
        shallow enough for every reply that embeds it."""
        if protocol.depth_exceeds(metadata, self.settings.max_metadata_depth):
            raise InvalidMessage(f"metadata nests deeper than {self.settings.max_metadata_depth} levels")
        size = len(frames.encode(metadata))
        if size > self.settings.max_metadata_bytes:
            raise InvalidMessage(f"metadata is {size} bytes; the limit is {self.settings.max_metadata_bytes}")

    async def update_metadata(self, member: Member, update: dict[str, Any], *, merge: bool) -> dict[str, Any]:
        """Replace (or ``merge`` into: ``compat.merge_metadata``) ``member``'s metadata; the
        room hears it. The member's view after the update."""
        metadata = compat.merge_metadata(member.metadata, update) if merge else update
        self.check_metadata(metadata)
        try:
            await self.repository.update_peer_metadata(member.room_id, member.peer_id, member.connection_id, metadata)
        except ConditionFailed:
            raise PeerNotFound(GONE) from None
        if not self.hub.is_current(member):
            raise PeerNotFound(GONE)
        member.metadata = metadata
        view = member.view()
        frame = frames.metadata_updated(view)
        for other in self.hub.others(member):
            self.ledger.push(other, frame, kind="metadata_updated")
        return view

    async def _register_again(self, connection: Connection, member: Member, message: protocol.Register) -> str:
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
        self.check_metadata(message.metadata)
        self._ip_limiter.enforce(connection.remote_ip, "registrations from this address")
        recipients = len(self.hub.others(member))
        charge_fan_out(connection, recipients, "a register again", self.settings.messages_per_second)
        identity = await self.verifier.verify(message.id_token)
        if identity.sub != member.owner_sub:
            raise AlreadyRegistered("this connection is registered by another identity")
        await self._room(message, missing=RoomNotFound(), limited=True)
        await self.update_metadata(member, message.metadata, merge=False)
        resume_token = new_room_token()
        member.resume_hashes = (hash_room_token(resume_token), *member.resume_hashes[:1])
        log.info("peer_registered_again", room_id=member.room_id, peer_id=member.peer_id)
        self.send_registered(connection, member, message, resume_token, self._clock())
        return "ok"
