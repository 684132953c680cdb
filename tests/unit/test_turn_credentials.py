"""TURN REST API credentials and the settings that guard the shared secret."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from signaling_shared.settings import DEVELOPMENT_TURN_SECRET, CommonSettings, Environment
from signaling_shared.turn import ice_servers, turn_credential

DEV: dict[str, Any] = {"environment": Environment.DEVELOPMENT}
PROD: dict[str, Any] = {"cognito_user_pool_id": "pool", "cognito_client_id": "client"}


def test_credential_is_base64_hmac_sha1_of_the_username() -> None:
    """Matches a vector computed independently with
    `printf 1433895918:user | openssl dgst -sha1 -hmac north -binary | base64`."""
    assert turn_credential("north", "1433895918:user") == "/gk4t5tUc08OpM3NjrVjHSFVNmY="


def test_ice_servers_shape_and_expiry() -> None:
    """STUN entries carry no credentials; the TURN username is '<now + ttl>:<peer>'."""
    settings = CommonSettings(
        **DEV,
        stun_urls=["stun:s:3478"],
        turn_urls=["turn:t:3478"],
        turn_secrets=[SecretStr("x" * 32)],
        turn_credential_ttl_seconds=600,
    )
    ice = ice_servers(settings, "Worker-1", now=1000.4)
    assert ice["ttl"] == 600
    stun, turn = ice["ice_servers"]
    assert stun == {"urls": ["stun:s:3478"]}
    assert turn["urls"] == ["turn:t:3478"]
    assert turn["username"] == "1600:Worker-1"
    assert turn["credential"] == turn_credential("x" * 32, "1600:Worker-1")


def test_the_first_secret_signs() -> None:
    """With several secrets (a rotation), credentials are signed with the first."""
    settings = CommonSettings(**DEV, turn_urls=["turn:t"], turn_secrets=[SecretStr("new" * 11), SecretStr("old" * 11)])
    turn = ice_servers(settings, "p", now=0)["ice_servers"][0]
    assert turn["credential"] == turn_credential("new" * 11, turn["username"])


def test_no_turn_without_urls() -> None:
    """Without TURN URLs no credentials are issued at all."""
    settings = CommonSettings(**DEV, stun_urls=["stun:s"], turn_secrets=[SecretStr("x" * 32)])
    assert ice_servers(settings, "p", now=0)["ice_servers"] == [{"urls": ["stun:s"]}]


@pytest.mark.parametrize(
    "turn",
    [
        {"turn_urls": ["turn:t"]},
        {"turn_urls": ["turn:t"], "turn_secrets": [DEVELOPMENT_TURN_SECRET]},
        {"turn_urls": ["turn:t"], "turn_secrets": ["short"]},
    ],
)
def test_production_refuses_missing_placeholder_or_weak_secrets(turn: dict[str, Any]) -> None:
    """Production will not start with TURN URLs but no secret, the development secret, or a short one."""
    with pytest.raises(ValidationError):
        CommonSettings(**PROD, **turn)
    CommonSettings(**DEV, **turn)  # development accepts them


def test_secrets_never_show_in_reprs() -> None:
    """The secret is a SecretStr: settings dumps and reprs do not reveal it."""
    settings = CommonSettings(**DEV, turn_urls=["turn:t"], turn_secrets=[SecretStr("s" * 40)])
    assert "s" * 40 not in repr(settings)
    assert "s" * 40 not in str(settings.model_dump())
