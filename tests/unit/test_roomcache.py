"""The rooms a node keeps as read: bounded, least recently used first out, never expired."""

from __future__ import annotations

from signaling_shared.dynamo import Room
from ws_relay.roomcache import RoomCache


def room(room_id: str, *, expires_at: int = 2000) -> Room:
    return Room(room_id, "creator", f"hash-{room_id}", 1000, expires_at)


def test_a_kept_room_is_found_until_it_expires() -> None:
    rooms = RoomCache()
    rooms.keep(room("a", expires_at=2000))
    assert rooms.get("a", 1999.5) == room("a", expires_at=2000)
    assert rooms.get("a", 2000) is None  # expired: gone, and a read says so
    assert len(rooms) == 0
    assert rooms.get("nowhere", 1500) is None


def test_the_least_recently_used_room_goes_first() -> None:
    rooms = RoomCache(size=2)
    rooms.keep(room("a"))
    rooms.keep(room("b"))
    assert rooms.get("a", 1500) is not None  # a used: b is now the oldest
    rooms.keep(room("c"))
    assert len(rooms) == 2
    assert rooms.get("b", 1500) is None
    assert rooms.get("a", 1500) is not None
    assert rooms.get("c", 1500) is not None


def test_a_room_kept_again_replaces_the_old_read_and_can_be_forgotten() -> None:
    rooms = RoomCache()
    rooms.keep(room("a", expires_at=2000))
    rooms.keep(room("a", expires_at=3000))
    found = rooms.get("a", 2500)
    assert found is not None
    assert found.expires_at == 3000
    rooms.forget("a")
    rooms.forget("a")  # forgetting twice is harmless
    assert rooms.get("a", 1500) is None
