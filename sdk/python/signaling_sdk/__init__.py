"""Async Python client for the WebRTC signaling service.

async with ServiceClient("http://127.0.0.1:8001") as api:
    me = await api.sign_in()
    room = await api.create_room(me)
session = await Session.open("ws://127.0.0.1:8080", room, me, "Worker-1", role="worker")
"""

from signaling_sdk.errors import (
    AuthError,
    DeliveryFailed,
    Expired,
    InvalidRequest,
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
from signaling_sdk.session import Ack, Backoff, Session, SessionState

__version__ = "0.1.0"
__all__ = [
    "Ack",
    "AuthError",
    "Backoff",
    "DeliveryFailed",
    "Expired",
    "Identity",
    "InvalidRequest",
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
