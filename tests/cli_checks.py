"""The CLI's whole flow, shared by the tests that run it against the stack in its shapes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from signaling_sdk import cli
from support import TIMEOUT

GPU = ["--gpu-memory-mb", "24576"]  # what the worker says it has (no nvidia-smi here)


async def cli_transfer(common: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rooms create`, then a worker and a client (``common``: URL flags) move a 2 MiB file."""
    assert await cli.run(cli.parse_args([*common, "rooms", "create"])) == 0
    room = json.loads(capsys.readouterr().out)
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
    sending = asyncio.create_task(cli.run(client))
    try:
        async with asyncio.timeout(8 * TIMEOUT):
            done, _ = await asyncio.wait({sending, worker}, return_when=asyncio.FIRST_COMPLETED)
            if worker in done and not sending.done():
                worker.result()  # what went wrong on the worker's side
            assert await sending == 0
            assert await worker == 0
    finally:
        for task in (sending, worker):
            task.cancel()
        await asyncio.gather(sending, worker, return_exceptions=True)
    assert (out / "job.bin").read_bytes() == job.read_bytes()
    assert "verified" in capsys.readouterr().err
