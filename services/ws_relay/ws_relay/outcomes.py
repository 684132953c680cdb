"""Connection outcomes: what the peers report of the connections they made (the relay never
sees ICE itself). Each report is checked, counted in Prometheus and logged without any
address: candidate types, transport, time to connect, which of this relay's TURN servers.

A peer may report on a peer of its own room only, and at most ``REPORTS_PER_PEER`` times
per other peer and registration (connected or failed, then closed, and a reconnection).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from signaling_shared.dynamo import Repository
from signaling_shared.errors import ConditionFailed, InvalidMessage, PeerNotFound, RateLimited, RepositoryError
from signaling_shared.settings import RelaySettings
from ws_relay import protocol
from ws_relay.hub import Hub, Member
from ws_relay.metrics import RelayMetrics

log = structlog.stdlib.get_logger("ws_relay")

REPORTS_PER_PEER = 4


def path_of(report: protocol.ConnectionReport) -> str:
    """``relay`` if either end went through TURN, ``stun`` if either used a reflexive address,
    ``direct`` for host to host, ``unknown`` when the report does not say."""
    ends = {report.local_candidate, report.remote_candidate}
    if "relay" in ends:
        return "relay"
    if ends & {"srflx", "prflx"}:
        return "stun"
    if ends == {"host"}:
        return "direct"
    return "unknown"


class Outcomes:
    def __init__(
        self,
        settings: RelaySettings,
        hub: Hub,
        repository: Repository,
        metrics: RelayMetrics,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.repository = repository
        self.metrics = metrics
        self._clock = clock

    async def report(self, member: Member, report: protocol.ConnectionReport) -> None:
        """Check ``report`` from ``member``, count and log it, and keep it as the pair's last
        outcome on the member's routing entry (what rooms-api shows the room's creator)."""
        if report.peer_id == member.peer_id:
            raise InvalidMessage("a report is about another peer of the room")
        if self.hub.get(member.room_id, report.peer_id) is None and report.peer_id not in member.reports:
            raise PeerNotFound(f"peer {report.peer_id!r} is not in this room")
        if report.turn_server is not None and report.turn_server not in self.settings.turn_urls:
            raise InvalidMessage("turn_server: one of the TURN URLs this relay hands out")
        if report.failure is not None and report.outcome != "failed":
            raise InvalidMessage("failure: only with outcome 'failed'")
        if report.outcome == "connected" and report.time_to_connect_ms is None:
            raise InvalidMessage("time_to_connect_ms: required with outcome 'connected'")
        count = member.reports.get(report.peer_id, 0)
        if count >= REPORTS_PER_PEER:
            raise RateLimited(f"at most {REPORTS_PER_PEER} reports per peer")
        member.reports[report.peer_id] = count + 1
        path = path_of(report)
        self.metrics.peer_connections.labels(report.outcome, path).inc()
        if report.outcome == "connected" and report.time_to_connect_ms is not None:
            self.metrics.time_to_connect.labels(path).observe(report.time_to_connect_ms / 1000)
        log.info(
            "peer_connection",
            room_id=member.room_id,
            peer_id=member.peer_id,
            other=report.peer_id,
            outcome=report.outcome,
            path=path,
            transport=report.transport,
            time_to_connect_ms=report.time_to_connect_ms,
            turn_server=report.turn_server,
            failure=report.failure,
        )
        member.connections[report.peer_id] = {
            "outcome": report.outcome,
            "path": path,
            "time_to_connect_ms": report.time_to_connect_ms,
            "at": int(self._clock()),
        }
        try:
            await self.repository.update_peer_connections(
                member.room_id, member.peer_id, member.connection_id, member.connections
            )
        except (ConditionFailed, RepositoryError) as exc:  # counted already; the entry is kept at the next write
            log.warning("connection_outcome_not_stored", room_id=member.room_id, error=type(exc).__name__)
