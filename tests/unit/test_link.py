"""ws_relay.link over a real websockets connection (loopback, port 0): what is sent in one
turn of the loop written in one write with its confirmation ping, the pong confirming what
came before it, the ping for frames nobody waits on delayed, and frames waiting behind a
full transport, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from support import scaled
from ws_relay.link import WebSocketLink
from ws_relay.metrics import RelayMetrics


@dataclass
class Served:
    link: WebSocketLink
    client: ClientConnection
    writes: list[bytes] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)
    confirmed_event: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def served(
    *,
    outbox_max: int = 1000,
    small_buffers: bool = False,
    buffer: tuple[int, int] = (1024, 4 << 20),
    confirm_delay: float = 0.025,
) -> AsyncIterator[Served]:
    """One link on the server side of a real connection, its transport's writes recorded.
    ``small_buffers``: the kernel's socket buffers are small, and the client buffers one
    message before it stops reading, so that a client not reading fills the transport soon.
    ``buffer`` and ``confirm_delay``: when a ping for frames nobody waits on goes out."""
    ready: asyncio.Future[tuple[WebSocketLink, list[bytes]]] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        writes: list[bytes] = []
        write = ws.transport.write

        def recording(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            write(data)

        ws.transport.write = recording  # type: ignore[method-assign]
        if small_buffers:
            ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        link = WebSocketLink(
            ws,
            outbox_max=outbox_max,
            metrics=RelayMetrics(CollectorRegistry()),
            buffer=buffer,
            confirm_delay=confirm_delay,
        )
        ready.set_result((link, writes))
        await done.wait()
        await link.finish()

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        max_queue = 1 if small_buffers else 16  # 16: websockets' default
        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None, max_queue=max_queue, max_size=None) as client:
            if small_buffers:
                client.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            link, writes = await asyncio.wait_for(ready, scaled(5))
            result = Served(link, client, writes)

            def on_confirm(seq: int) -> None:
                result.confirmed.append(seq)
                result.confirmed_event.set()

            link.on_confirm = on_confirm
            try:
                yield result
            finally:
                done.set()


async def receive(client: ClientConnection, count: int) -> list[str]:
    return [str(await asyncio.wait_for(client.recv(), scaled(5))) for _ in range(count)]


async def test_a_burst_goes_out_in_one_write_with_its_confirmation_ping() -> None:
    async with served() as s:
        for seq in range(1, 11):
            assert s.link.send(f'{{"type":"offer","seq":{seq}}}', None, seq)
        assert await receive(s.client, 10) == [f'{{"type":"offer","seq":{seq}}}' for seq in range(1, 11)]
        # The client answers the ping as it reads (websockets does): the pong confirms all ten.
        await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))
        assert s.confirmed == [10]
        assert len(s.writes) == 1, s.writes  # ten frames and the ping: one syscall's worth
        assert s.writes[0].endswith(b"confirm:10")  # the ping after the frames it confirms


async def test_what_is_written_while_a_confirmation_is_in_flight_is_confirmed_after_it() -> None:
    async with served() as s:
        s.link.send('{"n":1}', None, 1)
        await receive(s.client, 1)
        await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))
        s.confirmed_event.clear()
        s.link.send('{"n":2}', None, 2)
        s.link.send('{"n":3}', None, 3)
        await receive(s.client, 2)
        await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))
        while s.confirmed[-1] < 3:
            s.confirmed_event.clear()
            await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))
        assert s.confirmed == sorted(s.confirmed)  # in order, ending with the last written
        assert s.confirmed[-1] == 3


async def test_a_long_burst_is_one_write_and_one_confirmation() -> None:
    async with served(outbox_max=1000) as s:
        count = 200
        for seq in range(1, count + 1):
            s.link.send(f'{{"n":{seq}}}', None, seq)
        assert len(await receive(s.client, count)) == count
        await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))
        assert s.confirmed == [count]
        assert len(s.writes) == 1


async def test_each_turn_of_the_loop_is_one_write() -> None:
    """Frames sent in different turns are not held back for each other: each turn's go out
    at its end (with a ping only when none is in flight)."""
    async with served() as s:
        s.link.send('{"n":1}')
        await asyncio.sleep(0)
        assert len(s.writes) == 1
        s.link.send('{"n":2}')
        s.link.send('{"n":3}')
        await asyncio.sleep(0)
        assert len(s.writes) == 2
        assert await receive(s.client, 3) == ['{"n":1}', '{"n":2}', '{"n":3}']


async def test_frames_wait_behind_a_full_transport_and_none_is_lost() -> None:
    async with served(outbox_max=10_000, small_buffers=True) as s:
        frame = "x" * 65536
        sent = 0
        while s.link.waiting == 0:  # the client is not reading: the transport fills up
            assert sent < 2000, "the transport never filled"
            sent += 1
            assert s.link.send(f"{sent:06d}{frame}", None, sent)
            await asyncio.sleep(0)
        assert s.link.is_open()
        for _ in range(3):  # more waits behind it, in order
            sent += 1
            assert s.link.send(f"{sent:06d}{frame}", None, sent)
        received = await receive(s.client, sent)  # the client reads: the transport drains
        assert [int(text[:6]) for text in received] == list(range(1, sent + 1))
        assert s.link.waiting == 0
        while not s.confirmed or s.confirmed[-1] < sent:
            s.confirmed_event.clear()
            await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))


async def test_a_consumer_that_stops_reading_is_closed_once_its_outbox_is_full() -> None:
    async with served(outbox_max=8, small_buffers=True) as s:
        frame = "x" * 65536
        sent = 0
        while s.link.send(frame):
            sent += 1
            assert sent < 2000, "never closed"
            await asyncio.sleep(0)
        assert s.link.waiting == 0  # dropped: the reader was not reading them
        assert not s.link.is_open()
        with contextlib.suppress(ConnectionClosed):
            while True:  # what was written before the close arrives; then the close
                await asyncio.wait_for(s.client.recv(), scaled(5))
        assert s.client.close_code == 4501


async def test_frames_without_a_sequence_number_need_no_confirmation() -> None:
    async with served() as s:
        s.link.send('{"type":"ack","id":"a"}')
        assert await receive(s.client, 1) == ['{"type":"ack","id":"a"}']
        assert s.writes == [s.writes[0]]
        assert b"confirm:" not in s.writes[0]
        assert s.confirmed == []


async def test_frames_sent_in_one_turn_are_written_together_whatever_the_outbox() -> None:
    # The outbox bounds frames waiting behind a full transport, not a turn's burst (a
    # sender's read of many small frames): those are written at the turn's end.
    async with served(outbox_max=2) as s:
        assert all(s.link.send(str(n)) for n in range(5))
        assert s.link.is_open()
        assert await receive(s.client, 5) == [str(n) for n in range(5)]
        assert len(s.writes) == 1


async def test_frames_nobody_waits_on_are_confirmed_by_one_delayed_ping() -> None:
    """Frames whose receipt settles nothing (no ack waits) go out at once, but their ping
    waits: the frames of several turns are confirmed by one pong."""
    async with served(confirm_delay=scaled(0.05)) as s:
        for seq in range(1, 4):
            s.link.send(f'{{"n":{seq}}}', None, seq, awaited=False)
            await asyncio.sleep(0)  # one turn each: three writes
        assert await receive(s.client, 3) == ['{"n":1}', '{"n":2}', '{"n":3}']
        await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))
        assert s.confirmed == [3]
        pings = [data for data in s.writes if b"confirm:" in data]
        assert len(pings) == 1, s.writes
        assert pings[0].endswith(b"confirm:3")


async def test_a_frame_someone_waits_on_is_pinged_for_at_once() -> None:
    """A frame whose receipt acks its sender takes the delayed ping along, at once."""
    async with served(confirm_delay=scaled(60)) as s:
        s.link.send('{"n":1}', None, 1, awaited=False)
        await asyncio.sleep(0)
        assert b"confirm:" not in s.writes[0]
        s.link.send('{"n":2}', None, 2)
        await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))  # long before the delay
        assert s.confirmed == [2]
        assert s.writes[-1].endswith(b"confirm:2")


async def test_the_delayed_ping_goes_out_once_a_sixteenth_of_the_buffer_is_unpinged() -> None:
    """What waits for a delayed ping is bounded: past a sixteenth of the resume buffer's
    frames (or bytes), the ping goes out with them."""
    async with served(confirm_delay=scaled(60), buffer=(32, 4 << 20)) as s:
        s.link.send('{"n":1}', None, 1, awaited=False)
        await asyncio.sleep(0)
        assert b"confirm:" not in s.writes[0]
        s.link.send('{"n":2}', None, 2, awaited=False)  # two of 32: a sixteenth
        await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))
        assert s.confirmed == [2]
    async with served(confirm_delay=scaled(60), buffer=(1024, 16 * 100)) as s:
        s.link.send("x" * 99, None, 1, awaited=False)
        await asyncio.sleep(0)
        assert b"confirm:" not in s.writes[0]
        s.link.send("x" * 99, None, 2, awaited=False)  # 198 bytes of 1,600: past a sixteenth
        await asyncio.wait_for(s.confirmed_event.wait(), scaled(5))
        assert s.confirmed == [2]
