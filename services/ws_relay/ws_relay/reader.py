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


class _ReadState:
    """What the reader keeps per connection; the containers only while in use."""

    __slots__ = ("ended", "failed", "fragment_text", "fragments", "paused", "take", "tasks", "waiting", "wake", "work")

    def __init__(self) -> None:
        self.take: Take | None = None  # set by serve(): until then, messages wait
        self.waiting: deque[str | bytes] | None = None  # read while work was awaited
        self.work: Awaitable[None] | None = None  # what the handler task awaits next
        self.wake: asyncio.Future[None] | None = None  # the handler task, idle
        self.fragments: list[bytes] | None = None  # a fragmented message under way
        self.fragment_text = False
        self.paused = False
        self.failed = False  # a protocol error: nothing more is taken
        self.ended = False  # the socket is gone
        self.tasks: set[asyncio.Task[None]] | None = None  # closing for a protocol error


class RelayConnection(ServerConnection):
    """A ``ServerConnection`` whose messages go to ``serve(take)`` as they are read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One attribute: with its own 25, the connection's __dict__ stays a shared-key dict
        # (ten more attributes made it a full dict: 1.3 KiB more per connection).
        self._r = _ReadState()

    def forget_handshake(self) -> None:
        """Drop the handshake's headers once what the relay needs of them is read: they are
        2 to 3 KiB of every idle connection. The request's are emptied in place, since the
        protocol's parser keeps the request it read (and websockets takes a connection with
        no request for one still in its handshake)."""
        if self.request is not None:
            self.request.headers.clear()
        self.response = None

    async def serve(self, take: Take) -> None:
        """Hand every message to ``take``, in order, until the connection has ended and
        nothing read before that is left; run the work ``take`` leaves in this task."""
        r = self._r
        r.take = take
        self._take_waiting()
        while True:
            work = r.work
            if work is not None:
                try:
                    await work
                finally:
                    r.work = None
                self._take_waiting()
                continue
            if r.ended:
                return
            r.wake = self.loop.create_future()
            try:
                await r.wake
            finally:
                r.wake = None

    # Reading -------------------------------------------------------------------------

    def process_event(self, event: Any) -> None:
        r = self._r
        if self.request is None or not isinstance(event, Frame) or r.failed:
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not event.fin:
                r.fragments = [bytes(event.data)]
                r.fragment_text = opcode is Opcode.TEXT
                return
            self._message(bytes(event.data), opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            fragments = r.fragments
            if fragments is None:  # the protocol allows no CONT without a first fragment
                super().process_event(event)
                return
            if len(fragments) >= MAX_FRAGMENTS:
                self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return
            fragments.append(bytes(event.data))
            if event.fin:
                r.fragments = None
                self._message(b"".join(fragments), r.fragment_text)
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
        r = self._r
        if r.take is None or r.work is not None or r.waiting:
            if r.waiting is None:
                r.waiting = deque()
            r.waiting.append(message)
            high = self.max_queue_high
            if not r.paused and high is not None and len(r.waiting) > high:
                r.paused = True
                self.transport.pause_reading()
            return
        self._give(message)

    @property
    def _low(self) -> int:
        if self.max_queue_low is not None:
            return self.max_queue_low
        return (self.max_queue_high or 0) // 4  # websockets' own default low mark

    def _give(self, message: str | bytes) -> None:
        r = self._r
        assert r.take is not None
        try:
            work = r.take(message)
        except Exception as exc:  # a bug must not leave the peer's socket half-read
            log.error("reader_crashed", error_type=type(exc).__name__, exc_info=exc)
            r.failed = True
            self.transport.abort()
            return
        if work is not None:
            r.work = work
            if r.wake is not None and not r.wake.done():
                r.wake.set_result(None)

    def _take_waiting(self) -> None:
        """The messages that waited, until one leaves work to await."""
        r = self._r
        waiting = r.waiting
        if waiting is None:
            return
        while waiting and r.work is None:
            self._give(waiting.popleft())
        if not waiting:
            r.waiting = None  # a deque is 600 bytes: kept only while messages wait
        if r.paused and len(waiting) <= self._low and not r.ended:
            r.paused = False
            self.transport.resume_reading()

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Close for a protocol error, as websockets' ``recv()`` would."""
        r = self._r
        r.failed = True
        r.fragments = None

        async def fail() -> None:
            async with self.send_context():
                self.protocol.fail(code, reason)

        if r.tasks is None:
            r.tasks = set()
        task = self.loop.create_task(fail())
        r.tasks.add(task)
        task.add_done_callback(r.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        r = self._r
        r.ended = True
        r.fragments = None
        if r.wake is not None and not r.wake.done():
            r.wake.set_result(None)
