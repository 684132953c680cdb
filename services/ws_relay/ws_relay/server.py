"""The socket side of the relay: ``websockets`` in, ``RelayService`` calls, bytes out.

Each connection gets an outbox (a bounded queue) drained by its own writer task, so a
peer that stops reading slows no one else down: when its outbox is full it is closed
(4501) and senders are told (DELIVERY_FAILED). The same port answers ``/healthz``,
``/readyz`` and ``/metrics`` over plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from signaling_shared.auth import TokenVerifier
from signaling_shared.dynamo import RelayNode, Repository
from signaling_shared.health import HealthBody, Readiness, ReadinessBody
from signaling_shared.settings import RelaySettings
from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.metrics import RelayMetrics
from ws_relay.service import RelayService
from ws_relay.turnprobe import TurnProbe

log = structlog.stdlib.get_logger("ws_relay.server")

# Under continuous traffic the outbox never drains: confirm at least every so many frames.
CONFIRM_EVERY = 32


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class WebSocketLink:
    """A ``Link`` over a websockets connection, with a bounded outbox."""

    def __init__(self, ws: ServerConnection, *, outbox_max: int, metrics: RelayMetrics) -> None:
        self.connection_id = uuid.uuid4().hex
        self.on_confirm: Callable[[int], None] | None = None
        self._ws = ws
        self._metrics = metrics
        self._outbox_max = outbox_max
        # One slot more than the limit, so a close always fits behind the frames.
        # Unbounded underneath: send() applies the limit (replays are owed and may exceed it).
        self._queue: asyncio.Queue[tuple[str, float | None, int | None, bool] | _Close] = asyncio.Queue()
        self._limited = 0  # queued frames the limit applies to (not replays or answers)
        self._closing = False
        self._written_seq = 0  # the last numbered frame handed to the socket
        self._pinged_seq = 0  # the last one a confirmation ping was sent after
        self._confirming = False  # a confirmation ping is in flight
        self._since_ping = 0  # numbered frames written since the last confirmation ping
        self._confirm_task: asyncio.Task[None] | None = None
        self._writer = asyncio.create_task(self._write())
        self._writer.add_done_callback(self._writer_done)
        self._abort_task: asyncio.Task[None] | None = None

    def is_open(self) -> bool:
        return not self._closing and self._ws.state is State.OPEN

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """A writer that died of a bug must not leave its peer silently stuck: drop the connection."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("writer_crashed", error_type=type(task.exception()).__name__, exc_info=task.exception())
        self._closing = True
        self._ws.transport.abort()

    def send(
        self, frame: str, relay_started: float | None = None, seq: int | None = None, *, replay: bool = False
    ) -> bool:
        if self._closing:
            return False
        if not replay:
            if self._limited >= self._outbox_max:
                self._abort(CloseCode.SLOW_CONSUMER)
                return False
            self._limited += 1
        self._queue.put_nowait((frame, relay_started, seq, replay))
        return True

    def close(self, code: int, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(_Close(code, reason))

    def _abort(self, code: CloseCode) -> None:
        """Close now, dropping the queued frames (the reader is not reading them)."""
        self._closing = True
        self._metrics.closes.labels(str(int(code))).inc()
        self._writer.cancel()
        self._abort_task = asyncio.create_task(self._ws.close(code, REASONS[code]))

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                item = await self._queue.get()
                if isinstance(item, _Close):
                    await self._ws.close(item.code, item.reason)
                    return
                frame, started, seq, replay = item
                if not replay:
                    self._limited -= 1
                await self._ws.send(frame)
                if started is not None:
                    self._metrics.relay_latency.observe(time.perf_counter() - started)
                if seq is not None:
                    self._written_seq = seq
                    self._since_ping += 1
                if self._queue.empty() or self._since_ping >= CONFIRM_EVERY:
                    await self._confirm_written()

    async def _confirm_written(self) -> None:
        """After a burst, ping: the pong proves the client received everything before it,
        so those frames need not be kept for a resume any more."""
        if self._confirming or self.on_confirm is None or self._written_seq <= self._pinged_seq:
            return
        seq, confirm = self._written_seq, self.on_confirm
        self._pinged_seq = seq
        self._confirming = True
        self._since_ping = 0
        # An explicit payload: websockets would draw one from the global random module.
        try:
            pong = await self._ws.ping(f"confirm:{seq}")
        except ConnectionClosed:
            self._confirming = False
            return

        def confirmed(waiter: asyncio.Future[float]) -> None:
            self._confirming = False
            if waiter.cancelled() or waiter.exception() is not None:
                return
            confirm(seq)
            if self._written_seq > seq and not self._closing:  # more was written meanwhile
                self._confirm_task = asyncio.get_running_loop().create_task(self._confirm_written())

        cast("asyncio.Future[float]", pong).add_done_callback(confirmed)

    async def finish(self) -> None:
        """The connection has ended: stop the writer."""
        self._closing = True
        self._writer.cancel()
        if self._confirm_task is not None:
            self._confirm_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        if self._abort_task is not None:
            await self._abort_task


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
        self.service = RelayService(settings, self.repository, self.verifier, self.metrics)
        self.readiness = Readiness(
            {"dynamodb": self.repository.check, "jwks": self.verifier.check}, self.metrics.dependency_up
        )
        self.metrics.connections_max.set(settings.max_connections)
        self._trusted = _trusted_networks(settings.forwarded_allow_ips)
        self._server: Server | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self.turn_probe = TurnProbe(settings, self.metrics.turn_probes)
        self._probe_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._beat: asyncio.Future[None] | None = None
        # When this node's entry was last renewed; set once it may have lapsed without it
        # knowing (see _heartbeat_forever): main stops the process then.
        self._renewed_at = 0.0
        self.fenced = asyncio.Event()

    async def _heartbeat(self, *, draining: bool = False) -> None:
        """This node's entry in the placement table: its URL, load and a fresh expiry; and
        the entries of nodes silent for ten TTLs go (crashed or scaled in)."""
        s = self.settings
        now = time.time()  # before the write: the entry lapses no later than now + TTL
        node = RelayNode(
            node_id=s.node_id,
            ws_url=s.public_ws_url,
            rooms=self.service.hub.room_count,
            capacity=s.max_connections,
            expires_at=now + s.node_ttl_seconds,
            draining=draining,
        )
        try:
            await self.repository.heartbeat_node(node)
        except Exception as exc:  # noqa: BLE001 - the entry lapses if this keeps failing: see _heartbeat_forever
            log.warning("node_heartbeat_failed", node_id=s.node_id, error=type(exc).__name__)
            return
        self._renewed_at = now
        try:
            pruned = await self.repository.prune_nodes(expired_before=int(now) - 10 * s.node_ttl_seconds)
        except Exception as exc:  # noqa: BLE001 - the next heartbeat prunes
            log.warning("node_prune_failed", node_id=s.node_id, error=type(exc).__name__)
            return
        if pruned:
            log.info("nodes_pruned", node_ids=pruned)

    async def _heartbeat_forever(self) -> None:
        """Renew the entry; and fence this node before an entry it failed to renew can lapse.
        Once it lapses, the room's next peer moves the room to another node while the peers
        here would stay: the room served twice, its peers split. So when the next renewal
        could come too late, the node is fenced (``fenced`` set): main stops it as for a
        SIGTERM (go_away; sessions saved if the table lets it, else recovered from their
        entries) and exits 1 for its supervisor to start it again."""
        s = self.settings
        while True:
            await asyncio.sleep(s.node_heartbeat_seconds)
            # Shielded: a write runs on in its thread after a cancel, so stop() awaits it
            # before removing the entry (else a late write would put this node back).
            self._beat = asyncio.ensure_future(self._heartbeat())
            # A write that hangs must not keep this node serving past its entry's lapse.
            await asyncio.wait({self._beat}, timeout=max(0.0, self._renewed_at + s.node_ttl_seconds - time.time()))
            if time.time() + s.node_heartbeat_seconds >= self._renewed_at + s.node_ttl_seconds:
                log.error("node_fenced", node_id=s.node_id, renewed_at=self._renewed_at)
                self.fenced.set()
                return

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
            await self._heartbeat()  # placeable before the first room is asked for
            self._heartbeat_task = asyncio.create_task(self._heartbeat_forever())
        log.info("relay_listening", host=self._server.sockets[0].getsockname()[0], port=self.port, node_id=s.node_id)
        return self.port

    async def stop(self) -> None:
        """Graceful drain: refuse registrations (and readiness), send every peer ``go_away``,
        keep relaying for ``drain_seconds`` (or until every socket is gone), close the rest
        with 4500, then save each peer's session for the next process to resume."""
        if self._server is None:
            return
        log.info("relay_stopping", connections=len(self.service.sessions), drain_seconds=self.settings.drain_seconds)
        self.service.begin_shutdown()
        if self._heartbeat_task is not None:
            # No new rooms for a node on its way out, but it keeps its rooms (others redirect
            # here) for one TTL: the same node back by then resumes its peers; a node that
            # stays away has its rooms taken by the nodes their peers dial after that.
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
            if self._beat is not None:
                await self._beat  # _heartbeat never raises
            await self._heartbeat(draining=True)
        for task in (self._lease_task, self._probe_task):
            if task is not None:
                task.cancel()
                # A background task's own failure must not stop the drain and the session save.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.service.drained.wait(), timeout=self.settings.drain_seconds)
        self.metrics.closes.labels(str(int(CloseCode.SERVER_SHUTDOWN))).inc(len(self.service.sessions))
        self._server.close(code=CloseCode.SERVER_SHUTDOWN, reason=REASONS[CloseCode.SERVER_SHUTDOWN])
        grace = self.settings.shutdown_grace_seconds + self.settings.close_timeout_seconds
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=grace)
        except TimeoutError:
            # Handlers still stuck (e.g. in a slow DynamoDB call): detach their peers now,
            # since the process is about to end under them.
            stuck = list(self.service.sessions)
            log.warning("relay_stop_timeout", connections=len(stuck))
            await asyncio.gather(*(self.service.close_session(session, resumable=True) for session in stuck))
        await self.service.save_sessions()
        self._server = None
        log.info("relay_stopped")

    async def _refresh_leases_forever(self) -> None:
        interval = self.settings.peer_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.service.refresh_leases()
            except Exception:
                log.exception("lease_refresh_crashed")

    # HTTP --------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path in ("/healthz", "/health"):  # /health: the seed's successor's name
            return _with_type(ws.respond(HTTPStatus.OK, HealthBody(status="ok").model_dump_json()), "application/json")
        if path == "/readyz":
            if self.service.closing:  # draining: send no one here
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
        if len(self.service.sessions) >= self.settings.max_connections:
            self.metrics.errors.labels("SERVER_BUSY").inc()
            self.metrics.refused.labels("capacity").inc()
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "server is at capacity, retry later\n")
        refused = self.service.refuses(self._client_ip(ws))
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
        remote_ip = self._client_ip(ws)
        if self.service.refuses(remote_ip) is not None:  # handshakes that passed the check together
            self.metrics.refused.labels("per_ip").inc()
            self.metrics.closes.labels(str(int(CloseCode.TOO_MANY_CONNECTIONS))).inc()
            await ws.close(CloseCode.TOO_MANY_CONNECTIONS, REASONS[CloseCode.TOO_MANY_CONNECTIONS])
            return
        link = WebSocketLink(ws, outbox_max=self.settings.outbox_max_messages, metrics=self.metrics)
        session = self.service.open_session(link, remote_ip)
        self.metrics.connections_opened.inc()
        with structlog.contextvars.bound_contextvars(connection_id=link.connection_id):
            log.info("connection_opened")
            try:
                async for frame in ws:
                    await self.service.handle_frame(session, frame)
                    # recv() does not yield while frames are buffered: yield here so the
                    # writers (this peer's replies, its targets' outboxes) keep pace with a
                    # pipelining sender instead of overflowing behind it.
                    await asyncio.sleep(0)
            except ConnectionClosed:
                pass
            finally:
                resumable, reason = _how_it_ended(ws)
                await self.service.close_session(session, resumable=resumable, reason=reason)
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
