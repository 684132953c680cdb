"""A client: finds a worker in the room, opens a data channel to it, sends a job, prints the reply.
Usage: python client.py ROOM_ID ROOM_TOKEN"""

import asyncio
import os
import sys

from signaling_sdk import Room, ServiceClient, Session
from signaling_sdk.webrtc import connect


async def main(room_id: str, token: str) -> str:
    async with ServiceClient(os.environ.get("SIGNALING_API_URL", "http://127.0.0.1:8001")) as api:
        me = await api.sign_in()
    relay = os.environ.get("SIGNALING_RELAY_URL", "ws://127.0.0.1:8080")
    async with await Session.open(relay, Room(room_id, token), me, "client-1", role="client") as session:
        worker, *_ = await session.discover({"role": "worker"})
        link = await connect(session, worker["peer_id"])
        link.channel.send("train model.zip")
        reply = str(await link.recv())
        await link.close()
    return reply


if __name__ == "__main__":
    print(asyncio.run(main(*sys.argv[1:3])))
