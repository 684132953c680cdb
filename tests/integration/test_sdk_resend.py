"""The SDK's resume against a scripted relay (a real WebSocket server on port 0): what the
replay answers is not sent again; what it does not answer is."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from signaling_sdk import Ack, Backoff, Identity, Room, Session
from support import TIMEOUT

pytestmark = pytest.mark.integration


class ScriptedRelay:
    """First connection: registers the peer, takes two messages, then fails (no close frame).
    Second: a resume whose replay acks the first message only; then records what comes."""

    def __init__(self) -> None:
        self.connections = 0
        self.sent: list[str] = []  # ids of the messages taken on the first connection
        self.after_resume: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.resume_request: dict[str, Any] = {}

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        register = json.loads(await ws.recv())
        if self.connections == 1:
            await ws.send(json.dumps(_registered(register, resumed=False, last_seq=0)))
            for _ in range(2):
                self.sent.append(json.loads(await ws.recv())["id"])
            ws.transport.abort()
            return
        self.resume_request = register
        await ws.send(json.dumps(_registered(register, resumed=True, last_seq=1)))
        await ws.send(json.dumps({"seq": 1, "type": "ack", "id": self.sent[0], "queued": False}))
        async for frame in ws:
            await self.after_resume.put(json.loads(frame))


def _registered(register: dict[str, Any], *, resumed: bool, last_seq: int) -> dict[str, Any]:
    return {
        "type": "registered_auth",
        "room_id": register["room_id"],
        "token": register["token"],
        "peer_id": register["peer_id"],
        "peers": [],
        "ice_servers": [],
        "ttl": 60,
        "resume_token": "resume-1",
        "resumed": resumed,
        "last_seq": last_seq,
    }


async def test_after_a_resume_only_what_the_replay_did_not_answer_is_sent_again() -> None:
    relay = ScriptedRelay()
    async with serve(relay.handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        session = await Session.open(
            f"ws://127.0.0.1:{port}",
            Room("room-1", "room-token", 0),
            Identity("id-token", "user"),
            "A",
            backoff=Backoff(initial=0.01, maximum=0.05),
        )
        async with asyncio.timeout(TIMEOUT):
            first = asyncio.create_task(session.send_to("B", "acked in the replay"))
            second = asyncio.create_task(session.send_to("B", "not answered"))
            assert await first == Ack(relay.sent[0], queued=False)
            resent = await relay.after_resume.get()
            assert (resent["id"], resent["payload"]) == (relay.sent[1], "not answered")  # only this one
            assert (relay.resume_request["resume_token"], relay.resume_request["last_seq"]) == ("resume-1", 0)
            assert not second.done()
            second.cancel()
        await session.close()
