"""The one hierarchy of typed errors, each with a stable code.

HTTP renders them as ``{"error": CODE, "detail": reason}`` with ``http_status``; the
WebSocket relay renders them as ``{"type": "error", "code": CODE, "reason": reason}``.
Clients branch on ``code``; ``reason`` is for people and may change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    # Frames and requests
    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    INVALID_REQUEST = "INVALID_REQUEST"
    ROUTE_NOT_FOUND = "ROUTE_NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    # Session
    NOT_REGISTERED = "NOT_REGISTERED"
    ALREADY_REGISTERED = "ALREADY_REGISTERED"
    RESUME_FAILED = "RESUME_FAILED"
    INVALID_ID_TOKEN = "INVALID_ID_TOKEN"
    UNSUPPORTED_AUTH = "UNSUPPORTED_AUTH"
    # Rooms
    ROOM_NOT_FOUND = "ROOM_NOT_FOUND"
    INVALID_ROOM_TOKEN = "INVALID_ROOM_TOKEN"
    ROOM_EXPIRED = "ROOM_EXPIRED"
    ROOM_FULL = "ROOM_FULL"
    NOT_ROOM_CREATOR = "NOT_ROOM_CREATOR"
    # Peers and routing
    PEER_ID_TAKEN = "PEER_ID_TAKEN"
    SENDER_MISMATCH = "SENDER_MISMATCH"
    PEER_NOT_FOUND = "PEER_NOT_FOUND"
    UNSUPPORTED_BY_PEER = "UNSUPPORTED_BY_PEER"
    PEER_ERROR = "PEER_ERROR"
    DELIVERY_FAILED = "DELIVERY_FAILED"
    PEER_BUSY = "PEER_BUSY"
    QUEUE_FULL = "QUEUE_FULL"
    # Booking
    ALREADY_CLAIMED = "ALREADY_CLAIMED"
    LEASE_NOT_FOUND = "LEASE_NOT_FOUND"
    # Limits and dependencies
    RATE_LIMITED = "RATE_LIMITED"
    SERVER_BUSY = "SERVER_BUSY"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    AUTH_PROVIDER_UNAVAILABLE = "AUTH_PROVIDER_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class SignalingError(Exception):
    """Base of every error a client can see."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR
    http_status: ClassVar[int] = 500
    default_reason: ClassVar[str] = "internal error"

    def __init__(self, reason: str | None = None, *, retry_after: float | None = None) -> None:
        self.reason = reason or self.default_reason
        self.retry_after = retry_after
        super().__init__(self.reason)


class InvalidJson(SignalingError):
    code = ErrorCode.INVALID_JSON
    http_status = 400
    default_reason = "frame is not valid JSON"


class InvalidMessage(SignalingError):
    code = ErrorCode.INVALID_MESSAGE
    http_status = 400
    default_reason = "message is malformed"


class InvalidRequest(SignalingError):
    code = ErrorCode.INVALID_REQUEST
    http_status = 422
    default_reason = "request is malformed"


class RouteNotFound(SignalingError):
    code = ErrorCode.ROUTE_NOT_FOUND
    http_status = 404
    default_reason = "no such route"


class MethodNotAllowed(SignalingError):
    code = ErrorCode.METHOD_NOT_ALLOWED
    http_status = 405
    default_reason = "method not allowed on this route"


class UnknownMessageType(SignalingError):
    code = ErrorCode.UNKNOWN_MESSAGE_TYPE
    http_status = 400
    default_reason = "unknown message type"


class NotRegistered(SignalingError):
    code = ErrorCode.NOT_REGISTERED
    http_status = 403
    default_reason = "register before sending messages"


class AlreadyRegistered(SignalingError):
    code = ErrorCode.ALREADY_REGISTERED
    http_status = 409
    default_reason = "this connection is already registered"


class UnsupportedAuth(SignalingError):
    code = ErrorCode.UNSUPPORTED_AUTH
    http_status = 401
    default_reason = (
        "this relay signs peers in with a Cognito ID token (id_token, from /anonymous-signin); "
        "API keys and GitHub JWTs are not supported"
    )


class ResumeFailed(SignalingError):
    code = ErrorCode.RESUME_FAILED
    http_status = 409
    default_reason = "the session cannot be resumed: register without resume_token"


class InvalidIdToken(SignalingError):
    code = ErrorCode.INVALID_ID_TOKEN
    http_status = 401
    default_reason = "ID token is missing, malformed, expired or not issued for this service"


class RoomNotFound(SignalingError):
    code = ErrorCode.ROOM_NOT_FOUND
    http_status = 404
    default_reason = "room not found"


class InvalidRoomToken(SignalingError):
    code = ErrorCode.INVALID_ROOM_TOKEN
    http_status = 403
    default_reason = "room token is wrong"


class RoomExpired(SignalingError):
    code = ErrorCode.ROOM_EXPIRED
    http_status = 410
    default_reason = "room has expired"


class RoomFull(SignalingError):
    code = ErrorCode.ROOM_FULL
    http_status = 409
    default_reason = "room is full"


class NotRoomCreator(SignalingError):
    code = ErrorCode.NOT_ROOM_CREATOR
    http_status = 403
    default_reason = "only the room's creator may do this"


class PeerIdTaken(SignalingError):
    code = ErrorCode.PEER_ID_TAKEN
    http_status = 409
    default_reason = "peer id is in use by another identity"


class SenderMismatch(SignalingError):
    code = ErrorCode.SENDER_MISMATCH
    http_status = 403
    default_reason = "sender is not the peer registered on this connection"


class PeerNotFound(SignalingError):
    code = ErrorCode.PEER_NOT_FOUND
    http_status = 404
    default_reason = "target peer is not in this room"


class UnsupportedByPeer(SignalingError):
    code = ErrorCode.UNSUPPORTED_BY_PEER
    http_status = 409
    default_reason = "the target peer's client cannot receive this message type"


class DeliveryFailed(SignalingError):
    code = ErrorCode.DELIVERY_FAILED
    http_status = 503
    default_reason = "target peer is not reading its messages"


class PeerBusy(SignalingError):
    code = ErrorCode.PEER_BUSY
    http_status = 503
    default_reason = "target peer has not confirmed the messages it has yet: send again shortly"


class QueueFull(SignalingError):
    code = ErrorCode.QUEUE_FULL
    http_status = 429
    default_reason = "too many messages are already held for peers not in the room"


class AlreadyClaimed(SignalingError):
    code = ErrorCode.ALREADY_CLAIMED
    http_status = 409
    default_reason = "the peer is claimed by as many clients as it takes"


class LeaseNotFound(SignalingError):
    code = ErrorCode.LEASE_NOT_FOUND
    http_status = 404
    default_reason = "no such lease of yours: it expired or was released"


class RateLimited(SignalingError):
    code = ErrorCode.RATE_LIMITED
    http_status = 429
    default_reason = "too many requests"


class ServerBusy(SignalingError):
    code = ErrorCode.SERVER_BUSY
    http_status = 503
    default_reason = "server is at capacity or shutting down"


class StorageUnavailable(SignalingError):
    code = ErrorCode.STORAGE_UNAVAILABLE
    http_status = 503
    default_reason = "storage is unavailable, retry later"


class AuthProviderUnavailable(SignalingError):
    code = ErrorCode.AUTH_PROVIDER_UNAVAILABLE
    http_status = 503
    default_reason = "identity provider is unavailable, retry later"


class InternalError(SignalingError):
    code = ErrorCode.INTERNAL_ERROR
    http_status = 500
    default_reason = "internal error"


# The data layer's errors: internal, never shown to clients as such. They keep the AWS
# error code; services branch on their types.


class RepositoryError(Exception):
    """A data-layer failure; ``aws_code`` is the AWS error code when there is one.

    For a cancelled transaction, ``reasons`` holds each item's cancellation code (None
    for items that did not fail), in the order the items were written.
    """

    def __init__(
        self,
        message: str,
        *,
        aws_code: str | None = None,
        operation: str = "",
        reasons: tuple[str | None, ...] = (),
    ) -> None:
        super().__init__(message)
        self.aws_code = aws_code
        self.operation = operation
        self.reasons = reasons


class NotFound(RepositoryError):
    """The item does not exist (or has expired)."""


class ConditionFailed(RepositoryError):
    """A conditional write was refused."""


class Throttled(RepositoryError):
    """DynamoDB asked us to slow down; retrying later may succeed."""


class Unavailable(RepositoryError):
    """DynamoDB could not be reached or refused the request."""


def as_signaling_error(exc: BaseException) -> SignalingError:
    """The client-facing error for any exception (one mapping for HTTP and WebSocket)."""
    if isinstance(exc, SignalingError):
        return exc
    if isinstance(exc, RepositoryError) and not isinstance(exc, NotFound):
        return StorageUnavailable()
    return InternalError()


def describe_validation_error(errors: Sequence[Mapping[str, Any]], *, skip: int = 0) -> str:
    """A short reason for the first validation error: ``field.path: message``.

    ``skip`` drops leading location parts that name no field (a union's tag).
    """
    if not errors:
        return "malformed"
    first = errors[0]
    where = ".".join(str(part) for part in tuple(first.get("loc", ()))[skip:])
    message = str(first.get("msg", "invalid"))
    return (f"{where}: {message}" if where else message)[:200]
