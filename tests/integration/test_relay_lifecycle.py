"""How sessions end: room deleted or expired, server shutdown; plus health, metrics and logs."""

from __future__ import annotations

import asyncio
import io
import socket

import httpx
import pytest

from api_checks import closed_port_url, sub_of
from conftest import RelayFactory
from devstack.stack import StackInfo
from support import (
    TIMEOUT,
    Peer,
    create_room,
    joined_pair,
    peer_ids_in_table,
    relay_process,
    repository,
    scaled,
    scaled_whole,
    sign_in,
    store_room,
    unique,
)
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration


def ws_url(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def http_url(server: RelayServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_room_deleted_by_its_creator_closes_its_peers(
    api: str, relay_with: RelayFactory, stack: StackInfo
) -> None:
    """Deleting a room through rooms-api closes its sockets with 4003 at the next lease refresh."""
    async with relay_with() as server:
        creator, guest = await sign_in(api), await sign_in(api)
        room = await create_room(api, creator)
        a, b = await Peer.connect(ws_url(server)), await Peer.connect(ws_url(server))
        await a.register("A", room, creator)
        await b.register("B", room, guest)
        async with httpx.AsyncClient(base_url=api, timeout=TIMEOUT) as client:
            response = await client.delete(f"/rooms/{room.room_id}", headers=creator.bearer)
        assert response.status_code == 200, response.text
        await server.relay.refresh_leases()
        for peer in (a, b):
            code, reason = await peer.closed()
            assert code == 4003
            assert reason == "room deleted by its creator"


async def test_a_room_lost_in_a_storage_fault_is_not_reported_as_deleted_by_its_creator(
    api: str, relay_with: RelayFactory, stack: StackInfo
) -> None:
    """Issue 16, finding 11: a room whose record vanished without a deletion (storage lost or
    restored without it) closed its peers with 4003 "room deleted by its creator". A deletion
    leaves a tombstone; without one, the peers are closed with 4007 ROOM_LOST."""
    async with relay_with() as server:
        user = await sign_in(api)
        room = await create_room(api, user)
        peer = await Peer.connect(ws_url(server))
        await peer.register("A", room, user)
        rooms = repository(stack)
        await asyncio.to_thread(  # not through rooms-api: as a storage fault would
            rooms._client.delete_item, TableName=rooms.rooms_table, Key={"room_id": {"S": room.room_id}}
        )
        await server.relay.refresh_leases()
        code, reason = await peer.closed()
        assert code == 4007
        assert "not deleted by its creator" in str(reason)


async def test_leases_are_refreshed_while_connected(api: str, relay_with: RelayFactory, stack: StackInfo) -> None:
    """A live peer's routing entry is extended, never beyond the room's expiry."""
    async with relay_with(peer_lease_seconds=scaled_whole(30)) as server:
        user = await sign_in(api)
        room = await create_room(api, user)
        peer = await Peer.connect(ws_url(server))
        await peer.register("A", room, user)
        before = await repository(stack).list_peers(room.room_id, now=0)
        await server.relay.refresh_leases()
        await peer.barrier()
        after = await repository(stack).list_peers(room.room_id, now=0)
        assert after[0].expires_at >= before[0].expires_at
        assert after[0].expires_at <= room.expires_at
        await peer.close()


async def test_room_expiry_closes_its_peers(api: str, relay_with: RelayFactory, stack: StackInfo) -> None:
    """When the room expires its peers are closed with 4004 and new registrations get ROOM_EXPIRED."""
    async with relay_with() as server:
        user = await sign_in(api)
        owner = sub_of(user.id_token)
        room = await store_room(stack, owner, expires_in=scaled_whole(2))
        peer = await Peer.connect(ws_url(server))
        await peer.register("A", room, user)
        code, reason = await peer.closed()
        assert code == 4004
        assert reason == "room expired"
        late = await Peer.connect(ws_url(server))
        await late.send(
            {
                "type": "register",
                "protocol": 2,
                "peer_id": "B",
                "room_id": room.room_id,
                "token": room.token,
                "id_token": user.id_token,
            }
        )
        await late.expect_error("ROOM_EXPIRED")
        await late.close()


async def test_shutdown_drains_with_go_away_then_closes_with_4500_and_saves_the_sessions(
    api: str, relay_with: RelayFactory, stack: StackInfo
) -> None:
    """SIGTERM's path: go_away (jittered reconnect_after_ms) to every peer; for the drain the
    relay keeps relaying but refuses registrations and readiness; then 4500, and each peer's
    session is left in the table (routing entry kept) for the next process; the port closes."""
    drain, jitter_ms = scaled(1.0), round(scaled(500))  # long enough for the steps within the drain
    async with relay_with(drain_seconds=drain, drain_jitter_ms=jitter_ms) as server:
        user_a, user_b, user_c = await sign_in(api), await sign_in(api), await sign_in(api)
        room = await create_room(api, user_a)
        a, b = await Peer.connect(ws_url(server)), await Peer.connect(ws_url(server))
        late = await Peer.connect(ws_url(server))
        await a.register("A", room, user_a)
        await b.register("B", room, user_b)
        await a.expect("peer_joined")
        port = server.port
        stopping = asyncio.create_task(server.stop())
        for peer in (a, b):
            go_away = await peer.expect("go_away")
            assert go_away["reason"] == "SERVER_SHUTDOWN"
            assert int(drain * 1000) <= go_away["reconnect_after_ms"] <= int(drain * 1000) + jitter_ms
        await late.expect("go_away")
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": "still relaying"})
        assert (await b.expect("peer_message"))["payload"] == "still relaying"
        await late.register_expecting_error("L", room, user_c, "SERVER_BUSY")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as http:
            ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (503, "draining")
        await stopping
        for peer in (a, b, late):
            code, _ = await peer.closed()
            assert code == 4500
        assert await peer_ids_in_table(stack, room.room_id) == {"A", "B"}
        for peer in (a, b):
            assert peer.peer_id is not None
            saved = await repository(stack).load_session(room.room_id, peer.peer_id)
            assert saved is not None
            assert saved.seq >= peer.last_seq  # go_away and what followed were numbered
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            pass


async def test_health_readiness_and_metrics(api: str, relay: str, stack: StackInfo) -> None:
    """The relay's port answers /healthz, /readyz and /metrics with signaling_ metrics and no ids."""
    room, (worker, _), (client, _) = await joined_pair(api, relay)
    await client.send({"type": "offer", "target": worker.peer_id, "sdp": "v=0"})
    await worker.expect("offer")
    await client.send({"type": "offer", "target": "Nobody", "sdp": "v=0"})
    await client.expect_error("PEER_NOT_FOUND")
    base = relay.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"dynamodb": "ok", "jwks": "ok"}
        metrics = (await http.get("/metrics")).text
    for name in (
        "signaling_ws_connections",
        'signaling_registrations_total{outcome="ok"}',
        'signaling_messages_relayed_total{type="offer"}',
        'signaling_errors_total{code="PEER_NOT_FOUND"}',
        "signaling_relay_latency_seconds_bucket",
        "signaling_registered_peers",
    ):
        assert name in metrics, name
    assert room.room_id not in metrics
    assert str(worker.peer_id) not in metrics
    await worker.close()
    await client.close()


async def test_readiness_names_the_failing_dependency(relay_with: RelayFactory) -> None:
    """/readyz is 503 and names DynamoDB and the JWKS when they cannot be reached."""
    dead = closed_port_url("127.0.0.1") + "/jwks.json"
    async with (
        relay_with(table_prefix="missing-", cognito_jwks_url=dead) as server,
        httpx.AsyncClient(base_url=http_url(server), timeout=TIMEOUT) as http,
    ):
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert sorted(body["failing"]) == ["dynamodb", "jwks"]


async def test_no_secret_reaches_the_logs(api: str, relay: str, captured_logs: io.StringIO) -> None:
    """Room tokens, ID tokens, SDP and candidates never appear in any log line, errors included."""
    room, (worker, worker_user), (client, client_user) = await joined_pair(api, relay)
    sdp = "v=0 o=- SECRET-SDP-MARKER"
    candidate = {"candidate": "candidate:SECRET-CANDIDATE-MARKER 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
    await client.send({"type": "offer", "target": worker.peer_id, "sdp": sdp})
    await worker.expect("offer")
    await worker.send({"type": "candidate", "target": client.peer_id, "candidate": candidate})
    await client.expect("candidate")
    intruder = await Peer.connect(relay)
    await intruder.send(
        {
            "type": "register",
            "protocol": 2,
            "peer_id": "X",
            "room_id": room.room_id,
            "token": room.token + "x",
            "id_token": client_user.id_token,
        }
    )
    await intruder.expect_error("INVALID_ROOM_TOKEN")
    await intruder.send({"type": "offer", "target": "A", "sdp": sdp})
    await intruder.expect_error("NOT_REGISTERED")
    for peer in (intruder, worker, client):
        await peer.close()
    logs = captured_logs.getvalue()
    assert "peer_registered" in logs  # the logs were captured at all
    for secret in (
        room.token,
        worker_user.id_token,
        client_user.id_token,
        "SECRET-SDP-MARKER",
        "SECRET-CANDIDATE-MARKER",
    ):
        assert secret not in logs


async def test_frames_stay_out_of_the_logs_even_at_debug(api: str, stack: StackInfo) -> None:
    """At log level DEBUG websockets would log each frame's contents: the relay keeps its logger
    at INFO, so a secret sent in frames both ways reaches its peer but no line of the log."""
    a_user, b_user = await sign_in(api), await sign_in(api)
    room = await create_room(api, a_user)
    secret = unique("FRAME-SECRET")  # short: websockets would log a long frame's ends only
    async with relay_process(stack, log_level="DEBUG") as relay:
        a, b = await Peer.connect(relay.url), await Peer.connect(relay.url)
        await a.register("A", room, a_user)
        await b.register("B", room, b_user)
        await a.expect("peer_joined")
        await a.send({"type": "peer_message", "to_peer_id": "B", "payload": secret})  # in, and out to B
        assert (await b.expect("peer_message"))["payload"] == secret
        await a.send_raw(secret)  # a frame of nothing else
        await a.expect_error("INVALID_JSON")
        await a.close()
        await b.close()
    log = "".join(relay.output + relay.errors)
    assert any(event["level"] == "debug" for event in relay.events)  # DEBUG was on ...
    assert any(event["logger"].startswith("websockets") for event in relay.events)  # ... websockets logs here
    assert secret not in log
    assert room.token not in log
