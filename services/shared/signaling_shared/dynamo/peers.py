"""The peers routing table: who holds each peer id of a room, on which relay, until when.

An entry is written only while its room is live: the put and a check on the room are one
transaction, so a registration racing the room's deletion cannot leave an entry behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from signaling_shared.dynamo.client import Store
from signaling_shared.dynamo.records import (
    PEER_ID_INDEX,
    PeerRecord,
    Room,
    compact_json,
    number,
    peer_from,
    peer_item,
    string,
)
from signaling_shared.errors import ConditionFailed, NotFound


class PeerStore(Store):
    def _room_check(self, room_id: str, condition: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
        check: dict[str, Any] = {
            "TableName": self._db.rooms_table,
            "Key": {"room_id": string(room_id)},
            "ConditionExpression": condition,
        }
        if values:
            check["ExpressionAttributeValues"] = values
        return {"ConditionCheck": check}

    async def claim_peer(self, peer: PeerRecord, *, now: int, as_read: Room | None = None) -> None:
        """Write ``peer`` if its room is live and no live entry of another identity holds its id,
        nor an entry carrying a saved session (that session must be ended first).

        One transaction with a check on the room, so a registration racing the room's
        deletion cannot leave an entry behind. With ``as_read`` (the room as the caller read it
        earlier, not now), the check also requires the room to be that room still, with the
        same node and marks: the claim then decides exactly what a fresh read would have.
        NotFound: the room is gone or expired (or, with ``as_read``, changed); ConditionFailed:
        the peer id is live in this room under another identity, or saved.
        """
        await self.put_in_live_room(
            "claim_peer",
            peer,
            now=now,
            condition=(
                "attribute_not_exists(peer_id)"
                " OR (attribute_not_exists(saved_session) AND (owner_sub = :sub OR expires_at <= :now))"
            ),
            values={":sub": string(peer.owner_sub), ":now": number(now)},
            as_read=as_read,
        )

    async def recover_peer(self, peer: PeerRecord, *, from_connection: str, now: int) -> None:
        """Write ``peer`` over the entry a relay process that died left for it, if that entry is
        still the one of ``from_connection`` and unsaved. NotFound: the room is gone or expired;
        ConditionFailed: the entry changed (taken, resumed, released) since it was read."""
        await self.put_in_live_room(
            "recover_peer",
            peer,
            now=now,
            condition="connection_id = :c AND owner_sub = :sub AND attribute_not_exists(saved_session)",
            values={":c": string(from_connection), ":sub": string(peer.owner_sub)},
        )

    async def put_in_live_room(
        self,
        operation: str,
        peer: PeerRecord,
        *,
        now: int,
        condition: str,
        values: dict[str, Any],
        as_read: Room | None = None,
    ) -> None:
        """Put ``peer``'s entry under ``condition``, in one transaction with a check that its
        room exists and has not expired (and, with ``as_read``, is unchanged in what a
        registration reads it for). NotFound: the room failed; ConditionFailed: the entry."""
        room_condition, room_values = "attribute_exists(room_id) AND expires_at > :now", {":now": number(now)}
        if as_read is not None:
            unchanged, pinned = _unchanged(as_read)
            room_condition = f"{room_condition} AND {unchanged}"
            room_values.update(pinned)
        try:
            await self._call(
                operation,
                self._client.transact_write_items,
                TransactItems=[
                    self._room_check(peer.room_id, room_condition, room_values),
                    {
                        "Put": {
                            "TableName": self._db.peers_table,
                            "Item": peer_item(peer),
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
                            "TableName": self._db.peers_table,
                            "Key": {"room_id": string(room_id), "peer_id": string(peer_id)},
                            "UpdateExpression": "SET expires_at = :exp",
                            "ConditionExpression": "connection_id = :cid",
                            "ExpressionAttributeValues": {":exp": number(expires_at), ":cid": string(connection_id)},
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
            TableName=self._db.peers_table,
            Key={"room_id": string(room_id), "peer_id": string(peer_id)},
            UpdateExpression="SET metadata = :m",
            ConditionExpression="connection_id = :cid",
            ExpressionAttributeValues={":m": string(compact_json(metadata)), ":cid": string(connection_id)},
        )

    async def update_peer_connections(
        self, room_id: str, peer_id: str, connection_id: str, connections: dict[str, Any]
    ) -> None:
        """Store a live entry's connection outcomes; ConditionFailed if the entry is no longer ours."""
        await self._call(
            "update_peer_connections",
            self._client.update_item,
            TableName=self._db.peers_table,
            Key={"room_id": string(room_id), "peer_id": string(peer_id)},
            UpdateExpression="SET connections = :c",
            ConditionExpression="connection_id = :cid",
            ExpressionAttributeValues={":c": string(compact_json(connections)), ":cid": string(connection_id)},
        )

    async def release_peer(self, room_id: str, peer_id: str, connection_id: str) -> None:
        """Delete the entry if this connection still holds it (a takeover keeps its own)."""
        with contextlib.suppress(ConditionFailed):
            await self._call(
                "release_peer",
                self._client.delete_item,
                TableName=self._db.peers_table,
                Key={"room_id": string(room_id), "peer_id": string(peer_id)},
                ConditionExpression="connection_id = :cid",
                ExpressionAttributeValues={":cid": string(connection_id)},
            )

    async def list_peers(self, room_id: str, *, now: float, include_expired: bool = False) -> list[PeerRecord]:
        """Live peers of a room (all entries with ``include_expired``), oldest first."""
        items = await self._call("list_peers", self._query_all, room_id)
        peers = (peer_from(item) for item in items)
        return sorted(
            (p for p in peers if include_expired or p.expires_at > now), key=lambda p: (p.connected_at, p.peer_id)
        )

    def _query_all(self, room_id: str) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("query")
        items: list[dict[str, Any]] = []
        for page in paginator.paginate(
            TableName=self._db.peers_table,
            KeyConditionExpression="room_id = :r",
            ExpressionAttributeValues={":r": string(room_id)},
            ConsistentRead=True,
        ):
            items.extend(page.get("Items", []))
        return items

    async def rooms_of_peer(self, peer_id: str, *, now: float) -> list[str]:
        """Rooms in which ``peer_id`` is live (through the peer-id index)."""
        response = await self._call(
            "rooms_of_peer",
            self._client.query,
            TableName=self._db.peers_table,
            IndexName=PEER_ID_INDEX,
            KeyConditionExpression="peer_id = :p",
            ExpressionAttributeValues={":p": string(peer_id)},
        )
        return sorted(
            {item["room_id"]["S"] for item in response.get("Items", []) if int(item["expires_at"]["N"]) > now}
        )

    async def delete_peers(self, room_id: str, peer_ids: Iterable[str]) -> None:
        keys = [{"room_id": string(room_id), "peer_id": string(p)} for p in peer_ids]
        await self._call("delete_peers", self._db.batch_delete, self._db.peers_table, keys)

    async def peer_entry(self, room_id: str, peer_id: str) -> PeerRecord | None:
        """The routing entry of a peer, expired or not, or None."""
        item = await self.peer_item("peer_entry", room_id, peer_id)
        return peer_from(item) if item else None

    async def peer_item(self, operation: str, room_id: str, peer_id: str) -> dict[str, Any] | None:
        """A peer's routing-table item as stored (consistent read), or None."""
        response = await self._call(
            operation,
            self._client.get_item,
            TableName=self._db.peers_table,
            Key={"room_id": string(room_id), "peer_id": string(peer_id)},
            ConsistentRead=True,
        )
        item: dict[str, Any] | None = response.get("Item")
        return item


def _unchanged(room: Room) -> tuple[str, dict[str, Any]]:
    """A condition that the room item is still ``room`` in everything a registration reads it
    for: the same room (its token), served by the same node, with the same marks."""
    parts, values = ["token_hash = :as_read_token"], {":as_read_token": string(room.token_hash)}
    fields: list[tuple[str, dict[str, str] | None]] = [
        ("node_id", string(room.node_id) if room.node_id else None),
        ("held_until_ms", number(room.held_until_ms) if room.held_until_ms is not None else None),
        ("saved_until", number(room.saved_until) if room.saved_until is not None else None),
    ]
    for name, value in fields:
        if value is None:
            parts.append(f"attribute_not_exists({name})")
        else:
            parts.append(f"{name} = :as_read_{name}")
            values[f":as_read_{name}"] = value
    return " AND ".join(parts), values
