"""The benchmark suite's null relay and load generator still work together (make bench is not in make test)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import scaled

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = scaled(60)


@pytest.fixture
def null_relay() -> Iterator[tuple[str, int]]:
    """bench.nullrelay in its own process on a free loopback port: its URL and pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.nullrelay", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready[:1] == ["READY"]
        yield f"ws://127.0.0.1:{ready[1]}", process.pid
    finally:
        process.terminate()
        process.communicate(timeout=TIMEOUT)


def loadgen(url: str, pid: int, scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    job = {"system": "null", "url": url, "server_pid": pid, "scenario": scenario, "params": params}
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", json.dumps(job)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_null_relay_and_generator_measure_latency_registration_and_churn(null_relay: tuple[str, int]) -> None:
    """A tiny run of three scenarios relays every message and reports the fields the report reads."""
    url, pid = null_relay
    latency = loadgen(url, pid, "latency", {"pairs": 2, "duration": 0.3, "rates": [200], "warmup": 0})
    [step] = latency["steps"]
    assert step["sent"] > 0
    assert step["received"] == step["sent"]
    assert step["lost"] == 0
    assert step["latency"]["count"] > 0
    assert {"p50_ms", "p99_ms", "p999_ms", "max_ms"} <= step["latency"].keys()
    assert {"achieved_rate", "sustained", "server_cpu", "generator_cpu"} <= step.keys()

    registration = loadgen(url, pid, "register", {"count": 4, "concurrency": 2})
    assert registration["latency"]["count"] == 4
    assert registration["errors"] == {}

    churn = loadgen(url, pid, "churn", {"duration": 0.2, "concurrency": 2})
    assert churn["cycles"] > 0
    assert churn["errors"] == {}
