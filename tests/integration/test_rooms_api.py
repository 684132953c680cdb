"""rooms-api over real HTTP: who may create, read and delete rooms, and what is stored.

Peers register over the stack's real relay; the tables and the user pool are read
directly afterwards, so each rule is proven by what did (or did not) change.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import httpx
import pytest

from api_checks import (
    assert_error,
    b64url_bytes,
    bearer,
    claims_of,
    closing,
    cognito_user_exists,
    forged,
    metric_samples,
    metric_value,
    room_item,
    scrape,
    sub_of,
    tokens_we_must_refuse,
)
from devstack.stack import StackInfo
from rooms_api.main import create_app
from signaling_shared.dynamo import PeerRecord
from signaling_shared.settings import RoomsSettings
from signaling_shared.tokens import new_room_id
from support import (
    TIMEOUT,
    Peer,
    User,
    create_room,
    joined_pair,
    peer_ids_in_table,
    repository,
    serving,
    sign_in,
    store_room,
    unique,
)

pytestmark = pytest.mark.integration


def rooms_settings(stack: StackInfo, **overrides: Any) -> RoomsSettings:
    """rooms-api settings on the shared stack's AWS resources, with ``overrides``."""
    return RoomsSettings(**{**stack.common.model_dump(), **overrides})


async def test_create_room_requires_a_valid_id_token(api: str) -> None:
    """/create-room without, with a garbage, a tampered or an unsigned ID token is 401 INVALID_ID_TOKEN."""
    user, victim = await sign_in(api), await sign_in(api)
    as_victim: dict[str, Any] = {"sub": sub_of(victim.id_token), "cognito:username": victim.username}
    refused: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {user.id_token}"},
        bearer("garbage"),
        bearer("a.b.c"),
        bearer(forged(user.id_token, as_victim)),
        bearer(forged(user.id_token, {"exp": int(time.time()) + 365 * 86400})),
        bearer(forged(user.id_token, as_victim, header={"alg": "none"}, signature="")),
        bearer(user.id_token[:-6] + "AAAAAA"),
    ]
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        for headers in refused:
            assert_error(await client.post("/create-room", headers=headers), 401, "INVALID_ID_TOKEN")
        accepted = await client.post("/create-room", headers=user.bearer)
    assert accepted.status_code == 200, accepted.text


async def test_tampered_token_cannot_act_as_the_creator(api: str, stack: StackInfo) -> None:
    """A token re-signed by nobody that claims the creator's sub reads and deletes nothing: 401."""
    creator, attacker = await sign_in(api), await sign_in(api)
    room = await create_room(api, creator)
    as_creator: dict[str, Any] = {"sub": sub_of(creator.id_token), "cognito:username": creator.username}
    impostor = bearer(forged(attacker.id_token, as_creator))
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        assert_error(await client.get(f"/rooms/{room.room_id}", headers=impostor), 401, "INVALID_ID_TOKEN")
        assert_error(await client.delete(f"/rooms/{room.room_id}", headers=impostor), 401, "INVALID_ID_TOKEN")
        body = {"room_id": room.room_id}
        assert_error(await client.post("/delete-peers-and-room", json=body, headers=impostor), 401, "INVALID_ID_TOKEN")
    assert await room_item(stack, room.room_id) is not None


async def test_only_our_clients_id_tokens_are_accepted(api: str, stack: StackInfo) -> None:
    """Genuine pool tokens that are not our client's ID tokens (an access token, another client's ID token) get 401."""
    tokens = await tokens_we_must_refuse(stack)
    assert claims_of(tokens["access_token"])["token_use"] == "access"
    assert claims_of(tokens["other_client"])["aud"] != stack.resources.client_id
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        for name in ("access_token", "other_client"):
            refused = await client.post("/create-room", headers=bearer(tokens[name]))
            assert_error(refused, 401, "INVALID_ID_TOKEN")
        control = await client.post("/create-room", headers=bearer(tokens["control"]))
    assert control.status_code == 200, control.text  # the same user, through our client, is served


async def test_unauthorized_responses_carry_a_bearer_challenge(api: str) -> None:
    """Every 401 has a WWW-Authenticate Bearer challenge (RFC 9110 15.5.2 'MUST', RFC 6750 section 3)."""
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        for headers in ({}, bearer("garbage")):
            response = await client.post("/create-room", headers=headers)
            assert_error(response, 401, "INVALID_ID_TOKEN")
            assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(response.headers)


async def test_created_room_has_a_long_random_token_stored_only_as_its_hash(api: str, stack: StackInfo) -> None:
    """/create-room returns room_id, token, expires_at (now + 7200); the table keeps the token's SHA-256 only."""
    user = await sign_in(api)
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        before = int(time.time())
        responses = [await client.post("/create-room", headers=user.bearer) for _ in range(2)]
        after = int(time.time())
    for response in responses:
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"room_id", "token", "expires_at"}
    first, second = (response.json() for response in responses)
    assert before + 7200 <= first["expires_at"] <= after + 7200
    token = first["token"]
    assert len(b64url_bytes(token)) * 8 >= 128
    assert second["token"] != token
    assert second["room_id"] != first["room_id"]

    item = await room_item(stack, first["room_id"])
    assert item is not None
    assert item["token_hash"] == {"S": hashlib.sha256(token.encode()).hexdigest()}
    assert item["created_by"] == {"S": sub_of(user.id_token)}
    assert item["expires_at"] == {"N": str(first["expires_at"])}
    stored = json.dumps(item)
    assert token not in stored, item


async def test_room_ttl_is_configurable(stack: StackInfo, api: str) -> None:
    """With room_ttl_seconds=600 a room expires ten minutes after creation, in the response and the table."""
    user = await sign_in(api)
    app = create_app(rooms_settings(stack, room_ttl_seconds=600))
    async with serving(app, stack.common) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        before = int(time.time())
        response = await client.post("/create-room", headers=user.bearer)
        after = int(time.time())
    assert response.status_code == 200, response.text
    body = response.json()
    assert before + 600 <= body["expires_at"] <= after + 600
    item = await room_item(stack, body["room_id"])
    assert item is not None
    assert item["expires_at"] == {"N": str(body["expires_at"])}


async def test_room_creation_is_limited_per_identity(stack: StackInfo, api: str) -> None:
    """Past room_create_burst an identity gets 429 RATE_LIMITED with Retry-After; another identity still creates."""
    busy, other = await sign_in(api), await sign_in(api)
    app = create_app(rooms_settings(stack, room_create_burst=1, room_create_rate_per_minute=1))
    async with serving(app, stack.common) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        first = await client.post("/create-room", headers=busy.bearer)
        refused = await client.post("/create-room", headers=busy.bearer)
        elsewhere = await client.post("/create-room", headers=other.bearer)
        metrics = await scrape(client)
    assert first.status_code == 200, first.text
    assert_error(refused, 429, "RATE_LIMITED")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert elsewhere.status_code == 200, elsewhere.text
    assert metric_value(metrics, "signaling_errors_total", code="RATE_LIMITED") == 1


async def test_creator_sees_each_pairs_last_connection_outcome(api: str, relay: str) -> None:
    """A peer's connection_report reaches GET /rooms/{id}: per other peer, the last outcome and path."""
    creator, guest = await sign_in(api), await sign_in(api)
    room = await create_room(api, creator)
    first, second = await Peer.connect(relay), await Peer.connect(relay)
    async with closing(first, second), httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        await first.register(unique("A"), room, creator)
        await second.register(unique("B"), room, guest)
        report = {"type": "connection_report", "peer_id": second.peer_id, "local_candidate": "srflx"}
        await first.send(
            {**report, "outcome": "connected", "remote_candidate": "host", "time_to_connect_ms": 90, "id": 1}
        )
        while (answer := await first.recv())["type"] != "ack":
            pass  # room events first
        assert answer["id"] == 1
        response = await client.get(f"/rooms/{room.room_id}", headers=creator.bearer)
    assert response.status_code == 200, response.text
    peers = {p["peer_id"]: p for p in response.json()["peers"]}
    outcome = peers[first.peer_id]["connections"][second.peer_id]
    assert {k: outcome[k] for k in ("outcome", "path", "time_to_connect_ms")} == {
        "outcome": "connected",
        "path": "stun",
        "time_to_connect_ms": 90,
    }
    assert peers[second.peer_id]["connections"] == {}


async def test_creator_sees_status_expiry_and_live_peers_oldest_first(api: str, relay: str, stack: StackInfo) -> None:
    """GET /rooms/{id} by the creator: active, its expiry, and the live peers oldest first (expired entries hidden)."""
    creator, guest = await sign_in(api), await sign_in(api)
    room = await create_room(api, creator)
    now = int(time.time())
    stale, gone = unique("Z-stale"), unique("Y-gone")  # names that sort last: only age puts 'stale' first
    for peer_id, connected_at, expires_at in ((stale, now - 60, now + 300), (gone, now - 30, now - 1)):
        record = PeerRecord(room.room_id, peer_id, "someone", "", "conn", "relay-x", connected_at, expires_at)
        await repository(stack).claim_peer(record, now=now)
    first, second = await Peer.connect(relay), await Peer.connect(relay)
    async with closing(first, second), httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        await first.register(unique("A-first"), room, creator)
        await second.register(unique("B-second"), room, guest)
        response = await client.get(f"/rooms/{room.room_id}", headers=creator.bearer)
    after = int(time.time())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["room_id"] == room.room_id
    assert body["status"] == "active"
    assert body["expires_at"] == room.expires_at
    assert room.expires_at - 7200 == body["created_at"]
    assert [p["peer_id"] for p in body["peers"]] == [stale, first.peer_id, second.peer_id]
    assert body["peers"][0]["connected_at"] == now - 60
    assert all(now <= p["connected_at"] <= after for p in body["peers"][1:])


async def test_only_the_creator_may_read_a_room(api: str, relay: str) -> None:
    """GET /rooms/{id} by a peer of the room who did not create it is 403 NOT_ROOM_CREATOR, listing nothing."""
    room, (worker, _), (client_peer, client_user) = await joined_pair(api, relay)
    assert worker.peer_id
    async with closing(worker, client_peer), httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        own_room = await create_room(api, client_user)
        own = await client.get(f"/rooms/{own_room.room_id}", headers=client_user.bearer)
        foreign = await client.get(f"/rooms/{room.room_id}", headers=client_user.bearer)
    assert own.status_code == 200, own.text  # the same identity reads the room it created
    assert_error(foreign, 403, "NOT_ROOM_CREATOR")
    assert worker.peer_id not in foreign.text


async def test_unknown_and_expired_rooms_are_not_found(api: str, stack: StackInfo) -> None:
    """An unknown room, an unknown peer and an expired room of the caller's own are 404 ROOM_NOT_FOUND."""
    user = await sign_in(api)
    owner = sub_of(user.id_token)
    expired = await store_room(stack, owner, expires_in=-5)
    live = await store_room(stack, owner, expires_in=300)
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT, headers=user.bearer) as client:
        assert (await client.get(f"/rooms/{live.room_id}")).status_code == 200  # the stored owner is this user
        assert_error(await client.get(f"/rooms/{new_room_id()}"), 404, "ROOM_NOT_FOUND")
        unknown_peer = await client.post("/delete-peers-and-room", json={"peer_id": unique("Nobody")})
        assert_error(unknown_peer, 404, "ROOM_NOT_FOUND")
        assert_error(await client.get(f"/rooms/{expired.room_id}"), 404, "ROOM_NOT_FOUND")
        assert_error(await client.delete(f"/rooms/{expired.room_id}"), 404, "ROOM_NOT_FOUND")


async def test_non_creators_cannot_delete_and_nothing_changes(api: str, relay: str, stack: StackInfo) -> None:
    """A peer of the room and a stranger get 403 NOT_ROOM_CREATOR on every delete by room, and
    404 by peer id (as for a peer id live nowhere: no oracle); room, peers and users stay."""
    room, (worker, worker_user), (client_peer, client_user) = await joined_pair(api, relay)
    stranger = await sign_in(api)
    attempts: list[tuple[str, str, dict[str, str] | None]] = [
        ("DELETE", f"/rooms/{room.room_id}", None),
        ("POST", "/delete-peers-and-room", {"room_id": room.room_id}),
        ("POST", "/delete-peers-and-room", {"peer_id": str(worker.peer_id)}),
        ("POST", "/delete-peers-and-room", {"peer_id": str(client_peer.peer_id)}),
    ]
    async with closing(worker, client_peer), httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        for user in (client_user, stranger):
            for method, path, body in attempts:
                response = await client.request(method, path, json=body, headers=user.bearer)
                if body is not None and "peer_id" in body:
                    assert_error(response, 404, "ROOM_NOT_FOUND")
                else:
                    assert_error(response, 403, "NOT_ROOM_CREATOR")
        await assert_untouched(stack, room.room_id, [worker, client_peer], [worker_user, client_user])


async def test_unauthenticated_seed_delete_is_refused(api: str, relay: str, stack: StackInfo) -> None:
    """The seed client's bare POST /delete-peers-and-room {peer_id} (and any delete without a token) is 401."""
    room, (worker, worker_user), (client_peer, client_user) = await joined_pair(api, relay)
    async with closing(worker, client_peer), httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        for body in ({"peer_id": client_peer.peer_id}, {"peer_id": worker.peer_id}, {"room_id": room.room_id}):
            assert_error(await client.post("/delete-peers-and-room", json=body), 401, "INVALID_ID_TOKEN")
        assert_error(await client.delete(f"/rooms/{room.room_id}"), 401, "INVALID_ID_TOKEN")
        await assert_untouched(stack, room.room_id, [worker, client_peer], [worker_user, client_user])


async def assert_untouched(stack: StackInfo, room_id: str, peers: list[Peer], users: list[User]) -> None:
    """The room item, its peers' routing entries and their Cognito users all remain; the peers still talk."""
    assert await room_item(stack, room_id) is not None
    assert await peer_ids_in_table(stack, room_id) == {peer.peer_id for peer in peers}
    for user in users:
        assert await cognito_user_exists(stack, user.username)
    sender, receiver = peers
    await sender.send({"type": "offer", "target": receiver.peer_id, "sdp": "still here"})
    assert (await receiver.expect("offer"))["sdp"] == "still here"


@pytest.mark.parametrize("by", ["room_id", "peer_id", "path"])
async def test_creator_deletes_the_room_its_peers_and_their_users(
    api: str, relay: str, stack: StackInfo, by: str
) -> None:
    """The creator's delete (by room_id, by peer_id via the index, by path) removes room, peers
    and the creator's own user; the other identity's user stays (it is swept by auth-api)."""
    room, (worker, worker_user), (client_peer, client_user) = await joined_pair(api, relay)
    assert client_peer.peer_id
    users = (worker_user, client_user)
    deleted = {"status": "deleted", "room_ids": [room.room_id], "peers_removed": 2, "users_deleted": 1}
    for user in users:
        assert await cognito_user_exists(stack, user.username)
    async with closing(worker, client_peer), httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        if by == "path":
            response = await client.delete(f"/rooms/{room.room_id}", headers=worker_user.bearer)
        else:
            body = {"room_id": room.room_id, "peer_id": client_peer.peer_id}
            response = await client.post("/delete-peers-and-room", json={by: body[by]}, headers=worker_user.bearer)
        assert response.status_code == 200, response.text
        assert response.json() == deleted
        after = await client.get(f"/rooms/{room.room_id}", headers=worker_user.bearer)
        assert_error(after, 404, "ROOM_NOT_FOUND")
        assert await room_item(stack, room.room_id) is None
        assert await repository(stack).list_peers(room.room_id, now=time.time(), include_expired=True) == []
        assert not await cognito_user_exists(stack, worker_user.username)
        assert await cognito_user_exists(stack, client_user.username)


async def test_delete_needs_a_room_id_or_a_peer_id(api: str) -> None:
    """An empty or malformed /delete-peers-and-room body is 422 INVALID_REQUEST."""
    user = await sign_in(api)
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT, headers=user.bearer) as client:
        for body in ({}, {"room_id": ""}, {"room_id": "bad id!"}, {"peer_id": "x" * 129}, {"room_id": 7}):
            response = await client.post("/delete-peers-and-room", json=body)
            assert_error(response, 422, "INVALID_REQUEST")
        assert_error(await client.post("/delete-peers-and-room"), 422, "INVALID_REQUEST")


async def test_health_and_readiness_on_the_stack(api: str) -> None:
    """/healthz is 200 ok; /readyz is 200 with dynamodb and jwks checked and nothing failing."""
    async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"dynamodb": "ok", "jwks": "ok"}, "failing": []}


async def test_readyz_names_dynamodb_when_the_tables_are_missing(api: str, stack: StackInfo) -> None:
    """Without its tables rooms-api is alive but not ready (503 naming dynamodb), and creates are 503."""
    user = await sign_in(api)
    app = create_app(rooms_settings(stack, table_prefix="missing-"))
    async with serving(app, stack.common) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        create = await client.post("/create-room", headers=user.bearer)
    assert health.status_code == 200
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["dynamodb"]
    assert body["checks"]["jwks"] == "ok"
    assert_error(create, 503, "STORAGE_UNAVAILABLE")


async def test_metrics_label_rooms_by_template_never_by_id(api: str, stack: StackInfo) -> None:
    """GET /rooms/{id} is counted under the route '/rooms/{room_id}'; no room id or user appears in /metrics."""
    user = await sign_in(api)
    app = create_app(rooms_settings(stack))
    unknown = new_room_id()
    async with serving(app, stack.common) as base_url, httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
        created = await client.post("/create-room", headers=user.bearer)
        assert created.status_code == 200, created.text
        room_id = created.json()["room_id"]
        assert (await client.get(f"/rooms/{room_id}", headers=user.bearer)).status_code == 200
        assert_error(await client.get(f"/rooms/{unknown}", headers=user.bearer), 404, "ROOM_NOT_FOUND")
        metrics = await scrape(client)
    room_route = {"route": "/rooms/{room_id}", "method": "GET"}
    assert metric_value(metrics, "signaling_http_requests_total", **room_route, status="200") == 1
    assert metric_value(metrics, "signaling_http_requests_total", **room_route, status="404") == 1
    assert metric_value(metrics, "signaling_errors_total", code="ROOM_NOT_FOUND") == 1
    routes = {labels["route"] for _, labels, _ in metric_samples(metrics) if "route" in labels}
    assert routes == {"/create-room", "/rooms/{room_id}"}, routes
    for secret in (room_id, unknown, user.username, sub_of(user.id_token)):
        assert secret not in metrics
