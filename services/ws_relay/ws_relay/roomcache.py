"""Rooms this node serves, as it last read them: the next registration in a room skips the read.

A fresh registration needs its room's token hash, expiry, node and marks. The first one in a
room reads the room; the next ones take it from here, and their claim's transaction checks
that the room is still the one read, with the same node and marks
(``Repository.claim_peer(as_read=...)``). A stale entry therefore costs one refused claim and
a read, never a different decision. Only rooms this node alone serves are kept, and at most
``size`` of them: the least recently used goes first.
"""

from __future__ import annotations

from collections import OrderedDict

from signaling_shared.dynamo import Room

ROOMS_KEPT = 4096  # about 2 MiB of rooms, whatever the number of peers


class RoomCache:
    def __init__(self, size: int = ROOMS_KEPT) -> None:
        self._size = size
        self._rooms: OrderedDict[str, Room] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, room_id: str, now: float) -> Room | None:
        """The room as last read, unless it has expired since (a read says so, typed)."""
        room = self._rooms.get(room_id)
        if room is None:
            return None
        if room.is_expired(now):
            del self._rooms[room_id]
            return None
        self._rooms.move_to_end(room_id)
        return room

    def keep(self, room: Room) -> None:
        self._rooms[room.room_id] = room
        self._rooms.move_to_end(room.room_id)
        while len(self._rooms) > self._size:
            self._rooms.popitem(last=False)

    def forget(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)
