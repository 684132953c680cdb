"""The wire protocol: client frames to typed messages, server messages to frames.

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

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from signaling_shared.errors import (
    ErrorCode,
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
)
ClientMessage = Annotated[AnyClientMessage, Field(discriminator="type")]
_CLIENT_MESSAGE: TypeAdapter[AnyClientMessage] = TypeAdapter(ClientMessage)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def try_decode_frame(frame: str | bytes) -> dict[str, Any] | None:
    """The JSON object in ``frame``, or None (for a frame that is refused anyway)."""
    try:
        return decode_frame(frame)
    except SignalingError:
        return None


# One decoder for every frame: json.loads with an option builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
MAX_DEPTH = 32  # levels of nesting in a frame: every reply that embeds it can still be encoded


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded JSON) nests deeper than ``limit`` levels of arrays and
    objects. Iterative: no recursion limit, and it stops at the first level too deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
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


def encode(message: dict[str, Any]) -> str:
    # ASCII escapes keep lone surrogates (valid in JSON, not in UTF-8) sendable.
    return json.dumps(message, separators=(",", ":"))


def _encode_relayed(message: dict[str, Any]) -> str:
    try:
        return encode(message)
    except (ValueError, RecursionError):
        raise InvalidMessage("message cannot be relayed (nesting too deep)") from None


# Keys the server owns in what a target receives: a sender cannot set them.
SERVER_KEYS = frozenset({"id", "seq", "sender", "from_peer_id", "ttl_seconds", "message_id", "code"})


def _message_id(correlation_id: str | int | None) -> dict[str, Any]:
    # The sender's id, as ``message_id``: after a relay node fails, a message may reach its
    # target twice (sent again because its ack never came); the target drops the second.
    return {} if correlation_id is None else {"message_id": correlation_id}


def relayed_frame(data: dict[str, Any], sender: str, correlation_id: str | int | None = None) -> str:
    """The frame the target receives: the sender's message, ``sender`` stamped, its id
    (``correlation_id``) as ``message_id``, ``ttl_seconds`` and ``seq`` dropped (the target's ``seq`` is added when
    the frame is numbered).

    Always re-encoded, so a frame with duplicate keys cannot show one sender to us
    and another to a client whose parser keeps the first key.
    """
    kept = {k: v for k, v in data.items() if k not in SERVER_KEYS}
    return _encode_relayed({**kept, "sender": sender, **_message_id(correlation_id)})


def peer_error_frame(data: dict[str, Any], sender: str, correlation_id: str | int | None = None) -> str:
    """A peer's error for its target: as relayed frames are, with the code ``PEER_ERROR``
    (so no client takes it for the relay's own)."""
    kept = {k: v for k, v in data.items() if k not in SERVER_KEYS}
    return _encode_relayed(
        {**kept, "code": ErrorCode.PEER_ERROR.value, "sender": sender, **_message_id(correlation_id)}
    )


MESH_RELAYED_AS = {"mesh_connect": "mesh_offer", "mesh_answer": "mesh_answer", "ice_candidate": "ice_candidate"}


def mesh_frame(message: MeshMessage, sender: str) -> str:
    """What the target of a mesh message receives, in the successor's shape."""
    body: dict[str, Any]
    if isinstance(message, MeshConnect):
        body = {"offer": message.offer}
    elif isinstance(message, MeshAnswer):
        body = {"answer": message.answer}
    else:
        body = {"candidate": message.candidate}
    frame = {"type": MESH_RELAYED_AS[message.type], "from_peer_id": sender, **body}
    return _encode_relayed({**frame, **_message_id(message.id)})


def available_peers(peer_ids: list[str], correlation_id: str | int | None) -> str:
    """The seed's ``query`` answer: the other peers of the room."""
    return encode(with_id({"type": "available_peers", "peers": peer_ids}, correlation_id))


def admin_conflict(room_id: str, current_admin: str) -> str:
    """The successor's answer to an admin claim in a room that has another admin."""
    return encode({"type": "admin_conflict", "room_id": room_id, "current_admin": current_admin})


def peer_message(sender: str, target: str, payload: Any, correlation_id: str | int | None = None) -> str:
    message = {"type": "peer_message", "from_peer_id": sender, "to_peer_id": target, "payload": payload}
    return _encode_relayed({**message, **_message_id(correlation_id)})


def broadcast(sender: str, payload: Any) -> str:
    return _encode_relayed({"type": "broadcast", "from_peer_id": sender, "payload": payload})


def with_id(message: dict[str, Any], correlation_id: str | int | None) -> dict[str, Any]:
    return message if correlation_id is None else {**message, "id": correlation_id}


def ack(correlation_id: str | int, *, queued: bool = False) -> str:
    """Delivered (the target confirmed receipt), or ``queued``: held for a peer not in the room yet."""
    return encode({"type": "ack", "id": correlation_id, "queued": queued})


def expired(correlation_id: str | int, to_peer_id: str) -> str:
    """A held message's lifetime ended before its target registered: it was not delivered."""
    return encode({"type": "expired", "id": correlation_id, "to_peer_id": to_peer_id})


def go_away(reason: str, reconnect_after_ms: int) -> str:
    """The relay is about to close this connection; resume after ``reconnect_after_ms``."""
    return encode({"type": "go_away", "reason": reason, "reconnect_after_ms": reconnect_after_ms})


def redirect(ws_url: str, node_id: str, correlation_id: str | int | None) -> str:
    """The room is served by another relay node: register there (this socket closes, 4502)."""
    return encode(with_id({"type": "redirect", "ws_url": ws_url, "node_id": node_id}, correlation_id))


def pong(correlation_id: str | int | None) -> str:
    return encode(with_id({"type": "pong"}, correlation_id))


def peer_view(peer_id: str, role: str, metadata: dict[str, Any], connected_at: int) -> dict[str, Any]:
    return {"peer_id": peer_id, "role": role, "metadata": metadata, "connected_at": connected_at}


def peer_list(peers: list[dict[str, Any]], correlation_id: str | int | None) -> str:
    return encode(with_id({"type": "peer_list", "count": len(peers), "peers": peers}, correlation_id))


def metadata_updated(view: dict[str, Any]) -> str:
    return encode({"type": "metadata_updated", **view})


def registered_auth(
    room_id: str,
    token: str,
    peer_id: str,
    *,
    peers: list[dict[str, Any]],
    ice: dict[str, Any],
    resume_token: str,
    correlation_id: str | int | None,
    resumed: bool = False,
    last_seq: int = 0,
    recovered: bool = False,
    extras: dict[str, Any] | None = None,
) -> str:
    """The seed's confirmation, plus (v2) the peers already in the room, the ICE servers and
    what a resume needs. Not numbered: numbering starts with the frame after it. ``recovered``:
    a resume of a session whose relay node died (nothing to replay; see docs/protocol.md)."""
    message = {
        "type": "registered_auth",
        "room_id": room_id,
        "token": token,
        "peer_id": peer_id,
        "peers": peers,
        **ice,
        "resume_token": resume_token,
        "resumed": resumed,
        "last_seq": last_seq,
        **({"recovered": True} if recovered else {}),
        **(extras or {}),
    }
    return encode(with_id(message, correlation_id))


def ice_servers(ice: dict[str, Any]) -> str:
    """Fresh ICE servers, pushed before the previous TURN credentials expire."""
    return encode({"type": "ice_servers", **ice})


def peer_joined(view: dict[str, Any]) -> str:
    return encode({"type": "peer_joined", **view})


def peer_left(peer_id: str, reason: str) -> str:
    return encode({"type": "peer_left", "peer_id": peer_id, "reason": reason})


def error_frame(error: SignalingError, correlation_id: str | int | None = None) -> str:
    """v1 shape ``{type, code, reason}``; with the request's ``id`` when it had one (v2), and
    then ``retry_after_ms`` when waiting that long makes the request acceptable (RATE_LIMITED)."""
    frame: dict[str, Any] = {"type": "error", "code": error.code.value, "reason": error.reason}
    if error.retry_after is not None and correlation_id is not None:
        frame["retry_after_ms"] = max(1, math.ceil(error.retry_after * 1000))
    return encode(with_id(frame, correlation_id))


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
