"""Checks the HTTP API tests share: error bodies, metrics samples, ID-token claims, Cognito users."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from jose import jwt
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import StackInfo
from signaling_shared.aws import make_client
from support import Peer


@asynccontextmanager
async def closing(*peers: Peer) -> AsyncIterator[None]:
    """Close ``peers`` however the block ends, so a failed assertion reports itself and not a leaked socket."""
    try:
        yield
    finally:
        for peer in peers:
            await peer.close()


def cors_headers(response: httpx.Response) -> dict[str, str]:
    """The response's ``Access-Control-*`` headers, names in lower case (each exactly once)."""
    found = [(name.lower(), value) for name, value in response.headers.multi_items()]
    cors = [(name, value) for name, value in found if name.startswith("access-control-")]
    assert len(cors) == len(dict(cors)), cors  # none sent twice (e.g. by the service and a proxy)
    return dict(cors)


def preflight_headers(origin: str, method: str, *headers: str) -> dict[str, str]:
    """The request headers of a browser's CORS preflight for ``method`` with ``headers``."""
    asked = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        asked["Access-Control-Request-Headers"] = ",".join(h.lower() for h in headers)
    return asked


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is ``status`` with exactly ``{"error": code, "detail": <reason>}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str)
    assert body["detail"], body
    return body


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus exposition: (name, labels, value)."""
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there is none)."""
    return sum(
        value
        for sample_name, sample_labels, value in metric_samples(text)
        if sample_name == name and labels.items() <= sample_labels.items()
    )


async def scrape(client: httpx.AsyncClient, path: str = "/metrics") -> str:
    """GET a Prometheus endpoint; its text, after checking it is the text format."""
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return response.text


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_bytes(segment: str) -> bytes:
    """Base64url without padding, decoded."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64url_json(segment: str) -> dict[str, Any]:
    decoded = json.loads(b64url_bytes(segment))
    assert isinstance(decoded, dict)
    return decoded


def forged(
    id_token: str, claims: dict[str, Any], *, header: dict[str, Any] | None = None, signature: str | None = None
) -> str:
    """``id_token`` with claims (and optionally the header or signature) replaced, the rest kept."""
    header_segment, payload_segment, original_signature = id_token.split(".")
    payload = {**_b64url_json(payload_segment), **claims}
    if header is not None:
        header_segment = _b64url(json.dumps({**_b64url_json(header_segment), **header}).encode())
    body = _b64url(json.dumps(payload).encode())
    return f"{header_segment}.{body}.{original_signature if signature is None else signature}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_of(id_token: str) -> dict[str, Any]:
    """An ID token's claims, unverified (the services verify; the tests only read)."""
    claims = jwt.get_unverified_claims(id_token)
    assert isinstance(claims, dict)
    return claims


def sub_of(id_token: str) -> str:
    sub = claims_of(id_token)["sub"]
    assert isinstance(sub, str)
    return sub


def closed_port_url(host: str) -> str:
    """An http URL on which nothing listens: a port the OS handed out, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])
    return f"http://{host}:{port}"


async def cognito_user_exists(stack: StackInfo, username: str) -> bool:
    """Whether the user pool holds ``username`` (AdminGetUser on the emulator)."""

    def lookup() -> bool:
        client = make_client(stack.common, "cognito-idp")
        try:
            client.admin_get_user(UserPoolId=stack.resources.user_pool_id, Username=username)
        except client.exceptions.UserNotFoundException:
            return False
        finally:
            client.close()
        return True

    return await asyncio.to_thread(lookup)


async def room_item(stack: StackInfo, room_id: str) -> dict[str, Any] | None:
    """The rooms table's raw item for ``room_id`` (every attribute, as stored), or None."""

    def get() -> dict[str, Any] | None:
        client = make_client(stack.common, "dynamodb")
        try:
            response = client.get_item(
                TableName=stack.common.rooms_table, Key={"room_id": {"S": room_id}}, ConsistentRead=True
            )
        finally:
            client.close()
        item = response.get("Item")
        return dict(item) if item else None

    return await asyncio.to_thread(get)


async def tokens_we_must_refuse(stack: StackInfo) -> dict[str, str]:
    """Genuine tokens of the stack's user pool that are not our client's ID tokens.

    ``access_token``: our app client's access token (token_use=access); ``other_client``: an
    ID token issued to another app client of the same pool (aud is not ours); ``control``:
    the same user's ID token from our client, which must be accepted.
    """

    def mint() -> dict[str, str]:
        client = make_client(stack.common, "cognito-idp")
        pool = stack.resources.user_pool_id
        flows = ["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
        other = client.create_user_pool_client(
            UserPoolId=pool, ClientName=f"other-app-{uuid.uuid4().hex[:8]}", ExplicitAuthFlows=flows
        )["UserPoolClient"]["ClientId"]
        username, password = str(uuid.uuid4()), f"{secrets.token_urlsafe(24)}Aa1!"
        try:
            client.admin_create_user(UserPoolId=pool, Username=username, MessageAction="SUPPRESS")
            client.admin_set_user_password(UserPoolId=pool, Username=username, Password=password, Permanent=True)
            params = {"USERNAME": username, "PASSWORD": password}

            def sign_in(client_id: str) -> dict[str, str]:
                result = client.admin_initiate_auth(
                    UserPoolId=pool, ClientId=client_id, AuthFlow="ADMIN_USER_PASSWORD_AUTH", AuthParameters=params
                )
                return dict(result["AuthenticationResult"])

            ours, theirs = sign_in(stack.resources.client_id), sign_in(other)
        finally:
            client.delete_user_pool_client(UserPoolId=pool, ClientId=other)
            client.close()
        return {"access_token": ours["AccessToken"], "other_client": theirs["IdToken"], "control": ours["IdToken"]}

    return await asyncio.to_thread(mint)
