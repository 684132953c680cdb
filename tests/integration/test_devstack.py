"""``make dev`` as a developer runs it: the real entry point in its own process, driven by the seed's flow.

Each test starts ``python -m devstack`` (what the Makefile's ``dev`` target runs) on port 0,
waits for its READY line, signs in, creates a room, registers two peers and relays offer,
answer and candidates both ways over raw WebSockets, checks the health endpoints, then
stops it with SIGTERM or Ctrl-C (SIGINT to the process group) and proves nothing it
started is left: exit code 0, "stopped" printed, the ports refuse connections and the
process group is empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from aioice.turn import create_turn_endpoint

from coturn import require_coturn
from devstack.__main__ import parse_args
from support import TIMEOUT, Peer, create_room, sign_in, unique
from ws_relay.close_codes import REASONS, CloseCode

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 6 * TIMEOUT  # emulator, bootstrap and three servers: about 2 s here
STOP_TIMEOUT = 4 * TIMEOUT  # above the relay's worst case with stuck clients (5 s grace + 10 s)
READY = re.compile(r"READY api=(?P<api>http://\S+) relay=(?P<relay>ws://\S+) aws=(?P<aws>http://\S+)")
CANDIDATE = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}


@dataclass
class DevStack:
    """A running ``python -m devstack`` and what its banner announced."""

    process: asyncio.subprocess.Process
    banner: list[str]
    api: str
    relay: str
    aws: str
    stderr_path: Path

    @property
    def relay_http(self) -> str:
        return "http://" + self.relay.removeprefix("ws://")

    @property
    def embedded_emulator(self) -> bool:
        return any("embedded moto server" in line for line in self.banner)

    def stderr(self) -> str:
        return _read_log(self.stderr_path)


def _read_log(path: Path) -> str:
    return path.read_text(errors="replace")


def _group_alive(pgid: int) -> bool:
    """Whether any process is left in the session's process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def _read_banner(process: asyncio.subprocess.Process, stderr_path: Path) -> tuple[list[str], re.Match[str]]:
    """stdout up to and including the READY line (fails with the logs if it never comes)."""
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:
                raw = await process.stdout.readline()
                if not raw:
                    code = await process.wait()
                    pytest.fail(f"devstack exited ({code}) before READY:\n{lines}\n{_read_log(stderr_path)}")
                line = raw.decode().rstrip("\n")
                lines.append(line)
                if match := READY.fullmatch(line):
                    return lines, match
    except TimeoutError:
        pytest.fail(f"no READY line within {STARTUP_TIMEOUT} s:\n{lines}\n{_read_log(stderr_path)}")


@asynccontextmanager
async def dev_stack(tmp_path: Path) -> AsyncIterator[DevStack]:
    """``python -m devstack`` on port 0 in a session of its own; killed (with its group) whatever happens."""
    stderr_path = tmp_path / "devstack.stderr.jsonl"
    with stderr_path.open("wb") as stderr:  # a file, not a pipe: the child never blocks on its logs
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "devstack", "--api-port", "0", "--relay-port", "0", "--aws-port", "0"),
            *("--turn-port", "0"),
            *("--table-prefix", f"{unique('devstack')}-"),
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # its own process group: what it starts can be found and killed
        )
    try:
        banner, ready = await _read_banner(process, stderr_path)
        yield DevStack(process, banner, ready["api"], ready["relay"], ready["aws"], stderr_path)
    finally:
        if process.returncode is None or _group_alive(process.pid):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        # Reads stdout to EOF and reaps the child, so the pipe transport is closed before the loop is.
        await asyncio.wait_for(process.communicate(), TIMEOUT)


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return await client.get(url)


async def _refused(url: str) -> bool:
    """Whether a TCP connect to the URL's host and port is refused."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    try:
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def _assert_healthy(stack: DevStack) -> None:
    """Liveness and readiness answer 200 on rooms-api, auth-api and the relay, each with its own checks passing."""
    for base, dependency in ((stack.api, "dynamodb"), (f"{stack.api}/auth-api", "cognito")):
        healthz, readyz = await _get(f"{base}/healthz"), await _get(f"{base}/readyz")
        assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"}), (base, healthz.text)
        ready = {"status": "ready", "checks": {dependency: "ok", "jwks": "ok"}, "failing": []}
        assert (readyz.status_code, readyz.json()) == (200, ready), (base, readyz.text)
    healthz, readyz = await _get(f"{stack.relay_http}/healthz"), await _get(f"{stack.relay_http}/readyz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
    ready = {"status": "ready", "checks": {"dynamodb": "ok", "jwks": "ok"}, "failing": []}
    assert (readyz.status_code, readyz.json()) == (200, ready), readyz.text


async def _seed_flow(stack: DevStack) -> tuple[Peer, Peer]:
    """The seed client's flow against the stack; returns the two registered peers, still connected."""
    worker_user, client_user = await sign_in(stack.api), await sign_in(stack.api)
    room = await create_room(stack.api, worker_user)
    worker_id, client_id = unique("Worker"), unique("Client")
    worker = await Peer.connect(stack.relay, seed=True)
    client = await Peer.connect(stack.relay, seed=True)
    try:
        for peer, peer_id, user in ((worker, worker_id, worker_user), (client, client_id, client_user)):
            await peer.send(
                {
                    "type": "register",
                    "peer_id": peer_id,
                    "room_id": room.room_id,
                    "token": room.token,
                    "id_token": user.id_token,
                },
            )
            # The seed's fields, unchanged (v2 adds "peers", which seed clients ignore).
            registered = {"type": "registered_auth", "room_id": room.room_id, "token": room.token, "peer_id": peer_id}
            reply = await peer.recv()
            assert {key: reply[key] for key in registered} == registered
            peer.peer_id = peer_id
        # No peer_joined: the seed never sent one, and its clients raise on it.
        offer = {"type": "offer", "sender": client_id, "target": worker_id, "sdp": "v=0 offer"}
        await client.send(offer)
        assert await worker.recv() == offer
        answer = {"type": "answer", "sender": worker_id, "target": client_id, "sdp": "v=0 answer"}
        await worker.send(answer)
        assert await client.recv() == answer

        for sender, sender_id, receiver, receiver_id in (
            (client, client_id, worker, worker_id),
            (worker, worker_id, client, client_id),
        ):
            candidate = {"type": "candidate", "sender": sender_id, "target": receiver_id, "candidate": CANDIDATE}
            await sender.send(candidate)
            assert await receiver.recv() == candidate
        await worker.barrier()
        await client.barrier()
    except BaseException:
        await worker.close()
        await client.close()
        raise
    return worker, client


async def _stop(stack: DevStack, sig: signal.Signals, *, group: bool) -> list[str]:
    """Send the signal (to the process or, like Ctrl-C in a terminal, to its group); its stdout after READY."""
    process = stack.process
    assert process.stdout is not None
    if group:
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    try:  # EOF comes once every process holding the pipe (its children too) has exited
        stdout = await asyncio.wait_for(process.stdout.read(), STOP_TIMEOUT)
        await asyncio.wait_for(process.wait(), TIMEOUT)
    except TimeoutError:
        if process.returncode is None:
            pytest.fail(f"devstack still running {STOP_TIMEOUT} s after {sig.name}:\n{stack.stderr()}")
        pytest.fail(f"devstack exited ({process.returncode}) but a process it started still holds its stdout")
    return stdout.decode().splitlines()


async def _assert_nothing_left(stack: DevStack, after: list[str]) -> None:
    """Exit 0, "stopped" printed, every port it listened on refused, no process left in its group."""
    assert stack.process.returncode == 0, stack.stderr()
    assert after == ["stopping...", "stopped"], stack.stderr()
    urls = [stack.api, stack.relay_http, *([stack.aws] if stack.embedded_emulator else [])]
    assert [url for url in urls if not await _refused(url)] == []
    assert not _group_alive(stack.process.pid), "a process devstack started is still in its process group"
    logs = [json.loads(line) for line in stack.stderr().splitlines() if line.startswith("{")]
    assert {entry["event"] for entry in logs} >= {"relay_stopping", "relay_stopped", "Shutting down"}
    assert [entry for entry in logs if entry["level"] not in {"debug", "info"}] == []
    assert "Traceback" not in stack.stderr()


def test_defaults_are_the_seeds_ports() -> None:
    """With no arguments the stack listens on loopback at the seed's ports: APIs 8001, relay 8080
    (AWS 4566, TURN 3478)."""
    config = parse_args([])
    assert (config.host, config.api_port, config.relay_port, config.aws_port) == ("127.0.0.1", 8001, 8080, 4566)
    assert (config.start_turn, config.turn_port) == (True, 3478)  # coturn's standard port
    assert (parse_args(["--no-turn"]).start_turn, parse_args(["--no-turn"]).turn_port) == (False, None)


def test_make_dev_runs_python_m_devstack() -> None:
    """`make dev` ends in the virtual environment's `python -m devstack` (make -n: nothing is run)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "dev"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\S+/bin/python -m devstack", result.stdout.splitlines()[-1]), result.stdout


async def _assert_turn_works(stack: DevStack) -> None:
    """The stack runs coturn, and the TURN credentials it hands out allocate a relay there."""
    require_coturn()
    (line,) = [line for line in stack.banner if line.lstrip().startswith("TURN ")]
    assert "coturn run by this stack" in line, line
    user = await sign_in(stack.api)
    async with httpx.AsyncClient(base_url=stack.api, timeout=TIMEOUT) as client:
        ice = (await client.get("/ice-servers", headers=user.bearer)).json()
    (turn,) = [entry for entry in ice["ice_servers"] if "credential" in entry]
    host, _, rest = turn["urls"][0].removeprefix("turn:").partition(":")
    port = int(rest.partition("?")[0])
    transport, _ = await asyncio.wait_for(
        create_turn_endpoint(asyncio.DatagramProtocol, (host, port), turn["username"], turn["credential"]), 4 * TIMEOUT
    )
    try:
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"  # a relayed address on coturn
    finally:
        transport.close()


async def test_seed_flow_then_sigterm_stops_everything(tmp_path: Path) -> None:
    """Healthy at READY with a working TURN server, the seed flow works, and SIGTERM closes
    live peers (4500) and exits 0 with nothing left (coturn included)."""
    async with dev_stack(tmp_path) as stack:
        assert stack.banner[0] == "signaling dev stack is up"
        await _assert_healthy(stack)
        await _assert_turn_works(stack)
        worker, client = await _seed_flow(stack)
        try:
            after = await _stop(stack, signal.SIGTERM, group=False)
            shutdown = (CloseCode.SERVER_SHUTDOWN, REASONS[CloseCode.SERVER_SHUTDOWN])
            assert await worker.closed() == shutdown
            assert await client.closed() == shutdown
        finally:
            await worker.close()
            await client.close()
        await _assert_nothing_left(stack, after)


async def test_seed_flow_then_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """After the seed flow and its peers leaving, Ctrl-C (SIGINT to the process group) exits 0 with nothing left."""
    async with dev_stack(tmp_path) as stack:
        await _assert_healthy(stack)
        worker, client = await _seed_flow(stack)
        try:
            await client.close()
            await worker.barrier()  # a seed peer hears no peer_left
        finally:
            await worker.close()
            await client.close()
        after = await _stop(stack, signal.SIGINT, group=True)
        await _assert_nothing_left(stack, after)


@pytest.mark.parametrize("flag", ["--aws-port", "--api-port", "--relay-port", "--turn-port"])
def test_a_busy_port_is_reported_not_hung(flag: str) -> None:
    """With a port already taken, devstack exits 1 naming the problem instead of hanging."""
    if flag == "--turn-port":
        require_coturn()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"--aws-port": "0", "--api-port": "0", "--relay-port": "0", "--turn-port": "0"}
        ports[flag] = str(busy.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "devstack", *(arg for pair in ports.items() for arg in pair)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "already in use" in result.stderr.lower()
    assert "READY" not in result.stdout
