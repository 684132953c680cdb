"""The Grafana dashboard of the signaling service, built from code.

    python monitoring/dashboards/build.py     # rewrites signaling.json next to this file

Each panel is a title, a unit and PromQL queries; layout, ids and datasource wiring are
derived, so the JSON never drifts by hand. `make test` checks that signaling.json is what
this file builds, that every query parses (promtool) and uses only exported metrics.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 12  # two panels a row on Grafana's 24-column grid
HEIGHT = 8


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""


PANELS = (
    Panel(
        "Relay connections",
        "short",
        (
            ('sum by (instance) (signaling_ws_connections{job="ws-relay"})', "open {{instance}}"),
            ('sum by (instance) (signaling_ws_connections_max{job="ws-relay"})', "limit {{instance}}"),
        ),
        "Open WebSocket connections against max_connections (SignalingConnectionsNearLimit at 80%).",
    ),
    Panel(
        "Rooms and peers",
        "short",
        (
            ('sum(signaling_active_rooms{job="ws-relay"})', "rooms with peers"),
            ('sum(signaling_registered_peers{job="ws-relay"})', "registered peers"),
            ('sum(signaling_held_messages_pending{job="ws-relay"})', "held messages"),
        ),
    ),
    Panel(
        "Messages relayed by type",
        "ops",
        (('sum by (type) (rate(signaling_messages_relayed_total{job="ws-relay"}[$__rate_interval]))', "{{type}}"),),
    ),
    Panel(
        "Registrations by outcome",
        "ops",
        (
            (
                'sum by (outcome) (rate(signaling_registrations_total{job="ws-relay"}[$__rate_interval]))',
                "{{outcome}}",
            ),
        ),
        "ok, resumed, abandoned (the socket left), redirected (to the node serving the room),"
        " or the error code that refused it (SignalingRegistrationFailures).",
    ),
    Panel(
        "Relay latency",
        "s",
        tuple(
            (
                f"histogram_quantile({q}, sum by (le) "
                f'(rate(signaling_relay_latency_seconds_bucket{{job="ws-relay"}}[$__rate_interval])))',
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.99)
        ),
        "From a frame's arrival to its delivery to the target's socket (SignalingRelayLatencyHigh at 50 ms).",
    ),
    Panel(
        "HTTP latency p99 by route",
        "s",
        (
            (
                "histogram_quantile(0.99, sum by (job, route, le) "
                "(rate(signaling_http_request_duration_seconds_bucket[$__rate_interval])))",
                "{{job}} {{route}}",
            ),
        ),
    ),
    Panel(
        "Errors by code",
        "ops",
        (("sum by (job, code) (rate(signaling_errors_total[$__rate_interval]))", "{{job}} {{code}}"),),
        "Every error answered to a client; server-side codes alert (SignalingServerErrors).",
    ),
    Panel(
        "Dependencies",
        "short",
        (
            ("min by (job, dependency) (signaling_dependency_up)", "{{job}} {{dependency}} up"),
            (
                "sum by (job, dependency, kind) (rate(signaling_dependency_errors_total[$__rate_interval]))",
                "{{job}} {{dependency}} {{kind}} errors/s",
            ),
        ),
        "Readiness checks (1 = passing) and failed AWS calls.",
    ),
    Panel(
        "TURN probes by outcome",
        "ops",
        (
            (
                'sum by (url, outcome) (rate(signaling_turn_probe_total{job="ws-relay"}[$__rate_interval]))',
                "{{url}} {{outcome}}",
            ),
        ),
        "The relay's own TURN allocations: rejected pages (SignalingTurnCredentialsRejected),"
        " only failures for 10 minutes warns (SignalingTurnUnreachable).",
    ),
    Panel(
        "Peer connections",
        "ops",
        (
            (
                'sum by (outcome, path) (rate(signaling_peer_connections_total{job="ws-relay"}[$__rate_interval]))',
                "{{outcome}} {{path}}",
            ),
            (
                "histogram_quantile(0.9, sum by (le, path) "
                '(rate(signaling_peer_connection_seconds_bucket{job="ws-relay"}[$__rate_interval])))',
                "p90 time to connect {{path}} (s)",
            ),
        ),
        "As the peers report them: outcome by path (direct, stun, relay through TURN), and the"
        " time from offer to connected; a failure share over 20 % warns (SignalingPeerConnectionsFailing).",
    ),
    Panel(
        "Public endpoint",
        "d",
        (
            (
                '(probe_ssl_earliest_cert_expiry{job="edge-certificate"} - time()) / 86400',
                "certificate days left {{instance}}",
            ),
            ('probe_success{job="edge-certificate"}', "probe up {{instance}}"),
        ),
        "The blackbox exporter's HTTPS GET of the public endpoint (SignalingEndpointProbeFailing)"
        " and its certificate's days left (SignalingCertificateExpiring under 14).",
    ),
)


def panel_json(index: int, panel: Panel) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": (index % 2) * WIDTH, "y": (index // 2) * HEIGHT, "w": WIDTH, "h": HEIGHT},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(panel.queries)
        ],
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "signaling-overview",
        "title": "Signaling service",
        "tags": ["signaling", "webrtc"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": [panel_json(index, panel) for index, panel in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    target = Path(__file__).with_name("signaling.json")
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
