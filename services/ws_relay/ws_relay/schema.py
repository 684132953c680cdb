"""The machine-readable protocol: JSON Schemas of every message both ways, from the code.

The client messages are the parser's own models (``protocol.ClientMessage``); the server
messages are described here and every frame the server encodes is checked against them
by the tests. ``docs/protocol.schema.json`` is this module's output, checked in; CI
fails when it differs from what the code generates (``make schema`` rewrites it).

    python -m ws_relay.schema [--check] [PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from signaling_shared.errors import ErrorCode
from ws_relay.close_codes import REASONS, RETRYABLE_RANGE
from ws_relay.protocol import ClientMessage, CorrelationId

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "docs" / "protocol.schema.json"


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Numbered(_Server):
    """A frame sent to a registered peer: numbered for resume."""

    seq: int | None = Field(default=None, description="Numbers every frame after registered_auth.")


class PeerView(_Server):
    peer_id: str
    role: str
    metadata: dict[str, Any]
    connected_at: int = Field(description="Unix time the peer registered.")


class IceServer(_Server):
    urls: list[str]
    username: str | None = Field(default=None, description="TURN only: '<expiry>:<user>', user a hash of the identity.")
    credential: str | None = Field(default=None, description="TURN only: base64 HMAC-SHA1 of the username.")


class RegisteredAuth(_Server):
    type: Literal["registered_auth"]
    room_id: str
    token: str
    peer_id: str
    peers: list[PeerView] = Field(description="v2: the peers already in the room.")
    ice_servers: list[IceServer] = Field(description="v2: for RTCPeerConnection.")
    ttl: int = Field(description="v2: seconds the TURN credentials stay valid.")
    resume_token: str = Field(description="v2: present it with last_seq to resume after a dropped connection.")
    resumed: bool = Field(description="v2: true when this answers a resume.")
    last_seq: int = Field(description="v2: the seq of the last frame sent before this one (0 when new).")
    recovered: bool = Field(
        default=False,
        description="v2, present only when true: the resume of a session whose relay node died; nothing "
        "was replayed, numbering goes on after last_seq, and a message may arrive twice (same message_id).",
    )
    id: CorrelationId | None = None
    # The successor's extras (ws_relay.compat), for a client that registered with is_admin.
    admin_peer_id: str | None = Field(default=None, description="successor: the room's admin worker, if any.")
    peer_list: list[str] | None = Field(default=None, description="successor: the other peers' ids.")
    peer_metadata: dict[str, dict[str, Any]] | None = Field(default=None, description="successor: their metadata.")
    mesh_ice_servers: list[IceServer] | None = Field(default=None, description="successor: STUN for the mesh.")


class AdminConflict(_Server):
    """successor: an admin claim refused, before registered_auth (not numbered)."""

    type: Literal["admin_conflict"]
    room_id: str
    current_admin: str


class AvailablePeers(_Numbered):
    """The answer to the seed's query: the other peers of the room."""

    type: Literal["available_peers"]
    peers: list[str]
    id: CorrelationId | None = None


class _MeshDelivered(_Numbered):
    """successor: a worker-to-worker message as its target receives it, sender stamped."""

    from_peer_id: str
    message_id: CorrelationId | None = None


class MeshOfferDelivered(_MeshDelivered):
    type: Literal["mesh_offer"]
    offer: dict[str, Any]


class MeshAnswerDelivered(_MeshDelivered):
    type: Literal["mesh_answer"]
    answer: dict[str, Any]


class IceCandidateDelivered(_MeshDelivered):
    type: Literal["ice_candidate"]
    candidate: dict[str, Any] | str | None


class IceServers(_Numbered):
    type: Literal["ice_servers"]
    ice_servers: list[IceServer]
    ttl: int


class PeerJoined(PeerView):
    type: Literal["peer_joined"]
    seq: int | None = None


class MetadataUpdated(PeerView):
    type: Literal["metadata_updated"]
    seq: int | None = None


class PeerLeft(_Numbered):
    type: Literal["peer_left"]
    peer_id: str
    reason: str


class PeerList(_Numbered):
    type: Literal["peer_list"]
    count: int
    peers: list[PeerView]
    id: CorrelationId | None = None


class PeerMessageDelivered(_Numbered):
    type: Literal["peer_message"]
    from_peer_id: str
    to_peer_id: str
    payload: Any
    message_id: CorrelationId | None = Field(
        default=None,
        description="v2: the sender's id for the message, when it gave one. The same message_id from "
        "the same sender twice is one message delivered again after a relay node failed: drop it.",
    )


class BroadcastDelivered(_Numbered):
    type: Literal["broadcast"]
    from_peer_id: str
    payload: Any


class _RelayedDelivered(BaseModel):
    """A v1 message as its target receives it: every field the sender sent, sender stamped."""

    model_config = ConfigDict(extra="allow")

    seq: int | None = None
    sender: str
    target: str
    message_id: CorrelationId | None = Field(
        default=None,
        description="v2: the sender's id for the message, when it gave one. The same message_id from "
        "the same sender twice is one message delivered again after a relay node failed: drop it.",
    )


class OfferDelivered(_RelayedDelivered):
    type: Literal["offer"]
    sdp: str


class AnswerDelivered(_RelayedDelivered):
    type: Literal["answer"]
    sdp: str


class CandidateDelivered(_RelayedDelivered):
    type: Literal["candidate"]
    candidate: dict[str, Any] | str | None


class Ack(_Numbered):
    """A message with an id was delivered (its target confirmed receipt) or queued."""

    type: Literal["ack"]
    id: CorrelationId
    queued: bool = Field(description="True: held for a peer not in the room yet; expired follows if it never comes.")


class Expired(_Numbered):
    type: Literal["expired"]
    id: CorrelationId = Field(description="The held message's id.")
    to_peer_id: str


class GoAway(_Numbered):
    type: Literal["go_away"]
    reason: Literal["SERVER_SHUTDOWN"]
    reconnect_after_ms: int = Field(description="Resume (register with resume_token) after this long.")


class Redirect(_Server):
    """v2: the room is served by another relay node; register there. Not numbered: it
    answers a register, and the socket closes with 4502 after it."""

    type: Literal["redirect"]
    ws_url: str = Field(description="The WebSocket URL of the node that serves the room.")
    node_id: str
    id: CorrelationId | None = Field(default=None, description="The register's id, when it had one.")


class Pong(_Numbered):
    type: Literal["pong"]
    id: CorrelationId | None = None


class Error(_Numbered):
    """The relay's error (code, reason: the v1 shape), or with the code PEER_ERROR a peer's
    own error relayed to its target: then ``sender`` is stamped and the peer's other fields
    travel along."""

    model_config = ConfigDict(extra="allow")

    type: Literal["error"]
    code: ErrorCode
    reason: str
    sender: str | None = Field(default=None, description="PEER_ERROR only: the peer that sent it.")
    target: str | None = Field(default=None, description="PEER_ERROR only: the peer it is for.")
    message_id: CorrelationId | None = Field(default=None, description="PEER_ERROR only: the sender's id.")
    id: CorrelationId | None = Field(default=None, description="Only when the request carried one.")
    retry_after_ms: int | None = Field(
        default=None, ge=1, description="v2, RATE_LIMITED for a request with an id: it is accepted after this wait."
    )


class Claimed(_Numbered):
    """v2: the answer to claim and renew: the lease as it now stands."""

    type: Literal["claimed"]
    peer_id: str = Field(description="The peer booked.")
    lease_id: str = Field(description="Names the lease in renew and release.")
    expires_at: int = Field(description="Epoch seconds: the lease ends then unless renewed.")
    id: CorrelationId | None = None


class Released(_Numbered):
    type: Literal["released"]
    peer_id: str
    lease_id: str
    id: CorrelationId | None = None


class Booked(_Numbered):
    """v2, to the booked peer: a client holds a lease on it."""

    type: Literal["booked"]
    lease_id: str
    by_peer_id: str
    expires_at: int


class LeaseEnded(_Numbered):
    """v2, to the booked peer and the holder: a lease is over."""

    type: Literal["lease_ended"]
    peer_id: str = Field(description="The peer that was booked.")
    lease_id: str
    holder_peer_id: str
    reason: Literal["released", "expired", "holder_left", "peer_left"]


class PeerAvailability(_Numbered):
    """v2, to the room: a lease on one of its peers started or ended."""

    type: Literal["peer_availability"]
    peer_id: str
    available: bool = Field(description="Whether it has a free claim slot.")
    claims: int
    max_claims: int


AnyServerMessage = (
    RegisteredAuth
    | IceServers
    | PeerJoined
    | MetadataUpdated
    | PeerLeft
    | PeerList
    | PeerMessageDelivered
    | BroadcastDelivered
    | OfferDelivered
    | AnswerDelivered
    | CandidateDelivered
    | Ack
    | Expired
    | GoAway
    | Redirect
    | Pong
    | Error
    | AdminConflict
    | AvailablePeers
    | MeshOfferDelivered
    | MeshAnswerDelivered
    | IceCandidateDelivered
    | Claimed
    | Released
    | Booked
    | LeaseEnded
    | PeerAvailability
)
ServerMessage = Annotated[AnyServerMessage, Field(discriminator="type")]
SERVER_MESSAGE: TypeAdapter[AnyServerMessage] = TypeAdapter(ServerMessage)


def protocol_schema() -> dict[str, Any]:
    """Everything a client needs to speak the protocol, as one JSON document."""
    return {
        "title": "Signaling WebSocket protocol",
        "client_messages": TypeAdapter(ClientMessage).json_schema(),
        "server_messages": SERVER_MESSAGE.json_schema(),
        "error_codes": sorted(code.value for code in ErrorCode),
        "close_codes": {
            str(int(code)): {"name": code.name, "reason": reason, "retryable": int(code) in RETRYABLE_RANGE}
            for code, reason in sorted(REASONS.items())
        },
    }


def render() -> str:
    return json.dumps(protocol_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="Fail if the file differs from the code.")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.path.exists() or args.path.read_text() != text:
            print(f"{args.path} is out of date: run `make schema`", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
