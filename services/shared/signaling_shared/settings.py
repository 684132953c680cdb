"""Typed settings, read from the environment (prefix ``SIGNALING_``).

Settings are built in each service's ``main()`` (or by the tests and the local stack)
and passed down; nothing here reads the environment at import time.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Handed out by the local stack only; refused in production.
DEVELOPMENT_TURN_SECRET = "development-turn-secret-never-use-in-production"  # noqa: S105 - public on purpose


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def _env(name: str, *aliases: str) -> AliasChoices:
    """Accept ``SIGNALING_<NAME>`` and, where given, the AWS SDK's own variable names."""
    return AliasChoices(f"SIGNALING_{name.upper()}", name, *aliases)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def web_origin(value: str) -> str:
    """``value`` as a browser serializes its page's origin in ``Origin`` (RFC 6454 section 6.2):
    ``scheme://host[:port]``, lower case, without the scheme's default port. ValueError for
    anything that is not one exact http(s) origin: a wildcard, ``null``, a path, a query."""
    if "*" in value:
        raise ValueError(f"{value!r}: wildcards are not allowed, list each origin exactly")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r}: not an origin ({exc})") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{value!r}: an origin is http:// or https:// and a host, e.g. https://app.example.org")
    if parts.path or parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise ValueError(f"{value!r}: an origin has no path, query or user, e.g. https://app.example.org:8443")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"  # IPv6 keeps its brackets
    suffix = "" if port is None or port == _DEFAULT_PORTS[parts.scheme] else f":{port}"
    return f"{parts.scheme}://{host}{suffix}"


class CommonSettings(BaseSettings):
    """Settings every service needs: AWS access, tables, Cognito and logging."""

    model_config = SettingsConfigDict(
        env_prefix="SIGNALING_",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    environment: Environment = Environment.PRODUCTION
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    host: str = "127.0.0.1"

    aws_region: str = Field(
        default="us-west-1", validation_alias=_env("aws_region", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    aws_endpoint_url: str | None = Field(
        default=None,
        description="One endpoint for every AWS service (LocalStack, the embedded emulator).",
        validation_alias=_env("aws_endpoint_url", "AWS_ENDPOINT_URL"),
    )
    dynamodb_endpoint_url: str | None = Field(
        default=None,
        description="DynamoDB endpoint; overrides aws_endpoint_url.",
        validation_alias=_env("dynamodb_endpoint_url", "AWS_ENDPOINT_URL_DYNAMODB"),
    )
    cognito_endpoint_url: str | None = Field(
        default=None,
        description="Cognito endpoint; overrides aws_endpoint_url.",
        validation_alias=_env("cognito_endpoint_url", "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER"),
    )
    aws_max_connections: int = Field(default=32, ge=1, le=512)
    aws_timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Connect and read time limit of one DynamoDB or Cognito call."
    )
    aws_max_attempts: int = Field(
        default=2, ge=1, le=10, description="Attempts per call (botocore's standard retries): a fault is answered fast."
    )

    table_prefix: str = Field(
        default="", pattern=r"^[A-Za-z0-9_.-]{0,64}$", description="Prefix of every table name, e.g. 'prod-'."
    )

    cognito_user_pool_id: str = ""
    cognito_client_id: str = ""
    cognito_issuer: str | None = Field(
        default=None, description="Expected 'iss' of ID tokens; derived from region and pool id when unset."
    )
    cognito_jwks_url: str | None = Field(
        default=None,
        description="Where the signing keys are fetched; derived from the issuer (or the emulator endpoint).",
    )
    jwks_min_refresh_seconds: float = Field(
        default=30.0, ge=0, description="Least time between two JWKS fetches caused by unknown key ids."
    )
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed on exp and iat.")
    http_timeout_seconds: float = Field(default=5.0, gt=0)

    stun_urls: list[str] = Field(default_factory=list, description="STUN URLs handed to peers.")
    turn_urls: list[str] = Field(default_factory=list, description="TURN URLs handed to peers with credentials.")
    turn_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="TURN REST API shared secrets (coturn static-auth-secret); the first signs, "
        "all are configured in coturn during a rotation.",
    )
    turn_credential_ttl_seconds: int = Field(
        default=3600, ge=1, le=7 * 24 * 3600, description="Lifetime of TURN credentials; refreshed at 80%."
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Proxies whose X-Forwarded-For is trusted for the client address (comma-separated, '*' for any).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins whose pages may call the APIs (CORS) and open relay sockets (Origin),"
        " exactly as browsers send them, e.g. 'https://app.example.org,http://127.0.0.1:8003'."
        " Empty: no CORS headers, and the relay refuses every handshake that carries an Origin.",
    )
    cors_max_age_seconds: int = Field(
        default=600, ge=0, le=86_400, description="How long browsers may cache a CORS preflight's answer."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """From the environment: comma-separated, or a JSON list as the other list settings."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(web_origin(origin) for origin in value))

    @model_validator(mode="after")
    def _production_ready(self) -> CommonSettings:
        if self.environment is not Environment.PRODUCTION:
            return self
        if not (self.cognito_user_pool_id and self.cognito_client_id):
            raise ValueError("cognito_user_pool_id and cognito_client_id are required in production")
        if self.turn_urls and not self.turn_secrets:
            raise ValueError("turn_urls need turn_secrets")
        for secret in self.turn_secrets:
            value = secret.get_secret_value()
            if len(value) < 32 or value == DEVELOPMENT_TURN_SECRET:
                raise ValueError("turn_secrets must be real secrets of at least 32 characters in production")
        return self

    @property
    def rooms_table(self) -> str:
        return f"{self.table_prefix}rooms"

    @property
    def peers_table(self) -> str:
        return f"{self.table_prefix}peers"

    @property
    def messages_table(self) -> str:
        return f"{self.table_prefix}messages"

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint to give boto3 for ``service``, or None to let boto3 decide."""
        specific = {"dynamodb": self.dynamodb_endpoint_url, "cognito-idp": self.cognito_endpoint_url}
        return specific.get(service) or self.aws_endpoint_url

    @property
    def issuer(self) -> str:
        if self.cognito_issuer:
            return self.cognito_issuer.rstrip("/")
        return f"https://cognito-idp.{self.aws_region}.amazonaws.com/{self.cognito_user_pool_id}"

    @property
    def jwks_url(self) -> str:
        if self.cognito_jwks_url:
            return self.cognito_jwks_url
        emulator = self.endpoint_for("cognito-idp")
        if emulator and not self.cognito_issuer:
            # moto and LocalStack serve the pool's keys under their own address.
            return f"{emulator.rstrip('/')}/{self.cognito_user_pool_id}/.well-known/jwks.json"
        return f"{self.issuer}/.well-known/jwks.json"


class AuthSettings(CommonSettings):
    """auth-api: anonymous sign-in."""

    port: int = Field(default=8001, ge=0, le=65535)
    signin_rate_per_minute: float = Field(default=10.0, gt=0, description="Sustained sign-ins per client IP.")
    signin_burst: int = Field(default=5, ge=1, description="Sign-ins a client IP may make at once.")
    anonymous_user_lifetime_seconds: int = Field(
        default=7200,
        ge=3900,
        description="Anonymous users older than this are deleted (their one-hour ID token has expired).",
    )
    user_sweep_interval_seconds: float = Field(
        default=60.0, gt=0, description="At most one sweep of old users (one page of the pool) this often."
    )


class RoomsSettings(CommonSettings):
    """rooms-api: rooms and their tokens."""

    port: int = Field(default=8002, ge=0, le=65535)
    room_ttl_seconds: int = Field(default=7200, ge=60, le=7 * 24 * 3600)
    room_create_rate_per_minute: float = Field(default=30.0, gt=0, description="Rooms per identity per minute.")
    room_create_burst: int = Field(default=10, ge=1)
    ice_servers_rate_per_minute: float = Field(
        default=30.0, gt=0, description="GET /ice-servers per identity per minute (each signs TURN credentials)."
    )
    ice_servers_burst: int = Field(default=10, ge=1)


class RelaySettings(CommonSettings):
    """ws-relay: the WebSocket relay and its limits."""

    port: int = Field(default=8080, ge=0, le=65535)
    node_id: str = Field(default="relay-1", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    public_ws_url: str = Field(
        default="",
        pattern=r"^(wss?://\S+)?$",
        description="The URL peers reach this relay node at. Set, the node registers itself and"
        " rooms-api places rooms on the least-loaded live node; empty, it serves whatever room comes.",
    )
    node_heartbeat_seconds: float = Field(default=10.0, gt=0, description="How often a node renews its entry.")
    node_ttl_seconds: int = Field(
        default=30, ge=2, description="A node that missed its heartbeats this long gets no new rooms."
    )
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_peers_per_room: int = Field(default=32, ge=2, le=10_000)
    max_metadata_bytes: int = Field(default=4096, ge=2, le=32 * 1024, description="A peer's metadata, as JSON.")
    max_metadata_depth: int = Field(default=8, ge=1, le=16, description="Levels of nesting in a peer's metadata.")
    max_filter_bytes: int = Field(default=2048, ge=64, le=32 * 1024, description="A discover_peers filter, as JSON.")
    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_ip: int = Field(
        default=256, ge=1, description="Open sockets from one client address (behind a NAT, a lab shares one)."
    )
    max_unregistered_per_ip: int = Field(
        default=32, ge=1, description="Sockets from one address that have not registered yet."
    )
    turn_probe_interval_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How often the relay allocates on each TURN URL with its own credentials (0: never).",
    )
    turn_probe_timeout_seconds: float = Field(default=5.0, gt=0, description="One TURN probe's time limit.")
    messages_per_second: float = Field(default=50.0, gt=0, description="Sustained frames per connection.")
    message_burst: int = Field(default=100, ge=1, description="Frames a connection may send at once.")
    register_timeout_seconds: float = Field(default=10.0, gt=0, description="Close sockets not registered by then.")
    register_rate_per_minute_per_ip: float = Field(default=60.0, gt=0)
    register_burst_per_ip: int = Field(default=20, ge=1)
    register_rate_per_minute_per_room: float = Field(
        default=30.0, gt=0, description="Registrations per room that fail the room token, per minute."
    )
    register_burst_per_room: int = Field(default=10, ge=1)
    outbox_max_messages: int = Field(
        default=512, ge=1, description="Messages waiting for a slow reader before it is disconnected."
    )
    peer_lease_seconds: int = Field(
        default=120, ge=10, description="Routing-table entries expire this long after the last refresh."
    )
    resume_window_seconds: float = Field(
        default=60.0, gt=0, description="How long a dropped peer keeps its place, waiting for a resume."
    )
    resume_buffer_messages: int = Field(
        default=1024, ge=1, description="Unconfirmed messages kept per peer for a resume; past it the peer is dropped."
    )
    resume_buffer_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="The same bound in bytes (the frames as sent)."
    )
    queue_ttl_default_seconds: int = Field(
        default=120,
        ge=1,
        description="How long a message for a peer not in the room yet is held, unless sent with ttl.",
    )
    queue_ttl_max_seconds: int = Field(
        default=900, ge=900, le=7 * 24 * 3600, description="The longest hold a sender may ask for (at least 15 min)."
    )
    claim_ttl_default_seconds: int = Field(
        default=300, ge=1, description="A lease's lifetime when a claim or renew names none."
    )
    claim_ttl_min_seconds: int = Field(default=5, ge=1, description="The shortest lease a client may ask for.")
    claim_ttl_max_seconds: int = Field(default=3600, ge=1, description="The longest lease a client may ask for.")
    claims_per_minute: float = Field(
        default=30.0, gt=0, description="Claims, renewals and releases per identity (each is a DynamoDB write)."
    )
    claim_burst: int = Field(default=10, ge=1)
    max_leases_per_peer: int = Field(default=8, ge=1, description="Leases one peer may hold at once.")
    queue_max_per_peer: int = Field(default=100, ge=1, description="Messages held for one absent peer.")
    queue_max_per_room: int = Field(default=1000, ge=1, description="Messages held in one room, for all absent peers.")
    queue_max_per_sender: int = Field(default=100, ge=1, description="Messages one peer has held in its room.")
    queue_ttl_min_seconds: int = Field(
        default=30, ge=1, description="The shortest hold a sender may ask for: a hold is a write and a delete."
    )
    queue_holds_per_minute: float = Field(default=60.0, gt=0, description="Messages one identity may have held.")
    queue_hold_burst: int = Field(default=20, ge=1)
    ping_interval_seconds: float | None = Field(default=20.0, gt=0)
    ping_timeout_seconds: float | None = Field(default=20.0, gt=0)
    drain_seconds: float = Field(
        default=5.0, ge=0, description="At shutdown, time between go_away and closing the sockets (4500)."
    )
    drain_jitter_ms: int = Field(
        default=2000, ge=0, description="Spread of go_away's reconnect_after_ms, so peers do not return at once."
    )
    shutdown_grace_seconds: float = Field(
        default=5.0, ge=0, description="How long shutdown waits for sockets to close before releasing them."
    )
    handshake_timeout_seconds: float = Field(default=10.0, gt=0, description="Opening handshake deadline.")
    close_timeout_seconds: float = Field(default=5.0, gt=0, description="Closing handshake deadline.")
    inbound_queue_frames: int = Field(
        default=16, ge=1, description="Frames read ahead per connection before TCP backpressure applies."
    )
    compression: bool = Field(default=False, description="permessage-deflate; off saves ~64 KiB per connection.")

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> RelaySettings:
        if self.node_ttl_seconds <= self.node_heartbeat_seconds:
            raise ValueError("node_ttl_seconds must exceed node_heartbeat_seconds")
        if self.public_ws_url and "node_id" not in self.model_fields_set:
            # Two nodes with the default id would overwrite each other's entry and rooms.
            raise ValueError("a relay with public_ws_url needs its own node_id (SIGNALING_NODE_ID)")
        if not self.claim_ttl_min_seconds <= self.claim_ttl_default_seconds <= self.claim_ttl_max_seconds:
            raise ValueError(
                "claim_ttl_default_seconds must lie between claim_ttl_min_seconds and claim_ttl_max_seconds"
            )
        return self
