"""A worker: waits in a room, answers each client's data channel, replies to what it sends.
Usage: python worker.py ROOM_ID ROOM_TOKEN   (`signaling rooms create` makes a room)"""

import asyncio
import os
import sys

from signaling_sdk import Room, ServiceClient, Session
from signaling_sdk.webrtc import accept


async def main(room_id: str, token: str) -> None:
    async with ServiceClient(os.environ.get("SIGNALING_API_URL", "http://127.0.0.1:8001")) as api:
        me = await api.sign_in()
    relay = os.environ.get("SIGNALING_RELAY_URL", "ws://127.0.0.1:8080")
    async with await Session.open(relay, Room(room_id, token), me, "worker-1", role="worker") as session:
        while True:
            link = await accept(session)  # the next client's offer
            job = await link.recv()
            link.channel.send(f"done: {job!r}")
            await link.closed.wait()  # the client closes once it has the reply
            await link.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
