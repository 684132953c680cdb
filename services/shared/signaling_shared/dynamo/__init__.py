"""DynamoDB access for rooms, the peers routing table and held messages, botocore hidden.

Every public method is a coroutine that runs the blocking boto3 call in a worker
thread, so no service can block its event loop by accident. botocore errors become
the typed errors of ``signaling_shared.errors`` (each keeps the AWS error code);
services branch on types.

Items whose ``expires_at`` has passed are treated as gone by every reader, because
DynamoDB deletes TTL-expired items lazily (up to days later).

One store per aggregate, over one shared client (``client.Dynamo``):

- ``rooms.RoomStore``: rooms, their tombstones, the relay-node registry (rooms table);
- ``peers.PeerStore``: the routing table (peers table);
- ``messages.MessageStore``: held messages (messages table);
- ``sessions.SessionStore``: sessions saved at shutdown (a peer's entry plus its frames);
- ``bookings.BookingStore``: the leases clients hold on a peer (messages table).

``Repository`` composes them (``repository.rooms``, ``.peers``, ``.messages``,
``.sessions``) and answers every method itself, so a consumer can be handed the whole
repository or only the store it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from signaling_shared.aws import make_client
from signaling_shared.dynamo.bookings import BookingStore
from signaling_shared.dynamo.client import Dynamo, translate_error
from signaling_shared.dynamo.messages import MessageStore
from signaling_shared.dynamo.peers import PeerStore
from signaling_shared.dynamo.records import (
    HELD_TTL_MARGIN_SECONDS,
    NODES_ITEM,
    PEER_ID_INDEX,
    TOMBSTONE_PREFIX,
    TOMBSTONE_SECONDS,
    Booking,
    Lease,
    PeerRecord,
    QueuedMessage,
    RelayNode,
    Room,
    SavedSession,
)
from signaling_shared.dynamo.rooms import RoomStore
from signaling_shared.dynamo.sessions import SessionStore
from signaling_shared.errors import RepositoryError
from signaling_shared.settings import CommonSettings

__all__ = [
    "HELD_TTL_MARGIN_SECONDS",
    "NODES_ITEM",
    "PEER_ID_INDEX",
    "TOMBSTONE_PREFIX",
    "TOMBSTONE_SECONDS",
    "Booking",
    "BookingStore",
    "Dynamo",
    "Lease",
    "MessageStore",
    "PeerRecord",
    "PeerStore",
    "QueuedMessage",
    "RelayNode",
    "Repository",
    "Room",
    "RoomStore",
    "SavedSession",
    "SessionStore",
    "translate_error",
]


class Repository:
    """Rooms, the peers routing table and held messages: every store's methods in one place.

    ``on_error`` is told of every failed call (operation name, error), for metrics.
    """

    def __init__(
        self,
        client: Any,
        *,
        rooms_table: str,
        peers_table: str,
        messages_table: str,
        on_error: Callable[[str, RepositoryError], None] | None = None,
    ) -> None:
        db = Dynamo(
            client, rooms_table=rooms_table, peers_table=peers_table, messages_table=messages_table, on_error=on_error
        )
        self._db = db
        self._client = client
        self.rooms_table = rooms_table
        self.peers_table = peers_table
        self.messages_table = messages_table
        self.rooms = RoomStore(db)
        self.peers = PeerStore(db)
        self.messages = MessageStore(db)
        self.sessions = SessionStore(db, self.peers, self.messages)
        self.bookings = BookingStore(db)

    @classmethod
    def from_settings(
        cls, settings: CommonSettings, on_error: Callable[[str, RepositoryError], None] | None = None
    ) -> Repository:
        return cls(
            make_client(settings, "dynamodb"),
            rooms_table=settings.rooms_table,
            peers_table=settings.peers_table,
            messages_table=settings.messages_table,
            on_error=on_error,
        )

    # Rooms and relay nodes (RoomStore) ---------------------------------------------

    async def create_room(self, room: Room) -> None:
        await self.rooms.create_room(room)

    async def get_room(self, room_id: str) -> Room:
        return await self.rooms.get_room(room_id)

    async def mark_sessions_saved(self, room_id: str, *, until: int) -> None:
        await self.rooms.mark_sessions_saved(room_id, until=until)

    async def delete_room(self, room_id: str, *, now: float) -> None:
        await self.rooms.delete_room(room_id, now=now)

    async def was_deleted(self, room_id: str) -> bool:
        return await self.rooms.was_deleted(room_id)

    async def move_room(self, room_id: str, *, from_node: str, to_node: str) -> None:
        await self.rooms.move_room(room_id, from_node=from_node, to_node=to_node)

    async def heartbeat_node(self, node: RelayNode) -> None:
        await self.rooms.heartbeat_node(node)

    async def prune_nodes(self, *, expired_before: int) -> list[str]:
        return await self.rooms.prune_nodes(expired_before=expired_before)

    async def relay_nodes(self) -> list[RelayNode]:
        return await self.rooms.relay_nodes()

    async def count_assignment(self, node_id: str) -> None:
        await self.rooms.count_assignment(node_id)

    # Peers (PeerStore) -------------------------------------------------------------

    async def claim_peer(self, peer: PeerRecord, *, now: int, as_read: Room | None = None) -> None:
        await self.peers.claim_peer(peer, now=now, as_read=as_read)

    async def recover_peer(self, peer: PeerRecord, *, from_connection: str, now: int) -> None:
        await self.peers.recover_peer(peer, from_connection=from_connection, now=now)

    async def refresh_peer(self, room_id: str, peer_id: str, connection_id: str, expires_at: int) -> None:
        await self.peers.refresh_peer(room_id, peer_id, connection_id, expires_at)

    async def update_peer_metadata(
        self, room_id: str, peer_id: str, connection_id: str, metadata: dict[str, Any]
    ) -> None:
        await self.peers.update_peer_metadata(room_id, peer_id, connection_id, metadata)

    async def update_peer_connections(
        self, room_id: str, peer_id: str, connection_id: str, connections: dict[str, Any]
    ) -> None:
        await self.peers.update_peer_connections(room_id, peer_id, connection_id, connections)

    async def release_peer(self, room_id: str, peer_id: str, connection_id: str) -> None:
        await self.peers.release_peer(room_id, peer_id, connection_id)

    async def list_peers(self, room_id: str, *, now: float, include_expired: bool = False) -> list[PeerRecord]:
        return await self.peers.list_peers(room_id, now=now, include_expired=include_expired)

    async def rooms_of_peer(self, peer_id: str, *, now: float) -> list[str]:
        return await self.peers.rooms_of_peer(peer_id, now=now)

    async def delete_peers(self, room_id: str, peer_ids: Iterable[str]) -> None:
        await self.peers.delete_peers(room_id, peer_ids)

    async def peer_entry(self, room_id: str, peer_id: str) -> PeerRecord | None:
        return await self.peers.peer_entry(room_id, peer_id)

    # Held messages (MessageStore) --------------------------------------------------

    async def hold_message(self, message: QueuedMessage, *, held_until_ms: int | None) -> None:
        await self.messages.hold_message(message, held_until_ms=held_until_ms)

    async def held_messages(
        self, room_id: str, *, to_peer_id: str | None = None, with_frames: bool = True
    ) -> list[QueuedMessage]:
        return await self.messages.held_messages(room_id, to_peer_id=to_peer_id, with_frames=with_frames)

    async def take_message(self, room_id: str, key: str) -> QueuedMessage | None:
        return await self.messages.take_message(room_id, key)

    async def claim_messages(self, room_id: str, keys: Iterable[str], until_ms: int) -> None:
        await self.messages.claim_messages(room_id, keys, until_ms)

    async def delete_messages(self, room_id: str, keys: Iterable[str]) -> None:
        await self.messages.delete_messages(room_id, keys)

    async def delete_room_messages(self, room_id: str) -> None:
        await self.messages.delete_room_messages(room_id)

    # Saved sessions (SessionStore) -------------------------------------------------

    async def save_session(self, session: SavedSession) -> None:
        await self.sessions.save_session(session)

    async def drop_session(self, saved: SavedSession) -> bool:
        return await self.sessions.drop_session(saved)

    async def delete_session_frames(self, saved: SavedSession) -> None:
        await self.sessions.delete_session_frames(saved)

    async def load_session(self, room_id: str, peer_id: str, *, whole: bool = True) -> SavedSession | None:
        return await self.sessions.load_session(room_id, peer_id, whole=whole)

    async def take_session(self, peer: PeerRecord, saved: SavedSession, *, now: int) -> None:
        await self.sessions.take_session(peer, saved, now=now)

    # Bookings (BookingStore) ------------------------------------------------------

    async def booking(self, room_id: str, peer_id: str) -> Booking:
        return await self.bookings.booking(room_id, peer_id)

    async def write_booking(self, booking: Booking, *, read_version: int, peer_live_at: int | None = None) -> None:
        await self.bookings.write_booking(booking, read_version=read_version, peer_live_at=peer_live_at)

    # Health ------------------------------------------------------------------------

    async def check(self) -> None:
        """Raise unless every table is reachable and active."""
        await self._db.check()
