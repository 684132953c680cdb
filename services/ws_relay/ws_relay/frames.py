"""What the relay sends: every server frame, encoded once (compact JSON).

Pure functions, no I/O; the client's messages and their decoding are in ``protocol``.
A relayed frame keeps every field its sender put in it, but those the server owns
(``SERVER_KEYS``): ``sender``/``from_peer_id`` are stamped with the peer registered on the
socket, the sender's ``id`` becomes the target's ``message_id``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

from signaling_shared.errors import ErrorCode, InvalidMessage, SignalingError
from ws_relay.protocol import MeshAnswer, MeshConnect, MeshMessage

_ENCODER = msgspec.json.Encoder()


def encode(message: dict[str, Any]) -> str:
    """Compact JSON text. msgspec writes UTF-8; a lone surrogate (valid in JSON, not in
    UTF-8) falls back to the standard library's ASCII escapes, which keep it sendable."""
    try:
        return _ENCODER.encode(message).decode()
    except UnicodeEncodeError:
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


# Booking (ws_relay.booking) ---------------------------------------------------------


def claimed(peer_id: str, lease_id: str, expires_at: int, correlation_id: str | int | None) -> str:
    """A lease granted or renewed: the lease as it now stands."""
    frame = {"type": "claimed", "peer_id": peer_id, "lease_id": lease_id, "expires_at": expires_at}
    return encode(with_id(frame, correlation_id))


def released(peer_id: str, lease_id: str, correlation_id: str | int | None) -> str:
    return encode(with_id({"type": "released", "peer_id": peer_id, "lease_id": lease_id}, correlation_id))


def booked(lease_id: str, by_peer_id: str, expires_at: int) -> str:
    """To the booked peer: a client holds a lease on it."""
    return encode({"type": "booked", "lease_id": lease_id, "by_peer_id": by_peer_id, "expires_at": expires_at})


def lease_ended(peer_id: str, lease_id: str, holder_peer_id: str, reason: str) -> str:
    """To the booked peer and the holder: the lease is over (released, expired, left)."""
    return encode(
        {
            "type": "lease_ended",
            "peer_id": peer_id,
            "lease_id": lease_id,
            "holder_peer_id": holder_peer_id,
            "reason": reason,
        }
    )


def peer_availability(peer_id: str, claims: int, max_claims: int) -> str:
    """To the room: how booked a peer is now."""
    return encode(
        {
            "type": "peer_availability",
            "peer_id": peer_id,
            "available": claims < max_claims,
            "claims": claims,
            "max_claims": max_claims,
        }
    )
