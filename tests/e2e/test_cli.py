"""The CLI as people use it: `rooms create`, then a worker and a client that move a file
over a data channel, the worker replying with the SHA-256 it wrote (run in-process, so
that ICE stays on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_checks import cli_transfer
from conftest import RelayFactory
from signaling_sdk import cli

pytestmark = pytest.mark.e2e


@pytest.mark.usefixtures("loopback_ice")
async def test_worker_and_client_move_a_file_with_a_verified_hash(
    api: str, relay_with: RelayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with relay_with(stun_urls=[], turn_urls=[]) as server:
        await cli_transfer(["--api", api, "--relay", f"ws://127.0.0.1:{server.port}"], tmp_path, capsys)


def test_a_refusal_exits_2_with_the_error_code(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens on port 9: the CLI says which code it got and exits 2."""
    assert cli.main(["--api", "http://127.0.0.1:9", "ice-servers"]) == 2
    assert "SERVER_BUSY" in capsys.readouterr().err
