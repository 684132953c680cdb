"""The null relay: a bare ``websockets`` forwarder, the practical limit of the library.

A client connects to ``/<own id>/<partner id>`` and gets ``{"type":"OPEN"}``; every frame
it sends goes to the connection registered as the partner id, unparsed. No JSON, no
validation, no storage: what is left is websockets' own cost per frame.

    python -m bench.nullrelay --port 0    # prints "READY <port>"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

OPEN = '{"type":"OPEN"}'


class NullRelay:
    """The forwarding table: connection path id -> connection."""

    def __init__(self) -> None:
        self.peers: dict[str, ServerConnection] = {}

    async def handle(self, ws: ServerConnection) -> None:
        own, _, partner = ws.request.path.strip("/").partition("/") if ws.request else ("", "", "")
        self.peers[own] = ws
        try:
            await ws.send(OPEN)
            async for frame in ws:
                target = self.peers.get(partner)
                if target is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await target.send(frame)
        except ConnectionClosed:
            pass
        finally:
            if self.peers.get(own) is ws:
                del self.peers[own]


async def serve_forever(host: str, port: int) -> None:
    relay = NullRelay()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The same connection options as ws-relay's defaults: no compression, 20 s pings.
    async with serve(relay.handle, host, port, compression=None, max_size=64 * 1024, max_queue=16) as server:
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (10,000 connections need as many fds)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_fd_limit()
    asyncio.run(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
