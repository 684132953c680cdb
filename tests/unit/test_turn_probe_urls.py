"""TURN URLs as the relay's probe reads them (RFC 7065), and the credentials it signs."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from signaling_shared.settings import CommonSettings, Environment
from signaling_shared.turn import ice_servers, rest_credentials
from ws_relay.turnprobe import TurnServer


@pytest.mark.parametrize(
    ("url", "host", "port", "transport", "secure"),
    [
        ("turn:turn.example.org", "turn.example.org", 3478, "udp", False),
        ("turn:turn.example.org:3479?transport=tcp", "turn.example.org", 3479, "tcp", False),
        ("turn:203.0.113.7:3478?transport=udp", "203.0.113.7", 3478, "udp", False),
        ("turns:turn.example.org", "turn.example.org", 5349, "tcp", True),
        ("turn:[2001:db8::1]:3478", "2001:db8::1", 3478, "udp", False),
    ],
)
def test_turn_urls_parse(url: str, host: str, port: int, transport: str, secure: bool) -> None:
    assert TurnServer.parse(url) == TurnServer(url, host, port, transport, secure)


@pytest.mark.parametrize(
    "url",
    [
        "stun:turn.example.org",
        "turn:",
        "turn:host:port",
        "turn:host:70000",
        "turn:host?transport=sctp",
        "turns:h?transport=udp",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"TURN|port|transport"):
        TurnServer.parse(url)


def test_the_probe_signs_like_the_credentials_peers_get() -> None:
    settings = CommonSettings(
        environment=Environment.DEVELOPMENT,
        turn_urls=["turn:127.0.0.1:3478"],
        turn_secrets=[SecretStr("a-development-secret-of-enough-length")],
    )
    username, credential = rest_credentials(settings, "probe", 1000.0) or ("", "")
    entry = ice_servers(settings, "probe", 1000.0)["ice_servers"][-1]
    assert (entry["username"], entry["credential"]) == (username, credential)
    assert username == f"{1000 + settings.turn_credential_ttl_seconds}:probe"
    assert rest_credentials(CommonSettings(environment=Environment.DEVELOPMENT), "probe", 1000.0) is None
