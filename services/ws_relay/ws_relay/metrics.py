"""ws-relay's metrics, on top of those every service has."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from signaling_shared.metrics import LATENCY_BUCKETS, ServiceMetrics


class RelayMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("ws-relay", registry)
        r = self.registry
        self.connections = Gauge("signaling_ws_connections", "Open WebSocket connections.", registry=r)
        self.connections_max = Gauge(
            "signaling_ws_connections_max", "Connections the relay accepts (max_connections).", registry=r
        )
        self.connections_opened = Counter(
            "signaling_ws_connections_opened", "WebSocket connections accepted.", registry=r
        )
        self.claims = Counter(
            "signaling_claims",
            "Booking (claim): 'granted', 'refused' (ALREADY_CLAIMED), and how leases end: 'released',"
            " 'expired', 'holder_left', 'peer_left'.",
            ["outcome"],
            registry=r,
        )
        self.peer_connections = Counter(
            "signaling_peer_connections",
            "Peer connections as the peers report them: outcome (connected, failed, closed) and"
            " path (direct: host candidates; stun: a server-reflexive one; relay: through TURN).",
            ["outcome", "path"],
            registry=r,
        )
        self.time_to_connect = Histogram(
            "signaling_peer_connection_seconds",
            "From offer to connected, as the peers report it, by path.",
            ["path"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.refused = Counter(
            "signaling_ws_connections_refused",
            "Handshakes refused: 'capacity' (max_connections), 'per_ip' (one address's caps)"
            " or 'origin' (a browser page's Origin not in cors_origins).",
            ["reason"],
            registry=r,
        )
        self.closes = Counter(
            "signaling_ws_closes", "Connections closed by the relay, by close code.", ["code"], registry=r
        )
        self.registered_peers = Gauge("signaling_registered_peers", "Peers registered in a room.", registry=r)
        self.active_rooms = Gauge("signaling_active_rooms", "Rooms with at least one peer.", registry=r)
        self.registrations = Counter(
            "signaling_registrations", "Registration attempts by outcome ('ok' or error code).", ["outcome"], registry=r
        )
        self.relayed = Counter(
            "signaling_messages_relayed", "Messages delivered to a peer, by type.", ["type"], registry=r
        )
        self.held = Counter(
            "signaling_held_messages",
            "Messages for peers not in the room yet: 'held', then 'delivered' or 'expired'.",
            ["outcome"],
            registry=r,
        )
        self.held_pending = Gauge(
            "signaling_held_messages_pending", "Messages held now in the rooms this relay serves.", registry=r
        )
        self.turn_probes = Counter(
            "signaling_turn_probe",
            "TURN allocations the relay makes with its own credentials, by URL and outcome"
            " ('ok', 'rejected', 'unreachable', 'error').",
            ["url", "outcome"],
            registry=r,
        )
        self.relay_latency = Histogram(
            "signaling_relay_latency_seconds",
            "From a frame's arrival to its delivery to the target's socket.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
