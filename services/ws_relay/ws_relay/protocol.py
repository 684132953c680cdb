"""The wire protocol: client frames to typed messages (server frames: ``ws_relay.frames``).

Pure functions, no I/O. The seed's (v1) messages work unchanged:

    client -> server  register   {peer_id, room_id, token, id_token}
    client -> server  offer      {sender, target, sdp, ...}       relayed to target
    client -> server  answer     {sender, target, sdp, ...}       relayed to target
    client -> server  candidate  {sender, target, candidate, ...} relayed to target
    server -> client  registered_auth {room_id, token, peer_id, ...}
    server -> client  peer_joined {peer_id, ...} / peer_left {peer_id, reason}
    server -> client  error {code, reason}

Version 2 adds, all optional for v1 clients:

    register          + role, metadata; + resume_token, last_seq to resume
    update_metadata   {metadata}                   -> room: metadata_updated
    discover_peers    {filters}                    -> peer_list {count, peers}
    peer_message      {to_peer_id, payload}        -> target: peer_message {from_peer_id, ...}
    broadcast         {payload}                    -> others: broadcast {from_peer_id, payload}
    ping              {}                           -> pong
    any message       + id                         -> ack {id} (or error {code, reason, id})
    peer_message/offer/answer/candidate with an id to a peer not in the room yet
                      + ttl_seconds                -> ack {id, queued: true}; held, then
                                                      delivered when it registers, or
                                                      expired {id, to_peer_id} to the sender
    server -> client  go_away {reason, reconnect_after_ms} before a shutdown
    query             {}                           -> available_peers {peers: [peer_id]}
    quit              {}                           the peer leaves the room (reason "quit")

The seed's successor's (webRTC-connect, used by sleap-RTC; see ws_relay.compat):

    register          + is_admin                   -> admin_conflict {room_id, current_admin}
    mesh_connect      {target_peer_id, offer}      -> target: mesh_offer {from_peer_id, offer}
    mesh_answer       {target_peer_id, answer}     -> target: mesh_answer {from_peer_id, answer}
    ice_candidate     {target_peer_id, candidate}  -> target: ice_candidate {from_peer_id, candidate}
    error             {target, reason, ...}        -> target: error {code: PEER_ERROR, sender, ...}
    every frame after registered_auth carries seq (1, 2, ...), so a resume can say
    what it last saw

Relayed v1 messages keep every field the sender put in them (but ``id``, which is
the sender's own correlation id); the server stamps ``sender`` with the peer
registered on the socket.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from signaling_shared.errors import (
    InvalidJson,
    InvalidMessage,
    SignalingError,
    UnknownMessageType,
    UnsupportedAuth,
    describe_validation_error,
)
from signaling_shared.tokens import ID_PATTERN

PeerId = Field(pattern=ID_PATTERN, description="1-128 of A-Z a-z 0-9 _ . : @ + -")
ROLE_PATTERN = r"^[A-Za-z0-9_.-]{1,32}$"
MAX_CLAIMS = 64  # a register's max_claims, at most
DEFAULT_ROLE = "peer"
# A correlation id: the client's own, echoed back in ack, error and replies.
CorrelationId = Annotated[str, Field(min_length=1, max_length=64)] | Annotated[int, Field(ge=0, lt=2**53)]
QueueTtl = Field(
    default=None,
    ge=1,
    le=7 * 24 * 3600,
    description="With an id: seconds to hold the message if the target is not in the room yet.",
)


class _ClientMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: CorrelationId | None = None


class Register(_ClientMessage):
    type: Literal["register"]
    peer_id: str = PeerId
    room_id: str = PeerId
    token: str = Field(min_length=1, max_length=512)
    id_token: str = Field(min_length=1, max_length=8192)
    role: str = Field(default=DEFAULT_ROLE, pattern=ROLE_PATTERN)
    metadata: dict[str, Any] = Field(default_factory=dict)
    resume_token: str | None = Field(default=None, min_length=1, max_length=128)
    last_seq: int = Field(default=0, ge=0, lt=2**53, description="The last seq the client received.")
    protocol: int | None = Field(default=None, ge=1, le=2, description="1: the seed's frames only; 2: all.")
    is_admin: bool | None = Field(default=None, description="The successor's admin claim for its room.")
    max_claims: int = Field(default=1, ge=1, le=MAX_CLAIMS, description="Clients that may hold a lease on it at once.")


class _Relayed(_ClientMessage):
    """A v1 message for one other peer of the room. Unknown fields travel along."""

    model_config = ConfigDict(extra="allow", frozen=True)

    sender: str | None = None
    target: str = PeerId
    ttl_seconds: int | None = QueueTtl


class Offer(_Relayed):
    type: Literal["offer"]
    sdp: str


class Answer(_Relayed):
    type: Literal["answer"]
    sdp: str


class Candidate(_Relayed):
    """A trickled ICE candidate; ``candidate`` is an RTCIceCandidateInit, a string, or null (end)."""

    type: Literal["candidate"]
    candidate: dict[str, Any] | str | None


class UpdateMetadata(_ClientMessage):
    type: Literal["update_metadata"]
    metadata: dict[str, Any]
    merge: bool = Field(default=False, description="Merge into the current metadata (ws_relay.compat).")
    peer_id: str | None = None  # the successor names itself: it must be the sender


class DiscoverPeers(_ClientMessage):
    type: Literal["discover_peers"]
    filters: dict[str, Any] = Field(default_factory=dict)
    from_peer_id: str | None = None  # the successor names itself: it must be the sender


class PeerMessage(_ClientMessage):
    """An application message for one peer; ``payload`` is any JSON and arrives untouched."""

    type: Literal["peer_message"]
    to_peer_id: str = PeerId
    payload: Any = None
    ttl_seconds: int | None = QueueTtl
    from_peer_id: str | None = None  # the successor names itself: it must be the sender


class _Mesh(_ClientMessage):
    """The successor's worker-to-worker signaling, relayed like an offer."""

    from_peer_id: str | None = None
    target_peer_id: str = PeerId
    ttl_seconds: int | None = QueueTtl


class MeshConnect(_Mesh):
    type: Literal["mesh_connect"]
    offer: dict[str, Any]


class MeshAnswer(_Mesh):
    type: Literal["mesh_answer"]
    answer: dict[str, Any]


class IceCandidate(_Mesh):
    type: Literal["ice_candidate"]
    candidate: dict[str, Any] | str | None


class PeerError(_Relayed):
    """A peer's own error for another (the successor's worker: ``worker_busy``), relayed
    with the code ``PEER_ERROR``; its other fields travel along."""

    type: Literal["error"]
    reason: str = Field(min_length=1, max_length=256)


class Query(_ClientMessage):
    type: Literal["query"]


class Quit(_ClientMessage):
    type: Literal["quit"]


class Broadcast(_ClientMessage):
    type: Literal["broadcast"]
    payload: Any = None


class Ping(_ClientMessage):
    type: Literal["ping"]


LeaseId = Field(min_length=1, max_length=64)
LeaseTtl = Field(default=None, ge=1, le=7 * 24 * 3600, description="Seconds; the relay's bounds apply.")


class Claim(_ClientMessage):
    """Book a peer (a worker): granted atomically across relay nodes, up to its ``max_claims``."""

    type: Literal["claim"]
    peer_id: str = PeerId
    ttl_seconds: int | None = LeaseTtl


class Renew(_ClientMessage):
    type: Literal["renew"]
    lease_id: str = LeaseId
    ttl_seconds: int | None = LeaseTtl


class Release(_ClientMessage):
    type: Literal["release"]
    lease_id: str = LeaseId


BookingMessage = Claim | Renew | Release

CandidateType = Literal["host", "srflx", "prflx", "relay"]


class ConnectionReport(_ClientMessage):
    """How a peer connection to another peer of the room came out (ws_relay.outcomes): sent
    once it connects (or fails), and again when it closes. No address travels in it."""

    type: Literal["connection_report"]
    peer_id: str = PeerId
    outcome: Literal["connected", "failed", "closed"]
    local_candidate: CandidateType | None = None
    remote_candidate: CandidateType | None = None
    transport: Literal["udp", "tcp", "tls"] | None = None
    time_to_connect_ms: int | None = Field(default=None, ge=0, le=600_000, description="From offer to connected.")
    turn_server: str | None = Field(default=None, max_length=256, description="One of the relay's TURN URLs.")
    failure: Literal["ice_failed", "dtls_failed", "timeout", "other"] | None = None


RelayedMessage = Offer | Answer | Candidate | PeerError
MeshMessage = MeshConnect | MeshAnswer | IceCandidate
# For one peer: may be held for it.
DirectMessage = PeerMessage | Offer | Answer | Candidate | PeerError | MeshConnect | MeshAnswer | IceCandidate
AnyClientMessage = (
    Register
    | Offer
    | Answer
    | Candidate
    | PeerError
    | MeshConnect
    | MeshAnswer
    | IceCandidate
    | UpdateMetadata
    | DiscoverPeers
    | PeerMessage
    | Broadcast
    | Ping
    | Query
    | Quit
    | Claim
    | Renew
    | Release
    | ConnectionReport
)
ClientMessage = Annotated[AnyClientMessage, Field(discriminator="type")]
_CLIENT_MESSAGE: TypeAdapter[AnyClientMessage] = TypeAdapter(ClientMessage)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: no JSON encoder can send it on
        raise ValueError(f"{text[:20]} is out of range")
    return value


def try_decode_frame(frame: str | bytes) -> dict[str, Any] | None:
    """The JSON object in ``frame``, or None (for a frame that is refused anyway)."""
    try:
        return decode_frame(frame)
    except SignalingError:
        return None


# Frames are decoded by msgspec (a few times faster than the standard library, and it
# keeps integers of any size). What it refuses, the standard decoder judges: escapes of
# lone surrogates are valid JSON and stay sendable; NaN, Infinity and numbers out of
# range are refused by both.
_FAST_DECODER = msgspec.json.Decoder()
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite)
MAX_DEPTH = 32  # levels of nesting in a frame: every reply that embeds it can still be encoded


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded JSON) nests deeper than ``limit`` levels of arrays and
    objects. Iterative: no recursion limit, and it stops at the first level too deep."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:  # the containers ``depth`` levels down, one level at a time
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            children = container.values() if isinstance(container, dict) else container
            below.extend(child for child in children if isinstance(child, (dict, list)))
        level = below
    return False


# A client's own id in a raw frame, found without decoding it (a frame refused by the rate
# limit is answered with its id, at the cost of one bounded scan).
_ID_IN_FRAME = re.compile(r'"id"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){1,64}"|\d{1,16}(?![\d.eE]))')


def scan_correlation_id(frame: str | bytes) -> str | int | None:
    """The correlation id of an undecoded frame, if its first ``"id":`` is one; a guess that
    costs one scan of the text (enough to answer a refused frame with its id)."""
    if not isinstance(frame, str):
        return None
    match = _ID_IN_FRAME.search(frame)
    if match is None:
        return None
    try:
        value = json.loads(match.group(1))
    except ValueError:
        return None
    return correlation_id_of({"id": value})


def decode_frame(frame: str | bytes) -> dict[str, Any]:
    """The JSON object in ``frame``, or InvalidJson / InvalidMessage."""
    if not isinstance(frame, str):
        raise InvalidMessage("binary frames are not supported; send JSON text")
    try:
        data = _FAST_DECODER.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        try:
            data = _DECODER.decode(frame)
        except (ValueError, RecursionError):
            raise InvalidJson() from None
    if not isinstance(data, dict):
        raise InvalidMessage("a message is a JSON object")
    if depth_exceeds(data, MAX_DEPTH):
        raise InvalidJson(f"nested deeper than {MAX_DEPTH} levels")
    return data


def parse_message(data: dict[str, Any]) -> AnyClientMessage:
    """The typed message in a decoded frame, or the typed error saying what is wrong."""
    kind = data.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("type: a string is required")
    if kind == "register" and "id_token" not in data and ("api_key" in data or "jwt" in data):
        raise UnsupportedAuth()
    try:
        return _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "union_tag_invalid":
            raise UnknownMessageType(f"unknown message type {kind[:40]!r}") from None
        raise InvalidMessage(describe_validation_error(exc.errors(), skip=1)) from None


def frame_type(frame: str) -> str | None:
    """The ``type`` of an encoded frame of ours (a held message's, to know who may get it)."""
    data = try_decode_frame(frame)
    kind = data.get("type") if data is not None else None
    return kind if isinstance(kind, str) else None


def correlation_id_of(data: Any) -> str | int | None:
    """The ``id`` of a raw message if it is a valid correlation id (for errors on invalid messages)."""
    if not isinstance(data, dict):
        return None
    value = data.get("id")
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return None
