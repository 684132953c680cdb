"""This node in the shared tables: its heartbeat and fencing, the rooms it serves (take-over
and redirect decisions), and the leases of its peers' routing entries.

Several relay nodes may serve one deployment. Each keeps an entry in the node registry
(a fresh expiry every heartbeat); a room is served by one node at a time (its ``node_id``),
and a node takes a room over from a node that stopped heartbeating by a write conditional on
the previous owner. A peer's routing entry is a lease the node renews while the peer is here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from signaling_shared.dynamo import PeerRecord, RelayNode, Repository, Room
from signaling_shared.errors import ConditionFailed, NotFound, RepositoryError, RoomNotFound, ServerBusy
from signaling_shared.settings import RelaySettings
from ws_relay.close_codes import CloseCode
from ws_relay.hub import Hub, Member

log = structlog.stdlib.get_logger("ws_relay")
node_log = structlog.stdlib.get_logger("ws_relay.server")  # the node's events kept their logger

LEASE_REFRESH_CONCURRENCY = 16
TAKE_OVER_ATTEMPTS = 3


class Cluster:
    def __init__(
        self,
        settings: RelaySettings,
        repository: Repository,
        hub: Hub,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.hub = hub
        self._clock = clock
        # When this node's entry was last renewed; set once it may have lapsed without it
        # knowing (see heartbeat_forever): main stops the process then.
        self._renewed_at = 0.0
        self._beat: asyncio.Future[None] | None = None
        self.fenced = asyncio.Event()

    # Peer leases -------------------------------------------------------------------

    def lease_end(self, now: float, room_expires_at: int) -> int:
        return min(room_expires_at, int(now) + self.settings.peer_lease_seconds)

    def record(self, member: Member, now: float) -> PeerRecord:
        """The routing-table entry of ``member`` on this node, with a fresh lease."""
        return PeerRecord(
            room_id=member.room_id,
            peer_id=member.peer_id,
            owner_sub=member.owner_sub,
            owner_username=member.owner_username,
            connection_id=member.connection_id,
            node_id=self.settings.node_id,
            connected_at=member.connected_at,
            expires_at=self.lease_end(now, member.room_expires_at),
            role=member.role,
            metadata=member.metadata,
            max_claims=member.max_claims,
            connections=dict(member.connections),
        )

    async def restore(self, member: Member, now: float) -> None:
        """Write back the entry of a live member that an abandoned takeover overwrote."""
        try:
            await self.repository.claim_peer(self.record(member, now), now=int(now))
        except RepositoryError as exc:
            log.warning("restore_failed", room_id=member.room_id, error=type(exc).__name__)

    async def release_quietly(self, room_id: str, peer_id: str, connection_id: str) -> None:
        try:
            await self.repository.release_peer(room_id, peer_id, connection_id)
        except RepositoryError as exc:  # the entry's lease runs out on its own
            log.warning("release_failed", room_id=room_id, error=type(exc).__name__)

    async def refresh_leases(self, end: Callable[[Member, CloseCode, str], None]) -> None:
        """Extend every live member's routing entry; ``end`` those whose room or entry is gone.

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
                record = self.record(member, now)
                try:
                    await self.repository.refresh_peer(
                        record.room_id, record.peer_id, record.connection_id, record.expires_at
                    )
                except NotFound:
                    if await deleted(member.room_id):
                        if self.hub.is_current(member):
                            end(member, CloseCode.ROOM_DELETED, "room_deleted")
                    elif self.hub.is_current(member):  # lost in a storage fault, or expired
                        code, reason = (
                            (CloseCode.ROOM_EXPIRED, "room_expired")
                            if member.room_expires_at <= self._clock()
                            else (CloseCode.ROOM_LOST, "room_lost")
                        )
                        end(member, code, reason)
                except ConditionFailed:
                    # Taken over elsewhere; unless it was our own resume that moved the entry.
                    if self.hub.is_current(member) and member.connection_id == record.connection_id:
                        end(member, CloseCode.REPLACED, "replaced")
                except RepositoryError as exc:
                    log.warning("lease_refresh_failed", room_id=member.room_id, error=type(exc).__name__)

        await asyncio.gather(*(refresh(m) for m in list(self.hub.members())))

    # Rooms -------------------------------------------------------------------------

    async def serving_node(self, room: Room, now: float) -> RelayNode | None:
        """The live node other than this one that serves ``room``, if any. A node with a public
        URL takes a room of no node, or of a node that stopped heartbeating, by a write
        conditional on the previous owner: of two nodes that try, one wins and the other
        redirects to it. A node peers cannot be sent to serves such rooms without taking them."""
        me = self.settings.node_id
        for _ in range(TAKE_OVER_ATTEMPTS):
            if room.node_id == me:
                return None
            if room.node_id:
                owner = await self.live_node(room.node_id, now)
                if owner is not None and owner.ws_url:
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

    def served_here(self, room: Room) -> Room | None:
        """``room`` as it stands once ``serving_node`` found no other node serving it, if this
        node alone serves it: a node with a public URL has taken it (if it had not already).
        None: another node's room, served here only while that node is away."""
        me = self.settings.node_id
        if self.settings.public_ws_url:
            return room if room.node_id == me else replace(room, node_id=me)
        return room if room.node_id in ("", me) else None

    async def live_node(self, node_id: str, now: float) -> RelayNode | None:
        """The registry's entry of ``node_id`` if that node is heartbeating."""
        nodes = await self.repository.relay_nodes()
        node = next((node for node in nodes if node.node_id == node_id), None)
        return node if node is not None and node.is_live(now) else None

    # This node ---------------------------------------------------------------------

    async def heartbeat(self, *, draining: bool = False) -> None:
        """This node's entry in the registry: its URL, load and a fresh expiry; and the
        entries of nodes silent for ten TTLs go (crashed or scaled in). Never raises."""
        s = self.settings
        now = time.time()  # before the write: the entry lapses no later than now + TTL
        node = RelayNode(
            node_id=s.node_id,
            ws_url=s.public_ws_url,
            rooms=self.hub.room_count,
            capacity=s.max_connections,
            expires_at=now + s.node_ttl_seconds,
            draining=draining,
        )
        try:
            await self.repository.heartbeat_node(node)
        except Exception as exc:  # noqa: BLE001 - the entry lapses if this keeps failing: see heartbeat_forever
            node_log.warning("node_heartbeat_failed", node_id=s.node_id, error=type(exc).__name__)
            return
        self._renewed_at = now
        try:
            pruned = await self.repository.prune_nodes(expired_before=int(now) - 10 * s.node_ttl_seconds)
        except Exception as exc:  # noqa: BLE001 - the next heartbeat prunes
            node_log.warning("node_prune_failed", node_id=s.node_id, error=type(exc).__name__)
            return
        if pruned:
            node_log.info("nodes_pruned", node_ids=pruned)

    async def heartbeat_forever(self) -> None:
        """Renew the entry; and fence this node before an entry it failed to renew can lapse.
        Once it lapses, the room's next peer moves the room to another node while the peers
        here would stay: the room served twice, its peers split. So when the next renewal
        could come too late, the node is fenced (``fenced`` set): main stops it as for a
        SIGTERM (go_away; sessions saved if the table lets it, else recovered from their
        entries) and exits 1 for its supervisor to start it again."""
        s = self.settings
        while True:
            await asyncio.sleep(s.node_heartbeat_seconds)
            # Shielded: a write runs on in its thread after a cancel, so draining() awaits it
            # before marking the entry (else a late write would undo the mark).
            self._beat = asyncio.ensure_future(self.heartbeat())
            # A write that hangs must not keep this node serving past its entry's lapse.
            await asyncio.wait({self._beat}, timeout=max(0.0, self._renewed_at + s.node_ttl_seconds - time.time()))
            if time.time() + s.node_heartbeat_seconds >= self._renewed_at + s.node_ttl_seconds:
                node_log.error("node_fenced", node_id=s.node_id, renewed_at=self._renewed_at)
                self.fenced.set()
                return

    async def draining(self) -> None:
        """After ``heartbeat_forever`` is cancelled: mark the entry draining (no new rooms)."""
        if self._beat is not None:
            await self._beat  # heartbeat never raises
        await self.heartbeat(draining=True)
