"""A WebRTC data channel negotiated over a signaling ``Session`` (needs the ``webrtc`` extra: aiortc).

    link = await connect(session, "Worker-1")     # the caller: offers a data channel
    link = await accept(session)                  # the callee: answers the next offer
    link.channel.send(b"...")

Descriptions travel without their candidates; every candidate follows as its own
``candidate`` message (trickle ICE), then the end marker (``candidate: null``). ICE servers
(STUN, and TURN with the credentials the relay hands out) come from the session unless
given. One negotiation at a time per session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription, candidate_from_sdp, candidate_to_sdp

from signaling_sdk.errors import SignalingError
from signaling_sdk.session import Session

_CANDIDATE_LINES = ("a=candidate:", "a=end-of-candidates")
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
REPORT_TIMEOUT = 5.0  # seconds a connection report may take before it is given up (it is telemetry)
log = logging.getLogger("signaling_sdk.webrtc")


class NegotiationFailed(SignalingError):
    """The peer connection could not be established (NEGOTIATION_FAILED)."""


class ChannelClosed(SignalingError):
    """The data channel closed, or its connection failed, before the message came (CHANNEL_CLOSED)."""


@dataclass
class PeerLink:
    """An open data channel to ``peer_id`` and the peer connection that carries it.
    ``messages`` has everything received on the channel since it opened (none is missed);
    ``closed`` is set once the channel closes or the connection fails."""

    peer_id: str
    pc: RTCPeerConnection
    channel: RTCDataChannel
    messages: asyncio.Queue[str | bytes]
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    session: Session | None = None  # told of the connection's end (connection_report)
    path: dict[str, Any] = field(default_factory=dict)  # the selected pair, as reported
    time_to_connect_ms: int | None = None  # from offer to open (the offering side)

    def describe(self) -> str:
        """How it connected, for people: e.g. ``direct (host -> host, udp) in 41 ms``."""
        ends = {self.path.get("local_candidate"), self.path.get("remote_candidate")}
        kind = "relay (TURN)" if "relay" in ends else "stun" if ends & {"srflx", "prflx"} else "direct"
        if None in ends:
            kind = "unknown path"
        pair = f"{self.path.get('local_candidate', '?')} -> {self.path.get('remote_candidate', '?')}"
        took = f" in {self.time_to_connect_ms} ms" if self.time_to_connect_ms is not None else ""
        return f"{kind} ({pair}, {self.path.get('transport', '?')}){took}"

    def __post_init__(self) -> None:
        self.channel.on("close", self.closed.set)

        def changed() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                self.closed.set()

        self.pc.on("connectionstatechange", changed)
        if self.channel.readyState == "closed":
            self.closed.set()

    async def recv(self) -> str | bytes:
        """The next message; ``ChannelClosed`` once the channel has closed and none is left."""
        if self.messages.empty() and not self.closed.is_set():
            message = asyncio.ensure_future(self.messages.get())
            closing = asyncio.ensure_future(self.closed.wait())
            try:
                await asyncio.wait({message, closing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                message.cancel()  # a pending get leaves its item in the queue
                closing.cancel()
            if message.done() and not message.cancelled():
                return message.result()
        if self.messages.empty():
            raise ChannelClosed("CHANNEL_CLOSED", f"the data channel to {self.peer_id} closed")
        return self.messages.get_nowait()

    async def close(self) -> None:
        """Close the peer connection and its data channel (and report it closed)."""
        await self.pc.close()
        if self.session is not None:
            session, self.session = self.session, None
            await report(session, self.peer_id, "closed", **self.path)


def configuration(ice_servers: Sequence[dict[str, Any]], *, relay_only: bool = False) -> RTCConfiguration:
    """aiortc's configuration for the service's ``ice_servers`` entries; ``relay_only`` uses
    TURN relays alone (no host or server-reflexive candidates)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=list(entry["urls"]), username=entry.get("username"), credential=entry.get("credential"))
            for entry in ice_servers
        ],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL,
    )


async def connect(
    session: Session,
    peer_id: str,
    *,
    label: str = "data",
    ice_servers: Sequence[dict[str, Any]] | None = None,
    relay_only: bool = False,
) -> PeerLink:
    """Offer a data channel to ``peer_id`` and return it once open. The relay hears how the
    connection came out (``connection_report``: connected with the selected candidate pair's
    types and the time it took, or failed; closed, from ``PeerLink.close``)."""
    started = time.monotonic()
    servers = session.state.ice_servers if ice_servers is None else ice_servers
    pc = RTCPeerConnection(configuration(servers, relay_only=relay_only))
    try:
        channel = pc.createDataChannel(label)
        messages = _collect(channel)
        opened = _opened(channel)
        await pc.setLocalDescription(await pc.createOffer())
        await _send_description(session, peer_id, pc)
        answer = await _next_from(session, peer_id, "answer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await _take_candidates(session, peer_id, pc)
        await _until_open(pc, opened)
    except NegotiationFailed:
        await pc.close()
        await report(session, peer_id, "failed", failure="ice_failed", **selected_pair(pc))
        raise
    except BaseException:
        await pc.close()
        raise
    path = selected_pair(pc)
    elapsed_ms = round((time.monotonic() - started) * 1000)
    await report(session, peer_id, "connected", time_to_connect_ms=elapsed_ms, **path)
    return PeerLink(peer_id, pc, channel, messages, session=session, path=path, time_to_connect_ms=elapsed_ms)


async def accept(
    session: Session, *, ice_servers: Sequence[dict[str, Any]] | None = None, relay_only: bool = False
) -> PeerLink:
    """Answer the next offer and return the data channel it opens. Candidates and answers
    left over from an earlier negotiation that failed are skipped."""
    offer = await session.next_signal()
    while offer.get("type") != "offer":
        offer = await session.next_signal()
    peer_id = str(offer["sender"])
    servers = session.state.ice_servers if ice_servers is None else ice_servers
    pc = RTCPeerConnection(configuration(servers, relay_only=relay_only))
    try:
        arrived: asyncio.Future[RTCDataChannel] = asyncio.get_running_loop().create_future()
        messages: asyncio.Queue[str | bytes] = asyncio.Queue()

        def remote_channel(channel: RTCDataChannel) -> None:
            channel.on("message", messages.put_nowait)  # before anything can arrive on it
            _resolve(arrived, channel)

        pc.on("datachannel", remote_channel)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await _send_description(session, peer_id, pc)
        await _take_candidates(session, peer_id, pc)
        channel = await _until_open(pc, arrived)
        if channel.readyState != "open":
            await _until_open(pc, _opened(channel))
        return PeerLink(peer_id, pc, channel, messages)
    except BaseException:
        await pc.close()
        raise


def selected_pair(pc: RTCPeerConnection) -> dict[str, Any]:
    """The types (and transport) of the candidate pair ICE selected, for a report; empty when
    it cannot be read. aiortc does not expose the pair: this reads aioice's nominated pair
    (both pinned), and says nothing rather than fail if their internals change."""
    try:
        ice = pc.sctp.transport.transport  # type: ignore[union-attr]
        pair = next(iter(ice._connection._nominated.values()))
        local, remote = pair.local_candidate, pair.remote_candidate
    except (AttributeError, StopIteration, TypeError):
        return {}
    fields: dict[str, Any] = {}
    if local.type in _CANDIDATE_TYPES:
        fields["local_candidate"] = local.type
    if remote.type in _CANDIDATE_TYPES:
        fields["remote_candidate"] = remote.type
    if str(local.transport).lower() in ("udp", "tcp"):
        fields["transport"] = str(local.transport).lower()
    return fields


async def report(session: Session, peer_id: str, outcome: str, **fields: Any) -> None:
    """Tell the relay how the connection to ``peer_id`` came out; never raises (telemetry
    must not fail a transfer), logs why it was not sent."""
    message = {"type": "connection_report", "peer_id": peer_id, "outcome": outcome, **fields}
    try:
        async with asyncio.timeout(REPORT_TIMEOUT):
            await session.send(message)
    except (SignalingError, TimeoutError, OSError) as exc:
        log.info("connection report not sent: %s", exc)


def _collect(channel: RTCDataChannel) -> asyncio.Queue[str | bytes]:
    messages: asyncio.Queue[str | bytes] = asyncio.Queue()
    channel.on("message", messages.put_nowait)
    return messages


def _opened(channel: RTCDataChannel) -> asyncio.Future[RTCDataChannel]:
    future: asyncio.Future[RTCDataChannel] = asyncio.get_running_loop().create_future()
    channel.on("open", lambda: _resolve(future, channel))
    return future


def _resolve(future: asyncio.Future[RTCDataChannel], channel: RTCDataChannel) -> None:
    if not future.done():
        future.set_result(channel)


async def _until_open(pc: RTCPeerConnection, waiting: asyncio.Future[RTCDataChannel]) -> RTCDataChannel:
    """``waiting``'s channel, or NegotiationFailed if the connection fails first."""

    def changed() -> None:
        if pc.connectionState in ("failed", "closed") and not waiting.done():
            waiting.set_exception(NegotiationFailed("NEGOTIATION_FAILED", f"connection {pc.connectionState}"))

    pc.on("connectionstatechange", changed)
    return await waiting


def trickle(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """``sdp`` without its candidate lines, and its candidates as RTCIceCandidateInit objects
    (``candidate``, ``sdpMid``, ``sdpMLineIndex``), to send one by one (trickle ICE)."""
    bare = "".join(line for line in sdp.splitlines(keepends=True) if not line.startswith(_CANDIDATE_LINES))
    inits = [
        {"candidate": f"candidate:{candidate_to_sdp(candidate)}", "sdpMid": media.rtp.muxId, "sdpMLineIndex": index}
        for index, media in enumerate(SessionDescription.parse(sdp).media)
        for candidate in media.ice_candidates
    ]
    return bare, inits


def ice_candidate(init: dict[str, Any]) -> RTCIceCandidate:
    """The aiortc candidate for a relayed RTCIceCandidateInit."""
    candidate: RTCIceCandidate = candidate_from_sdp(str(init["candidate"]).removeprefix("candidate:"))
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


async def _send_description(session: Session, peer_id: str, pc: RTCPeerConnection) -> None:
    """The local description without candidates, then each candidate, then the end marker."""
    description = pc.localDescription
    sdp, candidates = trickle(description.sdp)
    await session.signal(description.type, peer_id, sdp=sdp)
    for init in candidates:
        await session.signal("candidate", peer_id, candidate=init)
    await session.signal("candidate", peer_id, candidate=None)


async def _take_candidates(session: Session, peer_id: str, pc: RTCPeerConnection) -> None:
    """Add the peer's trickled candidates until its end marker."""
    while True:
        message = await _next_from(session, peer_id, "candidate")
        init = message["candidate"]
        if init is None:
            await pc.addIceCandidate(None)
            return
        if isinstance(init, dict) and init.get("candidate"):
            await pc.addIceCandidate(ice_candidate(init))


async def _next_from(session: Session, peer_id: str, kind: str) -> dict[str, Any]:
    """The next signal, which must be ``kind`` from ``peer_id``: others are out of turn here."""
    message = await session.next_signal()
    if message.get("type") != kind or message.get("sender") != peer_id:
        raise NegotiationFailed(
            "NEGOTIATION_FAILED",
            f"expected {kind} from {peer_id}, got {message.get('type')} from {message.get('sender')}",
        )
    return message
