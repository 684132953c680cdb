"""The rooms table: rooms, the tombstones deleted rooms leave, and the relay-node registry
(one item, ``NODES_ITEM``, whose map has an entry per node)."""

from __future__ import annotations

import contextlib

from signaling_shared.dynamo.client import Store
from signaling_shared.dynamo.records import (
    NODES_ITEM,
    TOMBSTONE_PREFIX,
    RelayNode,
    Room,
    node_entry,
    node_from,
    number,
    room_from,
    room_item,
    string,
    tombstone_item,
)
from signaling_shared.errors import ConditionFailed, NotFound


class RoomStore(Store):
    # Rooms -------------------------------------------------------------------------

    async def create_room(self, room: Room) -> None:
        """Store a new room; ConditionFailed if the id is taken."""
        await self._call(
            "create_room",
            self._client.put_item,
            TableName=self._db.rooms_table,
            Item=room_item(room),
            ConditionExpression="attribute_not_exists(room_id)",
        )

    async def get_room(self, room_id: str) -> Room:
        """The room, expired or not (callers decide); NotFound when absent."""
        response = await self._call(
            "get_room",
            self._client.get_item,
            TableName=self._db.rooms_table,
            Key={"room_id": string(room_id)},
            ConsistentRead=True,
        )
        item = response.get("Item")
        if not item:
            raise NotFound("room not found", operation="get_room")
        return room_from(item)

    async def delete_room(self, room_id: str, *, now: float) -> None:
        """Delete the room, leaving its tombstone first (see ``was_deleted``)."""
        table = self._db.rooms_table
        await self._call("delete_room", self._client.put_item, TableName=table, Item=tombstone_item(room_id, now=now))
        await self._call("delete_room", self._client.delete_item, TableName=table, Key={"room_id": string(room_id)})

    async def was_deleted(self, room_id: str) -> bool:
        """Whether the room was deleted (through rooms-api) within the last day; a room that is
        gone without a tombstone was lost (or expired and removed by the TTL)."""
        response = await self._call(
            "was_deleted",
            self._client.get_item,
            TableName=self._db.rooms_table,
            Key={"room_id": string(TOMBSTONE_PREFIX + room_id)},
            ConsistentRead=True,
        )
        return bool(response.get("Item"))

    async def move_room(self, room_id: str, *, from_node: str, to_node: str) -> None:
        """Give the room to ``to_node`` if ``from_node`` ("": no node) still has it;
        ConditionFailed if not (another node took it first, or the room is gone)."""
        values = {":to": string(to_node)}
        if from_node:
            condition = "attribute_exists(room_id) AND node_id = :from"
            values[":from"] = string(from_node)
        else:
            condition = "attribute_exists(room_id) AND attribute_not_exists(node_id)"
        await self._call(
            "move_room",
            self._client.update_item,
            TableName=self._db.rooms_table,
            Key={"room_id": string(room_id)},
            UpdateExpression="SET node_id = :to",
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
        )

    async def mark_sessions_saved(self, room_id: str, *, until: int) -> None:
        """Mark the room as holding sessions saved for a resume until ``until`` (before they
        are saved): the next process looks for them only in marked rooms. Nothing if the
        room is gone."""
        with contextlib.suppress(ConditionFailed):
            await self._call(
                "mark_sessions_saved",
                self._client.update_item,
                TableName=self._db.rooms_table,
                Key={"room_id": string(room_id)},
                UpdateExpression="SET saved_until = :u",
                ConditionExpression="attribute_exists(room_id)",
                ExpressionAttributeValues={":u": number(until)},
            )

    # Relay nodes -------------------------------------------------------------------

    async def heartbeat_node(self, node: RelayNode) -> None:
        """Write ``node``'s entry (its load, a fresh expiry, nothing assigned since)."""
        update = {
            "TableName": self._db.rooms_table,
            "Key": {"room_id": string(NODES_ITEM)},
            "UpdateExpression": "SET nodes.#node = :entry",
            "ExpressionAttributeNames": {"#node": node.node_id},
            "ExpressionAttributeValues": {":entry": node_entry(node)},
            "ConditionExpression": "attribute_exists(nodes)",
        }
        try:
            await self._call("heartbeat_node", self._client.update_item, **update)
        except ConditionFailed:  # the first node ever: create the map, then write into it
            with contextlib.suppress(ConditionFailed):
                await self._call(
                    "heartbeat_node",
                    self._client.put_item,
                    TableName=self._db.rooms_table,
                    Item={"room_id": string(NODES_ITEM), "nodes": {"M": {}}},
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
                    TableName=self._db.rooms_table,
                    Key={"room_id": string(NODES_ITEM)},
                    UpdateExpression="REMOVE nodes.#node",
                    ExpressionAttributeNames={"#node": node.node_id},
                    ExpressionAttributeValues={":cutoff": number(expired_before)},
                    ConditionExpression="nodes.#node.expires_at < :cutoff",
                )
                pruned.append(node.node_id)
        return pruned

    async def relay_nodes(self) -> list[RelayNode]:
        """Every node entry, live or not (callers decide), by node id."""
        response = await self._call(
            "relay_nodes",
            self._client.get_item,
            TableName=self._db.rooms_table,
            Key={"room_id": string(NODES_ITEM)},
            ConsistentRead=True,
        )
        entries = response.get("Item", {}).get("nodes", {}).get("M", {})
        return sorted((node_from(node_id, entry) for node_id, entry in entries.items()), key=lambda n: n.node_id)

    async def count_assignment(self, node_id: str) -> None:
        """One more room promised to ``node_id`` before its next heartbeat; ConditionFailed if
        its entry is gone."""
        await self._call(
            "count_assignment",
            self._client.update_item,
            TableName=self._db.rooms_table,
            Key={"room_id": string(NODES_ITEM)},
            UpdateExpression="SET nodes.#node.assigned = nodes.#node.assigned + :one",
            ExpressionAttributeNames={"#node": node_id},
            ExpressionAttributeValues={":one": number(1)},
            ConditionExpression="attribute_exists(nodes.#node)",
        )
