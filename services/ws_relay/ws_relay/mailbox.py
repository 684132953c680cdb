"""Messages held for peers that are not in their room yet: stored in DynamoDB, with a lifetime.

A message is held only after its write succeeds (so its ``ack`` with ``queued`` means it
survives this process), delivered in order when its target registers, and deleted once
the target confirms receipt. Delivery and expiry both take a message with a conditional
delete, so exactly one of them happens: the target receives it, or the sender gets
``expired``. A message that expires while its sender is away stays until the sender
registers again (or the table's TTL removes it), so that the sender does hear of it.

This node keeps, per room it serves, an index of the room's held messages (without their
frames) with a timer each. The index is read from the table whenever a room without one
is touched (a registration, a new held message), which is also how a restarted process
finds the messages and timers of the one before it. One node serves a room at a time;
with several nodes, room affinity keeps it that way.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import structlog

from signaling_shared.dynamo import QueuedMessage, Repository
from signaling_shared.errors import QueueFull, RepositoryError
from signaling_shared.settings import RelaySettings

log = structlog.stdlib.get_logger("ws_relay.mailbox")


@dataclass
class _Room:
    held: dict[str, QueuedMessage] = field(default_factory=dict)  # by key, frames left out
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    delivering: set[str] = field(default_factory=set)  # pushed to the target, not yet confirmed


class Mailbox:
    def __init__(
        self,
        settings: RelaySettings,
        repository: Repository,
        *,
        clock: Callable[[], float],
        on_expired: Callable[[QueuedMessage], None],
        sender_present: Callable[[QueuedMessage], bool],
    ) -> None:
        self.settings = settings
        self.repository = repository
        self._clock = clock
        self._on_expired = on_expired
        self._sender_present = sender_present
        self._rooms: dict[str, _Room] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._counter = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def held_count(self) -> int:
        return sum(len(room.held) for room in self._rooms.values())

    def lifetime_ms(self, requested_seconds: int | None) -> int:
        return 1000 * (requested_seconds or self.settings.queue_ttl_default_seconds)

    @asynccontextmanager
    async def _room(self, room_id: str) -> AsyncIterator[_Room]:
        """The room's index, loaded if needed, under the room's lock."""
        lock, users = self._locks.get(room_id) or (asyncio.Lock(), 0)
        self._locks[room_id] = (lock, users + 1)
        try:
            async with lock:
                room = self._rooms.get(room_id)
                if room is None:
                    room = _Room()
                    for message in await self.repository.held_messages(room_id, with_frames=False):
                        self._index(room, message)
                    self._rooms[room_id] = room
                try:
                    yield room
                finally:
                    if not room.held and self._rooms.get(room_id) is room:
                        del self._rooms[room_id]
        finally:
            lock, users = self._locks[room_id]
            if users == 1:
                del self._locks[room_id]
            else:
                self._locks[room_id] = (lock, users - 1)

    def _index(self, room: _Room, message: QueuedMessage) -> None:
        message = replace(message, frame="")
        room.held[message.key] = message
        delay = max(0.0, message.expires_at_ms / 1000 - self._clock())
        room.timers[message.key] = asyncio.get_running_loop().call_later(delay, self._due, message)

    def _forget(self, room_id: str, keys: list[str]) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            return
        for key in keys:
            room.held.pop(key, None)
            room.delivering.discard(key)
            timer = room.timers.pop(key, None)
            if timer is not None:
                timer.cancel()
        if not room.held and room_id not in self._locks:
            del self._rooms[room_id]

    async def hold(
        self,
        *,
        room_id: str,
        to_peer_id: str,
        from_peer_id: str,
        from_sub: str,
        correlation_id: str | int,
        frame: str,
        expires_at_ms: int,
        target_arrived: Callable[[], bool],
    ) -> bool:
        """Hold ``frame`` for ``to_peer_id``. False, holding nothing, if the target arrived
        meanwhile (deliver it live then). QueueFull past the bounds."""
        async with self._room(room_id) as room:
            if target_arrived():
                return False
            for_target = sum(1 for m in room.held.values() if m.to_peer_id == to_peer_id)
            if for_target >= self.settings.queue_max_per_peer:
                raise QueueFull(f"{for_target} messages are already held for peer {to_peer_id!r}")
            if len(room.held) >= self.settings.queue_max_per_room:
                raise QueueFull(f"{len(room.held)} messages are already held in this room")
            now_ms = int(self._clock() * 1000)
            message = QueuedMessage(
                room_id=room_id,
                key=QueuedMessage.key_for(to_peer_id, now_ms, self.settings.node_id, next(self._counter)),
                to_peer_id=to_peer_id,
                from_peer_id=from_peer_id,
                from_sub=from_sub,
                correlation_id=correlation_id,
                expires_at_ms=expires_at_ms,
                frame=frame,
            )
            await self.repository.hold_message(message)
            self._index(room, message)
        log.info("message_held", room_id=room_id, to_peer_id=to_peer_id, expires_at_ms=expires_at_ms)
        return True

    async def arrived(self, room_id: str, peer_id: str) -> list[QueuedMessage]:
        """``peer_id`` registered: the live messages held for it, in order, with their frames,
        marked as being delivered (settle each with ``delivered`` or ``release``). Those it
        sent that expired while it was away are expired now, so it hears of them."""
        async with self._room(room_id) as room:
            now_ms = self._clock() * 1000
            for message in list(room.held.values()):
                if message.from_peer_id == peer_id and message.expires_at_ms <= now_ms:
                    self._due(message)
            due = {
                key
                for key, m in room.held.items()
                if m.to_peer_id == peer_id and key not in room.delivering and m.expires_at_ms > now_ms
            }
            if not due:
                return []
            messages = [m for m in await self.repository.held_messages(room_id, to_peer_id=peer_id) if m.key in due]
            room.delivering.update(m.key for m in messages)
            return messages

    async def claim(self, room_id: str, keys: list[str]) -> None:
        """Mark messages as being delivered: a previous process sent them to a peer that
        resumed here and has yet to confirm them."""
        async with self._room(room_id) as room:
            room.delivering.update(key for key in keys if key in room.held)

    async def delivered(self, room_id: str, keys: list[str]) -> None:
        """The target confirmed receipt: the messages are no longer held."""
        self._forget(room_id, keys)
        try:
            await self.repository.delete_messages(room_id, keys)
        except RepositoryError as exc:
            # They stay in the table and may be delivered again at the target's next registration.
            log.warning("held_delete_failed", room_id=room_id, count=len(keys), error=type(exc).__name__)

    def release(self, room_id: str, keys: list[str]) -> None:
        """The target left before confirming: the messages are held again (or expire now)."""
        room = self._rooms.get(room_id)
        if room is None:
            return
        now_ms = self._clock() * 1000
        for key in keys:
            room.delivering.discard(key)
            message = room.held.get(key)
            if message is not None and message.expires_at_ms <= now_ms:
                self._due(message)

    def _due(self, message: QueuedMessage) -> None:
        room = self._rooms.get(message.room_id)
        if room is None or message.key not in room.held or message.key in room.delivering:
            return  # delivered, or being delivered (``release`` calls again if it fails)
        room.timers.pop(message.key, None)
        if not self._sender_present(message):
            log.info("expired_sender_absent", room_id=message.room_id, peer_id=message.from_peer_id)
            return  # kept: ``arrived`` expires it when the sender registers again
        task = asyncio.get_running_loop().create_task(self._expire(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, message: QueuedMessage) -> None:
        try:
            taken = await self.repository.take_message(message.room_id, message.key)
        except RepositoryError as exc:
            log.warning("held_expiry_failed", room_id=message.room_id, error=type(exc).__name__)
            room = self._rooms.get(message.room_id)
            if room is not None and message.key in room.held:  # try again shortly
                room.timers[message.key] = asyncio.get_running_loop().call_later(1.0, self._due, message)
            return
        self._forget(message.room_id, [message.key])
        if taken is not None:
            log.info("message_expired", room_id=message.room_id, to_peer_id=message.to_peer_id)
            self._on_expired(taken)

    async def close(self) -> None:
        for room in self._rooms.values():
            for timer in room.timers.values():
                timer.cancel()
        self._rooms.clear()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
