"""Two aiortc peers negotiate through the relay with trickle ICE and talk over a data channel."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

import support
from signaling_sdk.webrtc import ice_candidate, trickle
from support import Peer, joined_pair

pytestmark = pytest.mark.e2e

CANDIDATE_LINES = ("a=candidate:", "a=end-of-candidates")
STATES = ("signalingState", "iceGatheringState", "iceConnectionState", "connectionState")


class Endpoint:
    """One side: an aiortc peer connection signaling through its relay socket, recording what happens."""

    def __init__(self, signaling: Peer, remote_id: str) -> None:
        assert signaling.peer_id is not None
        self.signaling = signaling
        self.own_id = signaling.peer_id
        self.remote_id = remote_id
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.states: dict[str, list[str]] = {name: [getattr(self.pc, name)] for name in STATES}
        for name in STATES:
            self.pc.on(f"{name.lower()}change", partial(self._record, name))
        loop = asyncio.get_running_loop()
        self.settled: asyncio.Future[str] = loop.create_future()
        self.channel: asyncio.Future[RTCDataChannel] = loop.create_future()
        self.messages: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.pc.on("datachannel", self._remote_channel)
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    def _record(self, name: str) -> None:
        state = getattr(self.pc, name)
        self.states[name].append(state)
        if name == "connectionState" and state in {"connected", "failed", "closed"} and not self.settled.done():
            self.settled.set_result(state)

    def _remote_channel(self, channel: RTCDataChannel) -> None:
        channel.on("message", self.messages.put_nowait)
        if not self.channel.done():
            self.channel.set_result(channel)

    def open_channel(self, label: str) -> RTCDataChannel:
        """A data channel of ours; ``self.channel`` resolves when it opens."""
        channel = self.pc.createDataChannel(label)
        channel.on("message", self.messages.put_nowait)

        def opened() -> None:
            if not self.channel.done():
                self.channel.set_result(channel)

        channel.on("open", opened)
        return channel

    async def _send(self, message: dict[str, Any]) -> None:
        message = {"sender": self.own_id, "target": self.remote_id, **message}
        self.sent.append(message)
        await self.signaling.send(message)

    async def send_description(self) -> None:
        """Send the local description without candidates, then each candidate on its own, then the end marker."""
        description = self.pc.localDescription
        sdp, candidates = trickle(description.sdp)  # the SDK's encoding, sent here as a seed-style client would
        await self._send({"type": description.type, "sdp": sdp})
        for init in candidates:
            await self._send({"type": "candidate", "candidate": init})
        await self._send({"type": "candidate", "candidate": None})

    async def signal(self) -> None:
        """Handle relayed messages (answering an offer) until the remote end-of-candidates marker."""
        while True:
            message = await self.signaling.recv()
            self.received.append(message)
            kind = message.get("type")
            if kind in {"offer", "answer"}:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type=kind))
                if kind == "offer":
                    await self.pc.setLocalDescription(await self.pc.createAnswer())
                    await self.send_description()
            elif kind == "candidate":
                if message["candidate"] is None:
                    await self.pc.addIceCandidate(None)
                    return
                await self.pc.addIceCandidate(ice_candidate(message["candidate"]))
            else:
                raise AssertionError(f"unexpected message {message}")

    def trickled(self) -> list[dict[str, Any]]:
        """The candidate inits this side sent, end marker excluded."""
        return [m["candidate"] for m in self.sent if m["type"] == "candidate" and m["candidate"] is not None]

    def remote_candidates(self) -> set[tuple[str, int]]:
        """The (ip, port) of every candidate the ICE transport knows for the other side."""
        assert self.pc.sctp is not None
        return {(c.ip, c.port) for c in self.pc.sctp.transport.transport.getRemoteCandidates()}

    async def close(self) -> None:
        await self.pc.close()


def addresses(inits: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """The (ip, port) of each candidate init."""
    return {(c.ip, c.port) for c in map(ice_candidate, inits)}


@pytest.mark.usefixtures("loopback_ice")
async def test_data_channel_over_relay_with_trickled_candidates(api: str, relay: str) -> None:
    """Two signed-in peers negotiate via the relay with only trickled candidates and trade intact payloads."""
    async with AsyncExitStack() as cleanup:
        _, (worker_ws, worker_user), (client_ws, client_user) = await joined_pair(api, relay)
        cleanup.push_async_callback(worker_ws.close)
        cleanup.push_async_callback(client_ws.close)
        assert worker_user.username != client_user.username
        assert worker_ws.peer_id is not None
        assert client_ws.peer_id is not None
        client = Endpoint(client_ws, worker_ws.peer_id)
        cleanup.push_async_callback(client.close)
        worker = Endpoint(worker_ws, client_ws.peer_id)
        cleanup.push_async_callback(worker.close)

        # The client offers a data channel; the worker answers; both trickle.
        client_channel = client.open_channel("chat")
        assert client_channel.readyState == "connecting"
        await client.pc.setLocalDescription(await client.pc.createOffer())
        await client.send_description()
        await asyncio.wait_for(asyncio.gather(client.signal(), worker.signal()), support.TIMEOUT * 2)

        # The relay delivered every message in order, untouched but for the stamped sender.
        assert worker.received == client.sent
        assert client.received == worker.sent
        assert [m["type"] for m in client.sent][:1] == ["offer"]
        assert [m["type"] for m in worker.sent][:1] == ["answer"]
        for message in [*client.sent, *worker.sent]:
            if message["type"] in {"offer", "answer"}:
                assert not [line for line in message["sdp"].splitlines() if line.startswith(CANDIDATE_LINES)]
                assert not any(m.ice_candidates for m in SessionDescription.parse(message["sdp"]).media)

        # At least one candidate crossed each way, on loopback, and they are all the ICE agents know.
        for sender, receiver in ((client, worker), (worker, client)):
            inits = sender.trickled()
            assert len(inits) >= 1
            assert {ip for ip, _ in addresses(inits)} == {"127.0.0.1"}
            assert receiver.remote_candidates() == addresses(inits)

        assert await asyncio.wait_for(client.settled, support.TIMEOUT * 2) == "connected"
        assert await asyncio.wait_for(worker.settled, support.TIMEOUT * 2) == "connected"
        assert await asyncio.wait_for(client.channel, support.TIMEOUT) is client_channel
        worker_channel = await asyncio.wait_for(worker.channel, support.TIMEOUT)
        assert (worker_channel.label, worker_channel.readyState) == ("chat", "open")
        assert client_channel.readyState == "open"

        # A few KB each way, checked by length and SHA-256.
        request = os.urandom(6 * 1024)
        client_channel.send(request)
        received = await asyncio.wait_for(worker.messages.get(), support.TIMEOUT)
        assert isinstance(received, bytes)
        assert len(received) == len(request)
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(request).hexdigest()
        reply = f"{hashlib.sha256(received).hexdigest()} {secrets.token_hex(2 * 1024)}"
        worker_channel.send(reply)
        answered = await asyncio.wait_for(client.messages.get(), support.TIMEOUT)
        assert answered == reply
        assert answered.split()[0] == hashlib.sha256(request).hexdigest()

        assert client.states == {
            "signalingState": ["stable", "have-local-offer", "stable"],
            "iceGatheringState": ["new", "gathering", "complete"],
            "iceConnectionState": ["new", "checking", "completed"],
            "connectionState": ["new", "connecting", "connected"],
        }
        assert worker.states == {
            "signalingState": ["stable", "have-remote-offer", "stable"],
            "iceGatheringState": ["new", "gathering", "complete"],
            "iceConnectionState": ["new", "checking", "completed"],
            "connectionState": ["new", "connecting", "connected"],
        }

        await client.close()
        await worker.close()
        for side in (client, worker):
            assert side.pc.signalingState == "closed"
            assert side.pc.iceConnectionState == "closed"
            assert side.pc.connectionState == "closed"
        assert client_channel.readyState == "closed"
        assert worker_channel.readyState == "closed"
