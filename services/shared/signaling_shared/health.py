"""Readiness checks shared by the HTTP services and the relay (no web framework here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import Gauge
from pydantic import BaseModel, Field

from signaling_shared.errors import as_signaling_error

ReadinessCheck = Callable[[], Awaitable[None]]
READINESS_TIMEOUT_SECONDS = 3.0


class HealthBody(BaseModel):
    status: str


class ReadinessBody(BaseModel):
    status: str = Field(description="'ready' or 'unavailable'.")
    checks: dict[str, str] = Field(description="Each dependency and 'ok' or why it failed.")
    failing: list[str] = Field(default_factory=list, description="Names of the failing dependencies.")


async def run_readiness_checks(checks: Mapping[str, ReadinessCheck]) -> ReadinessBody:
    async def run(check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), timeout=READINESS_TIMEOUT_SECONDS)
        except TimeoutError:
            return "timeout"
        except Exception as exc:  # noqa: BLE001 - readiness reports every failure by name
            return f"failed: {as_signaling_error(exc).code.value.lower()}"
        return "ok"

    names = list(checks)
    results = await asyncio.gather(*(run(checks[name]) for name in names))
    outcome = dict(zip(names, results, strict=True))
    failing = [name for name, result in outcome.items() if result != "ok"]
    return ReadinessBody(status="unavailable" if failing else "ready", checks=outcome, failing=failing)


class Readiness:
    """A service's readiness checks and the gauge they keep, ``signaling_dependency_up``
    (1 or 0 per dependency). ``/readyz`` runs them; ``/metrics`` runs them too when the last
    run is older than ``max_age`` seconds, so Prometheus sees a failing dependency even when
    no load balancer asks (one run at a time, however many scrapes arrive)."""

    def __init__(
        self,
        checks: Mapping[str, ReadinessCheck],
        gauge: Gauge,
        *,
        max_age: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checks = dict(checks)
        self.gauge = gauge
        self.max_age = max_age
        self.clock = clock
        self._checked_at: float | None = None
        self._lock = asyncio.Lock()

    async def run(self) -> ReadinessBody:
        """Every check now (after a run in progress); the gauge follows."""
        async with self._lock:
            return await self._run()

    async def refresh(self) -> None:
        """Run the checks if the last run is older than ``max_age``."""
        async with self._lock:
            if self._checked_at is None or self.clock() - self._checked_at >= self.max_age:
                await self._run()

    async def _run(self) -> ReadinessBody:
        body = await run_readiness_checks(self.checks)
        for name, result in body.checks.items():
            self.gauge.labels(name).set(1 if result == "ok" else 0)
        self._checked_at = self.clock()
        return body
