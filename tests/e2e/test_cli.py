"""The CLI as people use it: `rooms create`, then a worker and a client that move a file
over a data channel, the worker replying with the SHA-256 it wrote (run in-process, so
that ICE stays on loopback)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from conftest import RelayFactory
from signaling_sdk import cli
from support import TIMEOUT

pytestmark = pytest.mark.e2e

GPU = ["--gpu-memory-mb", "24576"]  # what the worker says it has (no nvidia-smi here)


@pytest.mark.usefixtures("loopback_ice")
async def test_worker_and_client_move_a_file_with_a_verified_hash(
    api: str, relay_with: RelayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with relay_with(stun_urls=[], turn_urls=[]) as server:
        relay = f"ws://127.0.0.1:{server.port}"
        assert await cli.run(cli.parse_args(["--api", api, "rooms", "create"])) == 0
        room = json.loads(capsys.readouterr().out)
        common = ["--api", api, "--relay", relay]
        where = ["--room", room["room_id"], "--token", room["token"]]
        out = tmp_path / "received"
        worker = asyncio.create_task(
            cli.run(
                cli.parse_args(
                    [*common, "worker", *where, "--peer-id", "W", "--out", str(out), "--tag", "gpu", *GPU, "--once"]
                )
            )
        )
        job = tmp_path / "job.bin"
        job.write_bytes(os.urandom(2 * 1024 * 1024))
        client = cli.parse_args(
            [*common, "client", *where, "--file", str(job), "--tag", "gpu", "--min-gpu-memory-mb", "8192"]
        )
        async with asyncio.timeout(8 * TIMEOUT):
            sending = asyncio.create_task(cli.run(client))
            done, _ = await asyncio.wait({sending, worker}, return_when=asyncio.FIRST_COMPLETED)
            if worker in done and not sending.done():
                sending.cancel()
                worker.result()  # what went wrong on the worker's side
            assert await sending == 0
            assert await worker == 0
        assert (out / "job.bin").read_bytes() == job.read_bytes()


def test_a_refusal_exits_2_with_the_error_code(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens on port 9: the CLI says which code it got and exits 2."""
    assert cli.main(["--api", "http://127.0.0.1:9", "ice-servers"]) == 2
    assert "SERVER_BUSY" in capsys.readouterr().err
