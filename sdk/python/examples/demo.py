"""``make demo``: a worker and a client meet through the local stack and move a file.

The real ``signaling`` command runs twice, as two people would run it in two terminals: a
worker that waits in a room, and a client that finds it by tag, opens a WebRTC data
channel, sends a file with a progress bar and checks the SHA-256 the worker replies with.

It uses ``make dev`` when that is running; otherwise it starts the stack itself, on free
ports, for the length of the demo. Exit code: the client's (0: the file arrived intact).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from devstack import background

MAKE_DEV_API = "http://127.0.0.1:8001"
MAKE_DEV_RELAY = "ws://127.0.0.1:8080"
TIMEOUT = 120.0


def answers(api: str) -> bool:
    try:
        return httpx.get(f"{api}/healthz", timeout=2).is_success
    except httpx.HTTPError:
        return False


def signaling(*args: str) -> list[str]:
    """The ``signaling`` command (this environment's), echoed as a person would type it."""
    print(f"$ signaling {shlex.join(args)}", flush=True)
    return [sys.executable, "-m", "signaling_sdk.cli", *args]


def demo(api: str, relay: str, work: Path, size: int, relay_only: bool) -> int:
    urls = ["--api", api, "--relay", relay]
    created = subprocess.run(signaling(*urls, "rooms", "create"), capture_output=True, text=True, check=True)
    room = json.loads(created.stdout)
    print(f"room {room['room_id']} (its token is the room's password)\n", flush=True)
    where = ["--room", room["room_id"], f"--token={room['token']}", *(["--relay-only"] if relay_only else [])]
    job = work / "training-job.bin"
    job.write_bytes(os.urandom(size))
    received = work / "received"

    worker = subprocess.Popen(
        signaling(
            *urls, "worker", *where, "--out", str(received), "--once", "--tag", "demo", "--gpu-memory-mb", "16384"
        )
    )
    try:
        try:
            client = subprocess.run(
                signaling(*urls, "client", *where, "--file", str(job), "--tag", "demo", "--min-gpu-memory-mb", "8192"),
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            print(f"\nthe client did not finish within {TIMEOUT:.0f} s")
            return 1
        if client.returncode == 0:  # the worker exits (--once) after replying with the hash
            worker.wait(timeout=TIMEOUT)
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait()
    intact = (received / job.name).exists() and (received / job.name).read_bytes() == job.read_bytes()
    print(f"\nclient exit {client.returncode}, worker exit {worker.returncode}; file intact on disk: {intact}")
    print(
        "In a browser: under `make dev`, http://127.0.0.1:8003/?room=ROOM&token=TOKEN sends a file to a"
        " `signaling worker` in that room (sdk/js/README.md)"
    )
    return client.returncode or worker.returncode or (0 if intact else 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=8, help="size of the file sent (default: %(default)s MiB)")
    parser.add_argument("--relay-only", action="store_true", help="through the TURN server only")
    parser.add_argument("--own-stack", action="store_true", help="start a stack even if `make dev` is running")
    args = parser.parse_args(argv)
    stack = None
    if not args.own_stack and answers(MAKE_DEV_API):
        api, relay = MAKE_DEV_API, MAKE_DEV_RELAY
        print(f"using the running `make dev` stack at {api}", flush=True)
    else:
        print("starting a dev stack for this demo (free ports; stopped at the end)", flush=True)
        stack = background.start("--table-prefix", "demo-")
        api, relay = stack.api, stack.relay
    try:
        with tempfile.TemporaryDirectory(prefix="signaling-demo-") as work:
            return demo(api, relay, Path(work), args.size_mib * 1024 * 1024, args.relay_only)
    finally:
        if stack is not None:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
