"""The CLI as people use it: `rooms create`, then a worker and a client that move a file
over a data channel, the worker replying with the SHA-256 it wrote (run in-process, so
that ICE stays on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest

from cli_checks import cli_transfer
from conftest import RelayFactory
from signaling_sdk import Room, ServiceClient, Session, cli
from signaling_sdk.webrtc import ChannelClosed, connect
from support import TIMEOUT, closed_after_test

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


@pytest.mark.usefixtures("loopback_ice")
async def test_a_worker_refuses_bad_transfers_and_serves_the_next_client(
    api: str, relay_with: RelayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clients that send no file header, a name that is no plain file name, fewer bytes than
    announced, or leave mid-file fail their own transfers only: the worker keeps no partial
    file and serves the next client."""
    async with relay_with(stun_urls=[], turn_urls=[]) as server:
        relay = f"ws://127.0.0.1:{server.port}"
        common = ["--api", api, "--relay", relay]
        assert await cli.run(cli.parse_args([*common, "rooms", "create"])) == 0
        grant = json.loads(capsys.readouterr().out)
        where = ["--room", grant["room_id"], "--token", grant["token"]]
        out = tmp_path / "received"
        worker = asyncio.create_task(
            cli.run(cli.parse_args([*common, "worker", *where, "--peer-id", "W", "--out", str(out)]))
        )
        async with ServiceClient(api) as service:
            identity = await service.sign_in()
        room = Room(grant["room_id"], grant["token"])
        refused: list[list[str | bytes]] = [
            ["not a header"],
            [json.dumps({"name": "..", "size": 1}), b"x", "end"],
            [json.dumps({"name": "short.bin", "size": 10}), b"12345", "end"],
        ]
        try:
            async with asyncio.timeout(8 * TIMEOUT), await Session.open(relay, room, identity, "bad") as bad:
                for messages in refused:
                    link = closed_after_test(await connect(bad, "W", ice_servers=[]))
                    for message in messages:
                        link.channel.send(message)
                    with pytest.raises(ChannelClosed):  # the worker refused it and closed the channel
                        await link.recv()
                    await link.close()

                link = closed_after_test(await connect(bad, "W", ice_servers=[]))
                link.channel.send(json.dumps({"name": "cut.bin", "size": 10}))
                link.channel.send(b"12345")
                await link.close()  # gone with half the file sent

                job = tmp_path / "job.bin"
                job.write_bytes(os.urandom(256 * 1024))
                client = [*common, "client", *where, "--file", str(job), "--worker", "W"]
                assert await cli.run(cli.parse_args(client)) == 0
            assert not worker.done()
            assert sorted(p.name for p in out.iterdir()) == ["job.bin"]
            assert (out / "job.bin").read_bytes() == job.read_bytes()
            errors = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
            assert "(BAD_TRANSFER): the first message is not a file header" in errors
            assert "(BAD_TRANSFER): the file name must be a plain name" in errors
            assert "(BAD_TRANSFER): short.bin: 5 of the 10 bytes announced" in errors
            assert "transfer failed (CHANNEL_CLOSED)" in errors
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
