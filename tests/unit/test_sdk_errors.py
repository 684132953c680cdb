"""The SDK's error mapping and backoff: every service code has a typed exception."""

from __future__ import annotations

import pytest

from signaling_sdk import (
    AlreadyClaimed,
    AuthError,
    DeliveryFailed,
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
from signaling_sdk.session import Backoff
from signaling_shared.errors import ErrorCode


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("INVALID_ID_TOKEN", AuthError),
        ("ROOM_FULL", RoomError),
        ("NOT_ROOM_CREATOR", RoomError),
        ("PEER_ID_TAKEN", PeerError),
        ("DELIVERY_FAILED", DeliveryFailed),
        ("PEER_BUSY", PeerBusy),
        ("QUEUE_FULL", QueueFull),
        ("ALREADY_CLAIMED", AlreadyClaimed),
        ("LEASE_NOT_FOUND", LeaseNotFound),
        ("RATE_LIMITED", RateLimited),
        ("STORAGE_UNAVAILABLE", Unavailable),
        ("RESUME_FAILED", SessionLost),
        ("INVALID_MESSAGE", InvalidRequest),
    ],
)
def test_codes_map_to_typed_errors(code: str, kind: type[SignalingError]) -> None:
    error = error_from(code, "why", retry_after=2.0)
    assert type(error) is kind
    assert (error.code, error.reason, error.retry_after) == (code, "why", 2.0)


def test_every_code_the_service_has_gets_a_specific_error() -> None:
    """A new server code without an SDK mapping fails here (the base class is for unknown ones)."""
    generic = [code.value for code in ErrorCode if type(error_from(code.value)) is SignalingError]
    assert generic == []


def test_backoff_is_jittered_and_capped() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    delays = [backoff.delay(attempt) for attempt in range(10) for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100  # jittered, not a fixed schedule
