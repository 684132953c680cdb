"""ws_relay.reader over a real websockets connection (loopback, port 0): each message taken
in the loop turn that read it (no task), in order; the messages read while work is awaited
wait, and past ``max_queue`` the socket is not read; fragments joined; invalid UTF-8 closes
with 1007, as websockets' own ``recv()`` would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

from support import scaled
from ws_relay.reader import RelayConnection


@dataclass
class Served:
    server: RelayConnection
    client: ClientConnection | None = None
    taken: list[str | bytes] = field(default_factory=list)
    in_task: list[bool] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def until_taken(self, count: int) -> None:
        while len(self.taken) < count:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), scaled(5))


def client(s: Served) -> ClientConnection:
    assert s.client is not None
    return s.client


Work = Callable[[str | bytes], Awaitable[None] | None]


@asynccontextmanager
async def served(work: Work | None = None, *, max_queue: int = 16) -> AsyncIterator[Served]:
    """A server whose connections are RelayConnections; ``work`` says what a message leaves
    to await."""
    ready: asyncio.Future[Served] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws, RelayConnection)
        result = Served(ws)

        def take(message: str | bytes) -> Awaitable[None] | None:
            result.taken.append(message)
            result.in_task.append(asyncio.current_task() is not None)
            result.event.set()
            return work(message) if work is not None else None

        ready.set_result(result)
        try:
            await ws.serve(take)
        finally:
            result.ended.set()

    async with serve(
        handler, "127.0.0.1", 0, ping_interval=None, max_queue=max_queue, create_connection=RelayConnection
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None) as client:
            result = await asyncio.wait_for(ready, scaled(5))
            result.client = client
            yield result


async def test_each_message_is_taken_in_the_turn_that_read_it_not_in_a_task() -> None:
    async with served() as s:
        for n in range(20):
            await client(s).send(f"m{n}")
        await s.until_taken(20)
        assert s.taken == [f"m{n}" for n in range(20)]
        assert s.in_task == [False] * 20  # called from data_received, not from a task


async def test_messages_read_while_work_is_awaited_wait_and_keep_their_order() -> None:
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    async with served(lambda m: slow() if m == "slow" else None) as s:
        await client(s).send("slow")
        await s.until_taken(1)
        for n in range(3):
            await client(s).send(f"after{n}")
        await client(s).ping()  # a round trip: the three have been read by now
        assert s.taken == ["slow"]
        release.set()
        await s.until_taken(4)
        assert s.taken == ["slow", "after0", "after1", "after2"]


async def test_past_max_queue_waiting_the_socket_is_not_read_until_they_are_taken() -> None:
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    async with served(lambda m: slow() if m == "slow" else None, max_queue=4) as s:
        await client(s).send("slow")
        await s.until_taken(1)
        for n in range(5):  # one more than max_queue
            await client(s).send(f"w{n}")
        for _ in range(100):
            if not s.server.transport.is_reading():
                break
            await asyncio.sleep(scaled(0.01))
        assert not s.server.transport.is_reading()
        release.set()
        await s.until_taken(6)
        assert s.server.transport.is_reading()
        assert s.taken[1:] == [f"w{n}" for n in range(5)]


async def test_a_fragmented_message_is_taken_whole_and_binary_as_bytes() -> None:
    async with served() as s:
        await client(s).send(["frag", "ment", "ed"])
        await client(s).send(b"\x00\x01")
        await s.until_taken(2)
        assert s.taken == ["fragmented", b"\x00\x01"]


async def test_invalid_utf8_closes_with_1007_and_is_not_taken() -> None:
    async with served() as s:
        client(s).protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
        client(s).send_data()
        await asyncio.wait_for(client(s).wait_closed(), scaled(5))
        assert client(s).close_code == 1007
        assert s.taken == []


async def test_the_handler_returns_once_closed_after_the_work_it_was_awaiting() -> None:
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    async with served(lambda m: slow() if m == "slow" else None) as s:
        await client(s).send("slow")
        await client(s).send("then")
        await s.until_taken(1)
        await client(s).close()
        assert not s.ended.is_set()
        release.set()
        await asyncio.wait_for(s.ended.wait(), scaled(5))
        assert s.taken == ["slow", "then"]  # read before the close: still taken


async def test_a_connection_without_its_handshake_headers_still_pings_reads_and_closes() -> None:
    """``forget_handshake`` frees the headers of every idle connection: the connection goes on
    as before (websockets takes one without a request for one still in its handshake)."""
    async with served() as s:
        assert s.server.request is not None
        assert s.server.request.headers
        s.server.forget_handshake()
        assert s.server.request is not None  # still there, with its path
        assert (len(s.server.request.headers), s.server.response) == (0, None)
        await asyncio.wait_for(await client(s).ping(), scaled(5))  # the server answers pings
        await client(s).send("after")
        await s.until_taken(1)
        assert s.taken == ["after"]
        await client(s).close()
        await asyncio.wait_for(s.ended.wait(), scaled(5))
        assert s.server.close_code == 1000
