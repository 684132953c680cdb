"""Rooms: creation, inspection and deletion by their creator. No web-framework code."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from signaling_shared.auth import Identity
from signaling_shared.cognito import CognitoGateway
from signaling_shared.dynamo import PeerRecord, RelayNode, Repository, Room
from signaling_shared.errors import (
    AuthProviderUnavailable,
    ConditionFailed,
    NotFound,
    NotRoomCreator,
    RoomNotFound,
    StorageUnavailable,
)
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.tokens import hash_room_token, new_room_id, new_room_token

log = structlog.stdlib.get_logger("rooms_api")

_CREATE_ATTEMPTS = 3


@dataclass(frozen=True)
class CreatedRoom:
    room: Room
    token: str
    ws_url: str | None = None  # the relay node serving it, when nodes register themselves


@dataclass(frozen=True)
class Deleted:
    room_ids: list[str]
    peers_removed: int
    users_deleted: int


class RoomsService:
    def __init__(
        self,
        repository: Repository,
        cognito: CognitoGateway,
        *,
        room_ttl_seconds: int,
        create_limiter: KeyedRateLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._repo = repository
        self._cognito = cognito
        self._ttl = room_ttl_seconds
        self._create_limiter = create_limiter
        self._clock = clock

    async def create(self, owner: Identity) -> CreatedRoom:
        self._create_limiter.enforce(owner.sub, "rooms created by this identity")
        now = int(self._clock())
        node = await self._place(now)
        for _ in range(_CREATE_ATTEMPTS):
            token = new_room_token()
            room = Room(
                room_id=new_room_id(),
                created_by=owner.sub,
                token_hash=hash_room_token(token),
                created_at=now,
                expires_at=now + self._ttl,
                node_id=node.node_id if node else "",
                held_until_ms=0,  # nothing held, no session saved: a registration reads neither
                saved_until=0,
            )
            try:
                await self._repo.create_room(room)
            except ConditionFailed:
                continue  # a 64-bit id collided; draw another
            log.info("room_created", room_id=room.room_id, expires_at=room.expires_at, node_id=room.node_id)
            return CreatedRoom(room, token, node.ws_url if node else None)
        raise StorageUnavailable("could not allocate a room id")

    async def _place(self, now: float) -> RelayNode | None:
        """The least-loaded live relay node, with the room counted against it at once (so rooms
        created between two heartbeats spread); None when no node registers itself (a single
        relay that every client already knows)."""
        live = [node for node in await self._repo.relay_nodes() if node.is_live(now) and not node.draining]
        # Ties (after every heartbeat, rooms not yet used count for nothing) are broken at
        # random: in name order, the first node would get the odd rooms of every interval.
        for node in sorted(live, key=lambda n: (n.load, secrets.randbelow(1 << 30))):
            try:
                await self._repo.count_assignment(node.node_id)
            except ConditionFailed:
                continue  # it stopped and removed itself just now
            return node
        return None

    async def _owned_room(self, caller: Identity, room_id: str) -> Room:
        """The live room, if ``caller`` created it."""
        try:
            room = await self._repo.get_room(room_id)
        except NotFound:
            raise RoomNotFound() from None
        if room.is_expired(self._clock()):
            raise RoomNotFound("room has expired")
        if room.created_by != caller.sub:
            raise NotRoomCreator()
        return room

    async def inspect(self, caller: Identity, room_id: str) -> tuple[Room, list[PeerRecord]]:
        room = await self._owned_room(caller, room_id)
        return room, await self._repo.list_peers(room_id, now=self._clock())

    async def delete(self, caller: Identity, room_id: str) -> Deleted:
        await self._owned_room(caller, room_id)
        return await self._delete_rooms(caller, [room_id])

    async def delete_by_peer(self, caller: Identity, peer_id: str) -> Deleted:
        """Delete the caller's rooms in which ``peer_id`` is live (the seed's fallback). A peer
        live only in others' rooms is answered as one live nowhere: the answer must not tell
        a stranger where a peer id is in use."""
        room_ids = await self._repo.rooms_of_peer(peer_id, now=self._clock())
        owned = []
        for room_id in room_ids:
            try:
                await self._owned_room(caller, room_id)
            except (RoomNotFound, NotRoomCreator):
                continue
            owned.append(room_id)
        if not owned:
            raise RoomNotFound("no live room of this identity holds this peer")
        return await self._delete_rooms(caller, owned)

    async def delete_peer(self, caller: Identity, peer_id: str) -> Deleted:
        """Remove ``peer_id`` from each live room where ``caller`` created the room or is that
        peer (the seed's successor's ``/delete-peer``); the rooms stay. The relay closes the
        peer at its next lease refresh (4002). Rooms the caller may not touch are neither
        changed nor named, so the answer does not tell where a peer id is live."""
        removed_from = []
        for room_id in await self._repo.rooms_of_peer(peer_id, now=self._clock()):
            entry = await self._repo.peer_entry(room_id, peer_id)
            if entry is None:
                continue
            if entry.owner_sub != caller.sub:
                try:
                    await self._owned_room(caller, room_id)
                except (RoomNotFound, NotRoomCreator):
                    continue
            await self._repo.delete_peers(room_id, [peer_id])
            removed_from.append(room_id)
        log.info("peer_deleted", peer_id=peer_id, room_ids=removed_from)
        return Deleted(room_ids=removed_from, peers_removed=len(removed_from), users_deleted=0)

    async def _delete_rooms(self, caller: Identity, room_ids: list[str]) -> Deleted:
        """The room first (no peer can claim a place in it after that, and the relay closes
        its peers at their next lease refresh), then its routing entries and held messages,
        then the creator's own Cognito user, if one of the peers (the seed's clean-up: "this
        user, its worker and their room"). Other identities' users are theirs: they are
        swept by auth-api once their token has expired, never deleted by someone else."""
        now = self._clock()
        usernames: set[str] = set()
        removed = 0
        for room_id in room_ids:
            peers = await self._repo.list_peers(room_id, now=now, include_expired=True)
            await self._repo.delete_room(room_id, now=now)
            await self._repo.delete_peers(room_id, [p.peer_id for p in peers])
            await self._repo.delete_room_messages(room_id)
            removed += len(peers)
            usernames.update(
                p.owner_username for p in peers if p.owner_username and p.expires_at > now and p.owner_sub == caller.sub
            )
        deleted_users = 0
        for username in sorted(usernames):
            try:
                deleted_users += await self._cognito.delete_user(username)
            except AuthProviderUnavailable:
                log.warning("user_cleanup_failed", username=username)
        log.info("rooms_deleted", room_ids=room_ids, peers_removed=removed, users_deleted=deleted_users)
        return Deleted(room_ids=room_ids, peers_removed=removed, users_deleted=deleted_users)
