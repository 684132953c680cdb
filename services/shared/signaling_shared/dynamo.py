"""DynamoDB access for rooms, the peers routing table and held messages, botocore hidden.

Every public method is a coroutine that runs the blocking boto3 call in a worker
thread, so no service can block its event loop by accident. botocore errors become
the typed errors below (each keeps the AWS error code); services branch on types.

Items whose ``expires_at`` has passed are treated as gone by every reader, because
DynamoDB deletes TTL-expired items lazily (up to days later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from signaling_shared.aws import make_client
from signaling_shared.errors import ConditionFailed, NotFound, RepositoryError, Throttled, Unavailable
from signaling_shared.settings import CommonSettings

T = TypeVar("T")

PEER_ID_INDEX = "peer_id-index"
HELD_TTL_MARGIN_SECONDS = 3600
_BATCH_ATTEMPTS = 6


_THROTTLE_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})


def translate_error(operation: str, exc: Exception) -> RepositoryError:
    """Map a botocore exception to the typed error a service can branch on."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        if code == "ConditionalCheckFailedException":
            return ConditionFailed("condition failed", aws_code=code, operation=operation)
        if code == "TransactionCanceledException":
            reasons = tuple(
                (reason.get("Code") if reason.get("Code") not in (None, "None") else None)
                for reason in exc.response.get("CancellationReasons", [])
            )
            if "ConditionalCheckFailed" in reasons:
                return ConditionFailed("condition failed", aws_code=code, operation=operation, reasons=reasons)
            if any(r in _THROTTLE_CODES or r == "ThrottlingError" for r in reasons):
                return Throttled("throttled", aws_code=code, operation=operation, reasons=reasons)
        if code in _THROTTLE_CODES:
            return Throttled("throttled", aws_code=code, operation=operation)
        return Unavailable(f"request refused ({code})", aws_code=code, operation=operation)
    return Unavailable(f"unreachable ({type(exc).__name__})", operation=operation)


@dataclass(frozen=True, slots=True)
class Room:
    room_id: str
    created_by: str
    token_hash: str
    created_at: int
    expires_at: int
    node_id: str = ""  # the relay node that serves it ("": any node, as with a single relay)

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at


# The relay nodes live in one item of the rooms table (room ids never contain '#'): one
# consistent read lists them all, and each node writes only its own entry of the map.
NODES_ITEM = "#relay-nodes"
# A deleted room leaves a tombstone for a day (the TTL removes it): a relay that finds a
# room gone can tell a deletion by its creator from a record lost in a storage fault.
TOMBSTONE_PREFIX = "#deleted:"
TOMBSTONE_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class RelayNode:
    """A ws-relay process as rooms-api places rooms on it."""

    node_id: str
    ws_url: str
    rooms: int  # rooms with peers at its last heartbeat
    capacity: int  # its max_connections
    expires_at: float  # its last heartbeat plus the node TTL (to the millisecond: fencing needs it)
    assigned: int = 0  # rooms placed on it since that heartbeat
    draining: bool = False  # stopping: no new rooms, but it keeps its rooms until it expires

    def is_live(self, now: float) -> bool:
        return now < self.expires_at

    @property
    def load(self) -> float:
        """What placement compares: rooms served and promised, per unit of capacity."""
        return (self.rooms + self.assigned) / max(self.capacity, 1)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A live peer in the routing table: who owns the peer id and which relay holds it."""

    room_id: str
    peer_id: str
    owner_sub: str
    owner_username: str
    connection_id: str
    node_id: str
    connected_at: int
    expires_at: int
    role: str = "peer"
    metadata: dict[str, Any] = field(default_factory=dict)
    saved: bool = False  # a previous process saved this peer's session for a resume
    # The registration it belongs to (kept over resumes): a node that takes over the room of
    # a node that died recovers the session under it, so what was owed to it still is.
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message held for a peer that is not in its room yet, until delivered or expired.

    ``key`` sorts a room's messages by target, then in the order they were accepted.
    """

    room_id: str
    key: str
    to_peer_id: str
    from_peer_id: str
    from_session: str  # the sender's session (one registration and its resumes)
    correlation_id: str | int
    expires_at_ms: int
    frame: str = ""  # left out when listing for timers
    # Sent to its target by a process that then shut down: being delivered through the
    # target's saved session until then.
    claimed_until_ms: int = 0
    # Set on an answer (ack, failure) held for a sender that had not resumed here yet: only
    # that session may receive it, and nobody is told when it expires.
    for_session: str = ""

    @staticmethod
    def key_for(to_peer_id: str, accepted_ms: int, node_id: str, counter: int) -> str:
        # '#' is not allowed in peer ids, so a target's prefix never matches another's.
        return f"{to_peer_id}#{accepted_ms:015d}#{node_id}#{counter:012d}"


@dataclass(frozen=True, slots=True)
class SavedSession:
    """A peer's session as a relay process left it at shutdown, for the next one to resume:
    the routing entry plus what a resume needs. ``frames`` are the numbered frames the client
    had not confirmed, oldest first; ``owed`` says what each one's receipt settles."""

    peer: PeerRecord
    session_id: str
    resume_hashes: tuple[str, ...]
    seq: int
    frames: list[tuple[int, str]] = field(default_factory=list)
    owed: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # the seqs of frames that are answers
    in_flight: list[str | int] = field(default_factory=list)  # ids it sent, awaiting an outcome


def _session_frame_key(peer_id: str, seq: int) -> str:
    # '!' is not allowed in peer ids and sorts before '#': never a held message's key.
    return f"{peer_id}!{seq:015d}"


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


def _room_item(room: Room) -> dict[str, Any]:
    item = {
        "room_id": _s(room.room_id),
        "created_by": _s(room.created_by),
        "token_hash": _s(room.token_hash),
        "created_at": _n(room.created_at),
        "expires_at": _n(room.expires_at),
    }
    if room.node_id:
        item["node_id"] = _s(room.node_id)
    return item


def _room_from(item: dict[str, Any]) -> Room:
    return Room(
        room_id=item["room_id"]["S"],
        created_by=item["created_by"]["S"],
        token_hash=item["token_hash"]["S"],
        created_at=int(item["created_at"]["N"]),
        expires_at=int(item["expires_at"]["N"]),
        node_id=item.get("node_id", {}).get("S", ""),
    )


def _node_entry(node: RelayNode) -> dict[str, Any]:
    return {
        "M": {
            "ws_url": _s(node.ws_url),
            "rooms": _n(node.rooms),
            "capacity": _n(node.capacity),
            "expires_at": {"N": f"{node.expires_at:.3f}"},
            "assigned": _n(node.assigned),
            "draining": {"BOOL": node.draining},
        }
    }


def _node_from(node_id: str, entry: dict[str, Any]) -> RelayNode:
    fields = entry["M"]
    return RelayNode(
        node_id=node_id,
        ws_url=fields["ws_url"]["S"],
        rooms=int(fields["rooms"]["N"]),
        capacity=int(fields["capacity"]["N"]),
        expires_at=float(fields["expires_at"]["N"]),
        assigned=int(fields.get("assigned", {"N": "0"})["N"]),
        draining=bool(fields.get("draining", {"BOOL": False})["BOOL"]),
    )


def _peer_item(peer: PeerRecord) -> dict[str, Any]:
    return {
        "room_id": _s(peer.room_id),
        "peer_id": _s(peer.peer_id),
        "owner_sub": _s(peer.owner_sub),
        "owner_username": _s(peer.owner_username),
        "connection_id": _s(peer.connection_id),
        "node_id": _s(peer.node_id),
        "connected_at": _n(peer.connected_at),
        "expires_at": _n(peer.expires_at),
        "role": _s(peer.role),
        "metadata": _s(json.dumps(peer.metadata, separators=(",", ":"))),
        **({"session_id": _s(peer.session_id)} if peer.session_id else {}),
    }


def _peer_from(item: dict[str, Any]) -> PeerRecord:
    return PeerRecord(
        room_id=item["room_id"]["S"],
        peer_id=item["peer_id"]["S"],
        owner_sub=item["owner_sub"]["S"],
        owner_username=item.get("owner_username", {}).get("S", ""),
        connection_id=item["connection_id"]["S"],
        node_id=item.get("node_id", {}).get("S", ""),
        connected_at=int(item["connected_at"]["N"]),
        expires_at=int(item["expires_at"]["N"]),
        role=item.get("role", {}).get("S", "peer"),
        metadata=_json_object(item.get("metadata", {}).get("S", "{}")),
        saved="saved_session" in item,
        session_id=item.get("session_id", {}).get("S", ""),
    )


def _message_item(message: QueuedMessage) -> dict[str, Any]:
    return {
        "room_id": _s(message.room_id),
        "msg_key": _s(message.key),
        "to_peer_id": _s(message.to_peer_id),
        "from_peer_id": _s(message.from_peer_id),
        "from_session": _s(message.from_session),
        "correlation_id": _s(json.dumps(message.correlation_id)),
        "expires_at_ms": _n(message.expires_at_ms),
        # TTL: a margin past the expiry, so the sender can still be told if it is away then.
        "expires_at": _n(-(-message.expires_at_ms // 1000) + HELD_TTL_MARGIN_SECONDS),
        "frame": _s(message.frame),
        "for_session": _s(message.for_session),
    }


def _message_from(item: dict[str, Any]) -> QueuedMessage:
    correlation_id = json.loads(item["correlation_id"]["S"])
    return QueuedMessage(
        room_id=item["room_id"]["S"],
        key=item["msg_key"]["S"],
        to_peer_id=item["to_peer_id"]["S"],
        from_peer_id=item["from_peer_id"]["S"],
        from_session=item["from_session"]["S"],
        correlation_id=correlation_id if isinstance(correlation_id, str | int) else str(correlation_id),
        expires_at_ms=int(item["expires_at_ms"]["N"]),
        frame=item.get("frame", {}).get("S", ""),
        claimed_until_ms=int(item.get("claimed_until_ms", {}).get("N", "0")),
        for_session=item.get("for_session", {}).get("S", ""),
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Repository:
    """Rooms, the peers routing table and held messages.

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
        self._client = client
        self.rooms_table = rooms_table
        self.peers_table = peers_table
        self.messages_table = messages_table
        self._on_error = on_error

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

    async def _call(self, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(partial(fn, *args, **kwargs))
        except (ClientError, BotoCoreError) as exc:
            error = translate_error(operation, exc)
            if self._on_error is not None and not isinstance(error, ConditionFailed):
                self._on_error(operation, error)
            raise error from exc

    # Rooms -------------------------------------------------------------------------

    async def create_room(self, room: Room) -> None:
        """Store a new room; ConditionFailed if the id is taken."""
        await self._call(
            "create_room",
            self._client.put_item,
            TableName=self.rooms_table,
            Item=_room_item(room),
            ConditionExpression="attribute_not_exists(room_id)",
        )

    async def get_room(self, room_id: str) -> Room:
        """The room, expired or not (callers decide); NotFound when absent."""
        response = await self._call(
            "get_room",
            self._client.get_item,
            TableName=self.rooms_table,
            Key={"room_id": _s(room_id)},
            ConsistentRead=True,
        )
        item = response.get("Item")
        if not item:
            raise NotFound("room not found", operation="get_room")
        return _room_from(item)

    async def delete_room(self, room_id: str, *, now: float) -> None:
        """Delete the room, leaving its tombstone first (see ``was_deleted``)."""
        tombstone = {"room_id": _s(TOMBSTONE_PREFIX + room_id), "expires_at": _n(int(now) + TOMBSTONE_SECONDS)}
        await self._call("delete_room", self._client.put_item, TableName=self.rooms_table, Item=tombstone)
        await self._call(
            "delete_room", self._client.delete_item, TableName=self.rooms_table, Key={"room_id": _s(room_id)}
        )

    async def was_deleted(self, room_id: str) -> bool:
        """Whether the room was deleted (through rooms-api) within the last day; a room that is
        gone without a tombstone was lost (or expired and removed by the TTL)."""
        response = await self._call(
            "was_deleted",
            self._client.get_item,
            TableName=self.rooms_table,
            Key={"room_id": _s(TOMBSTONE_PREFIX + room_id)},
            ConsistentRead=True,
        )
        return bool(response.get("Item"))

    # Relay nodes -------------------------------------------------------------------

    async def heartbeat_node(self, node: RelayNode) -> None:
        """Write ``node``'s entry (its load, a fresh expiry, nothing assigned since)."""
        update = {
            "TableName": self.rooms_table,
            "Key": {"room_id": _s(NODES_ITEM)},
            "UpdateExpression": "SET nodes.#node = :entry",
            "ExpressionAttributeNames": {"#node": node.node_id},
            "ExpressionAttributeValues": {":entry": _node_entry(node)},
            "ConditionExpression": "attribute_exists(nodes)",
        }
        try:
            await self._call("heartbeat_node", self._client.update_item, **update)
        except ConditionFailed:  # the first node ever: create the map, then write into it
            with contextlib.suppress(ConditionFailed):
                await self._call(
                    "heartbeat_node",
                    self._client.put_item,
                    TableName=self.rooms_table,
                    Item={"room_id": _s(NODES_ITEM), "nodes": {"M": {}}},
                    ConditionExpression="attribute_not_exists(room_id)",
                )
            await self._call("heartbeat_node", self._client.update_item, **update)

    async def prune_nodes(self, *, expired_before: int) -> list[str]:
        """Remove the entries of nodes silent since before ``expired_before`` (crashed, scaled
        in: their rooms have moved on long ago), each only if it is still that old."""
        pruned = []
        for node in await self.relay_nodes():
            if node.expires_at >= expired_before:
                continue
            with contextlib.suppress(ConditionFailed):
                await self._call(
                    "prune_nodes",
                    self._client.update_item,
                    TableName=self.rooms_table,
                    Key={"room_id": _s(NODES_ITEM)},
                    UpdateExpression="REMOVE nodes.#node",
                    ExpressionAttributeNames={"#node": node.node_id},
                    ExpressionAttributeValues={":cutoff": _n(expired_before)},
                    ConditionExpression="nodes.#node.expires_at < :cutoff",
                )
                pruned.append(node.node_id)
        return pruned

    async def relay_nodes(self) -> list[RelayNode]:
        """Every node entry, live or not (callers decide), by node id."""
        response = await self._call(
            "relay_nodes",
            self._client.get_item,
            TableName=self.rooms_table,
            Key={"room_id": _s(NODES_ITEM)},
            ConsistentRead=True,
        )
        entries = response.get("Item", {}).get("nodes", {}).get("M", {})
        return sorted((_node_from(node_id, entry) for node_id, entry in entries.items()), key=lambda n: n.node_id)

    async def move_room(self, room_id: str, *, from_node: str, to_node: str) -> None:
        """Give the room to ``to_node`` if ``from_node`` ("": no node) still has it;
        ConditionFailed if not (another node took it first, or the room is gone)."""
        values = {":to": _s(to_node)}
        if from_node:
            condition = "attribute_exists(room_id) AND node_id = :from"
            values[":from"] = _s(from_node)
        else:
            condition = "attribute_exists(room_id) AND attribute_not_exists(node_id)"
        await self._call(
            "move_room",
            self._client.update_item,
            TableName=self.rooms_table,
            Key={"room_id": _s(room_id)},
            UpdateExpression="SET node_id = :to",
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
        )

    async def count_assignment(self, node_id: str) -> None:
        """One more room promised to ``node_id`` before its next heartbeat; ConditionFailed if
        its entry is gone."""
        await self._call(
            "count_assignment",
            self._client.update_item,
            TableName=self.rooms_table,
            Key={"room_id": _s(NODES_ITEM)},
            UpdateExpression="SET nodes.#node.assigned = nodes.#node.assigned + :one",
            ExpressionAttributeNames={"#node": node_id},
            ExpressionAttributeValues={":one": _n(1)},
            ConditionExpression="attribute_exists(nodes.#node)",
        )

    # Peers -------------------------------------------------------------------------

    def _room_check(self, room_id: str, condition: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
        check: dict[str, Any] = {
            "TableName": self.rooms_table,
            "Key": {"room_id": _s(room_id)},
            "ConditionExpression": condition,
        }
        if values:
            check["ExpressionAttributeValues"] = values
        return {"ConditionCheck": check}

    async def claim_peer(self, peer: PeerRecord, *, now: int) -> None:
        """Write ``peer`` if its room is live and no live entry of another identity holds its id.

        One transaction with a check on the room, so a registration racing the room's
        deletion cannot leave an entry behind. NotFound: the room is gone or expired;
        ConditionFailed: the peer id is live in this room under another identity.
        """
        await self._put_peer_in_live_room(
            "claim_peer",
            peer,
            now=now,
            condition="attribute_not_exists(peer_id) OR owner_sub = :sub OR expires_at <= :now",
            values={":sub": _s(peer.owner_sub), ":now": _n(now)},
        )

    async def recover_peer(self, peer: PeerRecord, *, from_connection: str, now: int) -> None:
        """Write ``peer`` over the entry a relay process that died left for it, if that entry is
        still the one of ``from_connection`` and unsaved. NotFound: the room is gone or expired;
        ConditionFailed: the entry changed (taken, resumed, released) since it was read."""
        await self._put_peer_in_live_room(
            "recover_peer",
            peer,
            now=now,
            condition="connection_id = :c AND owner_sub = :sub AND attribute_not_exists(saved_session)",
            values={":c": _s(from_connection), ":sub": _s(peer.owner_sub)},
        )

    async def _put_peer_in_live_room(
        self, operation: str, peer: PeerRecord, *, now: int, condition: str, values: dict[str, Any]
    ) -> None:
        """Put ``peer``'s entry under ``condition``, in one transaction with a check that its
        room exists and has not expired. NotFound: the room failed; ConditionFailed: the entry."""
        try:
            await self._call(
                operation,
                self._client.transact_write_items,
                TransactItems=[
                    self._room_check(
                        peer.room_id, "attribute_exists(room_id) AND expires_at > :now", {":now": _n(now)}
                    ),
                    {
                        "Put": {
                            "TableName": self.peers_table,
                            "Item": _peer_item(peer),
                            "ConditionExpression": condition,
                            "ExpressionAttributeValues": values,
                        }
                    },
                ],
            )
        except ConditionFailed as exc:
            if exc.reasons[:1] == ("ConditionalCheckFailed",):
                raise NotFound("room is gone or expired", operation=operation) from exc
            raise

    async def refresh_peer(self, room_id: str, peer_id: str, connection_id: str, expires_at: int) -> None:
        """Extend a live entry's lease.

        NotFound: the room was deleted; ConditionFailed: the entry was removed or taken over.
        """
        try:
            await self._call(
                "refresh_peer",
                self._client.transact_write_items,
                TransactItems=[
                    self._room_check(room_id, "attribute_exists(room_id)"),
                    {
                        "Update": {
                            "TableName": self.peers_table,
                            "Key": {"room_id": _s(room_id), "peer_id": _s(peer_id)},
                            "UpdateExpression": "SET expires_at = :exp",
                            "ConditionExpression": "connection_id = :cid",
                            "ExpressionAttributeValues": {":exp": _n(expires_at), ":cid": _s(connection_id)},
                        }
                    },
                ],
            )
        except ConditionFailed as exc:
            if exc.reasons[:1] == ("ConditionalCheckFailed",):
                raise NotFound("room was deleted", operation="refresh_peer") from exc
            raise

    async def update_peer_metadata(
        self, room_id: str, peer_id: str, connection_id: str, metadata: dict[str, Any]
    ) -> None:
        """Store a live entry's new metadata; ConditionFailed if the entry is no longer ours."""
        await self._call(
            "update_peer_metadata",
            self._client.update_item,
            TableName=self.peers_table,
            Key={"room_id": _s(room_id), "peer_id": _s(peer_id)},
            UpdateExpression="SET metadata = :m",
            ConditionExpression="connection_id = :cid",
            ExpressionAttributeValues={
                ":m": _s(json.dumps(metadata, separators=(",", ":"))),
                ":cid": _s(connection_id),
            },
        )

    async def release_peer(self, room_id: str, peer_id: str, connection_id: str) -> None:
        """Delete the entry if this connection still holds it (a takeover keeps its own)."""
        with contextlib.suppress(ConditionFailed):
            await self._call(
                "release_peer",
                self._client.delete_item,
                TableName=self.peers_table,
                Key={"room_id": _s(room_id), "peer_id": _s(peer_id)},
                ConditionExpression="connection_id = :cid",
                ExpressionAttributeValues={":cid": _s(connection_id)},
            )

    async def list_peers(self, room_id: str, *, now: float, include_expired: bool = False) -> list[PeerRecord]:
        """Live peers of a room (all entries with ``include_expired``), oldest first."""
        items = await self._call("list_peers", self._query_all, room_id)
        peers = (_peer_from(item) for item in items)
        return sorted(
            (p for p in peers if include_expired or p.expires_at > now), key=lambda p: (p.connected_at, p.peer_id)
        )

    def _query_all(self, room_id: str) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("query")
        items: list[dict[str, Any]] = []
        for page in paginator.paginate(
            TableName=self.peers_table,
            KeyConditionExpression="room_id = :r",
            ExpressionAttributeValues={":r": _s(room_id)},
            ConsistentRead=True,
        ):
            items.extend(page.get("Items", []))
        return items

    async def rooms_of_peer(self, peer_id: str, *, now: float) -> list[str]:
        """Rooms in which ``peer_id`` is live (through the peer-id index)."""
        response = await self._call(
            "rooms_of_peer",
            self._client.query,
            TableName=self.peers_table,
            IndexName=PEER_ID_INDEX,
            KeyConditionExpression="peer_id = :p",
            ExpressionAttributeValues={":p": _s(peer_id)},
        )
        return sorted(
            {item["room_id"]["S"] for item in response.get("Items", []) if int(item["expires_at"]["N"]) > now}
        )

    async def delete_peers(self, room_id: str, peer_ids: Iterable[str]) -> None:
        keys = [{"room_id": _s(room_id), "peer_id": _s(p)} for p in peer_ids]
        await self._call("delete_peers", self._batch_delete, self.peers_table, keys)

    # Held messages -----------------------------------------------------------------

    async def hold_message(self, message: QueuedMessage) -> None:
        await self._call(
            "hold_message",
            self._client.put_item,
            TableName=self.messages_table,
            Item=_message_item(message),
            ConditionExpression="attribute_not_exists(msg_key)",
        )

    async def held_messages(
        self, room_id: str, *, to_peer_id: str | None = None, with_frames: bool = True
    ) -> list[QueuedMessage]:
        """A room's held messages (only those for ``to_peer_id`` if given) in key order,
        expired ones included: callers decide."""
        items = await self._call("held_messages", self._query_messages, room_id, to_peer_id, with_frames)
        return [_message_from(item) for item in items]

    def _query_messages(self, room_id: str, to_peer_id: str | None, with_frames: bool) -> list[dict[str, Any]]:
        query: dict[str, Any] = {
            "TableName": self.messages_table,
            "KeyConditionExpression": "room_id = :r",
            "ExpressionAttributeValues": {":r": _s(room_id)},
            "ConsistentRead": True,
        }
        if to_peer_id is not None:
            query["KeyConditionExpression"] += " AND begins_with(msg_key, :p)"
            query["ExpressionAttributeValues"][":p"] = _s(f"{to_peer_id}#")
        if not with_frames:
            query["ProjectionExpression"] = (
                "room_id, msg_key, to_peer_id, from_peer_id, from_session, correlation_id, expires_at_ms,"
                " claimed_until_ms, for_session"
            )
        items: list[dict[str, Any]] = []
        for page in self._client.get_paginator("query").paginate(**query):
            items.extend(item for item in page.get("Items", []) if "!" not in item["msg_key"]["S"])
        return items

    async def take_message(self, room_id: str, key: str) -> QueuedMessage | None:
        """Delete a held message and return it; None if it was already taken."""
        try:
            response = await self._call(
                "take_message",
                self._client.delete_item,
                TableName=self.messages_table,
                Key={"room_id": _s(room_id), "msg_key": _s(key)},
                ConditionExpression="attribute_exists(msg_key)",
                ReturnValues="ALL_OLD",
            )
        except ConditionFailed:
            return None
        return _message_from(response["Attributes"])

    async def claim_messages(self, room_id: str, keys: Iterable[str], until_ms: int) -> None:
        """Mark held messages as being delivered through a saved session until ``until_ms``."""
        for key in keys:
            with contextlib.suppress(ConditionFailed):  # already delivered or expired
                await self._call(
                    "claim_messages",
                    self._client.update_item,
                    TableName=self.messages_table,
                    Key={"room_id": _s(room_id), "msg_key": _s(key)},
                    UpdateExpression="SET claimed_until_ms = :u",
                    ConditionExpression="attribute_exists(msg_key)",
                    ExpressionAttributeValues={":u": _n(until_ms)},
                )

    async def delete_messages(self, room_id: str, keys: Iterable[str]) -> None:
        items = [{"room_id": _s(room_id), "msg_key": _s(key)} for key in keys]
        await self._call("delete_messages", self._batch_delete, self.messages_table, items)

    async def delete_room_messages(self, room_id: str) -> None:
        """Everything the messages table holds for a room: held messages and saved sessions' frames."""
        keys = await self._call("delete_room_messages", self._room_message_keys, room_id)
        await self.delete_messages(room_id, keys)

    def _room_message_keys(self, room_id: str) -> list[str]:
        keys: list[str] = []
        for page in self._client.get_paginator("query").paginate(
            TableName=self.messages_table,
            KeyConditionExpression="room_id = :r",
            ExpressionAttributeValues={":r": _s(room_id)},
            ProjectionExpression="msg_key",
            ConsistentRead=True,
        ):
            keys.extend(item["msg_key"]["S"] for item in page.get("Items", []))
        return keys

    # Saved sessions ----------------------------------------------------------------

    async def save_session(self, session: SavedSession) -> None:
        """Store a session for the next process: its frames in the messages table, then the
        rest on its routing entry (so an entry with a session always has all its frames).
        ConditionFailed if the entry is no longer this connection's."""
        peer = session.peer
        frames = [
            {
                "PutRequest": {
                    "Item": {
                        "room_id": _s(peer.room_id),
                        "msg_key": _s(_session_frame_key(peer.peer_id, seq)),
                        "frame": _s(frame),
                        "expires_at": _n(peer.expires_at + HELD_TTL_MARGIN_SECONDS),
                    }
                }
            }
            for seq, frame in session.frames
        ]
        if frames:
            await self._call("save_session", self._batch_write, self.messages_table, frames)
        state = {
            "session_id": session.session_id,
            "answers": session.answers,
            "in_flight": session.in_flight,
            "resume_hashes": list(session.resume_hashes),
            "seq": session.seq,
            "frames": [seq for seq, _ in session.frames],
            "owed": [[seq, owed] for seq, owed in session.owed],
        }
        await self._call(
            "save_session",
            self._client.update_item,
            TableName=self.peers_table,
            Key={"room_id": _s(peer.room_id), "peer_id": _s(peer.peer_id)},
            UpdateExpression="SET saved_session = :s, expires_at = :exp",
            ConditionExpression="connection_id = :cid",
            ExpressionAttributeValues={
                ":s": _s(json.dumps(state, separators=(",", ":"))),
                ":exp": _n(peer.expires_at),
                ":cid": _s(peer.connection_id),
            },
        )

    async def drop_session(self, saved: SavedSession) -> bool:
        """Delete the entry of a saved session nobody resumed; False if it was taken."""
        try:
            await self._call(
                "drop_session",
                self._client.delete_item,
                TableName=self.peers_table,
                Key={"room_id": _s(saved.peer.room_id), "peer_id": _s(saved.peer.peer_id)},
                ConditionExpression="connection_id = :cid AND attribute_exists(saved_session)",
                ExpressionAttributeValues={":cid": _s(saved.peer.connection_id)},
            )
        except ConditionFailed:
            return False
        return True

    async def delete_session_frames(self, saved: SavedSession) -> None:
        keys = [_session_frame_key(saved.peer.peer_id, seq) for seq, _ in saved.frames]
        if keys:
            with contextlib.suppress(RepositoryError):  # their TTL cleans up
                await self.delete_messages(saved.peer.room_id, keys)

    async def peer_entry(self, room_id: str, peer_id: str) -> PeerRecord | None:
        """The routing entry of a peer, expired or not, or None."""
        item = await self._peer_item("peer_entry", room_id, peer_id)
        return _peer_from(item) if item else None

    async def _peer_item(self, operation: str, room_id: str, peer_id: str) -> dict[str, Any] | None:
        """A peer's routing-table item as stored (consistent read), or None."""
        response = await self._call(
            operation,
            self._client.get_item,
            TableName=self.peers_table,
            Key={"room_id": _s(room_id), "peer_id": _s(peer_id)},
            ConsistentRead=True,
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    async def load_session(self, room_id: str, peer_id: str, *, whole: bool = True) -> SavedSession | None:
        """The session a previous process saved for this peer, or None. ``whole``: with all
        its frames (else None: it cannot be resumed); otherwise the frames found, if any."""
        item = await self._peer_item("load_session", room_id, peer_id)
        if not item or "saved_session" not in item:
            return None
        state = json.loads(item["saved_session"]["S"])
        stored = await self._call("load_session", self._session_frames, room_id, peer_id)
        frames = [(seq, stored[seq]) for seq in state["frames"] if seq in stored]
        if whole and len(frames) != len(state["frames"]):
            return None  # frames missing (expired): not resumable
        return SavedSession(
            peer=_peer_from(item),
            session_id=str(state["session_id"]),
            answers=[int(seq) for seq in state["answers"]],
            in_flight=list(state.get("in_flight", [])),
            resume_hashes=tuple(state["resume_hashes"]),
            seq=int(state["seq"]),
            frames=frames,
            owed=[(int(seq), owed) for seq, owed in state["owed"]],
        )

    def _session_frames(self, room_id: str, peer_id: str) -> dict[int, str]:
        frames: dict[int, str] = {}
        for page in self._client.get_paginator("query").paginate(
            TableName=self.messages_table,
            KeyConditionExpression="room_id = :r AND begins_with(msg_key, :p)",
            ExpressionAttributeValues={":r": _s(room_id), ":p": _s(f"{peer_id}!")},
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                frames[int(item["msg_key"]["S"].rpartition("!")[2])] = item["frame"]["S"]
        return frames

    async def take_session(self, peer: PeerRecord, saved: SavedSession, *, now: int) -> None:
        """Write ``peer`` over the saved session's entry, if it is still that one (one resume
        wins); the saved session is gone with it. NotFound: the room is gone or expired;
        ConditionFailed: the entry changed (resumed or registered elsewhere)."""
        await self._put_peer_in_live_room(
            "take_session",
            peer,
            now=now,
            condition="connection_id = :cid AND attribute_exists(saved_session)",
            values={":cid": _s(saved.peer.connection_id)},
        )
        await self.delete_session_frames(saved)

    def _batch_delete(self, table: str, keys: list[dict[str, Any]]) -> None:
        self._batch_write(table, [{"DeleteRequest": {"Key": key}} for key in keys])

    def _batch_write(self, table: str, all_requests: list[dict[str, Any]]) -> None:
        for start in range(0, len(all_requests), 25):
            requests = all_requests[start : start + 25]
            pending: dict[str, Any] = {table: requests}
            for attempt in range(_BATCH_ATTEMPTS):
                if attempt:
                    time.sleep(min(0.05 * 2**attempt, 1.0))  # in a worker thread, never on the loop
                response = self._client.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
            else:
                raise Throttled(f"batch write to {table} left unprocessed items", operation="batch_write")

    # Health ------------------------------------------------------------------------

    async def check(self) -> None:
        """Raise unless every table is reachable and active."""
        for table in (self.rooms_table, self.peers_table, self.messages_table):
            response = await self._call("describe_table", self._client.describe_table, TableName=table)
            status = response["Table"]["TableStatus"]
            if status not in ("ACTIVE", "UPDATING"):
                raise Unavailable(f"table {table} is {status}", operation="describe_table")
