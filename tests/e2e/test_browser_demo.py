"""The demo page in a real browser: Debian's Chromium, headless, in a network namespace of
its own (WebRTC in Chromium gathers no candidates on loopback), loads the page from the
demo server's origin, signs in and registers at the APIs and the relay on other origins,
discovers the CLI's worker (``signaling worker``, a subprocess), and sends it a 1 MiB file
over a data channel; the worker confirms the SHA-256. Driven over the Chrome DevTools
Protocol with the ``websockets`` client. The finished page's screenshot is written to the
test's folder (docs/browser-demo.png is one)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from api_checks import metric_value
from devstack.stack import StackConfig, StackInfo, StackThread
from support import scaled
from tools import require

pytestmark = pytest.mark.e2e

SIZE = 1024 * 1024
CDP_PORT = 9222  # Chromium's DevTools, on the namespace's loopback (it ignores --remote-debugging-address)
FORWARD_PORT = 9223  # the same, on the namespace's veth address: what the test dials
# Inside the namespace: FORWARD_PORT on its veth address, piped to the DevTools port.
FORWARDER = """
import asyncio, sys
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
async def serve(reader, writer):
    upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)
async def main():
    server = await asyncio.start_server(serve, sys.argv[1], int(sys.argv[3]))
    await server.serve_forever()
asyncio.run(main())
"""


@dataclass(frozen=True)
class Namespace:
    name: str
    host_ip: str  # the root namespace's end of the veth pair: the stack listens here
    browser_ip: str  # the browser's end, inside the namespace


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A network namespace joined to this one by a veth pair, with a default route back."""
    if os.geteuid() != 0:
        pytest.skip("the browser test creates a network namespace: it needs root")
    if shutil.which("ip") is None:
        pytest.skip("the browser test creates a network namespace: `ip` (iproute2) is missing")
    tag = os.getpid() % 250 + 1
    ns, host_end, ns_end = (
        Namespace(f"sigbrowser{os.getpid()}", f"10.231.{tag}.1", f"10.231.{tag}.2"),
        f"sgh{tag}",
        f"sgn{tag}",
    )
    try:
        _ip("netns", "add", ns.name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/24", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", ns.name, "addr", "add", f"{ns.browser_ip}/24", "dev", ns_end)
        _ip("-n", ns.name, "link", "set", ns_end, "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
        _ip("-n", ns.name, "route", "add", "default", "via", ns.host_ip)
        yield ns
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_end)
        _ip("netns", "del", ns.name)


@pytest.fixture
def browser_stack(namespace: Namespace) -> Iterator[StackInfo]:
    """The stack on the veth address, with the demo page on a port (an origin) of its own."""
    runner = StackThread(
        StackConfig(
            host=namespace.host_ip,
            api_port=0,
            relay_port=0,
            aws_port=0,
            demo_port=0,
            turn_port=None,
            table_prefix="browser-",
            log_level="WARNING",
        )
    )
    info = runner.start()
    try:
        yield info
    finally:
        runner.stop()


class DevTools:
    """One page target over the DevTools protocol: commands, and the events seen meanwhile."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.console: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        command_id = next(self.ids)
        self.ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=scaled(30)))
            if message.get("id") == command_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        params = message.get("params", {})
        if message.get("method") == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif message.get("method") == "Runtime.exceptionThrown":
            self.console.append(
                f"exception: {params.get('exceptionDetails', {}).get('exception', {}).get('description')}"
            )

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float) -> Any:
        deadline = time.monotonic() + scaled(seconds)
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        state = self.evaluate("JSON.stringify(window.demo || null)")
        raise AssertionError(f"timed out waiting for {expression}; page state {state}; console {self.console}")


@pytest.fixture
def chromium(namespace: Namespace, browser_stack: StackInfo, tmp_path: Path) -> Iterator[str]:
    """Chromium headless in the namespace; its DevTools URL on the namespace's address."""
    binary = require("chromium")
    log = tmp_path / "chromium.log"
    log_file = log.open("wb")
    ports = [namespace.browser_ip, str(CDP_PORT), str(FORWARD_PORT)]
    forwarder = subprocess.Popen(
        ["ip", "netns", "exec", namespace.name, sys.executable, "-c", FORWARDER, *ports],
        start_new_session=True,
    )
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            namespace.name,
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain host candidates for aiortc
            f"--remote-debugging-port={CDP_PORT}",
            "--remote-allow-origins=*",
            # The page is on the veth address, not 127.0.0.1: a secure context only by this
            # flag (WebCrypto's SHA-256 needs one), as it is on 127.0.0.1 under `make dev`.
            f"--unsafely-treat-insecure-origin-as-secure={browser_stack.demo_url.rstrip('/')}",
            f"--user-data-dir={tmp_path / 'profile'}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        start_new_session=True,
    )
    base = f"http://{namespace.browser_ip}:{FORWARD_PORT}"
    try:
        deadline = time.monotonic() + scaled(30)
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{base}/json/version", timeout=2).raise_for_status()
                break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        for started in (process, forwarder):
            os.killpg(started.pid, signal.SIGTERM)
            started.wait(timeout=30)
        log_file.close()


def _page(base: str) -> str:
    """The first page's DevTools WebSocket, through the forwarder."""
    deadline = time.monotonic() + scaled(10)
    while not (pages := [t for t in httpx.get(f"{base}/json/list", timeout=5).json() if t.get("type") == "page"]):
        assert time.monotonic() < deadline, "Chromium opened no page"
        time.sleep(0.2)
    path = urlsplit(str(pages[0]["webSocketDebuggerUrl"])).path  # its host is the one asked, or loopback
    return base.replace("http:", "ws:") + path


def _signaling(info: StackInfo, *args: str) -> list[str]:
    return [sys.executable, "-m", "signaling_sdk.cli", "--api", info.api_url, "--relay", info.relay_url, *args]


def test_a_page_from_another_origin_sends_a_file_the_worker_hashes(
    browser_stack: StackInfo, chromium: str, tmp_path: Path
) -> None:
    info = browser_stack
    assert info.demo_url
    assert not info.demo_url.startswith(info.api_url)  # another origin than the API's
    room = json.loads(
        subprocess.run(_signaling(info, "rooms", "create"), capture_output=True, text=True, check=True).stdout
    )
    job = tmp_path / "training-job.bin"
    job.write_bytes(os.urandom(SIZE))
    expected = hashlib.sha256(job.read_bytes()).hexdigest()
    received = tmp_path / "received"
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        _signaling(
            info,
            "worker",
            "--room",
            room["room_id"],
            f"--token={room['token']}",
            "--peer-id",
            "gpu-worker-1",
            "--out",
            str(received),
            "--once",
            "--tag",
            "gpu",
            "--tag",
            "cuda",
            "--gpu-name",
            "NVIDIA L4",
            "--gpu-memory-mb",
            "24576",
        ),
        stdout=worker_log,
        stderr=worker_log,
    )
    try:
        with connect(_page(chromium), max_size=None, open_timeout=scaled(10)) as ws:
            page = DevTools(ws)
            page.call("Runtime.enable")
            page.call("Page.enable")
            page.call("Emulation.setDeviceMetricsOverride", width=900, height=900, deviceScaleFactor=1, mobile=False)
            query = urlencode({"room": room["room_id"], "token": room["token"]})
            page.call("Page.navigate", url=f"{info.demo_url}?{query}")
            # The worker registers in its own time: join again until discovery finds it.
            deadline = time.monotonic() + scaled(30)
            while not page.evaluate("window.demo && window.demo.workers.length > 0"):
                assert time.monotonic() < deadline, f"no worker discovered; console {page.console}"
                phase = page.evaluate("window.demo && window.demo.phase")
                assert phase != "failed", page.evaluate("JSON.stringify(window.demo.error)")
                if phase == "joined":
                    page.evaluate("document.getElementById('join').click()")
                time.sleep(0.5)
            shown = page.evaluate("document.getElementById('workers').innerText")
            for fact in ("gpu-worker-1", "cuda", "NVIDIA L4", "24576 MB"):  # tags and GPU facts shown
                assert fact in shown
            document = page.call("DOM.getDocument")
            node = page.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file")
            page.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(job)])
            page.evaluate("document.getElementById('send').click()")
            page.wait_for("['done', 'failed'].includes(window.demo.phase)", 60)
            state = page.evaluate("JSON.stringify(window.demo)")
            assert page.evaluate("window.demo.phase") == "done", f"{state}; console {page.console}"
            assert page.evaluate("window.demo.sha256") == expected
            assert page.evaluate("document.getElementById('sha256').textContent") == expected
            assert page.evaluate("document.getElementById('progress').value") == SIZE
            # The page booked the worker for the transfer and told the relay how it connected.
            assert page.evaluate("window.demo.lease"), state
            shown_connection = page.evaluate("document.getElementById('connection').textContent")
            assert re.search(
                r"(direct|stun|relay) \((host|srflx|prflx|relay) -> (host|srflx|prflx|relay)", shown_connection
            )
            assert re.search(r"in \d+ ms", shown_connection)
            metrics = httpx.get(info.relay_url.replace("ws://", "http://") + "/metrics", timeout=scaled(10)).text
            assert metric_value(metrics, "signaling_claims_total", outcome="granted") >= 1
            assert metric_value(metrics, "signaling_peer_connections_total", outcome="connected") >= 1
            shot = page.call("Page.captureScreenshot", format="png")
            (tmp_path / "browser-demo.png").write_bytes(base64.b64decode(shot["data"]))
        assert worker.wait(timeout=scaled(30)) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait()
        worker_log.close()
    assert hashlib.sha256((received / job.name).read_bytes()).hexdigest() == expected
    said = (tmp_path / "worker.log").read_text()
    assert expected in said  # what the worker said it wrote
    assert "booked by browser-" in said


BOOKING = """
(async () => {
  const m = await import("./sdk/signaling.js");
  const [API, RELAY, room] = ARGS;
  const service = new m.ServiceClient(API);
  const open = async (peerId, options) => m.Session.open(RELAY, room, await service.signIn(), peerId, options);
  const until = async (session, type) => {
    for (;;) {
      const message = await session.recv();
      if (message.type === type) return message;
    }
  };
  const failure = async (promise) => promise.then(() => "granted", (e) => `${e.name} ${e.code}`);
  const out = {};
  const worker = await open("js-worker", { role: "worker", maxClaims: 1 });
  const alice = await open("js-alice", { role: "client" });
  const bob = await open("js-bob", { role: "client" });
  const lease = await alice.claim("js-worker", { ttlSeconds: 30 });
  out.lease = lease instanceof m.Lease && lease.peerId === "js-worker" && lease.ended === null;
  out.booked = (await until(worker, "booked")).by_peer_id;
  out.second = await failure(bob.claim("js-worker"));
  out.heard = (await until(bob, "peer_availability")).available;
  out.available = (await bob.discover({ role: "worker", available: true })).map((p) => p.peer_id);
  const before = lease.expiresAt;
  await lease.renew(60);
  out.renewed = lease.expiresAt - before;
  await lease.release();
  out.released = [lease.ended, alice.leases.length];
  out.workerHeard = (await until(worker, "lease_ended")).reason;
  out.renewAfter = await failure(lease.renew());
  out.withClaim = await bob.withClaim("js-worker", async (held) => [held.peerId, bob.leases.length]);
  out.afterWithClaim = [bob.leases.length, (await until(worker, "lease_ended")).holder_peer_id];
  const held = await alice.claim("js-worker", { ttlSeconds: 30 });
  const ended = new Promise((resolve) => held.addEventListener("ended", (event) => resolve(event.detail)));
  worker.close();
  out.workerLeft = [await ended, (await until(alice, "lease_ended")).reason];
  alice.close();
  bob.close();
  return JSON.stringify(out);
})()
"""


def test_the_browser_client_books_renews_and_releases_a_worker(
    browser_stack: StackInfo, chromium: str, tmp_path: Path
) -> None:
    """signaling.js's booking in the real browser against the relay: one lease per slot,
    renewed, released, kept around a callback, and ended when the worker leaves."""
    info = browser_stack
    room = json.loads(
        subprocess.run(_signaling(info, "rooms", "create"), capture_output=True, text=True, check=True).stdout
    )
    with connect(_page(chromium), max_size=None, open_timeout=scaled(10)) as ws:
        page = DevTools(ws)
        page.call("Runtime.enable")
        page.call("Page.enable")
        page.call("Page.navigate", url=info.demo_url)
        page.wait_for("document.readyState === 'complete'", 10)
        args = [info.api_url, info.relay_url, {"roomId": room["room_id"], "token": room["token"], "wsUrl": ""}]
        out = json.loads(page.evaluate(BOOKING.replace("ARGS", json.dumps(args))))
    assert out["lease"] is True, out
    assert out["booked"] == "js-alice"
    assert out["second"] == "AlreadyClaimed ALREADY_CLAIMED"
    assert out["heard"] is False  # bob heard the worker's one slot taken
    assert out["available"] == []
    assert out["renewed"] >= 25  # 30 s claimed, renewed for 60 s
    assert out["released"] == ["released", 0]
    assert out["workerHeard"] == "released"
    assert out["renewAfter"] == "LeaseNotFound LEASE_NOT_FOUND"  # refused without asking the relay
    assert out["withClaim"] == ["js-worker", 1]
    assert out["afterWithClaim"] == [0, "js-bob"]  # released when the callback returned
    assert out["workerLeft"] == ["peer_left", "peer_left"]
