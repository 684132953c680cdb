"""ws-relay entry point: serve until SIGINT/SIGTERM, then shut down gracefully."""

from __future__ import annotations

import asyncio
import signal

from signaling_shared.aws import use_io_threads
from signaling_shared.logging import configure_logging
from signaling_shared.settings import RelaySettings
from ws_relay.server import RelayServer


async def run(server: RelayServer) -> None:
    loop = asyncio.get_running_loop()
    use_io_threads(loop, server.settings)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.stop()


def main() -> None:
    settings = RelaySettings()
    configure_logging(settings.log_level)
    # Built before the loop starts: creating AWS clients reads files and may ask IMDS.
    server = RelayServer(settings)
    asyncio.run(run(server))


if __name__ == "__main__":
    main()
