"""Sessions handed from one relay process to the next: saved at shutdown, then resumed on
the next process (``registration``), or, if nobody resumes them within the window, ended
properly: their room hears ``peer_left`` and their senders are told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import structlog

from signaling_shared.dynamo import PeerRecord, Repository, SavedSession
from signaling_shared.errors import RepositoryError
from signaling_shared.settings import RelaySettings
from ws_relay import frames
from ws_relay.cluster import LEASE_REFRESH_CONCURRENCY, Cluster
from ws_relay.hub import Hub, Member, Owed
from ws_relay.ledger import Ledger

log = structlog.stdlib.get_logger("ws_relay")

SAVE_ATTEMPTS = 3


class Handoff:
    def __init__(
        self,
        settings: RelaySettings,
        repository: Repository,
        hub: Hub,
        ledger: Ledger,
        cluster: Cluster,
        *,
        clock: Callable[[], float],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        closing: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.hub = hub
        self.ledger = ledger
        self.cluster = cluster
        self._clock = clock
        self._spawn = spawn
        self._closing = closing
        # Rooms whose sessions saved by a previous process are watched, and their timers.
        self._watched: set[str] = set()
        self._lapses: set[asyncio.TimerHandle] = set()

    # The previous process's sessions ---------------------------------------------------

    def watch(self, room_id: str) -> None:
        """Once per room: find the sessions a previous process saved in it, so that those
        nobody resumes end properly (``peer_left``, their senders told)."""
        if room_id not in self._watched:
            self._watched.add(room_id)
            self._spawn(self._watch_saved(room_id))

    def room_emptied(self, room_id: str) -> None:
        """The last member left ``room_id``: watch it again when someone comes back."""
        self._watched.discard(room_id)

    async def _watch_saved(self, room_id: str) -> None:
        now = self._clock()
        try:
            peers = await self.repository.list_peers(room_id, now=now, include_expired=True)
        except RepositoryError as exc:
            log.warning("saved_sessions_unknown", room_id=room_id, error=type(exc).__name__)
            self._watched.discard(room_id)
            return
        for record in peers:
            if record.saved and self.hub.get(room_id, record.peer_id) is None:
                self._lapse_at(record, record.expires_at - now)

    def _lapse_at(self, record: PeerRecord, delay: float) -> None:
        def due() -> None:
            self._lapses.discard(timer)
            self._spawn(self._saved_lapsed(record))

        timer = asyncio.get_running_loop().call_later(max(0.0, delay), due)
        self._lapses.add(timer)

    async def _saved_lapsed(self, record: PeerRecord) -> None:
        """A saved session's window is over: unless it was resumed, its peer has left."""
        if self._closing() or self.hub.get(record.room_id, record.peer_id) is not None:
            return
        try:
            saved = await self.repository.load_session(record.room_id, record.peer_id, whole=False)
            if saved is None or saved.peer.connection_id != record.connection_id:
                return  # resumed or registered again, here or elsewhere
            if saved.peer.expires_at > self._clock():
                self._lapse_at(record, saved.peer.expires_at - self._clock())
                return
            if not await self.repository.drop_session(saved):
                return
        except RepositoryError as exc:  # the entry expires on its own; try once more later
            log.warning("saved_session_lapse_failed", room_id=record.room_id, error=type(exc).__name__)
            self._lapse_at(record, self.settings.resume_window_seconds)
            return
        await self.settle(saved, left=True)

    async def end_previous(self, room_id: str, peer_id: str, sub: str, now: float) -> bool:
        """A fresh registration of ``peer_id`` was refused: a session a previous process saved
        for it (the same identity's, or one whose window is over) ends now. Whether there was
        one to end (here or by a registration racing this one): the claim may be tried again."""
        if self.hub.get(room_id, peer_id) is not None:
            return False
        previous = await self.repository.load_session(room_id, peer_id, whole=False)
        if previous is None or not (previous.peer.owner_sub == sub or previous.peer.expires_at <= now):
            return False
        if await self.repository.drop_session(previous):
            self._spawn(self.settle(previous, left=previous.peer.owner_sub != sub))
        return True

    async def settle(self, saved: SavedSession, *, left: bool) -> None:
        """A saved session that will not be resumed: what it had not received never will be.
        Its senders are told; held messages in it are held again (their claim lapses)."""
        room_id, peer_id = saved.peer.room_id, saved.peer.peer_id
        log.info("saved_session_ended", room_id=room_id, peer_id=peer_id, left=left)
        for _, data in saved.owed:
            owed = Owed.from_json(data)
            if owed.held_key is None:
                self.ledger.fail(room_id, peer_id, owed)
        if left:
            frame = frames.peer_left(peer_id, "timeout")
            for member in self.hub.in_room(room_id):
                self.ledger.push(member, frame, kind="peer_left")
        await self.repository.delete_session_frames(saved)

    async def settle_if_taken(self, saved: SavedSession, connection_id: str) -> None:
        """After a failed take of ``saved``: if the write landed after all, end the session."""
        try:
            entry = await self.repository.peer_entry(saved.peer.room_id, saved.peer.peer_id)
        except RepositoryError:
            return  # its senders are not told; the entry expires with its lease
        if entry is not None and entry.connection_id == connection_id:
            await self.cluster.release_quietly(saved.peer.room_id, saved.peer.peer_id, connection_id)
            await self.settle(saved, left=True)

    # This process's sessions, for the next ---------------------------------------------

    async def save_all(self, members: list[Member]) -> None:
        """At shutdown, once every socket is closed and nothing else runs: leave each
        member's session in the table for the resume window, so that it resumes on the next
        process losing nothing. A member whose session cannot be saved leaves (its senders
        were told already)."""
        for lapse in self._lapses:
            lapse.cancel()
        now = self._clock()
        limit = asyncio.Semaphore(LEASE_REFRESH_CONCURRENCY)
        until = int(now + self.settings.resume_window_seconds)
        marked: dict[str, asyncio.Task[bool]] = {}

        async def mark(room_id: str, room_expires_at: int) -> bool:
            """The room says it has saved sessions (before any is saved): the next process
            looks for them there, and only there. Until the room expires: a session nobody
            resumed still ends properly when the room's next registration finds it, late."""
            for attempt in range(SAVE_ATTEMPTS):
                try:
                    async with limit:
                        await self.repository.mark_sessions_saved(room_id, until=room_expires_at)
                    return True
                except RepositoryError as exc:
                    log.warning("session_mark_failed", room_id=room_id, error=type(exc).__name__)
                    if attempt + 1 < SAVE_ATTEMPTS:
                        await asyncio.sleep(0.5 * 2**attempt)
            return False

        async def save(member: Member) -> None:
            if member.room_id not in marked:
                marked[member.room_id] = asyncio.ensure_future(mark(member.room_id, member.room_expires_at))
            if not await marked[member.room_id]:  # unmarked, it would never be found to end
                await self.cluster.release_quietly(member.room_id, member.peer_id, member.connection_id)
                return
            expires_at = min(member.room_expires_at, until)
            saved = SavedSession(
                peer=replace(self.cluster.record(member, now), expires_at=expires_at),
                session_id=member.session_id,
                resume_hashes=member.resume_hashes,
                seq=member.seq,
                frames=member.frames(),
                owed=[(seq, owed.to_json()) for seq, owed in member.owed_items()],
                answers=member.answer_seqs(),
                in_flight=sorted(member.in_flight, key=str),
            )
            held = member.held_keys()
            async with limit:
                for attempt in range(SAVE_ATTEMPTS):
                    try:
                        if held:  # in this session now: no process may expire them meanwhile
                            await self.repository.claim_messages(member.room_id, held, expires_at * 1000)
                        await self.repository.save_session(saved)
                        return
                    except RepositoryError as exc:
                        log.warning("session_save_failed", room_id=member.room_id, error=type(exc).__name__)
                        if attempt + 1 < SAVE_ATTEMPTS:
                            await asyncio.sleep(0.5 * 2**attempt)
                # Lost: its entry is released; what it owed is not reported (logged above).
                await self.cluster.release_quietly(member.room_id, member.peer_id, member.connection_id)

        await asyncio.gather(*(save(m) for m in members))
        log.info("sessions_saved", count=len(members))


def restored_member(member: Member, saved: SavedSession) -> Member:
    """``member`` (built for a resume of ``saved``) with what ``saved`` had kept for it:
    its unconfirmed frames, which of them are answers, and what their receipt settles."""
    answers = set(saved.answers)
    owed = {seq: Owed.from_json(data) for seq, data in saved.owed}
    for seq, frame in saved.frames:
        member.keep(seq, frame, answer=seq in answers, owed=owed.get(seq))
    return member
