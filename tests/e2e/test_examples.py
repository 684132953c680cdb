"""The SDK's examples do what its README says: the ten-line worker and client, and
``make demo`` (two real CLI processes against a stack of their own)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from types import ModuleType

import pytest

from conftest import RelayFactory
from container_checks import ROOT
from coturn import require_coturn
from signaling_sdk import ServiceClient, Session
from support import TIMEOUT

pytestmark = pytest.mark.e2e

EXAMPLES = ROOT / "sdk" / "python" / "examples"
README = ROOT / "sdk" / "python" / "README.md"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["worker", "client"])
def test_the_readme_shows_the_examples_as_they_are(name: str) -> None:
    """The README's worker and client are the example files, which the next test runs."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    source = (EXAMPLES / f"{name}.py").read_text()
    body = source[source.index("async def main") : source.index('\n\nif __name__ == "__main__":')]
    assert any(body in block for block in blocks), f"README.md does not show {name}.py's main()"


@pytest.mark.usefixtures("loopback_ice")
async def test_the_example_worker_and_client_exchange_a_job(
    api: str, relay_with: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with relay_with(stun_urls=[], turn_urls=[]) as server:
        monkeypatch.setenv("SIGNALING_API_URL", api)
        monkeypatch.setenv("SIGNALING_RELAY_URL", f"ws://127.0.0.1:{server.port}")
        async with ServiceClient(api) as service:
            me = await service.sign_in()
            room = await service.create_room(me)
        observer = await Session.open(f"ws://127.0.0.1:{server.port}", room, me, "observer")
        worker = asyncio.create_task(load("worker").main(room.room_id, room.token))
        try:
            async with asyncio.timeout(6 * TIMEOUT):
                assert (await observer.recv())["peer_id"] == "worker-1"  # joined: the client will find it
                reply = await load("client").main(room.room_id, room.token)
            assert reply == "done: 'train model.zip'"
            assert not worker.done()  # it serves the next client
        finally:
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await worker
            await observer.close()


def test_make_demo_moves_a_file_between_two_cli_processes() -> None:
    """`make demo`'s script, on a stack of its own, through its TURN server only (so the
    WebRTC traffic stays on loopback): the client exits 0 and the file arrives intact."""
    require_coturn()
    demo = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "demo.py"), "--own-stack", "--relay-only", "--size-mib", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # what it starts (stack, emulator, coturn, CLI processes) is its group
    )
    try:
        stdout, stderr = demo.communicate(timeout=24 * TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)  # nothing is left whatever happened
        demo.wait()
    assert demo.returncode == 0, stdout + stderr
    assert "$ signaling" in stdout
    assert "verified: the worker wrote training-job.bin" in stderr
    assert "file intact on disk: True" in stdout
    assert re.search(r"claimed \S+ lease \S+ until ", stderr), stderr  # booked before the job
    # How the connection came out, as the relay was told (connection_report).
    assert re.search(r"connected to \S+: (direct|stun|relay \(TURN\)) \(\w+ -> \w+, \w+\) in \d+ ms", stderr), stderr


def test_make_demo_runs_the_demo_script() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith("python sdk/python/examples/demo.py")
