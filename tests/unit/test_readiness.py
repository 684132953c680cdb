"""Readiness checks keep ``signaling_dependency_up``; /metrics re-runs them only when stale."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from signaling_shared import health
from signaling_shared.health import Readiness
from signaling_shared.metrics import ServiceMetrics


class Dependency:
    def __init__(self) -> None:
        self.healthy = True
        self.calls = 0

    async def check(self) -> None:
        self.calls += 1
        if not self.healthy:
            raise ConnectionError("down")


def up(metrics: ServiceMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value("signaling_dependency_up", {"dependency": name})


async def test_the_gauge_follows_each_run_and_refresh_waits_for_max_age() -> None:
    metrics = ServiceMetrics("test", CollectorRegistry())
    database, keys = Dependency(), Dependency()
    now = [100.0]
    readiness = Readiness(
        {"dynamodb": database.check, "jwks": keys.check}, metrics.dependency_up, max_age=10, clock=lambda: now[0]
    )
    assert up(metrics, "dynamodb") is None  # nothing known before the first run

    await readiness.refresh()  # never run: runs
    assert (up(metrics, "dynamodb"), up(metrics, "jwks"), database.calls) == (1.0, 1.0, 1)

    database.healthy = False
    now[0] += 9.9
    await readiness.refresh()  # fresh enough: not run again
    assert (up(metrics, "dynamodb"), database.calls) == (1.0, 1)
    now[0] += 0.1
    await readiness.refresh()
    assert (up(metrics, "dynamodb"), up(metrics, "jwks"), database.calls) == (0.0, 1.0, 2)

    database.healthy = True
    body = await readiness.run()  # /readyz runs every time
    assert body.failing == []
    assert (up(metrics, "dynamodb"), database.calls) == (1.0, 3)


async def test_concurrent_refreshes_run_the_checks_once() -> None:
    metrics = ServiceMetrics("test", CollectorRegistry())
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()

    readiness = Readiness({"dynamodb": slow}, metrics.dependency_up)
    first = asyncio.create_task(readiness.refresh())
    await started.wait()
    second = asyncio.create_task(readiness.refresh())  # waits for the first, then finds it fresh
    release.set()
    await asyncio.gather(first, second)
    assert calls == 1


async def test_a_hanging_check_counts_as_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "READINESS_TIMEOUT_SECONDS", 0.01)
    metrics = ServiceMetrics("test", CollectorRegistry())

    async def hangs() -> None:
        await asyncio.Event().wait()

    body = await Readiness({"dynamodb": hangs}, metrics.dependency_up).run()
    assert body.checks == {"dynamodb": "timeout"}
    assert up(metrics, "dynamodb") == 0.0
