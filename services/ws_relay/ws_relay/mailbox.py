"""Messages held for peers that are not in their room yet: stored in DynamoDB, with a lifetime.

A message is held only after its write succeeds (so its ``ack`` with ``queued`` means it
survives this process), delivered in order when its target registers, and deleted once
the target confirms receipt. Delivery and expiry both take a message with a conditional
delete, so exactly one of them happens: the target receives it, or the sender gets
``expired``. A message that expires while its sender is away (between two relay
processes, say) is kept for the resume window, so that the sender hears of it when it
comes back; after that nobody is left to tell and it is dropped.

A message that a process sent to its target and then shut down before the target
confirmed it travels on in the target's saved session: it is marked claimed in the
table until that session's window ends, and no timer here expires it before then.

This node keeps, per room it serves, an index of the room's held messages (without their
frames) with a timer each. The index is read from the table whenever a room without one
is touched (a registration, a new held message), which is also how a restarted process
finds the messages and timers of the one before it. One node serves a room at a time;
with several nodes, room affinity keeps it that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import structlog

from signaling_shared.dynamo import QueuedMessage, Repository
from signaling_shared.errors import QueueFull, RepositoryError
from signaling_shared.settings import RelaySettings

log = structlog.stdlib.get_logger("ws_relay.mailbox")

DELETE_ATTEMPTS = 3


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
        # The held-messages mark this node last wrote on each room (Room.held_until_ms).
        self._marks: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed_expiries: set[tuple[str, str]] = set()  # (room, key) whose delete may have landed
        # Delivered, but their delete failed: never to be held again by a reload of the index.
        self._undeleted: set[tuple[str, str]] = set()
        self._closed = False

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
                        if (room_id, message.key) not in self._undeleted:
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

    def _remember_mark(self, room_id: str, mark: int, now_ms: int) -> None:
        for lapsed in [r for r, until in self._marks.items() if until <= now_ms]:
            del self._marks[lapsed]
        self._marks[room_id] = mark

    def _index(self, room: _Room, message: QueuedMessage) -> None:
        message = replace(message, frame="")
        room.held[message.key] = message
        self._arm(room, message, max(message.expires_at_ms, message.claimed_until_ms) / 1000)

    def _arm(self, room: _Room, message: QueuedMessage, at: float) -> None:
        previous = room.timers.pop(message.key, None)
        if previous is not None:
            previous.cancel()
        if self._closed:
            return
        delay = max(0.0, at - self._clock())
        room.timers[message.key] = asyncio.get_running_loop().call_later(delay, self._due, message)

    def _forget(self, room_id: str, keys: list[str]) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            return
        for key in keys:
            room.held.pop(key, None)
            room.delivering.discard(key)
            self._failed_expiries.discard((room_id, key))
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
        from_session: str,
        correlation_id: str | int,
        frame: str,
        expires_at_ms: int,
        target_arrived: Callable[[], bool],
        for_session: str = "",
    ) -> bool:
        """Hold ``frame`` for ``to_peer_id`` (for one session of it: an answer). False, holding
        nothing, if the target arrived meanwhile (deliver it live then). QueueFull past the
        bounds, which answers do not count against."""
        async with self._room(room_id) as room:
            if target_arrived():
                return False
            now_ms = int(self._clock() * 1000)
            # Expired messages waiting for their sender, and answers, do not count.
            live = [m for m in room.held.values() if m.expires_at_ms > now_ms and not m.for_session]
            for_target = sum(1 for m in live if m.to_peer_id == to_peer_id)
            if for_target >= self.settings.queue_max_per_peer and not for_session:
                raise QueueFull(f"{for_target} messages are already held for peer {to_peer_id!r}")
            if len(live) >= self.settings.queue_max_per_room and not for_session:
                raise QueueFull(f"{len(live)} messages are already held in this room")
            from_sender = sum(1 for m in live if m.from_peer_id == from_peer_id)
            if from_sender >= self.settings.queue_max_per_sender and not for_session:
                raise QueueFull(f"{from_sender} messages from this peer are already held in this room")
            message = QueuedMessage(
                room_id=room_id,
                key=QueuedMessage.key_for(to_peer_id, now_ms, self.settings.node_id, next(self._counter)),
                to_peer_id=to_peer_id,
                from_peer_id=from_peer_id,
                from_session=from_session,
                correlation_id=correlation_id,
                expires_at_ms=expires_at_ms,
                frame=frame,
                for_session=for_session,
            )
            # The room's mark must cover the message. It is written with the message only when
            # the mark this node last wrote does not, and then for two longest lifetimes: each
            # such write touches the room item, which registrations' transactions check (in
            # DynamoDB, overlapping transactions on an item cancel one another).
            new_mark: int | None = None
            if self._marks.get(room_id, 0) < expires_at_ms:
                new_mark = max(expires_at_ms, now_ms + 2000 * self.settings.queue_ttl_max_seconds)
            try:
                await self.repository.hold_message(message, held_until_ms=new_mark)
            except RepositoryError:
                # The write may have landed: take it back, so a message its sender was told
                # failed is not delivered later.
                with contextlib.suppress(RepositoryError):
                    await self.repository.take_message(room_id, message.key)
                raise
            self._index(room, message)
            if new_mark is not None:
                self._remember_mark(room_id, new_mark, now_ms)
        log.info("message_held", room_id=room_id, to_peer_id=to_peer_id, expires_at_ms=expires_at_ms)
        return True

    async def arrived(
        self, room_id: str, peer_id: str, session_id: str, *, may_hold: bool = True
    ) -> list[QueuedMessage]:
        """``peer_id`` registered (or resumed here) as ``session_id``: the live messages held
        for it, in order, with their frames, marked as being delivered (settle each with
        ``delivered`` or ``release``). Those it sent that expired while it was away are
        expired now, so it hears of them. ``may_hold`` False: the room, as just read, holds
        no live message, so unless this node is holding one now the table is not read."""
        if not may_hold and room_id not in self._rooms and room_id not in self._locks:
            return []
        async with self._room(room_id) as room:
            now_ms = self._clock() * 1000
            for message in list(room.held.values()):
                if message.from_session == session_id and message.expires_at_ms <= now_ms:
                    self._due(message)
            # A fresh registration of the target supersedes a saved session's claim; answers
            # go to their own session only.
            due = {
                key
                for key, m in room.held.items()
                if m.to_peer_id == peer_id
                and key not in room.delivering
                and m.expires_at_ms > now_ms
                and m.for_session in ("", session_id)
            }
            if not due:
                return []
            room.delivering.update(due)  # before the read: no timer may expire them meanwhile
            try:
                found = await self.repository.held_messages(room_id, to_peer_id=peer_id)
            except BaseException:
                self.release(room_id, list(due))
                raise
            messages = [m for m in found if m.key in due]
            self.release(room_id, list(due - {m.key for m in messages}))  # gone meanwhile
            return messages

    async def claim(self, room_id: str, keys: list[str]) -> None:
        """Mark messages as being delivered: a previous process sent them to a peer that
        resumed here and has yet to confirm them."""
        async with self._room(room_id) as room:
            room.delivering.update(key for key in keys if key in room.held)

    async def delivered(self, room_id: str, keys: list[str]) -> None:
        """The target confirmed receipt: the messages are no longer held."""
        self._forget(room_id, keys)
        for attempt in range(DELETE_ATTEMPTS):
            try:
                await self.repository.delete_messages(room_id, keys)
                log.info("held_removed", room_id=room_id, count=len(keys))
                return
            except RepositoryError as exc:
                log.warning("held_delete_failed", room_id=room_id, count=len(keys), error=type(exc).__name__)
                if attempt + 1 < DELETE_ATTEMPTS:
                    await asyncio.sleep(2**attempt)
        # Still in the table (until its TTL): this process never holds them again; a next one
        # may deliver them a second time.
        self._undeleted.update((room_id, key) for key in keys)

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
        timer = room.timers.pop(message.key, None)
        if timer is not None:  # when called before its time (a sender back, a release)
            timer.cancel()
        now = self._clock()
        if message.claimed_until_ms / 1000 > now:  # in a saved session: wait for its window
            self._arm(room, message, message.claimed_until_ms / 1000)
            return
        tell_until = message.expires_at_ms / 1000 + self.settings.resume_window_seconds
        if not message.for_session and not self._sender_present(message) and now < tell_until:
            log.info("expired_sender_absent", room_id=message.room_id, peer_id=message.from_peer_id)
            self._arm(room, message, tell_until)  # ``arrived`` expires it if the sender comes back
            return
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
                self._failed_expiries.add((message.room_id, message.key))
                room.timers[message.key] = asyncio.get_running_loop().call_later(1.0, self._due, message)
            return
        if taken is None and (message.room_id, message.key) in self._failed_expiries:
            taken = message  # the failed attempt's delete had landed: it did expire
        self._failed_expiries.discard((message.room_id, message.key))
        self._forget(message.room_id, [message.key])
        if taken is not None and not taken.for_session:  # an answer just lapses
            log.info("message_expired", room_id=message.room_id, to_peer_id=message.to_peer_id)
            self._on_expired(taken)

    async def close(self) -> None:
        self._closed = True
        for room in self._rooms.values():
            for timer in room.timers.values():
                timer.cancel()
        self._rooms.clear()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
