"""``make dev``: the whole stack on loopback until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from devstack.stack import Stack, StackConfig
from signaling_shared.logging import configure_logging


def parse_args(argv: list[str] | None) -> StackConfig:
    defaults = StackConfig()
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    parser.add_argument("--host", default=defaults.host, help="Address to listen on (default: %(default)s).")
    parser.add_argument("--api-port", type=int, default=defaults.api_port, help="HTTP APIs (default: %(default)s).")
    parser.add_argument("--relay-port", type=int, default=defaults.relay_port, help="Relay (default: %(default)s).")
    parser.add_argument(
        "--aws-port", type=int, default=defaults.aws_port, help="Embedded emulator (default: %(default)s)."
    )
    parser.add_argument(
        "--turn-port",
        type=int,
        default=defaults.turn_port,
        help="coturn's port, when installed (STUN and TURN, UDP and TCP; default: %(default)s).",
    )
    parser.add_argument(
        "--demo-port", type=int, default=8003, help="The browser demo page, its own origin (default: %(default)s)."
    )
    parser.add_argument("--no-demo", action="store_true", help="Serve no demo page.")
    parser.add_argument("--no-turn", action="store_true", help="Run no TURN server and hand out no ICE servers.")
    parser.add_argument("--table-prefix", default=defaults.table_prefix, help="Default: %(default)s.")
    parser.add_argument("--log-level", default=defaults.log_level, help="Default: %(default)s.")
    args = parser.parse_args(argv)
    return StackConfig(
        host=args.host,
        api_port=args.api_port,
        relay_port=args.relay_port,
        aws_port=args.aws_port,
        table_prefix=args.table_prefix,
        log_level=args.log_level,
        start_turn=not args.no_turn,
        turn_port=None if args.no_turn else args.turn_port,
        demo_port=None if args.no_demo else args.demo_port,
    )


async def run(config: StackConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(config)
    try:
        starting = asyncio.create_task(stack.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            print(starting.result().banner(), flush=True)  # raises why it could not start
            await stopping
        else:  # Ctrl-C during startup
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        print("stopping...", flush=True)
    finally:
        stopping.cancel()
        await stack.stop()
    print("stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    configure_logging(config.log_level, stream=sys.stderr)
    try:
        asyncio.run(run(config))
    except OSError as exc:
        print(
            f"devstack: {exc} (is another stack running? choose ports with --api-port, --relay-port, --aws-port,"
            " --demo-port and --turn-port)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
