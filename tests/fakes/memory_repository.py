"""An in-memory ``signaling_shared.dynamo.Repository``, for the unit tier only.

The same async methods, the same errors under the same conditions: the contract test
(``tests/contract/repository_cases.py``) runs one set of cases against this and against
the real repository (on moto in the unit tier, on the emulator in the integration tier),
so the two cannot drift.

The three tables are dicts of DynamoDB items, written and read through the production
codecs (``signaling_shared.dynamo.records``); what DynamoDB evaluates (conditions,
transactions, batches of at most 25 distinct keys) is evaluated here. Every simulated
DynamoDB call yields to the event loop first, as a real one does, and is one *operation*
named as the real repository names it to ``on_error`` and in ``RepositoryError.operation``
(the method's name; ``describe_table`` for ``check``; ``delete_messages`` for the frames
``delete_session_frames`` and ``take_session`` delete; ``relay_nodes`` for the read
``prune_nodes`` starts with).

- ``fail_next(operation, exc, times=1)``: the next ``times`` calls of that operation raise
  ``exc`` instead of running; the method handles it as it would DynamoDB's error (e.g.
  ``release_peer`` ignores a ConditionFailed, ``delete_session_frames`` any RepositoryError).
- ``clock`` (seconds, default ``time.time``): what ``run_ttl()`` compares ``expires_at`` with.
  Like DynamoDB, nothing disappears when it expires (readers decide); ``run_ttl()`` is the
  TTL sweep that DynamoDB runs some time later.
- ``operations``: every operation run so far, in order (failed ones included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from signaling_shared.dynamo import (
    NODES_ITEM,
    TOMBSTONE_PREFIX,
    Booking,
    PeerRecord,
    QueuedMessage,
    RelayNode,
    Room,
    SavedSession,
)
from signaling_shared.dynamo.records import (
    booking_from,
    booking_item,
    booking_key,
    compact_json,
    is_held_message_key,
    message_from,
    message_item,
    node_entry,
    node_from,
    number,
    peer_from,
    peer_item,
    room_from,
    room_item,
    string,
    tombstone_item,
)
from signaling_shared.dynamo.sessions import (
    saved_session_from,
    session_frame_item,
    session_frame_key,
    session_frame_prefix,
    session_frame_seq,
    session_state,
)
from signaling_shared.errors import ConditionFailed, NotFound, RepositoryError, Unavailable

T = TypeVar("T")
K = TypeVar("K")
Item = dict[str, Any]
Key = tuple[str, str]

_CONDITION = "ConditionalCheckFailedException"
_BATCH_SIZE = 25


def _condition_failed(operation: str) -> ConditionFailed:
    return ConditionFailed("condition failed", aws_code=_CONDITION, operation=operation)


def _expire(table: dict[K, Item], now: float) -> int:
    expired = [key for key, item in table.items() if "expires_at" in item and int(item["expires_at"]["N"]) < now]
    for key in expired:
        del table[key]
    return len(expired)


def _s(item: Item | None, name: str) -> str | None:
    """A string attribute of an item, None if the item or the attribute is absent."""
    return None if item is None or name not in item else str(item[name]["S"])


class MemoryRepository:
    """The tables in dicts of items; see the module's docstring for the test controls."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[str, RepositoryError], None] | None = None,
    ) -> None:
        self.clock = clock
        self._on_error = on_error
        self.rooms_table: dict[str, Item] = {}  # by room_id: rooms, tombstones, NODES_ITEM
        self.peers_table: dict[Key, Item] = {}  # by (room_id, peer_id)
        self.messages_table: dict[Key, Item] = {}  # by (room_id, msg_key)
        self.operations: list[str] = []
        self._failures: dict[str, list[BaseException]] = {}
        # The real repository's stores: here one object answers for all of them.
        self.rooms = self.peers = self.messages = self.sessions = self.bookings = self

    # Test controls -----------------------------------------------------------------

    def fail_next(self, operation: str, exc: BaseException, *, times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` raise ``exc`` (queued after earlier ones)."""
        self._failures.setdefault(operation, []).extend([exc] * times)

    def run_ttl(self) -> int:
        """Delete every item whose ``expires_at`` is before ``clock()``, as DynamoDB's TTL
        eventually does; how many were deleted."""
        now = self.clock()
        return _expire(self.rooms_table, now) + _expire(self.peers_table, now) + _expire(self.messages_table, now)

    async def _run(self, operation: str, fn: Callable[[], T]) -> T:
        """One DynamoDB call: yield, then fail as told or run ``fn`` (atomically)."""
        await asyncio.sleep(0)
        self.operations.append(operation)
        pending = self._failures.get(operation)
        if pending:
            exc = pending.pop(0)
            self._report(operation, exc)
            raise exc
        try:
            return fn()
        except RepositoryError as exc:
            self._report(operation, exc)
            raise

    def _report(self, operation: str, exc: BaseException) -> None:
        if self._on_error is not None and isinstance(exc, RepositoryError) and not isinstance(exc, ConditionFailed):
            self._on_error(operation, exc)

    def _batch(self, operation: str, table: dict[Key, Item], keys: list[Key], items: list[Item] | None = None) -> None:
        """BatchWriteItem, 25 requests at a time: deletes ``keys``, or puts ``items`` under them."""
        for start in range(0, len(keys), _BATCH_SIZE):
            chunk = keys[start : start + _BATCH_SIZE]
            if len(set(chunk)) != len(chunk):
                code = "ValidationException"  # "Provided list of item keys contains duplicates"
                raise Unavailable(f"request refused ({code})", aws_code=code, operation=operation)
            for index, key in enumerate(chunk, start):
                if items is None:
                    table.pop(key, None)
                else:
                    table[key] = items[index]

    # Rooms and relay nodes ---------------------------------------------------------

    async def create_room(self, room: Room) -> None:
        def put() -> None:
            if room.room_id in self.rooms_table:
                raise _condition_failed("create_room")
            self.rooms_table[room.room_id] = room_item(room)

        await self._run("create_room", put)

    async def get_room(self, room_id: str) -> Room:
        item = await self._run("get_room", lambda: self.rooms_table.get(room_id))
        if not item:
            raise NotFound("room not found", operation="get_room")
        return room_from(item)

    async def delete_room(self, room_id: str, *, now: float) -> None:
        def put_tombstone() -> None:
            tombstone = tombstone_item(room_id, now=now)
            self.rooms_table[tombstone["room_id"]["S"]] = tombstone

        await self._run("delete_room", put_tombstone)
        await self._run("delete_room", lambda: self.rooms_table.pop(room_id, None))

    async def was_deleted(self, room_id: str) -> bool:
        return await self._run("was_deleted", lambda: TOMBSTONE_PREFIX + room_id in self.rooms_table)

    async def move_room(self, room_id: str, *, from_node: str, to_node: str) -> None:
        def update() -> None:
            item = self.rooms_table.get(room_id)
            if item is None or _s(item, "node_id") != (from_node or None):
                raise _condition_failed("move_room")
            item["node_id"] = string(to_node)

        await self._run("move_room", update)

    async def mark_sessions_saved(self, room_id: str, *, until: int) -> None:
        def update() -> None:
            item = self.rooms_table.get(room_id)
            if item is not None:
                item["saved_until"] = number(until)

        await self._run("mark_sessions_saved", update)

    def _nodes(self) -> dict[str, Any] | None:
        """The node registry's map (node id -> entry), None before the first heartbeat."""
        item = self.rooms_table.get(NODES_ITEM)
        if item is None or "nodes" not in item:
            return None
        nodes: dict[str, Any] = item["nodes"]["M"]
        return nodes

    async def heartbeat_node(self, node: RelayNode) -> None:
        def update() -> None:
            nodes = self._nodes()
            if nodes is None:
                raise _condition_failed("heartbeat_node")
            nodes[node.node_id] = node_entry(node)

        def create() -> None:
            if NODES_ITEM in self.rooms_table:
                raise _condition_failed("heartbeat_node")
            self.rooms_table[NODES_ITEM] = {"room_id": string(NODES_ITEM), "nodes": {"M": {}}}

        try:
            await self._run("heartbeat_node", update)
        except ConditionFailed:
            with contextlib.suppress(ConditionFailed):
                await self._run("heartbeat_node", create)
            await self._run("heartbeat_node", update)

    async def prune_nodes(self, *, expired_before: int) -> list[str]:
        cutoff = int(expired_before)
        pruned = []
        for node in await self.relay_nodes():
            if node.expires_at >= expired_before:
                continue

            def remove(node_id: str = node.node_id) -> None:
                nodes = self._nodes() or {}
                entry = nodes.get(node_id)
                if entry is None or not float(entry["M"]["expires_at"]["N"]) < cutoff:
                    raise _condition_failed("prune_nodes")
                del nodes[node_id]

            try:
                await self._run("prune_nodes", remove)
            except ConditionFailed:
                continue
            pruned.append(node.node_id)
        return pruned

    async def relay_nodes(self) -> list[RelayNode]:
        entries = await self._run("relay_nodes", lambda: dict(self._nodes() or {}))
        return sorted((node_from(node_id, entry) for node_id, entry in entries.items()), key=lambda n: n.node_id)

    async def count_assignment(self, node_id: str) -> None:
        def update() -> None:
            entry = (self._nodes() or {}).get(node_id)
            if entry is None:
                raise _condition_failed("count_assignment")
            entry["M"]["assigned"] = number(int(entry["M"]["assigned"]["N"]) + 1)

        await self._run("count_assignment", update)

    # Peers -------------------------------------------------------------------------

    async def claim_peer(self, peer: PeerRecord, *, now: int, as_read: Room | None = None) -> None:
        def free(entry: Item | None) -> bool:
            return entry is None or (
                "saved_session" not in entry
                and (_s(entry, "owner_sub") == peer.owner_sub or int(entry["expires_at"]["N"]) <= int(now))
            )

        await self._put_in_live_room("claim_peer", peer, now=now, condition=free, as_read=as_read)

    async def recover_peer(self, peer: PeerRecord, *, from_connection: str, now: int) -> None:
        def left_by_that_connection(entry: Item | None) -> bool:
            return (
                _s(entry, "connection_id") == from_connection
                and _s(entry, "owner_sub") == peer.owner_sub
                and "saved_session" not in (entry or {})
            )

        await self._put_in_live_room("recover_peer", peer, now=now, condition=left_by_that_connection)

    def _transaction(self, operation: str, room_ok: bool, entry_ok: bool) -> None:
        """A TransactWriteItems of a check on the room and a write of the entry."""
        if not (room_ok and entry_ok):
            reasons = tuple(None if ok else "ConditionalCheckFailed" for ok in (room_ok, entry_ok))
            code = "TransactionCanceledException"
            raise ConditionFailed("condition failed", aws_code=code, operation=operation, reasons=reasons)

    async def _put_in_live_room(
        self,
        operation: str,
        peer: PeerRecord,
        *,
        now: int,
        condition: Callable[[Item | None], bool],
        as_read: Room | None = None,
    ) -> None:
        def transact() -> None:
            room = self.rooms_table.get(peer.room_id)
            room_ok = room is not None and int(room["expires_at"]["N"]) > int(now)
            if room is not None and as_read is not None:  # still that room, its node and marks
                read = room_item(as_read)
                room_ok = room_ok and all(
                    room.get(name) == read.get(name)
                    for name in ("token_hash", "node_id", "held_until_ms", "saved_until")
                )
            self._transaction(operation, room_ok, condition(self.peers_table.get((peer.room_id, peer.peer_id))))
            self.peers_table[(peer.room_id, peer.peer_id)] = peer_item(peer)

        try:
            await self._run(operation, transact)
        except ConditionFailed as exc:
            if exc.reasons[:1] == ("ConditionalCheckFailed",):
                raise NotFound("room is gone or expired", operation=operation) from exc
            raise

    async def refresh_peer(self, room_id: str, peer_id: str, connection_id: str, expires_at: int) -> None:
        def transact() -> None:
            entry = self.peers_table.get((room_id, peer_id))
            self._transaction("refresh_peer", room_id in self.rooms_table, _s(entry, "connection_id") == connection_id)
            assert entry is not None
            entry["expires_at"] = number(expires_at)

        try:
            await self._run("refresh_peer", transact)
        except ConditionFailed as exc:
            if exc.reasons[:1] == ("ConditionalCheckFailed",):
                raise NotFound("room was deleted", operation="refresh_peer") from exc
            raise

    def _held_by(self, operation: str, room_id: str, peer_id: str, connection_id: str) -> Item:
        entry = self.peers_table.get((room_id, peer_id))
        if entry is None or _s(entry, "connection_id") != connection_id:
            raise _condition_failed(operation)
        return entry

    async def update_peer_metadata(
        self, room_id: str, peer_id: str, connection_id: str, metadata: dict[str, Any]
    ) -> None:
        def update() -> None:
            self._held_by("update_peer_metadata", room_id, peer_id, connection_id)["metadata"] = string(
                compact_json(metadata)
            )

        await self._run("update_peer_metadata", update)

    async def update_peer_connections(
        self, room_id: str, peer_id: str, connection_id: str, connections: dict[str, Any]
    ) -> None:
        def update() -> None:
            entry = self._held_by("update_peer_connections", room_id, peer_id, connection_id)
            entry["connections"] = string(compact_json(connections))

        await self._run("update_peer_connections", update)

    async def release_peer(self, room_id: str, peer_id: str, connection_id: str) -> None:
        def delete() -> None:
            self._held_by("release_peer", room_id, peer_id, connection_id)
            del self.peers_table[(room_id, peer_id)]

        with contextlib.suppress(ConditionFailed):
            await self._run("release_peer", delete)

    async def list_peers(self, room_id: str, *, now: float, include_expired: bool = False) -> list[PeerRecord]:
        items = await self._run("list_peers", lambda: [i for (r, _), i in self.peers_table.items() if r == room_id])
        peers = (peer_from(item) for item in items)
        return sorted(
            (p for p in peers if include_expired or p.expires_at > now), key=lambda p: (p.connected_at, p.peer_id)
        )

    async def rooms_of_peer(self, peer_id: str, *, now: float) -> list[str]:
        items = await self._run("rooms_of_peer", lambda: [i for (_, p), i in self.peers_table.items() if p == peer_id])
        return sorted({item["room_id"]["S"] for item in items if int(item["expires_at"]["N"]) > now})

    async def delete_peers(self, room_id: str, peer_ids: Iterable[str]) -> None:
        keys = [(room_id, peer_id) for peer_id in peer_ids]
        await self._run("delete_peers", lambda: self._batch("delete_peers", self.peers_table, keys))

    async def peer_entry(self, room_id: str, peer_id: str) -> PeerRecord | None:
        item = await self._run("peer_entry", lambda: self.peers_table.get((room_id, peer_id)))
        return peer_from(item) if item else None

    # Held messages -----------------------------------------------------------------

    async def hold_message(self, message: QueuedMessage, *, held_until_ms: int | None) -> None:
        def put() -> None:
            taken = (message.room_id, message.key) in self.messages_table
            if held_until_ms is None:
                if taken:
                    raise _condition_failed("hold_message")
            else:
                room = self.rooms_table.get(message.room_id)
                self._transaction("hold_message", room is not None, not taken)
                assert room is not None
                room["held_until_ms"] = number(held_until_ms)
            self.messages_table[(message.room_id, message.key)] = message_item(message)

        try:
            await self._run("hold_message", put)
        except ConditionFailed as exc:
            if exc.reasons[:1] == ("ConditionalCheckFailed",):
                raise NotFound("room is gone", operation="hold_message") from exc
            raise

    def _room_messages(self, room_id: str, prefix: str = "") -> list[Item]:
        """A room's items in the messages table whose key starts with ``prefix``, in key order."""
        keys = sorted(k for r, k in self.messages_table if r == room_id and k.startswith(prefix))
        return [self.messages_table[(room_id, key)] for key in keys]

    async def held_messages(
        self, room_id: str, *, to_peer_id: str | None = None, with_frames: bool = True
    ) -> list[QueuedMessage]:
        def query() -> list[Item]:
            prefix = "" if to_peer_id is None else f"{to_peer_id}#"
            items = [i for i in self._room_messages(room_id, prefix) if is_held_message_key(i["msg_key"]["S"])]
            if with_frames:
                return items
            return [{name: value for name, value in i.items() if name not in ("frame", "expires_at")} for i in items]

        return [message_from(item) for item in await self._run("held_messages", query)]

    async def take_message(self, room_id: str, key: str) -> QueuedMessage | None:
        def delete() -> Item:
            if (room_id, key) not in self.messages_table:
                raise _condition_failed("take_message")
            return self.messages_table.pop((room_id, key))

        try:
            item = await self._run("take_message", delete)
        except ConditionFailed:
            return None
        return message_from(item)

    async def claim_messages(self, room_id: str, keys: Iterable[str], until_ms: int) -> None:
        for key in keys:

            def update(key: str = key) -> None:
                item = self.messages_table.get((room_id, key))
                if item is None:
                    raise _condition_failed("claim_messages")
                item["claimed_until_ms"] = number(until_ms)

            try:
                await self._run("claim_messages", update)
            except ConditionFailed:  # already delivered or expired
                continue

    async def delete_messages(self, room_id: str, keys: Iterable[str]) -> None:
        batch = [(room_id, key) for key in keys]
        await self._run("delete_messages", lambda: self._batch("delete_messages", self.messages_table, batch))

    async def delete_room_messages(self, room_id: str) -> None:
        items = await self._run("delete_room_messages", lambda: self._room_messages(room_id))
        await self.delete_messages(room_id, [item["msg_key"]["S"] for item in items])

    # Bookings ----------------------------------------------------------------------

    async def booking(self, room_id: str, peer_id: str) -> Booking:
        item = await self._run("booking", lambda: self.messages_table.get((room_id, booking_key(peer_id))))
        return booking_from(room_id, peer_id, item)

    async def write_booking(self, booking: Booking, *, read_version: int, peer_live_at: int | None = None) -> None:
        def put() -> None:
            key = (booking.room_id, booking_key(booking.peer_id))
            stored = self.messages_table.get(key)
            version_ok = (
                stored is None
                if not read_version
                else stored is not None and stored["version"]["N"] == str(read_version)
            )
            if peer_live_at is not None:
                entry = self.peers_table.get((booking.room_id, booking.peer_id))
                entry_ok = entry is not None and int(entry["expires_at"]["N"]) > peer_live_at
                if not entry_ok:
                    raise NotFound("the peer is not in the room", operation="write_booking")
            if not version_ok:
                raise _condition_failed("write_booking")
            self.messages_table[key] = booking_item(booking)

        await self._run("write_booking", put)

    # Saved sessions ----------------------------------------------------------------

    async def save_session(self, session: SavedSession) -> None:
        peer = session.peer
        if session.frames:
            keys = [(peer.room_id, session_frame_key(peer.peer_id, seq)) for seq, _ in session.frames]
            items = [session_frame_item(peer, seq, frame) for seq, frame in session.frames]
            await self._run("save_session", lambda: self._batch("save_session", self.messages_table, keys, items))

        def update() -> None:
            entry = self._held_by("save_session", peer.room_id, peer.peer_id, peer.connection_id)
            entry["saved_session"] = string(session_state(session))
            entry["expires_at"] = number(peer.expires_at)

        await self._run("save_session", update)

    async def drop_session(self, saved: SavedSession) -> bool:
        def delete() -> None:
            entry = self._held_by("drop_session", saved.peer.room_id, saved.peer.peer_id, saved.peer.connection_id)
            if "saved_session" not in entry:
                raise _condition_failed("drop_session")
            del self.peers_table[(saved.peer.room_id, saved.peer.peer_id)]

        try:
            await self._run("drop_session", delete)
        except ConditionFailed:
            return False
        return True

    async def delete_session_frames(self, saved: SavedSession) -> None:
        keys = [session_frame_key(saved.peer.peer_id, seq) for seq, _ in saved.frames]
        if keys:
            with contextlib.suppress(RepositoryError):  # their TTL cleans up
                await self.delete_messages(saved.peer.room_id, keys)

    async def load_session(self, room_id: str, peer_id: str, *, whole: bool = True) -> SavedSession | None:
        item = await self._run("load_session", lambda: self.peers_table.get((room_id, peer_id)))
        if not item or "saved_session" not in item:
            return None
        state = json.loads(item["saved_session"]["S"])

        def frames() -> dict[int, str]:
            stored = self._room_messages(room_id, session_frame_prefix(peer_id))
            return {session_frame_seq(i["msg_key"]["S"]): i["frame"]["S"] for i in stored}

        return saved_session_from(item, state, await self._run("load_session", frames), whole=whole)

    async def take_session(self, peer: PeerRecord, saved: SavedSession, *, now: int) -> None:
        def still_saved(entry: Item | None) -> bool:
            return _s(entry, "connection_id") == saved.peer.connection_id and "saved_session" in (entry or {})

        await self._put_in_live_room("take_session", peer, now=now, condition=still_saved)
        await self.delete_session_frames(saved)

    # Health ------------------------------------------------------------------------

    async def check(self) -> None:
        for _ in range(3):  # one DescribeTable per table
            await self._run("describe_table", lambda: None)
