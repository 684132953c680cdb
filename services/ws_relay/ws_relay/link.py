"""The websocket link: one client connection as the relay sees it (``hub.Link``).

A frame sent to a link is written at the end of the event loop's current turn, with every
other frame sent to it in that turn and the burst's confirmation ping behind them, in one
write to the socket: no queue, no writer task, no task hop per frame. The profile of
issue 18 found writes and the hop through a per-connection writer task to be most of the
relay's CPU per message.

The ping's pong proves that the client has every frame written before it. One ping is in
flight at a time; what is written meanwhile is confirmed by the next. A frame whose receipt
someone waits for (``awaited``: a sender's ack, a held message to delete) is pinged for at
once. Others (frames without an id, acks, room events) only trim what a resume would
replay: their ping waits up to ``confirm_delay`` seconds, or until a sixteenth of the resume
buffer (frames or bytes) is written unpinged, so that a busy connection answers one ping
per burst, not one per frame, and what waits for confirmation stays far from the limits.

Backpressure comes from the transport: while its write buffer is above websockets' high
mark (``write_limit``), frames wait here, and a consumer with ``outbox_max`` frames
waiting is closed as a slow consumer (4501; its senders are told). A peer that stops
reading thus slows no one else down.

Frames are built with websockets' own sans-I/O ``protocol`` and written to its transport;
the ping is registered in the connection's ``pending_pings``, so that the pong resolves it
as ``ping()`` would; waiting for the transport to drain uses the connection's
``drain_waiters`` as its ``drain()`` does (websockets is pinned; tests/unit/test_link.py
checks that shape).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay.server")  # its events kept their logger

_Frame = tuple[str, float | None, int | None]  # frame, relay start, seq

CONFIRM_DELAY = 0.025
"""Seconds a ping for frames nobody waits on may wait for more frames to confirm with it."""


class WebSocketLink:
    """A ``Link`` over a websockets connection; frames wait only behind a full transport."""

    __slots__ = (
        "_awaited_seq",
        "_close",
        "_closing",
        "_confirm_delay",
        "_confirming",
        "_delayed",
        "_drained",
        "_lazy_bytes",
        "_lazy_frames",
        "_limited",
        "_metrics",
        "_outbox_max",
        "_pinged_seq",
        "_scheduled",
        "_tasks",
        "_unpinged_bytes",
        "_unpinged_frames",
        "_waiting",
        "_written_seq",
        "_ws",
        "connection_id",
        "on_confirm",
    )

    def __init__(
        self,
        ws: ServerConnection,
        *,
        outbox_max: int,
        metrics: RelayMetrics,
        buffer: tuple[int, int],
        confirm_delay: float = CONFIRM_DELAY,
    ) -> None:
        """``buffer``: the resume buffer's frames and bytes (``resume_buffer_messages``,
        ``resume_buffer_bytes``), of which a sixteenth may wait for a delayed ping."""
        self.connection_id = uuid.uuid4().hex
        self.on_confirm: Callable[[int], None] | None = None
        self._ws = ws
        self._metrics = metrics
        self._outbox_max = outbox_max
        self._waiting: list[_Frame] = []  # sent to the link, not yet written
        self._limited = 0  # frames waiting behind a full transport (not replays or answers)
        self._closing = False
        self._close: tuple[int, str] | None = None  # to close with, once what waits is written
        self._scheduled: asyncio.Handle | None = None  # the write at the end of this turn
        self._drained: asyncio.Future[None] | None = None  # waited for while the transport is full
        self._written_seq = 0  # the last numbered frame handed to the socket
        self._pinged_seq = 0  # the last one a confirmation ping was sent after
        self._confirming = False  # a confirmation ping is in flight
        self._awaited_seq = 0  # the last numbered frame written whose receipt someone waits for
        self._confirm_delay = confirm_delay
        self._lazy_frames, self._lazy_bytes = buffer[0] // 16, buffer[1] // 16
        self._unpinged_frames = self._unpinged_bytes = 0  # numbered, written since the last ping
        self._delayed: asyncio.TimerHandle | None = None  # the ping for frames nobody waits on
        self._tasks: set[asyncio.Task[None]] | None = None  # closing handshakes, once there is one

    @property
    def waiting(self) -> int:
        """Frames sent to the link and not yet written (behind a full transport)."""
        return len(self._waiting)

    def is_open(self) -> bool:
        return not self._closing and self._ws.state is State.OPEN

    def send(
        self,
        frame: str,
        relay_started: float | None = None,
        seq: int | None = None,
        *,
        replay: bool = False,
        awaited: bool = True,
    ) -> bool:
        if self._closing:
            return False
        if not replay and self._drained is not None:  # behind a full transport
            if self._limited >= self._outbox_max:
                self._abort(CloseCode.SLOW_CONSUMER)
                return False
            self._limited += 1
        if awaited and seq is not None:
            self._awaited_seq = max(self._awaited_seq, seq)
        self._waiting.append((frame, relay_started, seq))
        self._schedule()
        return True

    def close(self, code: int, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self._close = (code, reason)
            self._schedule()

    def _abort(self, code: CloseCode) -> None:
        """Close now, dropping the waiting frames (the reader is not reading them)."""
        self._closing = True
        self._close = None
        self._waiting.clear()
        self._metrics.closes.labels(str(int(code))).inc()
        self._closing_handshake(code, REASONS[code])

    def _closing_handshake(self, code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._ws.close(code, reason))
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Writing -------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Write at the end of this turn of the loop, unless the transport is full (then
        once it has drained)."""
        if self._scheduled is not None or self._drained is not None:
            return
        loop = asyncio.get_running_loop()
        if self._ws.paused:
            self._drained = loop.create_future()
            self._ws.drain_waiters.append(self._drained)
            self._drained.add_done_callback(self._on_drained)
        else:
            self._scheduled = loop.call_soon(self._write)

    def _on_drained(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._ws.drain_waiters.remove(waiter)
        self._drained = None
        if waiter.cancelled() or waiter.exception() is not None:  # the connection was lost
            self._waiting.clear()
            return
        self._schedule()

    def _write(self) -> None:
        self._scheduled = None
        try:
            self._write_waiting()
        except Exception as exc:  # a bug must not leave its peer silently stuck
            log.error("writer_crashed", error_type=type(exc).__name__, exc_info=exc)
            self._closing = True
            self._ws.transport.abort()

    def _write_waiting(self) -> None:
        """What waits, a confirmation ping if one is due, and the close if one was asked
        for: one write."""
        ws = self._ws
        if ws.protocol.state is not State.OPEN:  # closing: the relay hears of it from the socket
            self._waiting.clear()
            return
        batch, self._waiting, self._limited = self._waiting, [], 0
        protocol = ws.protocol
        for frame, _, seq in batch:
            data = frame.encode()
            protocol.send_text(data)
            if seq is not None:
                self._written_seq = seq
                self._unpinged_frames += 1
                self._unpinged_bytes += len(data)
        pong = self._queue_confirmation()
        data = b"".join(protocol.data_to_send())
        if data:
            ws.transport.write(data)
        written = time.perf_counter()
        for _, started, _ in batch:
            if started is not None:
                self._metrics.relay_latency.observe(written - started)
        if pong is not None:
            self._await_confirmation(pong)
        if self._close is not None:
            code, reason = self._close
            self._close = None
            self._closing_handshake(code, reason)

    def _queue_confirmation(self) -> asyncio.Future[float] | None:
        """Queue a ping after what is written, if anything is unconfirmed and none is in
        flight: its pong proves the client has everything before it. Registered as
        ``ping()`` registers its own, so websockets resolves it on the pong. For frames
        nobody waits on, the ping is delayed (``_confirm_later``)."""
        if self._confirming or self.on_confirm is None or self._written_seq <= self._pinged_seq:
            return None
        if (
            self._awaited_seq <= self._pinged_seq
            and self._unpinged_frames < self._lazy_frames
            and self._unpinged_bytes < self._lazy_bytes
        ):
            if self._delayed is None:
                self._delayed = asyncio.get_running_loop().call_later(self._confirm_delay, self._confirm_later)
            return None
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        seq = self._written_seq
        self._unpinged_frames = self._unpinged_bytes = 0
        # An explicit payload: websockets would draw one from the global random module.
        data = f"confirm:{seq}".encode()
        loop = asyncio.get_running_loop()
        pong: asyncio.Future[float] = loop.create_future()
        self._ws.pending_pings[data] = (pong, loop.time())
        self._ws.protocol.send_ping(data)
        self._pinged_seq = seq
        self._confirming = True
        return pong

    def _confirm_later(self) -> None:
        """The delay is over: the ping for what nobody waits on goes out now (with any
        frames waiting), or after the ping in flight."""
        self._delayed = None
        if self._closing or self._confirming:
            return
        self._awaited_seq = max(self._awaited_seq, self._written_seq)  # due now
        self._schedule()

    def _await_confirmation(self, pong: asyncio.Future[float]) -> None:
        seq, confirm = self._pinged_seq, self.on_confirm
        assert confirm is not None

        def confirmed(waiter: asyncio.Future[float]) -> None:
            self._confirming = False
            if waiter.cancelled() or waiter.exception() is not None:
                return
            confirm(seq)
            if self._written_seq > seq and not self._closing:  # more was written meanwhile
                self._schedule()  # its ping goes out at the end of this turn (with any frames)

        pong.add_done_callback(confirmed)

    async def finish(self) -> None:
        """The connection has ended: nothing more is written."""
        self._closing = True
        self._waiting.clear()
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._drained is not None:
            self._drained.cancel()
        if self._tasks:
            for task in self._tasks:  # the socket is gone: no handshake is left to wait for
                task.cancel()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
