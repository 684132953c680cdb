"""ws-relay entry point: serve until SIGINT/SIGTERM, then shut down gracefully."""

from __future__ import annotations

import asyncio
import signal

from signaling_shared.aws import use_io_threads
from signaling_shared.logging import configure_logging
from signaling_shared.settings import RelaySettings
from ws_relay.server import RelayServer


async def run(settings: RelaySettings) -> None:
    loop = asyncio.get_running_loop()
    use_io_threads(loop, settings)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = RelayServer(settings)
    await server.start()
    await stop.wait()
    await server.stop()


def main() -> None:
    settings = RelaySettings()
    configure_logging(settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
