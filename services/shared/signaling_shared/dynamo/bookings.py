"""Bookings: the leases clients hold on a peer of a room (a worker), one item per peer in
the messages table (``records.booking_key``), written over the version read.

Two primitives, so the rules (capacity, expiry, who may renew) live with their caller
(``ws_relay.booking``) and the atomicity here: ``booking`` reads consistently;
``write_booking`` writes only if nobody wrote since that read, and, for a new lease, only
while the peer's routing entry is live. Of two relay nodes granting the last free lease
at once, exactly one write lands.
"""

from __future__ import annotations

from typing import Any

from signaling_shared.dynamo.client import Store
from signaling_shared.dynamo.records import Booking, booking_from, booking_item, booking_key, number, string
from signaling_shared.errors import ConditionFailed, NotFound


class BookingStore(Store):
    async def booking(self, room_id: str, peer_id: str) -> Booking:
        """The leases on ``peer_id`` as stored (expired ones too), version 0 if none ever were."""
        response = await self._call(
            "booking",
            self._client.get_item,
            TableName=self._db.messages_table,
            Key={"room_id": string(room_id), "msg_key": string(booking_key(peer_id))},
            ConsistentRead=True,
        )
        return booking_from(room_id, peer_id, response.get("Item"))

    async def write_booking(self, booking: Booking, *, read_version: int, peer_live_at: int | None = None) -> None:
        """Store ``booking`` if its item is still at ``read_version`` (0: absent).

        With ``peer_live_at``, also only if the peer's routing entry is live then (a lease
        is granted on a peer that is in the room). ConditionFailed: written meanwhile (read
        again); NotFound: the peer has no live entry.
        """
        if read_version:
            put_condition: dict[str, Any] = {
                "ConditionExpression": "version = :v",
                "ExpressionAttributeValues": {":v": number(read_version)},
            }
        else:
            put_condition = {"ConditionExpression": "attribute_not_exists(msg_key)"}
        put = {"TableName": self._db.messages_table, "Item": booking_item(booking), **put_condition}
        if peer_live_at is None:
            await self._call("write_booking", self._client.put_item, **put)
            return
        try:
            await self._call(
                "write_booking",
                self._client.transact_write_items,
                TransactItems=[
                    {
                        "ConditionCheck": {
                            "TableName": self._db.peers_table,
                            "Key": {"room_id": string(booking.room_id), "peer_id": string(booking.peer_id)},
                            "ConditionExpression": "expires_at > :now",
                            "ExpressionAttributeValues": {":now": number(peer_live_at)},
                        }
                    },
                    {"Put": put},
                ],
            )
        except ConditionFailed as exc:
            if exc.reasons[:1] == ("ConditionalCheckFailed",):
                raise NotFound("the peer is not in the room", operation="write_booking") from exc
            raise
