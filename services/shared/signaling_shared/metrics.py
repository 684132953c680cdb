"""Prometheus metrics, one registry per app instance.

Names follow ``signaling_<thing>_<unit>`` in base units; labels never carry a room,
peer or user id. Each app builds its own registry so tests (and the local stack, which
hosts several apps in one process) never collide on the global default registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from signaling_shared import __version__

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """Metrics every service exposes; services subclass to add their own."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        build_info = Gauge(
            "signaling_build_info", "Service name and version.", ["service", "version"], registry=self.registry
        )
        build_info.labels(service=service, version=__version__).set(1)
        self.errors = Counter(
            "signaling_errors", "Errors returned to clients, by code.", ["code"], registry=self.registry
        )
        self.dependency_errors = Counter(
            "signaling_dependency_errors",
            "Failed calls to AWS dependencies.",
            ["dependency", "operation", "kind"],
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "signaling_dependency_up",
            "1 if the dependency's readiness check passed at its last run, else 0.",
            ["dependency"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "signaling_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "signaling_http_request_duration_seconds",
            "HTTP request duration by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def dynamodb_error(self, operation: str, error: Exception) -> None:
        self.dependency_errors.labels("dynamodb", operation, type(error).__name__).inc()

    def cognito_error(self, operation: str, code: str) -> None:
        self.dependency_errors.labels("cognito", operation, code).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
