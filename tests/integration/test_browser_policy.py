"""What a browser page may do, over real HTTP and WebSocket: CORS on auth-api and rooms-api
(preflights and simple requests from an allowed and a refused origin, each route with its
own methods and headers), ``Allow`` on 405, and the relay's Origin check at the handshake.

The CORS apps run on their own (port 0, this test's loop) with ``cors_origins`` set; the
shared stack has none, as a deployment that does not configure it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from api_checks import assert_error, cors_headers, metric_value, preflight_headers, scrape
from auth_api.main import create_app as create_auth_app
from conftest import RelayFactory
from devstack.stack import StackInfo
from rooms_api.main import create_app as create_rooms_app
from signaling_shared.settings import AuthSettings, RoomsSettings
from support import TIMEOUT, Peer, create_room, serving, sign_in, unique

pytestmark = pytest.mark.integration

PAGE = "http://127.0.0.1:8003"  # the allowed page's origin (make dev's demo page)
OTHER = "http://evil.example"  # a site not allowed
MAX_AGE = 1234  # not the default, so the header is shown to come from the setting
EXPOSED = "Retry-After, X-Request-ID"

# Each rooms-api route (a sample path) with the methods it serves: a preflight is answered
# with exactly these, and each asks for the Authorization header.
ROOMS_ROUTES = {
    "/create-room": "POST",
    "/delete-peers-and-room": "POST",
    "/delete-peer": "POST",
    "/rooms/room-1": "DELETE, GET",
    "/ice-servers": "GET",
}


def cors_settings(stack: StackInfo) -> dict[str, Any]:
    return {**stack.common.model_dump(), "cors_origins": [PAGE], "cors_max_age_seconds": MAX_AGE}


@pytest.fixture
async def auth_api(stack: StackInfo) -> AsyncIterator[httpx.AsyncClient]:
    """auth-api allowing PAGE, served on its own."""
    app = create_auth_app(AuthSettings(**cors_settings(stack)))
    async with serving(app, stack.common) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http:
        yield http


@pytest.fixture
async def rooms_api(stack: StackInfo) -> AsyncIterator[httpx.AsyncClient]:
    """rooms-api allowing PAGE, served on its own."""
    app = create_rooms_app(RoomsSettings(**cors_settings(stack)))
    async with serving(app, stack.common) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http:
        yield http


def assert_allowed_preflight(response: httpx.Response, methods: str, *, authorization: bool) -> None:
    """A preflight answered for PAGE: its route's methods, Authorization only where the route
    takes a token, the configured max age, and never credentials."""
    assert response.status_code == 200, response.text
    cors = cors_headers(response)
    assert cors["access-control-allow-origin"] == PAGE
    assert cors["access-control-allow-methods"] == methods
    assert cors["access-control-max-age"] == str(MAX_AGE)
    allowed_headers = {h.strip().lower() for h in cors["access-control-allow-headers"].split(",")}
    assert "content-type" in allowed_headers
    assert ("authorization" in allowed_headers) is authorization, allowed_headers
    assert "access-control-allow-credentials" not in cors
    assert "Origin" in response.headers["Vary"]


def assert_simple_allowed(response: httpx.Response) -> None:
    """An answer PAGE's script may read: its origin echoed, two headers exposed, no credentials."""
    assert cors_headers(response) == {
        "access-control-allow-origin": PAGE,
        "access-control-expose-headers": EXPOSED,
    }, response.headers
    assert "Origin" in response.headers["Vary"]


def assert_refused_preflight(response: httpx.Response, allow: str) -> None:
    """A refused origin's preflight reaches the route: 405 with Allow and no CORS header."""
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["Allow"] == allow
    assert cors_headers(response) == {}


async def test_405_lists_the_methods_of_the_path(api: str) -> None:
    """Every 405 carries Allow with the methods the path serves (RFC 9110 15.5.6), all routes of a path together."""
    cases = [
        ("OPTIONS", "/anonymous-signin", "POST"),
        ("GET", "/anonymous-signin", "POST"),
        ("OPTIONS", "/create-room", "POST"),
        ("PUT", "/rooms/room-1", "GET, DELETE"),
        ("POST", "/ice-servers", "GET"),
        ("DELETE", "/delete-peer", "POST"),
        ("POST", "/auth-api/healthz", "GET"),
    ]
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as http:
        for method, path, allow in cases:
            response = await http.request(method, path)
            assert_error(response, 405, "METHOD_NOT_ALLOWED")
            assert response.headers.get("Allow") == allow, (method, path)


async def test_without_cors_origins_no_answer_carries_cors_headers(api: str) -> None:
    """The default (empty cors_origins): a page's preflight is a plain 405 and its requests get no CORS header."""
    user = await sign_in(api)
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as http:
        assert_refused_preflight(
            await http.options("/anonymous-signin", headers=preflight_headers(PAGE, "POST", "Content-Type")), "POST"
        )
        assert_refused_preflight(
            await http.options("/ice-servers", headers=preflight_headers(PAGE, "GET", "Authorization")), "GET"
        )
        signed_in = await http.post("/anonymous-signin", headers={"Origin": PAGE})
        assert signed_in.status_code == 200, signed_in.text
        servers = await http.get("/ice-servers", headers={"Origin": PAGE, **user.bearer})
        assert servers.status_code == 200, servers.text
    assert cors_headers(signed_in) == {}
    assert cors_headers(servers) == {}


async def test_auth_api_answers_the_allowed_origins_preflight_and_sign_in(auth_api: httpx.AsyncClient) -> None:
    """From PAGE: the sign-in preflight (POST, Content-Type) is answered and the sign-in is readable;
    a method or a header the route does not take is refused."""
    preflight = await auth_api.options("/anonymous-signin", headers=preflight_headers(PAGE, "POST", "Content-Type"))
    assert_allowed_preflight(preflight, "POST", authorization=False)
    signed_in = await auth_api.post("/anonymous-signin", headers={"Origin": PAGE, "Content-Type": "application/json"})
    assert signed_in.status_code == 200, signed_in.text
    assert_simple_allowed(signed_in)
    for method, headers in (("DELETE", ()), ("POST", ("Authorization",)), ("POST", ("X-Anything",))):
        refused = await auth_api.options("/anonymous-signin", headers=preflight_headers(PAGE, method, *headers))
        assert refused.status_code == 400, (method, headers)
        assert refused.text.startswith("Disallowed CORS"), refused.text


async def test_auth_api_gives_a_refused_origin_no_cors_headers(auth_api: httpx.AsyncClient) -> None:
    """From another site (or the same host on another port): 405 to the preflight, no CORS header on any answer."""
    for origin in (OTHER, "http://127.0.0.1:8004", "null"):
        preflight = await auth_api.options("/anonymous-signin", headers=preflight_headers(origin, "POST"))
        assert_refused_preflight(preflight, "POST")
        answered = await auth_api.post("/anonymous-signin", headers={"Origin": origin})
        assert answered.status_code == 200  # served, but the browser keeps it from the page
        assert cors_headers(answered) == {}


async def test_operations_routes_have_no_cors(auth_api: httpx.AsyncClient) -> None:
    """/healthz, /readyz and /metrics are not for pages: no CORS header even for PAGE."""
    for path in ("/healthz", "/readyz", "/metrics"):
        response = await auth_api.get(path, headers={"Origin": PAGE})
        assert response.status_code == 200, path
        assert cors_headers(response) == {}, path
    preflight = await auth_api.options("/healthz", headers=preflight_headers(PAGE, "GET"))
    assert_refused_preflight(preflight, "GET")


async def test_rooms_api_preflights_carry_each_routes_methods_and_authorization(
    rooms_api: httpx.AsyncClient,
) -> None:
    """From PAGE, each route's preflight lists its own methods and Authorization; others' methods are refused."""
    for path, methods in ROOMS_ROUTES.items():
        for method in methods.split(", "):
            asked = preflight_headers(PAGE, method, "Authorization", "Content-Type")
            assert_allowed_preflight(await rooms_api.options(path, headers=asked), methods, authorization=True)
        refused = await rooms_api.options(path, headers=preflight_headers(PAGE, "PUT", "Authorization"))
        assert refused.status_code == 400, path
        assert cors_headers(refused)["access-control-allow-methods"] == methods


async def test_rooms_api_answers_are_readable_by_the_allowed_origin_only(
    api: str, rooms_api: httpx.AsyncClient
) -> None:
    """PAGE reads create-room, the room, ICE servers, errors and the delete; another origin reads none."""
    user = await sign_in(api)
    page = {"Origin": PAGE, **user.bearer}
    created = await rooms_api.post("/create-room", headers={**page, "Content-Type": "application/json"})
    assert created.status_code == 200, created.text
    room_id = created.json()["room_id"]
    answers = [
        created,
        await rooms_api.get(f"/rooms/{room_id}", headers=page),
        await rooms_api.get("/ice-servers", headers=page),
        await rooms_api.put("/create-room", headers=page),  # 405: the page can read why
        await rooms_api.get("/ice-servers", headers={"Origin": PAGE}),  # 401: and this
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 405, 401], [a.text for a in answers]
    for answer in answers:
        assert_simple_allowed(answer)
    other = {"Origin": OTHER, **user.bearer}
    for answer in (
        await rooms_api.get(f"/rooms/{room_id}", headers=other),
        await rooms_api.options(f"/rooms/{room_id}", headers=preflight_headers(OTHER, "DELETE", "Authorization")),
        await rooms_api.get("/ice-servers", headers=other),
    ):
        assert cors_headers(answer) == {}, answer.request.url
    deleted = await rooms_api.delete(f"/rooms/{room_id}", headers=page)
    assert deleted.status_code == 200, deleted.text
    assert_simple_allowed(deleted)


async def test_relay_admits_the_allowed_origin_and_no_origin_and_refuses_others(
    api: str, relay: str, relay_with: RelayFactory
) -> None:
    """A handshake from PAGE or without Origin registers; another origin gets 403, counted as reason="origin";
    the shared relay (no cors_origins) refuses every page."""
    user = await sign_in(api)
    room = await create_room(api, user)
    async with relay_with(cors_origins=[PAGE]) as server:
        address = f"ws://{server.settings.host}:{server.port}"
        for headers in ({"Origin": PAGE}, {}):
            peer = await Peer.connect(address, additional_headers=headers)
            await peer.register(unique("Page"), room, user)
            await peer.close()
        for origin in (OTHER, "https://127.0.0.1:8003"):  # https: another origin than PAGE's http
            with pytest.raises(InvalidStatus) as refused:
                await Peer.connect(address, additional_headers={"Origin": origin})
            assert refused.value.response.status_code == 403, origin
        async with httpx.AsyncClient(base_url=f"http://{server.settings.host}:{server.port}", timeout=TIMEOUT) as http:
            metrics = await scrape(http)
    assert metric_value(metrics, "signaling_ws_connections_refused_total", reason="origin") == 2
    with pytest.raises(InvalidStatus) as refused:
        await Peer.connect(relay, additional_headers={"Origin": PAGE})
    assert refused.value.response.status_code == 403
