"""Typed errors carrying the service's error codes (see docs/protocol.md, "Errors")."""

from __future__ import annotations

from typing import Any


class SignalingError(Exception):
    """A failure the service reported: ``code`` is stable, ``reason`` is for people."""

    def __init__(self, code: str, reason: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {reason}" if reason else code)
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


class AuthError(SignalingError):
    """The ID token was refused (INVALID_ID_TOKEN): sign in again."""


class RoomError(SignalingError):
    """The room cannot be used: ROOM_NOT_FOUND, INVALID_ROOM_TOKEN, ROOM_EXPIRED, ROOM_FULL, NOT_ROOM_CREATOR."""


class PeerError(SignalingError):
    """PEER_ID_TAKEN, PEER_NOT_FOUND or SENDER_MISMATCH."""


class DeliveryFailed(SignalingError):
    """The message will not reach its target (DELIVERY_FAILED)."""


class PeerBusy(DeliveryFailed):
    """The target has not confirmed the messages it has yet (PEER_BUSY): this one was not
    sent; send it again shortly. A DeliveryFailed, so handlers of that catch it too."""


class QueueFull(SignalingError):
    """Too many messages are held for peers not in the room (QUEUE_FULL)."""


class AlreadyClaimed(SignalingError):
    """The worker already has as many leases as it takes (ALREADY_CLAIMED): this claim is
    refused; claim again later, or another worker."""


class LeaseNotFound(SignalingError):
    """No such live lease of yours (LEASE_NOT_FOUND): it expired, was released, or its
    worker left."""


class RateLimited(SignalingError):
    """Too many requests (RATE_LIMITED); ``retry_after`` says how long to wait, when known."""


class Unavailable(SignalingError):
    """The service or one of its dependencies is busy or down: SERVER_BUSY, STORAGE_UNAVAILABLE,
    AUTH_PROVIDER_UNAVAILABLE, INTERNAL_ERROR. Retrying later may work."""


class InvalidRequest(SignalingError):
    """The request was malformed or out of place: a bug in the caller (INVALID_MESSAGE,
    INVALID_JSON, UNKNOWN_MESSAGE_TYPE, NOT_REGISTERED, ...)."""


class Expired(SignalingError):
    """A message held for a peer that never registered expired (the server's ``expired``)."""


class SessionLost(SignalingError):
    """The signaling session ended and cannot be resumed (RESUME_FAILED, or a terminal close)."""


_BY_CODE: dict[str, type[SignalingError]] = {
    "INVALID_ID_TOKEN": AuthError,
    "UNSUPPORTED_AUTH": AuthError,
    "ROOM_NOT_FOUND": RoomError,
    "INVALID_ROOM_TOKEN": RoomError,
    "ROOM_EXPIRED": RoomError,
    "ROOM_FULL": RoomError,
    "NOT_ROOM_CREATOR": RoomError,
    "PEER_ID_TAKEN": PeerError,
    "PEER_NOT_FOUND": PeerError,
    "SENDER_MISMATCH": PeerError,
    "UNSUPPORTED_BY_PEER": PeerError,
    "PEER_ERROR": PeerError,
    "DELIVERY_FAILED": DeliveryFailed,
    "PEER_BUSY": PeerBusy,
    "QUEUE_FULL": QueueFull,
    "ALREADY_CLAIMED": AlreadyClaimed,
    "LEASE_NOT_FOUND": LeaseNotFound,
    "RATE_LIMITED": RateLimited,
    "SERVER_BUSY": Unavailable,
    "STORAGE_UNAVAILABLE": Unavailable,
    "AUTH_PROVIDER_UNAVAILABLE": Unavailable,
    "INTERNAL_ERROR": Unavailable,
    "RESUME_FAILED": SessionLost,
    "UNKNOWN_MESSAGE_TYPE": InvalidRequest,
    "NOT_REGISTERED": InvalidRequest,
    "ALREADY_REGISTERED": InvalidRequest,
    "ROUTE_NOT_FOUND": InvalidRequest,
    "METHOD_NOT_ALLOWED": InvalidRequest,
}


def error_from(code: str, reason: str = "", *, retry_after: float | None = None) -> SignalingError:
    """The typed error for a service error code (``SignalingError`` itself for unknown codes)."""
    return _BY_CODE.get(code, InvalidRequest if code.startswith("INVALID") else SignalingError)(
        code, reason, retry_after=retry_after
    )


def error_from_frame(frame: dict[str, Any]) -> SignalingError:
    """The typed error in an ``{"type": "error", "code", "reason"}`` frame (``retry_after``
    from its ``retry_after_ms``, when the relay says how long to wait)."""
    wait = frame.get("retry_after_ms")
    retry_after = wait / 1000 if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0 else None
    return error_from(str(frame.get("code", "INTERNAL_ERROR")), str(frame.get("reason", "")), retry_after=retry_after)
