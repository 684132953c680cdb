"""A real Prometheus (Debian package) with the project's monitoring/ config and rules,
scraping the local stack, a relay of the test's own and a real node_exporter: every target
is up, the key signaling_ metrics move under a little signaling traffic, and stopping the
relay makes its SignalingServiceDown alert pending.

Only the target files are the test's (monitoring/targets/*.json, as the monitoring role
writes them in a deployment); prometheus.yml and the rules are the committed ones."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import RelayFactory
from container_checks import ROOT
from devstack.ports import AddressInUse, entered_retrying_on_conflict, free_port, says_address_in_use
from devstack.stack import StackInfo
from signaling_sdk import ServiceClient, Session
from support import TIMEOUT, terminate
from tools import require

pytestmark = pytest.mark.integration

MONITORING = ROOT / "monitoring"
JOBS = ("auth-api", "rooms-api", "ws-relay", "node", "coturn", "edge-certificate")


def binary(name: str) -> str:
    return require(name)


POLL_TIMEOUT = 8 * TIMEOUT  # Prometheus scrapes and evaluates every 5 s
POLL_INTERVAL = 0.25


class Programs:
    """The programs this test runs (Prometheus, node_exporter): each is stopped at the end,
    and a wait for Prometheus ends at once, with the log, if one of them exits."""

    def __init__(self) -> None:
        self.exits: dict[asyncio.Task[int], Path] = {}

    @asynccontextmanager
    async def run(
        self, directory: Path, name: str, *args: str, ready: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[None]:
        """``name`` running with its output in ``directory/<name>.log``, once ``ready()``;
        AddressInUse if it exits first because another program has its address."""
        log_path = directory / f"{name}.log"
        with log_path.open("wb") as log:
            running = await asyncio.create_subprocess_exec(binary(name), *args, stdout=log, stderr=log)
        exited = asyncio.create_task(running.wait())
        self.exits[exited] = log_path
        try:
            async with asyncio.timeout(POLL_TIMEOUT):
                while not await ready():
                    if (await asyncio.wait({exited}, timeout=POLL_INTERVAL))[0]:
                        output = log_path.read_text()
                        if says_address_in_use(output):
                            raise AddressInUse(f"{name}: {output[-500:]}")
                        pytest.fail(f"{name} exited ({exited.result()}): {output[-2000:]}")
            yield
        finally:
            del self.exits[exited]
            await terminate(running)
            await exited

    async def until(self, check: Callable[[], Awaitable[Any]], what: str) -> Any:
        """``check()``'s first truthy result. Prometheus pushes nothing: its HTTP API is
        asked again after each POLL_INTERVAL in which no program exited."""
        last: Any = None
        try:
            async with asyncio.timeout(POLL_TIMEOUT):
                while not (last := await check()):
                    exited, _ = await asyncio.wait(self.exits, timeout=POLL_INTERVAL)
                    for task in exited:  # e.g. its port was taken meanwhile
                        log = self.exits[task]
                        pytest.fail(f"{log.stem} exited ({task.result()}): {log.read_text()[-2000:]}")
        except TimeoutError:
            pytest.fail(f"{what}: not within {POLL_TIMEOUT} s (last: {last})")
        return last


def targets_file(directory: Path, job: str, address: str | None, metrics_path: str = "/metrics") -> None:
    entries = [{"targets": [address], "labels": {"__metrics_path__": metrics_path}}] if address else []
    (directory / "targets" / f"{job}.json").write_text(json.dumps(entries))


@pytest.fixture
def monitoring_dir(tmp_path: Path) -> Path:
    """The committed prometheus.yml and rules, with target files for this test to fill."""
    directory = tmp_path / "monitoring"
    directory.mkdir()
    shutil.copy(MONITORING / "prometheus.yml", directory / "prometheus.yml")
    shutil.copytree(MONITORING / "rules", directory / "rules")
    (directory / "targets").mkdir()
    for job in JOBS:
        targets_file(directory, job, None)
    (directory / "targets" / "alertmanager.json").write_text("[]")
    return directory


def answers(url: str, text: str) -> Callable[[], Awaitable[bool]]:
    """Whether ``url`` answers 200 with ``text`` in the body (ours, not another program's)."""

    async def check() -> bool:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            try:
                response = await client.get(url)
            except httpx.TransportError:
                return False  # not listening yet
        return response.status_code == 200 and text in response.text

    return check


@asynccontextmanager
async def watching(programs: Programs, monitoring_dir: Path) -> AsyncIterator[str]:
    """node_exporter (the node job's target) and Prometheus, each on a free port, running;
    Prometheus's address. (Prometheus and node_exporter listen themselves: the caller starts
    them again on other ports if one was taken meanwhile.)"""
    node, web = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    targets_file(monitoring_dir, "node", node)
    async with AsyncExitStack() as running:
        listen = f"--web.listen-address={node}"
        exporter_ready = answers(f"http://{node}/metrics", "node_exporter_build_info")
        await running.enter_async_context(
            programs.run(monitoring_dir, "prometheus-node-exporter", listen, ready=exporter_ready)
        )
        config = ["--config.file", str(monitoring_dir / "prometheus.yml"), f"--web.listen-address={web}"]
        storage = ["--storage.tsdb.path", str(monitoring_dir / f"data-{web.rsplit(':', 1)[1]}")]
        prometheus_ready = answers(f"http://{web}/-/ready", "Ready")
        await running.enter_async_context(
            programs.run(monitoring_dir, "prometheus", *config, *storage, ready=prometheus_ready)
        )
        yield web


@pytest.mark.timeout(6 * POLL_TIMEOUT)  # a few polls, each bounded by POLL_TIMEOUT
async def test_prometheus_sees_the_stack_moving_and_a_stopped_relay_alerting(
    stack: StackInfo, relay_with: RelayFactory, monitoring_dir: Path
) -> None:
    api = urlsplit(stack.api_url).netloc
    programs = Programs()
    async with AsyncExitStack() as running:
        relay_scope = await running.enter_async_context(AsyncExitStack())  # closed early, below
        relay = await relay_scope.enter_async_context(relay_with())
        relay_address = f"127.0.0.1:{relay.port}"
        targets_file(monitoring_dir, "auth-api", api, "/auth-api/metrics")  # make dev hosts both APIs
        targets_file(monitoring_dir, "rooms-api", api)
        targets_file(monitoring_dir, "ws-relay", relay_address)
        web = await running.enter_async_context(
            entered_retrying_on_conflict(lambda: watching(programs, monitoring_dir))
        )
        http = await running.enter_async_context(httpx.AsyncClient(base_url=f"http://{web}", timeout=TIMEOUT))

        async def get(path: str, **params: str) -> Any:
            try:
                response = await http.get(path, params=params)
            except httpx.TransportError:
                return None  # not listening yet
            return response.json()["data"] if response.is_success else None

        async def health() -> dict[str, str]:
            data = await get("/api/v1/targets")
            return {t["labels"]["job"]: t["health"] for t in data["activeTargets"]} if data else {}

        async def all_up() -> dict[str, str] | None:
            seen = await health()
            return seen if seen == dict.fromkeys(("auth-api", "rooms-api", "ws-relay", "node"), "up") else None

        async def value(query: str) -> float:
            data = await get("/api/v1/query", query=query)
            return float(data["result"][0]["value"][1]) if data and data["result"] else 0.0

        await programs.until(all_up, "every target up")

        # A little signaling traffic through the relay Prometheus watches.
        async with ServiceClient(stack.api_url) as service:
            a_id, b_id = await service.sign_in(), await service.sign_in()
            room = await service.create_room(a_id)
        relay_url = f"ws://{relay_address}"
        async with await Session.open(relay_url, room, a_id, "A") as a, await Session.open(relay_url, room, b_id, "B"):
            for n in range(5):
                await a.send_to("B", {"n": n})

        async def moved() -> bool:
            return (
                await value('sum(signaling_messages_relayed_total{job="ws-relay"})') >= 5
                and await value('sum(signaling_registrations_total{job="ws-relay",outcome="ok"})') >= 2
                and await value('sum(signaling_http_requests_total{job="auth-api",route="/anonymous-signin"})') >= 2
                and await value('sum(signaling_http_requests_total{job="rooms-api",route="/create-room"})') >= 1
                and await value('min(signaling_dependency_up{job="ws-relay"})') == 1
                and await value('count(signaling_dependency_up{job=~"auth-api|rooms-api"} == 1)') >= 3
                and await value('count(node_cpu_seconds_total{job="node"})') > 0
            )

        await programs.until(moved, "signaling metrics moving in Prometheus")

        # The dashboard's queries run on this Prometheus, and its relay panels get data (a
        # rate needs two samples of a series: one more scrape after the traffic).
        dashboard = json.loads((MONITORING / "dashboards" / "signaling.json").read_text())

        async def dashboard_series() -> dict[str, int] | None:
            series: dict[str, int] = {}
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    query = target["expr"].replace("$__rate_interval", "1m")
                    response = (await http.get("/api/v1/query", params={"query": query})).json()
                    assert response["status"] == "success", (panel["title"], response)
                    series[panel["title"]] = series.get(panel["title"], 0) + len(response["data"]["result"])
            relay_panels = ("Messages relayed by type", "Registrations by outcome")  # (quantiles are NaN series)
            return series if all(series[title] for title in relay_panels) else None

        await programs.until(dashboard_series, "the dashboard's relay panels showing data")

        await relay_scope.aclose()  # the relay stops; Prometheus keeps watching

        async def relay_down_pending() -> list[dict[str, Any]]:
            data = await get("/api/v1/alerts")
            return [
                alert
                for alert in (data or {}).get("alerts", [])
                if alert["labels"]["alertname"] == "SignalingServiceDown"
                and alert["labels"]["job"] == "ws-relay"
                and alert["state"] == "pending"  # `for: 1m` before it fires
            ]

        (alert,) = await programs.until(relay_down_pending, "SignalingServiceDown pending for the stopped relay")
        assert alert["labels"] == {
            "alertname": "SignalingServiceDown",
            "job": "ws-relay",
            "instance": relay_address,
            "severity": "critical",
        }
        assert (await health())["auth-api"] == "up"  # the others are still fine
