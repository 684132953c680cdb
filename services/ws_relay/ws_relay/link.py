"""The websocket link: one client connection as the relay sees it (``hub.Link``).

Each connection gets an outbox (a bounded queue) drained by its own writer task, so a
peer that stops reading slows no one else down: when its outbox is full it is closed
(4501) and senders are told (DELIVERY_FAILED). After each burst a ping confirms receipt:
its pong proves the client has every frame written before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay.server")  # its events kept their logger

# Under continuous traffic the outbox never drains: confirm at least every so many frames.
CONFIRM_EVERY = 32


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
        self._queue: asyncio.Queue[tuple[str, float | None, int | None, bool] | _Close] = asyncio.Queue()
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
                if isinstance(item, _Close):
                    await self._ws.close(item.code, item.reason)
                    return
                frame, started, seq, replay = item
                if not replay:
                    self._limited -= 1
                await self._ws.send(frame)
                if started is not None:
                    self._metrics.relay_latency.observe(time.perf_counter() - started)
                if seq is not None:
                    self._written_seq = seq
                    self._since_ping += 1
                if self._queue.empty() or self._since_ping >= CONFIRM_EVERY:
                    await self._confirm_written()

    async def _confirm_written(self) -> None:
        """After a burst, ping: the pong proves the client received everything before it,
        so those frames need not be kept for a resume any more."""
        if self._confirming or self.on_confirm is None or self._written_seq <= self._pinged_seq:
            return
        seq, confirm = self._written_seq, self.on_confirm
        self._pinged_seq = seq
        self._confirming = True
        self._since_ping = 0
        # An explicit payload: websockets would draw one from the global random module.
        try:
            pong = await self._ws.ping(f"confirm:{seq}")
        except ConnectionClosed:
            self._confirming = False
            return

        def confirmed(waiter: asyncio.Future[float]) -> None:
            self._confirming = False
            if waiter.cancelled() or waiter.exception() is not None:
                return
            confirm(seq)
            if self._written_seq > seq and not self._closing:  # more was written meanwhile
                self._confirm_task = asyncio.get_running_loop().create_task(self._confirm_written())

        cast("asyncio.Future[float]", pong).add_done_callback(confirmed)

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
