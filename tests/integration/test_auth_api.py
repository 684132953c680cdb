"""auth-api over real HTTP: the seed's sign-in, its per-IP limit, a failing Cognito, health and metrics.

The limits and failures run on apps of their own (port 0, this test's loop) so their
counters and buckets start empty; the shared stack serves auth-api under /auth-api/.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest
from jose import jwt

from api_checks import (
    assert_error,
    claims_of,
    closed_port_url,
    cognito_user_exists,
    metric_samples,
    metric_value,
    scrape,
)
from auth_api.main import create_app
from auth_api.service import SignInService
from devstack.stack import StackInfo
from signaling_shared.aws import make_client
from signaling_shared.bootstrap import ensure_user_pool
from signaling_shared.cognito import CognitoGateway
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.settings import AuthSettings, CommonSettings
from support import TIMEOUT, scaled, serving

pytestmark = pytest.mark.integration

GENERATED_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


def auth_settings(stack: StackInfo, **overrides: Any) -> AuthSettings:
    """auth-api settings on the shared stack's AWS resources, with ``overrides``."""
    return AuthSettings(**{**stack.common.model_dump(), **overrides})


async def test_anonymous_signin_returns_the_seed_shape_and_a_cognito_id_token(api: str, stack: StackInfo) -> None:
    """POST /anonymous-signin returns exactly {id_token, username}: an RS256 ID token for our client, of a real user."""
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        first = await client.post("/anonymous-signin")
        second = await client.post("/anonymous-signin")
    for response in (first, second):
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"id_token", "username"}
    body = first.json()
    header = jwt.get_unverified_header(body["id_token"])
    assert header["alg"] == "RS256"
    assert header.get("kid")
    claims = claims_of(body["id_token"])
    assert claims["token_use"] == "id"
    assert claims["aud"] == stack.resources.client_id
    assert claims["iss"] == stack.common.issuer
    assert claims["cognito:username"] == body["username"]
    assert claims["exp"] > time.time()
    assert second.json()["username"] != body["username"]  # a new anonymous user each time
    assert await cognito_user_exists(stack, body["username"])


async def test_signin_rate_limit_per_client_ip(stack: StackInfo) -> None:
    """Past signin_burst one address gets 429 RATE_LIMITED with Retry-After; another address is still served."""
    app = create_app(auth_settings(stack, signin_burst=2, signin_rate_per_minute=1))
    async with serving(app, stack.common) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        for _ in range(2):
            allowed = await client.post("/anonymous-signin")
            assert allowed.status_code == 200, allowed.text
        refused = await client.post("/anonymous-signin")
        body = assert_error(refused, 429, "RATE_LIMITED")
        assert "retry" in body["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # 127.0.0.1 is a trusted proxy here (forwarded_allow_ips), so this is another client.
        other = await client.post("/anonymous-signin", headers={"X-Forwarded-For": "203.0.113.7"})
        assert other.status_code == 200, other.text
        metrics = await scrape(client)
    assert metric_value(metrics, "signaling_errors_total", code="RATE_LIMITED") == 1
    signins = {"route": "/anonymous-signin", "method": "POST"}
    assert metric_value(metrics, "signaling_http_requests_total", **signins, status="200") == 3
    assert metric_value(metrics, "signaling_http_requests_total", **signins, status="429") == 1


async def test_forwarded_for_from_an_untrusted_proxy_does_not_escape_the_limit(stack: StackInfo) -> None:
    """When 127.0.0.1 is not a trusted proxy, a made-up X-Forwarded-For does not buy more sign-ins."""
    settings = auth_settings(stack, signin_burst=2, signin_rate_per_minute=1, forwarded_allow_ips="192.0.2.1")
    async with (
        serving(create_app(settings), settings) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client,
    ):
        for address in ("203.0.113.1", "203.0.113.2"):
            allowed = await client.post("/anonymous-signin", headers={"X-Forwarded-For": address})
            assert allowed.status_code == 200, allowed.text
        spoofed = await client.post("/anonymous-signin", headers={"X-Forwarded-For": "203.0.113.3"})
        assert_error(spoofed, 429, "RATE_LIMITED")


async def test_cognito_failure_is_a_typed_503_without_internals(stack: StackInfo) -> None:
    """With Cognito unreachable, sign-in is 503 AUTH_PROVIDER_UNAVAILABLE and the body leaks no exception text."""
    dead = closed_port_url(stack.common.host)
    app = create_app(auth_settings(stack, cognito_endpoint_url=dead, http_timeout_seconds=scaled(1)))
    async with (
        serving(app, stack.common) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=4 * TIMEOUT) as client,
    ):
        response = await client.post("/anonymous-signin")
        metrics = await scrape(client)
    body = assert_error(response, 503, "AUTH_PROVIDER_UNAVAILABLE")
    port = dead.rsplit(":", 1)[1]
    for leak in ("Traceback", "botocore", "Exception", "Error", "Endpoint", "Connect", "http", port):
        assert leak not in response.text, body
    assert metric_value(metrics, "signaling_errors_total", code="AUTH_PROVIDER_UNAVAILABLE") == 1
    assert (
        metric_value(metrics, "signaling_dependency_errors_total", dependency="cognito", operation="admin_create_user")
        == 1
    )


async def test_healthz_and_readyz_on_the_stack(api: str) -> None:
    """/healthz is 200 ok; /readyz is 200 with cognito and jwks checked and nothing failing."""
    async with httpx.AsyncClient(base_url=f"{api}/auth-api", timeout=TIMEOUT) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"cognito": "ok", "jwks": "ok"}, "failing": []}


async def test_readyz_names_the_failing_dependency_while_healthz_stays_up(stack: StackInfo) -> None:
    """With Cognito and its keys unreachable, /readyz is 503 naming cognito and jwks; /healthz stays 200."""
    dead = closed_port_url(stack.common.host)
    app = create_app(auth_settings(stack, cognito_endpoint_url=dead, http_timeout_seconds=scaled(1)))
    async with (
        serving(app, stack.common) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=4 * TIMEOUT) as client,
    ):
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "unavailable"
    assert sorted(body["failing"]) == ["cognito", "jwks"]
    assert all(result != "ok" for result in body["checks"].values()), body


async def test_metrics_label_routes_by_template_and_never_by_user(api: str) -> None:
    """/metrics is Prometheus text; requests are labelled by route template, never a username or raw path."""
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        signin = await client.post("/anonymous-signin")
        assert signin.status_code == 200, signin.text
        username = signin.json()["username"]
        stray_path = f"/auth-api/no-such-route-{username}"
        assert_error(await client.get(stray_path), 404, "ROUTE_NOT_FOUND")
        metrics = await scrape(client, "/auth-api/metrics")
    assert metric_value(metrics, "signaling_http_requests_total", route="/anonymous-signin", status="200") >= 1
    assert metric_value(metrics, "signaling_http_requests_total", route="unmatched", status="404") >= 1
    assert metric_value(metrics, "signaling_build_info", service="auth-api") == 1
    routes = {labels["route"] for _, labels, _ in metric_samples(metrics) if "route" in labels}
    assert not [route for route in routes if "no-such-route" in route], routes
    assert username not in metrics


async def test_request_id_is_echoed_when_valid_and_generated_otherwise(api: str) -> None:
    """A well-formed X-Request-ID comes back as sent; a missing or malformed one is replaced by a fresh id."""
    async with httpx.AsyncClient(base_url=f"{api}/auth-api", timeout=TIMEOUT) as client:
        echoed = await client.get("/healthz", headers={"X-Request-ID": "req-42.a_B"})
        on_error = await client.get("/nowhere", headers={"X-Request-ID": "err-7"})
        missing = [await client.get("/healthz") for _ in range(2)]
        malformed = [
            await client.get("/healthz", headers={"X-Request-ID": bad})
            for bad in ("has spaces", "x" * 65, "semi;colon", "")
        ]
    assert echoed.headers["X-Request-ID"] == "req-42.a_B"
    assert on_error.status_code == 404
    assert on_error.headers["X-Request-ID"] == "err-7"
    generated = [response.headers["X-Request-ID"] for response in (*missing, *malformed)]
    assert all(GENERATED_REQUEST_ID.match(value) for value in generated), generated
    assert len(set(generated)) == len(generated)


async def test_old_anonymous_users_are_swept_and_young_ones_kept(stack: StackInfo) -> None:
    """Issue 16, finding 10: every sign-in created a Cognito user that was never removed.
    Sign-ins pay for a sweep (one page of the pool, at most once per interval) that deletes
    the users older than their lifetime; younger users stay. A pool of its own, so that the
    sweep touches no other test's users."""
    own = CommonSettings(**{**stack.common.model_dump(), "table_prefix": f"sweep-{uuid.uuid4().hex[:8]}-"})
    client = make_client(own, "cognito-idp")
    pool_id, client_id = ensure_user_pool(client, own)
    gateway = CognitoGateway(client, user_pool_id=pool_id, client_id=client_id)
    lifetime = 7200.0
    service = SignInService(gateway, KeyedRateLimiter(1000, 1000), user_lifetime=lifetime, sweep_interval=3600)
    users = [await service.sign_in("127.0.0.1") for _ in range(3)]

    def names() -> set[str]:
        return {user["Username"] for user in client.list_users(UserPoolId=pool_id)["Users"]}

    assert names() == {user.username for user in users}  # the sign-ins' own sweep: nothing old yet
    await service.sweep_once(time.time())
    assert len(names()) == 3
    await service.sweep_once(time.time() + lifetime + 60)  # as if their lifetime had passed
    assert names() == set()
