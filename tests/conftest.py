"""Fixtures: one stack for the session (AWS emulator + APIs + relay on port 0).

The AWS emulator is, in order: the one AWS_ENDPOINT_URL names (LocalStack in GitHub
Actions); LocalStack's DynamoDB through testcontainers where a Docker engine answers
(Cognito then stays on the embedded emulator: LocalStack's is a paid feature); else
the embedded moto server.
"""

from __future__ import annotations

import gc
import io
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aioice.ice
import pytest

from coturn import coturn_server
from devstack.stack import StackConfig, StackInfo, StackThread
from emulators import docker_available, localstack_dynamodb
from signaling_shared.logging import configure_logging
from support import GENEROUS_LIMITS, close_what_the_test_opened, relay_settings, running_relay, scaled
from tools import MISSING, TOOLS
from ws_relay.server import RelayServer


@pytest.hookimpl(tryfirst=True)  # before pytest-timeout reads the option
def pytest_configure(config: pytest.Config) -> None:
    """pytest's own time limit per test (pyproject's ``timeout``) scales with the one timeout
    factor, as every time window of the tests does (support.scaled). ``--timeout`` on the
    command line and PYTEST_TIMEOUT are taken as given; ``pytest.mark.timeout`` values are
    scaled where they are written."""
    if config.getoption("timeout", None) is None and not os.environ.get("PYTEST_TIMEOUT"):
        ini = config.getini("timeout")
        if ini:
            config.option.timeout = scaled(float(ini))


@pytest.fixture(scope="session")
def localstack() -> Iterator[str | None]:
    """LocalStack's DynamoDB endpoint when testcontainers can run it, else None."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or not docker_available():
        yield None
        return
    with localstack_dynamodb() as url:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = url
        try:
            yield url
        finally:
            del os.environ["AWS_ENDPOINT_URL_DYNAMODB"]


@pytest.fixture(scope="session")
def captured_logs() -> io.StringIO:
    """Every log line of the session's servers (JSON), for tests that read the logs."""
    buffer = io.StringIO()
    configure_logging("INFO", stream=buffer)
    return buffer


@pytest.fixture(scope="session")
def stack(localstack: str | None, captured_logs: io.StringIO) -> Iterator[StackInfo]:
    runner = StackThread(
        StackConfig(
            api_port=0, relay_port=0, aws_port=0, table_prefix="test-", log_level="INFO", overrides=GENEROUS_LIMITS
        )
    )
    info = runner.start()
    try:
        yield info
    finally:
        runner.stop()


@pytest.fixture(scope="session")
def api(stack: StackInfo) -> str:
    return stack.api_url


@pytest.fixture(scope="session")
def relay(stack: StackInfo) -> str:
    return stack.relay_url


RelayFactory = Callable[..., AbstractAsyncContextManager[RelayServer]]


@pytest.fixture
def relay_with(stack: StackInfo) -> RelayFactory:
    """A relay of its own (port 0, this test's loop) on the shared tables, with overrides."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[RelayServer]:
        return running_relay(relay_settings(stack, **overrides))

    return start


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test, so a leaked socket or transport fails the test that leaked it."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
async def _close_what_the_test_opened(_collect_garbage: None) -> AsyncIterator[None]:
    """Close the peers, sessions and links the test opened (support.closed_after_test) when it
    ends, passed or failed, before the garbage is collected: a test that fails with a peer
    open fails alone, instead of an unrelated later test failing on the transport it leaked."""
    yield
    await close_what_the_test_opened()


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice gathers 127.0.0.1 only (it skips loopback by default), so WebRTC traffic stays on this host."""

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_only)


@pytest.fixture(scope="module")
def turn_server(tmp_path_factory: pytest.TempPathFactory, stack: StackInfo) -> Iterator[str]:
    """A coturn with the stack's TURN secret, relaying between peers on this host; its TURN URL."""
    secret = stack.common.turn_secrets[0].get_secret_value()
    with coturn_server(tmp_path_factory.mktemp("coturn"), [secret], extra=["allow-loopback-peers"]) as (host, port):
        yield f"turn:{host}:{port}?transport=udp"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per missing host tool: how many tests it skipped, and how to install it."""
    skipped: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        match = MISSING.search(reason)
        if match:
            skipped[match["name"]] += 1
    if not skipped:
        return
    terminalreporter.section("missing tools")
    for name, count in sorted(skipped.items()):
        tests = "test" if count == 1 else "tests"
        terminalreporter.write_line(f"{name}: {count} {tests} skipped; install: {TOOLS[name].install_hint}")
    terminalreporter.write_line("make tools installs every apt-installable one (CI requires them all).")
