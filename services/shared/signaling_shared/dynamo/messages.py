"""The messages table: messages held for a peer that is not in its room yet (keyed by
target, then in the order they were accepted). The frames of saved sessions share the
table (their keys hold a '!'); readers of held messages skip them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from signaling_shared.dynamo.client import Store
from signaling_shared.dynamo.records import (
    QueuedMessage,
    is_held_message_key,
    message_from,
    message_item,
    number,
    string,
)
from signaling_shared.errors import ConditionFailed, NotFound

# What listing for timers reads: everything but the frame.
_WITHOUT_FRAME = (
    "room_id, msg_key, to_peer_id, from_peer_id, from_session, correlation_id, expires_at_ms,"
    " claimed_until_ms, for_session"
)


class MessageStore(Store):
    async def hold_message(self, message: QueuedMessage, *, held_until_ms: int | None) -> None:
        """Store ``message``; with ``held_until_ms``, mark its room as holding messages until
        then (no earlier than the message expires) in the same transaction: a registration
        reads the messages table only in a marked room. None: the room's mark covers the
        message already (a plain put, which does not touch the room item, so it cannot
        conflict with the transactions that check it). NotFound: the room is gone;
        ConditionFailed: the key is taken."""
        if held_until_ms is None:
            await self._call(
                "hold_message",
                self._client.put_item,
                TableName=self._db.messages_table,
                Item=message_item(message),
                ConditionExpression="attribute_not_exists(msg_key)",
            )
            return
        try:
            await self._call(
                "hold_message",
                self._client.transact_write_items,
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._db.rooms_table,
                            "Key": {"room_id": string(message.room_id)},
                            "UpdateExpression": "SET held_until_ms = :u",
                            "ConditionExpression": "attribute_exists(room_id)",
                            "ExpressionAttributeValues": {":u": number(held_until_ms)},
                        }
                    },
                    {
                        "Put": {
                            "TableName": self._db.messages_table,
                            "Item": message_item(message),
                            "ConditionExpression": "attribute_not_exists(msg_key)",
                        }
                    },
                ],
            )
        except ConditionFailed as exc:
            if exc.reasons[:1] == ("ConditionalCheckFailed",):
                raise NotFound("room is gone", operation="hold_message") from exc
            raise

    async def held_messages(
        self, room_id: str, *, to_peer_id: str | None = None, with_frames: bool = True
    ) -> list[QueuedMessage]:
        """A room's held messages (only those for ``to_peer_id`` if given) in key order,
        expired ones included: callers decide."""
        items = await self._call("held_messages", self._query_messages, room_id, to_peer_id, with_frames)
        return [message_from(item) for item in items]

    def _query_messages(self, room_id: str, to_peer_id: str | None, with_frames: bool) -> list[dict[str, Any]]:
        query: dict[str, Any] = {
            "TableName": self._db.messages_table,
            "KeyConditionExpression": "room_id = :r",
            "ExpressionAttributeValues": {":r": string(room_id)},
            "ConsistentRead": True,
        }
        if to_peer_id is not None:
            query["KeyConditionExpression"] += " AND begins_with(msg_key, :p)"
            query["ExpressionAttributeValues"][":p"] = string(f"{to_peer_id}#")
        if not with_frames:
            query["ProjectionExpression"] = _WITHOUT_FRAME
        items: list[dict[str, Any]] = []
        for page in self._client.get_paginator("query").paginate(**query):
            items.extend(item for item in page.get("Items", []) if is_held_message_key(item["msg_key"]["S"]))
        return items

    async def take_message(self, room_id: str, key: str) -> QueuedMessage | None:
        """Delete a held message and return it; None if it was already taken."""
        try:
            response = await self._call(
                "take_message",
                self._client.delete_item,
                TableName=self._db.messages_table,
                Key={"room_id": string(room_id), "msg_key": string(key)},
                ConditionExpression="attribute_exists(msg_key)",
                ReturnValues="ALL_OLD",
            )
        except ConditionFailed:
            return None
        return message_from(response["Attributes"])

    async def claim_messages(self, room_id: str, keys: Iterable[str], until_ms: int) -> None:
        """Mark held messages as being delivered through a saved session until ``until_ms``."""
        for key in keys:
            with contextlib.suppress(ConditionFailed):  # already delivered or expired
                await self._call(
                    "claim_messages",
                    self._client.update_item,
                    TableName=self._db.messages_table,
                    Key={"room_id": string(room_id), "msg_key": string(key)},
                    UpdateExpression="SET claimed_until_ms = :u",
                    ConditionExpression="attribute_exists(msg_key)",
                    ExpressionAttributeValues={":u": number(until_ms)},
                )

    async def delete_messages(self, room_id: str, keys: Iterable[str]) -> None:
        items = [{"room_id": string(room_id), "msg_key": string(key)} for key in keys]
        await self._call("delete_messages", self._db.batch_delete, self._db.messages_table, items)

    async def delete_room_messages(self, room_id: str) -> None:
        """Everything the messages table holds for a room: held messages and saved sessions' frames."""
        keys = await self._call("delete_room_messages", self._room_message_keys, room_id)
        await self.delete_messages(room_id, keys)

    def _room_message_keys(self, room_id: str) -> list[str]:
        keys: list[str] = []
        for page in self._client.get_paginator("query").paginate(
            TableName=self._db.messages_table,
            KeyConditionExpression="room_id = :r",
            ExpressionAttributeValues={":r": string(room_id)},
            ProjectionExpression="msg_key",
            ConsistentRead=True,
        ):
            keys.extend(item["msg_key"]["S"] for item in page.get("Items", []))
        return keys
