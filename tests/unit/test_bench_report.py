"""bench/report.py's verdicts on issue 18's targets, from a committed results JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "2026-11-26.json"
# bench/ is run as `python -m bench.…` from the checkout, not installed: load the module by path.
_SPEC = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
assert _SPEC is not None
assert _SPEC.loader is not None
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)


def rows(results: dict[str, Any]) -> dict[str, str]:
    """Each target's verdict, by the start of the target's text."""
    lines = [line for line in report.targets(results) if line.startswith("| ") and not line.startswith("| Target")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {target: verdict for target, _, verdict in cells}


def test_each_target_of_issue_18_gets_a_verdict() -> None:
    verdicts = rows(json.loads(RESULTS.read_text()))
    assert verdicts["CPU per message at 5,000 msg/s ≤ PeerJS's and the null relay's"].startswith("missed: 4.27x")
    assert verdicts["highest sustained rate ≥ PeerJS's"].startswith("missed")
    assert verdicts["p99 one-hop ≤ 2 ms and max ≤ 20 ms at 500 msg/s"] == "met"
    assert verdicts["p99 one-hop ≤ 2 ms and max ≤ 20 ms at 2,000 msg/s"].startswith("missed")
    assert verdicts["churn ≥ 300 cycles/s"].startswith("missed")
    assert verdicts[OVERLOAD] == "not measured"


OVERLOAD = (
    "overload: 3x the sustained rate for 10 s: RSS growth ≤ 64 MiB, /healthz within 100 ms throughout,"
    " no message lost without an error to its sender"
)


def overload(**changes: Any) -> dict[str, Any]:
    entry = {
        "offered_rate": 24000.0,
        "rss_growth_mib": 40.0,
        "lost_silently": 0,
        "healthz": {"p99_ms": 20.0, "max_ms": 60.0},
        "healthz_failures": 0,
    }
    return {**entry, **changes}


def test_the_overload_verdict_names_each_miss() -> None:
    results = json.loads(RESULTS.read_text())
    results["overload"] = overload()
    assert rows(results)[OVERLOAD] == "met"
    results["overload"] = overload(lost_silently=3, healthz={"p99_ms": 90.0, "max_ms": 121.0}, rss_growth_mib=70.0)
    assert rows(results)[OVERLOAD] == (
        "missed: RSS grew 70.0 MiB; /healthz took up to 121 ms; 3 messages lost silently"
    )
    results["overload"] = overload(healthz_failures=2)
    assert rows(results)[OVERLOAD] == "missed: /healthz failed 2 times"


def test_a_relay_as_cheap_as_the_others_meets_the_cpu_target() -> None:
    results = json.loads(RESULTS.read_text())
    for step in results["latency"]["relay"]["steps"]:
        step["server_cpu"] = 0.01  # 2 µs per message at 5,000 msg/s
    verdicts = rows(results)
    assert verdicts["CPU per message at 5,000 msg/s ≤ PeerJS's and the null relay's"] == "met"
