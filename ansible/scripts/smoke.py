"""The smoke test after a deploy: the public endpoint answers, a peer signs in and creates
a room, two peers register in it and exchange a message both ways, and the room is deleted.

    python ansible/scripts/smoke.py https://signaling.example.org wss://signaling.example.org
"""

from __future__ import annotations

import argparse
import asyncio
import ssl as ssl_module
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from signaling_sdk import ServiceClient, Session

TIMEOUT = 30.0


async def _next_message(session: Session) -> dict[str, Any]:
    """The next peer_message (room events such as peer_joined come first)."""
    while True:
        message = await session.recv()
        if message["type"] == "peer_message":
            return message


async def smoke(
    api: str, relay: str, *, ssl: ssl_module.SSLContext | None = None, say: Callable[[str], None] = print
) -> None:
    """Each step is said as it passes; the first that fails raises (AssertionError or the SDK's error)."""

    async def step(what: str, action: Awaitable[Any]) -> Any:
        result = await asyncio.wait_for(action, TIMEOUT)
        say(f"    ok  {what}")
        return result

    async with httpx.AsyncClient(verify=ssl or True, timeout=TIMEOUT) as http:
        health = await step(f"GET {api}/healthz", http.get(f"{api}/healthz"))
        assert health.status_code == 200, f"{api}/healthz answered {health.status_code}"
    async with ServiceClient(api, ssl=ssl) as client:
        worker_id = await step("anonymous sign-in (worker)", client.sign_in())
        client_id = await step("anonymous sign-in (client)", client.sign_in())
        room = await step("create a room", client.create_room(client_id))
        worker = await step(
            f"register the worker on {relay}", Session.open(relay, room, worker_id, "smoke-worker", ssl=ssl)
        )
        try:
            peer = await step("register the client", Session.open(relay, room, client_id, "smoke-client", ssl=ssl))
            try:
                await step("client -> worker", peer.send_to("smoke-worker", {"smoke": "ping"}))
                received = await step("worker receives", _next_message(worker))
                assert received["payload"] == {"smoke": "ping"}, received
                assert received["from_peer_id"] == "smoke-client", received
                await step("worker -> client", worker.send_to("smoke-client", {"smoke": "pong"}))
                answer = await step("client receives", _next_message(peer))
                assert answer["payload"] == {"smoke": "pong"}, answer
            finally:
                await peer.close()
        finally:
            await worker.close()
        await step("delete the room", client.delete_room(client_id, room.room_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("api", help="the APIs' base URL (https://<domain>)")
    parser.add_argument("relay", help="the relay's URL (wss://<domain>)")
    parser.add_argument("--ca-file", help="trust this CA too (an edge with EDGE_TLS=internal)")
    args = parser.parse_args(argv)
    context = None
    if args.ca_file:
        context = ssl_module.create_default_context()
        context.load_verify_locations(args.ca_file)
    try:
        asyncio.run(smoke(args.api, args.relay, ssl=context))
    except Exception as error:  # noqa: BLE001 - any failure fails the smoke test, named
        print(f"smoke test failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
