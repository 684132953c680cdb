"""The websocket connection as the relay reads it: each message is handed to the relay in
the turn of the event loop that read it, from ``data_received``, with no queue, future or
task step per message.

websockets' own ``ServerConnection`` puts every frame in an assembler that a ``recv()``
waiting in the connection's handler task takes out: two hops through the loop per
message, and the relay then yielded once more so that writes kept pace. The profile of
issue 18 put that reading path next to writing as the relay's cost per message. Here a
message is taken by a callback (``Relay.take_frame``) that does the work then and there,
and returns a coroutine only for work that waits on I/O (registering, claims, a message
held in DynamoDB, a sender held back by its rate limit). The connection's handler task
runs that coroutine; the messages that arrive meanwhile wait, in order, and the socket is
not read while ``max_queue`` of them wait (TCP holds the rest back), as websockets'
assembler would.

Handshake, pings and pongs, keepalive, closing and the close timeout stay websockets'
(the sans-I/O protocol and the rest of ``ServerConnection``); only data frames are taken
here. Fragmented messages are joined (``max_size`` bounds their bytes, the protocol checks
it; ``MAX_FRAGMENTS`` their count), and text is decoded as strict UTF-8 (1007 if not), as
websockets' own ``recv()`` does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode

log = structlog.stdlib.get_logger("ws_relay.server")

Take = Callable[[str | bytes], Awaitable[None] | None]
"""Handles one message now; returns what is left to await, if it must wait on I/O."""


class RelayConnection(ServerConnection):
    """A ``ServerConnection`` whose messages go to ``serve(take)`` as they are read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._take: Take | None = None  # set by serve(): until then, messages wait
        self._waiting: deque[str | bytes] = deque()  # read while work was awaited
        self._work: Awaitable[None] | None = None  # what the handler task awaits next
        self._wake: asyncio.Future[None] | None = None  # the handler task, idle
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._paused = False
        self._failed = False  # a protocol error: nothing more is taken
        self._ended = False  # the socket is gone
        self._tasks: set[asyncio.Task[None]] = set()  # closing for a protocol error

    async def serve(self, take: Take) -> None:
        """Hand every message to ``take``, in order, until the connection has ended and
        nothing read before that is left; run the work ``take`` leaves in this task."""
        self._take = take
        self._take_waiting()
        while True:
            work = self._work
            if work is not None:
                try:
                    await work
                finally:
                    self._work = None
                self._take_waiting()
                continue
            if self._ended:
                return
            self._wake = self.loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None

    # Reading -------------------------------------------------------------------------

    def process_event(self, event: Any) -> None:
        if self.request is None or not isinstance(event, Frame) or self._failed:
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not event.fin:
                self._fragments = [bytes(event.data)]
                self._fragment_text = opcode is Opcode.TEXT
                return
            self._message(bytes(event.data), opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            if len(self._fragments) >= MAX_FRAGMENTS:
                self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return
            self._fragments.append(bytes(event.data))
            if event.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._message(data, self._fragment_text)
        else:
            super().process_event(event)  # ping, pong, close

    def _message(self, data: bytes, text: bool) -> None:
        message: str | bytes = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        if self._take is None or self._work is not None or self._waiting:
            self._waiting.append(message)
            high = self.max_queue_high
            if not self._paused and high is not None and len(self._waiting) > high:
                self._paused = True
                self.transport.pause_reading()
            return
        self._give(message)

    @property
    def _low(self) -> int:
        if self.max_queue_low is not None:
            return self.max_queue_low
        return (self.max_queue_high or 0) // 4  # websockets' own default low mark

    def _give(self, message: str | bytes) -> None:
        assert self._take is not None
        try:
            work = self._take(message)
        except Exception as exc:  # a bug must not leave the peer's socket half-read
            log.error("reader_crashed", error_type=type(exc).__name__, exc_info=exc)
            self._failed = True
            self.transport.abort()
            return
        if work is not None:
            self._work = work
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

    def _take_waiting(self) -> None:
        """The messages that waited, until one leaves work to await."""
        while self._waiting and self._work is None:
            self._give(self._waiting.popleft())
        if self._paused and len(self._waiting) <= self._low and not self._ended:
            self._paused = False
            self.transport.resume_reading()

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Close for a protocol error, as websockets' ``recv()`` would."""
        self._failed = True
        self._fragments = []

        async def fail() -> None:
            async with self.send_context():
                self.protocol.fail(code, reason)

        task = self.loop.create_task(fail())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._ended = True
        self._fragments = []
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
