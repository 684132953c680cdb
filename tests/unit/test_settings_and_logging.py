"""Settings come from the environment with the SIGNALING_ prefix; logs never carry secrets."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from signaling_shared.logging import REDACTED
from signaling_shared.settings import CommonSettings, Environment, RelaySettings
from support import logs_into


def test_environment_prefix_and_aws_endpoint_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGNALING_* variables configure the services and AWS_ENDPOINT_URL is honoured."""
    monkeypatch.setenv("SIGNALING_ENVIRONMENT", "development")
    monkeypatch.setenv("SIGNALING_TABLE_PREFIX", "prod-")
    monkeypatch.setenv("SIGNALING_MAX_PEERS_PER_ROOM", "7")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9000")
    settings = RelaySettings()
    assert settings.rooms_table == "prod-rooms"
    assert settings.peers_table == "prod-peers"
    assert settings.max_peers_per_room == 7
    assert settings.endpoint_for("cognito-idp") == "http://127.0.0.1:4566"
    assert settings.endpoint_for("dynamodb") == "http://127.0.0.1:9000"


def test_issuer_and_jwks_url_are_separate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issuer stays AWS-shaped while an emulator serves the keys at its own address."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", raising=False)
    aws = CommonSettings(cognito_user_pool_id="us-west-1_abc", cognito_client_id="c", aws_region="us-west-1")
    assert aws.issuer == "https://cognito-idp.us-west-1.amazonaws.com/us-west-1_abc"
    assert aws.jwks_url == aws.issuer + "/.well-known/jwks.json"
    emulated = CommonSettings(
        cognito_user_pool_id="p", cognito_client_id="c", aws_region="us-west-1", aws_endpoint_url="http://127.0.0.1:5"
    )
    assert emulated.issuer == "https://cognito-idp.us-west-1.amazonaws.com/p"
    assert emulated.jwks_url == "http://127.0.0.1:5/p/.well-known/jwks.json"
    explicit = CommonSettings(cognito_user_pool_id="p", cognito_client_id="c", cognito_jwks_url="http://keys")
    assert explicit.jwks_url == "http://keys"


def test_production_requires_a_user_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside development, missing Cognito ids stop the service at startup."""
    monkeypatch.delenv("SIGNALING_ENVIRONMENT", raising=False)
    with pytest.raises(ValidationError):
        CommonSettings()
    assert CommonSettings(environment=Environment.DEVELOPMENT).cognito_user_pool_id == ""


def test_limits_are_validated() -> None:
    """Nonsense limits are refused when settings are built."""
    with pytest.raises(ValidationError):
        RelaySettings(environment=Environment.DEVELOPMENT, max_frame_bytes=10)
    with pytest.raises(ValidationError):
        RelaySettings(environment=Environment.DEVELOPMENT, max_peers_per_room=1)


def test_cors_origins_are_exact_origins_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGNALING_CORS_ORIGINS is comma-separated (or JSON), kept as browsers send Origin; empty by default."""
    assert CommonSettings(environment=Environment.DEVELOPMENT).cors_origins == []
    monkeypatch.setenv("SIGNALING_CORS_ORIGINS", "http://127.0.0.1:8003, HTTPS://App.Example.org:443,http://[::1]:8080")
    assert CommonSettings(environment=Environment.DEVELOPMENT).cors_origins == [
        "http://127.0.0.1:8003",
        "https://app.example.org",  # lower case, the default port dropped: what the browser sends
        "http://[::1]:8080",
    ]
    monkeypatch.setenv("SIGNALING_CORS_ORIGINS", '["http://127.0.0.1:8003"]')  # JSON, as the other lists
    assert CommonSettings(environment=Environment.DEVELOPMENT).cors_origins == ["http://127.0.0.1:8003"]


@pytest.mark.parametrize(
    "origin",
    [
        "*",
        "https://*.example.org",
        "null",
        "app.example.org",
        "ftp://app.example.org",
        "https://",
        "https://app.example.org/",
        "https://app.example.org/app",
        "https://app.example.org?x=1",
        "https://user@app.example.org",
        "https://app.example.org:99999",
    ],
)
def test_cors_origins_refuse_wildcards_paths_and_non_origins(origin: str) -> None:
    """Each entry must be one exact http(s) origin: no wildcard, no path, no query, no user."""
    with pytest.raises(ValidationError, match="cors_origins"):
        CommonSettings(environment=Environment.DEVELOPMENT, cors_origins=["https://ok.example.org", origin])


def test_log_events_are_json_and_secret_fields_are_redacted() -> None:
    """Whatever logs a token, ID token, SDP or candidate field, the line shows it redacted."""
    with logs_into("INFO") as buffer:
        structlog.stdlib.get_logger("test").info(
            "event", token="room-secret", id_token="jwt", sdp="v=0", candidate="c", Authorization="Bearer x", ok=1
        )
        logging.getLogger("thirdparty").warning("plain %s", "message")
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    first = lines[0]
    assert first["event"] == "event"
    assert first["ok"] == 1
    for key in ("token", "id_token", "sdp", "candidate", "Authorization"):
        assert first[key] == REDACTED
    assert lines[1]["event"] == "plain message"
    assert lines[1]["level"] == "warning"
    assert "room-secret" not in buffer.getvalue()


def test_a_relay_with_a_public_url_needs_its_own_node_id() -> None:
    """Two nodes with the default id would share one placement entry and each other's rooms."""
    from pydantic import ValidationError

    from signaling_shared.settings import Environment, RelaySettings

    with pytest.raises(ValidationError, match="needs its own node_id"):
        RelaySettings(environment=Environment.DEVELOPMENT, public_ws_url="ws://relay-2.example.org")
    named = RelaySettings(environment=Environment.DEVELOPMENT, public_ws_url="ws://r2.example.org", node_id="relay-2")
    assert named.node_id == "relay-2"


async def test_debug_logging_keeps_websocket_frame_contents_out() -> None:
    """At DEBUG, websockets would log every frame it reads and writes (room tokens, SDP);
    configure_logging holds its logger at INFO, so a frame's contents never reach a log line.
    The connection is real (loopback, port 0), and our own DEBUG lines still get through."""
    with logs_into("DEBUG") as buffer:

        async def echo(connection: ServerConnection) -> None:
            async for frame in connection:
                await connection.send(frame)

        async with serve(echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as client:
                await client.send('{"type":"register","room_token":"frame-secret"}')
                assert "frame-secret" in str(await client.recv())
        structlog.stdlib.get_logger("test").debug("ours")
    assert "frame-secret" not in buffer.getvalue()
    assert any(json.loads(line)["event"] == "ours" for line in buffer.getvalue().splitlines())
