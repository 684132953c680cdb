"""The websocket link: one client connection as the relay sees it (``hub.Link``).

Each connection gets an outbox (a bounded queue) drained by its own writer task, so a
peer that stops reading slows no one else down: when its outbox is full it is closed
(4501) and senders are told (DELIVERY_FAILED). After each burst a ping confirms receipt:
its pong proves the client has every frame written before it.

The writer takes what is queued (up to WRITE_BATCH frames) and writes it, with the burst's
confirmation ping behind it, in one write to the socket: a syscall and a pass through
websockets' send path per burst, not two per frame (the profile of issue 18: writes were
half the relay's CPU). It uses websockets' own pieces for it: ``send_context`` (state
checks, errors, flow control), the sans-I/O ``protocol`` to build the frames, and the
connection's ``pending_pings`` so that the pong resolves the ping as ``ping()`` would
(websockets is pinned; tests/unit/test_link.py checks that shape).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay.server")  # its events kept their logger

# Under continuous traffic the outbox never drains: confirm at least every so many frames.
CONFIRM_EVERY = 32
# At most so many queued frames go out in one write.
WRITE_BATCH = 64

_Frame = tuple[str, float | None, int | None, bool]  # frame, relay start, seq, replay


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class WebSocketLink:
    """A ``Link`` over a websockets connection, with a bounded outbox."""

    def __init__(self, ws: ServerConnection, *, outbox_max: int, metrics: RelayMetrics) -> None:
        self.connection_id = uuid.uuid4().hex
        self.on_confirm: Callable[[int], None] | None = None
        self._ws = ws
        self._metrics = metrics
        self._outbox_max = outbox_max
        # One slot more than the limit, so a close always fits behind the frames.
        # Unbounded underneath: send() applies the limit (replays are owed and may exceed it).
        self._queue: asyncio.Queue[_Frame | _Close] = asyncio.Queue()
        self._limited = 0  # queued frames the limit applies to (not replays or answers)
        self._closing = False
        self._written_seq = 0  # the last numbered frame handed to the socket
        self._pinged_seq = 0  # the last one a confirmation ping was sent after
        self._confirming = False  # a confirmation ping is in flight
        self._since_ping = 0  # numbered frames written since the last confirmation ping
        self._confirm_task: asyncio.Task[None] | None = None
        self._writer = asyncio.create_task(self._write())
        self._writer.add_done_callback(self._writer_done)
        self._abort_task: asyncio.Task[None] | None = None

    def is_open(self) -> bool:
        return not self._closing and self._ws.state is State.OPEN

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """A writer that died of a bug must not leave its peer silently stuck: drop the connection."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("writer_crashed", error_type=type(task.exception()).__name__, exc_info=task.exception())
        self._closing = True
        self._ws.transport.abort()

    def send(
        self, frame: str, relay_started: float | None = None, seq: int | None = None, *, replay: bool = False
    ) -> bool:
        if self._closing:
            return False
        if not replay:
            if self._limited >= self._outbox_max:
                self._abort(CloseCode.SLOW_CONSUMER)
                return False
            self._limited += 1
        self._queue.put_nowait((frame, relay_started, seq, replay))
        return True

    def close(self, code: int, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(_Close(code, reason))

    def _abort(self, code: CloseCode) -> None:
        """Close now, dropping the queued frames (the reader is not reading them)."""
        self._closing = True
        self._metrics.closes.labels(str(int(code))).inc()
        self._writer.cancel()
        self._abort_task = asyncio.create_task(self._ws.close(code, REASONS[code]))

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                item = await self._queue.get()
                batch: list[_Frame] = []
                while not isinstance(item, _Close):
                    batch.append(item)
                    if len(batch) >= WRITE_BATCH or self._queue.empty():
                        break
                    item = self._queue.get_nowait()
                if batch:
                    await self._write_batch(batch)
                if isinstance(item, _Close):
                    await self._ws.close(item.code, item.reason)
                    return

    async def _write_batch(self, batch: list[_Frame]) -> None:
        """The frames, and the burst's confirmation ping if one is due, in one write."""
        for _, _, _, replay in batch:
            if not replay:
                self._limited -= 1
        pong: asyncio.Future[float] | None = None
        ws = self._ws
        async with ws.send_context():
            for frame, _, seq, _ in batch:
                ws.protocol.send_text(frame.encode())
                if seq is not None:
                    self._written_seq = seq
                    self._since_ping += 1
            if self._queue.empty() or self._since_ping >= CONFIRM_EVERY:
                pong = self._queue_confirmation()
            self._flush()
        written = time.perf_counter()
        for _, started, _, _ in batch:
            if started is not None:
                self._metrics.relay_latency.observe(written - started)
        if pong is not None:
            self._await_confirmation(pong)

    def _flush(self) -> None:
        """Everything the protocol has to send, as one write (inside ``send_context``)."""
        data = b"".join(self._ws.protocol.data_to_send())
        if data:
            self._ws.transport.write(data)

    def _queue_confirmation(self) -> asyncio.Future[float] | None:
        """Queue a ping after what is written, if anything is unconfirmed and none is in
        flight (inside ``send_context``): its pong proves the client has everything before it.
        Registered as ``ping()`` registers its own, so websockets resolves it on the pong."""
        if self._confirming or self.on_confirm is None or self._written_seq <= self._pinged_seq:
            return None
        seq = self._written_seq
        # An explicit payload: websockets would draw one from the global random module.
        data = f"confirm:{seq}".encode()
        loop = asyncio.get_running_loop()
        pong: asyncio.Future[float] = loop.create_future()
        self._ws.pending_pings[data] = (pong, loop.time())
        self._ws.protocol.send_ping(data)
        self._pinged_seq = seq
        self._confirming = True
        self._since_ping = 0
        return pong

    def _await_confirmation(self, pong: asyncio.Future[float]) -> None:
        seq, confirm = self._pinged_seq, self.on_confirm
        assert confirm is not None

        def confirmed(waiter: asyncio.Future[float]) -> None:
            self._confirming = False
            if waiter.cancelled() or waiter.exception() is not None:
                return
            confirm(seq)
            if self._written_seq > seq and not self._closing:  # more was written meanwhile
                self._confirm_task = asyncio.get_running_loop().create_task(self._confirm_written())

        pong.add_done_callback(confirmed)

    async def _confirm_written(self) -> None:
        """Confirm what was written while the last confirmation was in flight."""
        pong: asyncio.Future[float] | None = None
        with contextlib.suppress(ConnectionClosed):
            async with self._ws.send_context():
                pong = self._queue_confirmation()
                self._flush()
        if pong is not None:
            self._await_confirmation(pong)

    async def finish(self) -> None:
        """The connection has ended: stop the writer."""
        self._closing = True
        self._writer.cancel()
        if self._confirm_task is not None:
            self._confirm_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        if self._abort_task is not None:
            await self._abort_task
