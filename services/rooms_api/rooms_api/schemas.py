"""Request and response bodies of rooms-api."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from signaling_shared.tokens import ID_PATTERN


class CreateRoomResponse(BaseModel):
    room_id: str = Field(description="Room id, shared with peers that should join.")
    token: str = Field(description="Room token (the meeting password). Shown once; only its hash is stored.")
    expires_at: int = Field(description="Unix time at which the room expires.")
    ws_url: str | None = Field(
        default=None,
        description="WebSocket URL of the relay node that serves the room; peers register there."
        " Absent when relay nodes do not register themselves (one relay, at the URL clients know).",
    )


class DeletePeerRequest(BaseModel):
    """The seed's successor's body: the peer to remove from its room."""

    peer_id: str = Field(pattern=ID_PATTERN)


class DeleteRoomRequest(BaseModel):
    """The seed's body: a ``room_id``, or a ``peer_id`` whose room is meant."""

    # OpenAPI states what _one_of enforces, so clients (and schemathesis) see the real contract.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["room_id"], "properties": {"room_id": {"type": "string"}}},
                {"required": ["peer_id"], "properties": {"peer_id": {"type": "string"}}},
            ]
        }
    )

    room_id: str | None = Field(default=None, pattern=ID_PATTERN)
    peer_id: str | None = Field(default=None, pattern=ID_PATTERN)

    @model_validator(mode="after")
    def _one_of(self) -> DeleteRoomRequest:
        if not self.room_id and not self.peer_id:
            raise ValueError("room_id or peer_id is required")
        return self


class DeleteRoomResponse(BaseModel):
    status: str = Field(description="'deleted'.")
    room_ids: list[str] = Field(description="Rooms deleted.")
    peers_removed: int = Field(description="Routing-table entries removed.")
    users_deleted: int = Field(description="Anonymous Cognito users of those peers deleted (as the seed did).")


class PeerConnection(BaseModel):
    """The last outcome a peer reported of its connection to another (connection_report)."""

    outcome: Literal["connected", "failed", "closed"]
    path: Literal["direct", "stun", "relay", "unknown"] = Field(
        description="direct: host to host; stun: a reflexive address; relay: through TURN."
    )
    time_to_connect_ms: int | None = Field(default=None, description="From offer to connected, when it connected.")
    at: int = Field(description="Unix time the relay received the report.")


class PeerView(BaseModel):
    peer_id: str
    role: str = Field(description="The role the peer registered with ('peer' by default).")
    metadata: dict[str, Any] = Field(description="The peer's metadata, as last updated.")
    connected_at: int = Field(description="Unix time the peer registered.")
    connections: dict[str, PeerConnection] = Field(
        default_factory=dict, description="Per other peer id: the last outcome this peer reported."
    )


class RoomView(BaseModel):
    room_id: str
    status: str = Field(description="'active' (expired rooms are gone).")
    created_at: int
    expires_at: int
    peers: list[PeerView] = Field(description="Peers connected now, oldest first.")


class IceServer(BaseModel):
    urls: list[str]
    username: str | None = Field(default=None, description="TURN only: '<expiry>:<user>', user a hash of the identity.")
    credential: str | None = Field(default=None, description="TURN only: base64 HMAC-SHA1 of the username.")


class IceServersResponse(BaseModel):
    """For RTCPeerConnection's iceServers; fetch again before ``ttl`` seconds pass."""

    ice_servers: list[IceServer]
    ttl: int = Field(description="Seconds the TURN credentials stay valid.")
