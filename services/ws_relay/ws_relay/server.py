"""The relay's process on one port: ``websockets`` in (a ``RelayConnection`` hands each
frame to ``Relay.take_frame``), a ``WebSocketLink`` out; the same port answers
``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP. Here are the client's
address (behind trusted proxies), the handshake's origin policy and caps, the background
tasks (leases, heartbeat, TURN probe) and the graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from http import HTTPStatus
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from signaling_shared.auth import TokenVerifier
from signaling_shared.dynamo import Repository
from signaling_shared.health import HealthBody, Readiness, ReadinessBody
from signaling_shared.settings import RelaySettings
from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.link import WebSocketLink
from ws_relay.metrics import RelayMetrics
from ws_relay.reader import RelayConnection
from ws_relay.relay import Relay
from ws_relay.turnprobe import TurnProbe

log = structlog.stdlib.get_logger("ws_relay.server")


def _trusted_networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """Networks whose X-Forwarded-For we believe; None means every peer is trusted."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if "*" in items:
        return None
    return [ipaddress.ip_network(item, strict=False) for item in items]


class RelayServer:
    """The relay on one port: WebSocket upgrades plus health and metrics."""

    def __init__(
        self,
        settings: RelaySettings,
        *,
        metrics: RelayMetrics | None = None,
        repository: Repository | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or RelayMetrics()
        self.repository = repository or Repository.from_settings(settings, self.metrics.dynamodb_error)
        self.verifier = verifier or TokenVerifier.from_settings(settings)
        self.relay = Relay(settings, self.repository, self.verifier, self.metrics)
        self._track(self.relay)
        self.readiness = Readiness(
            {"dynamodb": self.repository.check, "jwks": self.verifier.check}, self.metrics.dependency_up
        )
        self.metrics.connections_max.set(settings.max_connections)
        self._trusted = _trusted_networks(settings.forwarded_allow_ips)
        self._origins = frozenset(settings.cors_origins)
        self._server: Server | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self.turn_probe = TurnProbe(settings, self.metrics.turn_probes)
        self._probe_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None

    @property
    def fenced(self) -> asyncio.Event:
        """Set once this node may no longer serve (``cluster.Cluster.heartbeat_forever``)."""
        return self.relay.cluster.fenced

    def _track(self, relay: Relay) -> None:
        """Gauges read from the relay at scrape time."""
        self.metrics.registered_peers.set_function(lambda: relay.hub.member_count)
        self.metrics.active_rooms.set_function(lambda: relay.hub.room_count)
        self.metrics.connections.set_function(lambda: len(relay.connections))
        self.metrics.held_pending.set_function(lambda: relay.ledger.mailbox.held_count)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> int:
        """Listen on the settings' host and port, or on ``sock``: a socket already listening,
        handed over by whoever bound it (so that its port is known before the relay runs)."""
        s = self.settings
        where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": s.host, "port": s.port}
        self._server = await serve(
            self._handle,
            **where,
            process_request=self._process_request,
            create_connection=RelayConnection,
            max_size=s.max_frame_bytes,
            max_queue=s.inbound_queue_frames,
            compression="deflate" if s.compression else None,
            ping_interval=s.ping_interval_seconds,
            ping_timeout=s.ping_timeout_seconds,
            open_timeout=s.handshake_timeout_seconds,
            close_timeout=s.close_timeout_seconds,
        )
        self._lease_task = asyncio.create_task(self._refresh_leases_forever())
        if self.turn_probe.enabled:
            self._probe_task = asyncio.create_task(self.turn_probe.run_forever())
        if s.public_ws_url:
            await self.relay.cluster.heartbeat()  # placeable before the first room is asked for
            self._heartbeat_task = asyncio.create_task(self.relay.cluster.heartbeat_forever())
        log.info("relay_listening", host=self._server.sockets[0].getsockname()[0], port=self.port, node_id=s.node_id)
        return self.port

    async def stop(self) -> None:
        """Graceful drain: refuse registrations (and readiness), send every peer ``go_away``,
        keep relaying for ``drain_seconds`` (or until every socket is gone), close the rest
        with 4500, then save each peer's session for the next process to resume."""
        if self._server is None:
            return
        log.info(
            "relay_stopping", connections=len(self.relay.connections.open), drain_seconds=self.settings.drain_seconds
        )
        self.relay.begin_shutdown()
        if self._heartbeat_task is not None:
            # No new rooms for a node on its way out, but it keeps its rooms (others redirect
            # here) for one TTL: the same node back by then resumes its peers; a node that
            # stays away has its rooms taken by the nodes their peers dial after that.
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            await self.relay.cluster.draining()
        for task in (self._lease_task, self._probe_task):
            if task is not None:
                task.cancel()
                # A background task's own failure must not stop the drain and the session save.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.relay.drained.wait(), timeout=self.settings.drain_seconds)
        self.metrics.closes.labels(str(int(CloseCode.SERVER_SHUTDOWN))).inc(len(self.relay.connections.open))
        self._server.close(code=CloseCode.SERVER_SHUTDOWN, reason=REASONS[CloseCode.SERVER_SHUTDOWN])
        grace = self.settings.shutdown_grace_seconds + self.settings.close_timeout_seconds
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=grace)
        except TimeoutError:
            # Handlers still stuck (e.g. in a slow DynamoDB call): detach their peers now,
            # since the process is about to end under them.
            stuck = list(self.relay.connections.open)
            log.warning("relay_stop_timeout", connections=len(stuck))
            await asyncio.gather(*(self.relay.close_connection(c, resumable=True) for c in stuck))
        await self.relay.save_sessions()
        self._server = None
        log.info("relay_stopped")

    async def _refresh_leases_forever(self) -> None:
        interval = self.settings.peer_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.relay.refresh_leases()
            except Exception:
                log.exception("lease_refresh_crashed")

    # HTTP --------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path in ("/healthz", "/health"):  # /health: the seed's successor's name
            return _with_type(ws.respond(HTTPStatus.OK, HealthBody(status="ok").model_dump_json()), "application/json")
        if path == "/readyz":
            if self.relay.closing:  # draining: send no one here
                body = ReadinessBody(status="draining", checks={}, failing=["draining"])
                return _with_type(
                    ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, body.model_dump_json()), "application/json"
                )
            body = await self.readiness.run()
            status = HTTPStatus.OK if not body.failing else HTTPStatus.SERVICE_UNAVAILABLE
            return _with_type(ws.respond(status, body.model_dump_json()), "application/json")
        if path == "/metrics":
            await self.readiness.refresh()
            payload, content_type = self.metrics.render()
            return _with_type(ws.respond(HTTPStatus.OK, payload.decode()), content_type)
        origins = request.headers.get_all("Origin")
        if origins and (len(origins) > 1 or origins[0] not in self._origins):
            # A browser's page (browsers always send Origin) from a site not in cors_origins:
            # without this, any web page its user opens could use the relay in their name.
            self.metrics.refused.labels("origin").inc()
            log.info("handshake_refused", reason="origin", origin=origins[0][:200])
            return ws.respond(HTTPStatus.FORBIDDEN, "this page's origin is not allowed (cors_origins)\n")
        if len(self.relay.connections.open) >= self.settings.max_connections:
            self.metrics.errors.labels("SERVER_BUSY").inc()
            self.metrics.refused.labels("capacity").inc()
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "server is at capacity, retry later\n")
        refused = self.relay.connections.refuses(self._client_ip(ws))
        if refused is not None:
            self.metrics.refused.labels("per_ip").inc()
            return ws.respond(HTTPStatus.TOO_MANY_REQUESTS, f"{refused}; close some, or retry later\n")
        return None

    def _client_ip(self, ws: ServerConnection) -> str:
        """The client's address: the socket peer, or, behind trusted proxies, the rightmost
        X-Forwarded-For entry that is not itself a trusted proxy (uvicorn's rule)."""
        peer = str(ws.remote_address[0]) if ws.remote_address else "unknown"
        forwarded = ws.request.headers.get("X-Forwarded-For") if ws.request else None
        if not forwarded or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _is_trusted(self, address: str) -> bool:
        if self._trusted is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    # WebSocket ---------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, RelayConnection)  # create_connection=RelayConnection
        remote_ip = self._client_ip(ws)
        ws.forget_handshake()
        if self.relay.connections.refuses(remote_ip) is not None:  # handshakes that passed the check together
            self.metrics.refused.labels("per_ip").inc()
            self.metrics.closes.labels(str(int(CloseCode.TOO_MANY_CONNECTIONS))).inc()
            await ws.close(CloseCode.TOO_MANY_CONNECTIONS, REASONS[CloseCode.TOO_MANY_CONNECTIONS])
            return
        link = WebSocketLink(
            ws,
            outbox_max=self.settings.outbox_max_messages,
            metrics=self.metrics,
            buffer=(self.settings.resume_buffer_messages, self.settings.resume_buffer_bytes),
        )
        connection = self.relay.open_connection(link, remote_ip)
        self.metrics.connections_opened.inc()
        with structlog.contextvars.bound_contextvars(connection_id=link.connection_id):
            log.info("connection_opened")
            try:
                # Every frame handled in the turn it is read (reader.RelayConnection); the
                # links write what the turn sent at its end.
                await ws.serve(lambda frame: self.relay.take_frame(connection, frame))
            finally:
                resumable, reason = _how_it_ended(ws)
                await self.relay.close_connection(connection, resumable=resumable, reason=reason)
                await link.finish()
                log.info("connection_closed", code=ws.close_code, resumable=resumable)


# Endings after which the peer keeps its place for the resume window: the network or
# the client's process failed (no close frame, 1006, 1011 on a ping timeout), or we cut
# the socket for reasons it can recover from (4500 shutdown, 4501 slow reader).
_RESUMABLE_CODES = frozenset({1006, 1011, int(CloseCode.SERVER_SHUTDOWN), int(CloseCode.SLOW_CONSUMER)})
_LEAVE_REASONS = {
    int(CloseCode.ROOM_DELETED): "room_deleted",
    int(CloseCode.ROOM_EXPIRED): "room_expired",
    int(CloseCode.REPLACED): "replaced",
}


def _how_it_ended(ws: ServerConnection) -> tuple[bool, str]:
    """Whether the member may resume, and the reason the room hears if it leaves now."""
    received, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
    if received is None and sent is None:
        return True, "timeout"
    we_closed = sent is not None and (received is None or ws.protocol.close_rcvd_then_sent is False)
    code = sent.code if we_closed and sent is not None else (received.code if received is not None else 1006)
    if code in _RESUMABLE_CODES:
        return True, "timeout"
    return False, _LEAVE_REASONS.get(code, "closed")


def _with_type(response: Response, content_type: str) -> Response:
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response
