"""The wire protocol: client frames to typed messages, server messages to frames.

Pure functions, no I/O. The seed's (v1) messages, unchanged on the wire:

    client -> server  register   {peer_id, room_id, token, id_token}
    client -> server  offer      {sender, target, sdp, ...}       relayed to target
    client -> server  answer     {sender, target, sdp, ...}       relayed to target
    client -> server  candidate  {sender, target, candidate, ...} relayed to target
    server -> client  registered_auth {room_id, token, peer_id}
    server -> client  peer_joined {peer_id} / peer_left {peer_id, reason}
    server -> client  error {code, reason}

Relayed messages keep every field the sender put in them; the server only stamps
``sender`` with the peer registered on the socket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from signaling_shared.errors import (
    InvalidJson,
    InvalidMessage,
    SignalingError,
    UnknownMessageType,
    describe_validation_error,
)
from signaling_shared.tokens import ID_PATTERN

PeerId = Field(pattern=ID_PATTERN, description="1-128 of A-Z a-z 0-9 _ . : @ + -")


class Register(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["register"]
    peer_id: str = PeerId
    room_id: str = PeerId
    token: str = Field(min_length=1, max_length=512)
    id_token: str = Field(min_length=1, max_length=8192)


class _Relayed(BaseModel):
    """A message for one other peer of the room. Unknown fields travel along."""

    model_config = ConfigDict(extra="allow", frozen=True)

    sender: str | None = None
    target: str = PeerId


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


RelayedMessage = Offer | Answer | Candidate
ClientMessage = Annotated[Register | Offer | Answer | Candidate, Field(discriminator="type")]
_CLIENT_MESSAGE: TypeAdapter[Register | Offer | Answer | Candidate] = TypeAdapter(ClientMessage)


@dataclass(frozen=True, slots=True)
class Parsed:
    message: Register | Offer | Answer | Candidate
    data: dict[str, Any]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_frame(frame: str | bytes) -> Parsed:
    """The typed message in ``frame``, or the typed error saying what is wrong with it."""
    if not isinstance(frame, str):
        raise InvalidMessage("binary frames are not supported; send JSON text")
    try:
        data = json.loads(frame, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidJson() from None
    if not isinstance(data, dict):
        raise InvalidMessage("a message is a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("type: a string is required")
    try:
        message = _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "union_tag_invalid":
            raise UnknownMessageType(f"unknown message type {kind[:40]!r}") from None
        raise InvalidMessage(describe_validation_error(exc.errors(), skip=1)) from None
    return Parsed(message, data)


def encode(message: dict[str, Any]) -> str:
    # ASCII escapes keep lone surrogates (valid in JSON, not in UTF-8) sendable.
    return json.dumps(message, separators=(",", ":"))


def relayed_frame(data: dict[str, Any], sender: str) -> str:
    """The frame the target receives: the sender's message, ``sender`` stamped.

    Always re-encoded, so a frame with duplicate keys cannot show one sender to us
    and another to a client whose parser keeps the first key.
    """
    try:
        return encode({**data, "sender": sender})
    except (ValueError, RecursionError):
        raise InvalidMessage("message cannot be relayed (nesting too deep)") from None


def registered_auth(room_id: str, token: str, peer_id: str) -> str:
    return encode({"type": "registered_auth", "room_id": room_id, "token": token, "peer_id": peer_id})


def peer_joined(peer_id: str) -> str:
    return encode({"type": "peer_joined", "peer_id": peer_id})


def peer_left(peer_id: str, reason: str) -> str:
    return encode({"type": "peer_left", "peer_id": peer_id, "reason": reason})


def error_frame(error: SignalingError) -> str:
    return encode({"type": "error", "code": error.code.value, "reason": error.reason})
