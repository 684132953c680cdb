"""Async Python client for the WebRTC signaling service.

async with ServiceClient("http://127.0.0.1:8001") as api:
    me = await api.sign_in()
    room = await api.create_room(me)
session = await Session.open("ws://127.0.0.1:8080", room, me, "Worker-1", role="worker", max_claims=2)
client = await Session.open("ws://127.0.0.1:8080", room, me, "Client-1", role="client")
async with client.claim("Worker-1") as lease:  # booked: kept renewed, released on exit
    ...
"""

from signaling_sdk.errors import (
    AlreadyClaimed,
    AuthError,
    DeliveryFailed,
    Expired,
    InvalidRequest,
    LeaseNotFound,
    PeerBusy,
    PeerError,
    QueueFull,
    RateLimited,
    RoomError,
    SessionLost,
    SignalingError,
    Unavailable,
    error_from,
)
from signaling_sdk.http import Identity, Room, ServiceClient
from signaling_sdk.session import Ack, Backoff, Claim, Lease, Session, SessionState

__version__ = "0.1.0"
__all__ = [
    "Ack",
    "AlreadyClaimed",
    "AuthError",
    "Backoff",
    "Claim",
    "DeliveryFailed",
    "Expired",
    "Identity",
    "InvalidRequest",
    "Lease",
    "LeaseNotFound",
    "PeerBusy",
    "PeerError",
    "QueueFull",
    "RateLimited",
    "Room",
    "RoomError",
    "ServiceClient",
    "Session",
    "SessionLost",
    "SessionState",
    "SignalingError",
    "Unavailable",
    "error_from",
]
