"""``make bench``: every scenario against the three systems, one after another, on loopback.

    python -m bench.run [--quick] [--systems relay,peerjs,null] [--no-report]

Writes bench/results/<YYYY-MM-DD>.json (quick runs: <date>-quick.json), then docs/benchmarks.md
and the plot from it (bench.report). Each system runs alone on the machine while measured:

- relay: the stack as ``make dev`` starts it (devstack: the AWS emulator and both APIs) plus
  ws-relay in its own process (``python -m ws_relay.main``, as in production), so its RSS and
  CPU are the relay's alone. Its limits are raised for the load (SIGNALING_* below);
- peerjs: PeerJS server (bench/peerjs, installed by ``npm ci``), path /bench;
- null: bench.nullrelay, websockets forwarding frames unread.

The load generator (bench.loadgen) is a separate process for every scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from bench.loadgen import percentiles
from bench.nullrelay import raise_fd_limit
from devstack.background import READY, BackgroundStack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEERJS = ROOT / "bench" / "peerjs"
PEERJS_BIN = PEERJS / "node_modules" / "peer" / "dist" / "bin" / "peerjs.js"
HOST = "127.0.0.1"

# The relay's limits, raised for a load that comes from one address and pushes thousands of
# messages per second through a few connections; everything else keeps its default.
RELAY_BENCH_ENV = {
    "SIGNALING_MAX_CONNECTIONS": "30000",
    "SIGNALING_MAX_CONNECTIONS_PER_IP": "30000",
    "SIGNALING_MAX_UNREGISTERED_PER_IP": "30000",
    "SIGNALING_REGISTER_RATE_PER_MINUTE_PER_IP": "100000000",
    "SIGNALING_REGISTER_BURST_PER_IP": "1000000",
    "SIGNALING_MESSAGES_PER_SECOND": "100000000",
    "SIGNALING_MESSAGE_BURST": "1000000",
    "SIGNALING_TURN_PROBE_INTERVAL_SECONDS": "0",
}
# The abuse scenario's relay keeps every limit at its default (it is what is measured).
RELAY_ABUSE_ENV = {"SIGNALING_TURN_PROBE_INTERVAL_SECONDS": "0"}
# The APIs' per-IP and per-identity limits, for the rooms and identities the generator makes.
STACK_BENCH_ENV = {
    "SIGNALING_SIGNIN_RATE_PER_MINUTE": "1000000",
    "SIGNALING_SIGNIN_BURST": "100000",
    "SIGNALING_ROOM_CREATE_RATE_PER_MINUTE": "1000000",
    "SIGNALING_ROOM_CREATE_BURST": "100000",
}
# PeerJS caps a process at 5,000 connections by default: raised like ours for the memory scenario.
PEERJS_CONCURRENT_LIMIT = "30000"


@dataclass(frozen=True)
class Sizes:
    register: dict[str, Any]
    churn: dict[str, Any]
    latency: dict[str, Any]
    ladder: dict[str, Any]
    memory: tuple[int, ...]
    datachannel: dict[str, Any]
    abuse: dict[str, Any]
    overload: dict[str, Any]
    profile_seconds: float
    profile_rate: float


FULL = Sizes(
    register={"count": 500, "concurrency": 1},
    churn={"duration": 10, "concurrency": 16},
    latency={"pairs": 20, "duration": 10, "rates": [500, 2000, 5000]},
    ladder={
        "pairs": 20,
        "duration": 5,
        "rates": [1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 15000, 20000, 25000, 30000, 40000],
        "stop_on_fail": True,
    },
    memory=(1000, 10000),
    datachannel={"repeat": 5},
    abuse={"duration": 10, "rate": 50, "audience": 30, "ping_interval": 0.04},  # 25 pings/s: within its limit
    # 3x the highest sustained rate of this run (rate: without one), over 20 pairs for 10 s.
    overload={"pairs": 20, "duration": 10, "factor": 3, "rate": 24000, "settle": 75},
    profile_seconds=10,
    profile_rate=2000,
)
QUICK = Sizes(
    register={"count": 20, "concurrency": 1},
    churn={"duration": 2, "concurrency": 4},
    latency={"pairs": 4, "duration": 1, "rates": [500, 2000, 5000]},
    ladder={"pairs": 4, "duration": 1, "rates": [1000, 4000, 16000], "stop_on_fail": True},
    memory=(100, 300),
    datachannel={"repeat": 1},
    abuse={"duration": 2, "rate": 50, "audience": 5, "ping_interval": 0.04},
    overload={"pairs": 4, "duration": 2, "factor": 3, "rate": 12000, "settle": 75},
    profile_seconds=2,
    profile_rate=1000,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A port free now, for a server that must be told it (PeerJS, the relay process). Not the
    tests' retry (devstack.ports): a program that takes it first makes that server fail to
    listen, the run stops with "... did not become ready", and running it again picks another."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` from /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``check()`` until true (a server's readiness; this is a benchmark, not a test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = Counter(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0]
    node = shutil.which("node")
    node_version = None
    if node:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)  # noqa: S603
        node_version = done.stdout.strip()

    return {
        "cores": os.cpu_count(),
        "cpu_model": ", ".join(models) or platform.processor() or "unknown",
        "ram_gib": round(int(meminfo.split()[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node_version,
        "websockets": importlib.metadata.version("websockets"),
        "peerjs": json.loads((PEERJS / "package.json").read_text())["dependencies"]["peer"],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# Systems ------------------------------------------------------------------------------


@dataclass
class Server:
    """A system under test: its pid (for RSS and CPU) and where the generator connects."""

    name: str
    pid: int
    url: str
    api: str | None = None
    stack_pid: int | None = None  # ws-relay: the dev stack (emulator and APIs) it depends on


@contextlib.contextmanager
def null_relay() -> Iterator[Server]:
    process = subprocess.Popen(  # noqa: S603 - this interpreter, our module
        [sys.executable, "-m", "bench.nullrelay", "--host", HOST, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError("the null relay did not start")
        yield Server("null", process.pid, f"ws://{HOST}:{line[1]}")
    finally:
        stop_process(process)


@contextlib.contextmanager
def peerjs() -> Iterator[Server]:
    if not PEERJS_BIN.exists():
        raise SystemExit(f"{PEERJS_BIN} is missing: run `npm ci` in {PEERJS} (make bench does)")
    port = free_port()
    command = ["node", str(PEERJS_BIN), "--host", HOST, "--port", str(port), "--path", "/bench"]
    process = subprocess.Popen(  # noqa: S603 - node and the pinned PeerJS server
        [*command, "--concurrent_limit", PEERJS_CONCURRENT_LIMIT],
        cwd=PEERJS,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: httpx.get(f"http://{HOST}:{port}/bench/", timeout=2).is_success, "PeerJS server")
        yield Server("peerjs", process.pid, f"ws://{HOST}:{port}/bench")
    finally:
        stop_process(process)


def start_stack(*options: str) -> BackgroundStack:
    """devstack.background.start(), through bench.emulator (moto's transactions made O(1))."""
    command = [sys.executable, "-m", "bench.emulator", "--api-port", "0", "--relay-port", "0", "--aws-port", "0"]
    process = subprocess.Popen(  # noqa: S603 - this interpreter, our module
        # No demo page: it has a fixed port, and the abuse scenario runs a second stack.
        [*command, "--turn-port", "0", "--no-demo", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if match := READY.fullmatch(line.strip()):
            return BackgroundStack(process, match["api"], match["relay"], match["aws"])
    BackgroundStack(process, "", "", "").stop()
    raise RuntimeError(f"the dev stack did not start (exit {process.returncode})")


@contextlib.contextmanager
def relay(logs: IO[str], limits: dict[str, str] = RELAY_BENCH_ENV) -> Iterator[Server]:
    """The dev stack (emulator, APIs) and ws-relay as its own process on the stack's tables,
    with ``limits`` (raised for load, or the defaults for the abuse scenario)."""
    from devstack.stack import EMULATOR_CREDENTIALS
    from signaling_shared.bootstrap import bootstrap
    from signaling_shared.settings import CommonSettings, Environment

    os.environ.update(STACK_BENCH_ENV)
    for key, value in EMULATOR_CREDENTIALS.items():  # moto takes any; boto3 signs with some
        os.environ.setdefault(key, value)
    prefix = "bench-"
    stack = start_stack("--table-prefix", prefix, "--no-turn", "--log-level", "WARNING")
    process: subprocess.Popen[Any] | None = None
    try:
        common = CommonSettings(environment=Environment.DEVELOPMENT, aws_endpoint_url=stack.aws, table_prefix=prefix)
        resources = bootstrap(common)  # idempotent: the stack made them; this reads their ids
        port = free_port()
        env = {
            **os.environ,
            "SIGNALING_ENVIRONMENT": "development",
            "SIGNALING_HOST": HOST,
            "SIGNALING_PORT": str(port),
            "SIGNALING_AWS_ENDPOINT_URL": stack.aws,
            "SIGNALING_TABLE_PREFIX": prefix,
            "SIGNALING_COGNITO_USER_POOL_ID": resources.user_pool_id,
            "SIGNALING_COGNITO_CLIENT_ID": resources.client_id,
            "SIGNALING_NODE_ID": "bench-relay",
            **limits,
        }
        process = subprocess.Popen(  # this interpreter, the relay's own entry point
            [sys.executable, "-m", "ws_relay.main"], cwd=ROOT, env=env, stdout=logs, stderr=logs
        )
        wait_until(lambda: httpx.get(f"http://{HOST}:{port}/healthz", timeout=2).is_success, "ws-relay")
        yield Server("relay", process.pid, f"ws://{HOST}:{port}", api=stack.api, stack_pid=stack.process.pid)
    finally:
        if process is not None:
            stop_process(process)
        stack.stop()


# Scenarios ------------------------------------------------------------------------------


def job(server: Server, scenario: str, params: dict[str, Any]) -> str:
    """The generator's command line argument: what to run, against which server."""
    return json.dumps(
        {
            "system": server.name,
            "url": server.url,
            "api": server.api,
            "server_pid": server.pid,
            "stack_pid": server.stack_pid,
            "scenario": scenario,
            "params": params,
        }
    )


def loadgen(server: Server, scenario: str, params: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603 - this interpreter, our module
        [sys.executable, "-m", "bench.loadgen", job(server, scenario, params)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {scenario} on {server.name} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def memory(server: Server, count: int) -> dict[str, Any]:
    """RSS of the server before and with ``count`` idle registered connections."""
    before = rss_kib(server.pid)
    process = subprocess.Popen(  # noqa: S603 - this interpreter, our module
        [sys.executable, "-m", "bench.loadgen", job(server, "hold", {"count": count, "concurrency": 50})],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        if not line.startswith("HELD "):
            raise RuntimeError(f"hold on {server.name} failed")
        held = json.loads(line[5:])
        time.sleep(2)  # let the last frames and timers settle before reading RSS
        during = rss_kib(server.pid)
        process.stdin.write("\n")
        process.stdin.flush()
        final = json.loads(process.stdout.readline())
        process.wait(120)
    finally:
        stop_process(process)
    registered = max(int(held["registered"]), 1)
    return {
        "connections": count,
        "registered": held["registered"],
        "still_open_at_release": final.get("still_open_at_release"),
        "register_seconds": held["seconds"],
        "rss_before_kib": before,
        "rss_held_kib": during,
        "kib_per_connection": round((during - before) / registered, 2),
        "errors": held["errors"],
    }


class Watch(threading.Thread):
    """While a scenario runs: ``/healthz`` asked every ``interval`` (each answer's time, or
    its failure; a new connection each time, as a load balancer's probe) and the server's RSS."""

    def __init__(self, server: Server, interval: float = 0.05, timeout: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.url = server.url.replace("ws://", "http://", 1) + "/healthz"
        self.pid, self.interval, self.timeout = server.pid, interval, timeout
        self.answers: list[tuple[float, float]] = []  # (asked at, CLOCK_MONOTONIC; seconds taken)
        self.failures: list[tuple[float, str]] = []
        self.rss: list[int] = []
        self._done = threading.Event()

    def run(self) -> None:
        # One client (building one costs ~25 ms here), no kept-alive connections.
        with httpx.Client(timeout=self.timeout, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            while not self._done.wait(self.interval):
                self.rss.append(rss_kib(self.pid))
                asked, started = time.monotonic(), time.perf_counter()
                try:
                    ok = http.get(self.url).is_success
                except httpx.HTTPError as exc:
                    self.failures.append((asked, type(exc).__name__))
                    continue
                if ok:
                    self.answers.append((asked, time.perf_counter() - started))
                else:
                    self.failures.append((asked, "not 2xx"))

    def during(self, window: list[float]) -> tuple[list[float], list[str]]:
        """The answers' times and the failures of the probes asked within ``window``."""
        first, last = window
        answers = [taken for asked, taken in self.answers if first <= asked <= last]
        return answers, [failure for asked, failure in self.failures if first <= asked <= last]

    def stop(self) -> None:
        self._done.set()
        self.join()


def overload(server: Server, params: dict[str, Any], sustained: float | None) -> dict[str, Any]:
    """``factor`` times the highest sustained rate (``rate`` without one) for ``duration``
    seconds, with the relay's health probed and its RSS read throughout."""
    factor = float(params.pop("factor"))
    rate = factor * sustained if sustained else float(params["rate"])
    params["rate"] = round(rate)
    basis = f"{factor:g}x the highest sustained rate ({sustained:,.0f} msg/s)" if sustained else "no sustained rate"
    before = rss_kib(server.pid)
    watch = Watch(server)
    watch.start()
    try:
        result = loadgen(server, "overload", params)
    finally:
        watch.stop()
    # The load and its settling only: not the generator's setup, nor its closing of every socket.
    answers, failures = watch.during(result["window"])
    peak = max(watch.rss, default=before)
    result.update(
        basis=basis,
        rss_before_kib=before,
        rss_peak_kib=peak,
        rss_after_kib=rss_kib(server.pid),
        rss_growth_mib=round((peak - before) / 1024, 1),
        healthz=percentiles(answers),
        healthz_failures=len(failures),
        healthz_first_failure=failures[0] if failures else None,
        healthz_whole_run=percentiles([taken for _, taken in watch.answers]),
    )
    return result


# Raw collapsed stacks; --nonblocking: the relay is not paused while sampled; --gil: only the
# thread holding the GIL is sampled, so the shares are of the interpreter's work (wall-clock
# samples put the time a call waits in the kernel on that call: 49 % on transport.write).
SPY_OPTIONS = ("--rate", "250", "--format", "raw", "--nonblocking", "--gil")


def profile(server: Server, sizes: Sizes, out: Path, *, registrations: bool = False) -> dict[str, Any]:
    """py-spy samples the relay while the generator holds it at ``profile_rate`` messages/s
    (from the moment its pairs are registered: the relaying steady state only), or, with
    ``registrations``, while peers register one at a time."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        return {"error": "py-spy is not installed (requirements/bench.txt)"}
    scenario = "register" if registrations else "latency"
    params: dict[str, Any] = {"pairs": 10, "duration": sizes.profile_seconds + 1, "rates": [sizes.profile_rate]}
    if registrations:
        params = {"count": int(sizes.profile_seconds * 60), "concurrency": 1}  # outlasts the sampling
    params["announce"] = True
    job = {
        "system": server.name,
        "url": server.url,
        "api": server.api,
        "server_pid": server.pid,
        "stack_pid": server.stack_pid,
    }
    generator = subprocess.Popen(  # noqa: S603 - this interpreter, our module
        [sys.executable, "-m", "bench.loadgen", json.dumps({**job, "scenario": scenario, "params": params})],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert generator.stdout is not None
    try:
        if generator.stdout.readline().strip() != "PAIRED":
            raise RuntimeError("the profiled load did not start")
        spy = subprocess.run(  # noqa: S603 - the pinned py-spy, our server's pid
            [
                py_spy,
                "record",
                "--pid",
                str(server.pid),
                "--duration",
                str(int(sizes.profile_seconds)),
                "--output",
                str(out),
                *SPY_OPTIONS,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        load = json.loads(generator.stdout.readline())
        generator.wait(60)
    finally:
        stop_process(generator)
    if spy.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed: {spy.stderr[-500:]}"}
    if registrations:
        return {"seconds": sizes.profile_seconds, "load": load, **summarise(out)}
    return {"rate": sizes.profile_rate, "seconds": sizes.profile_seconds, "load": load["steps"][0], **summarise(out)}


# Leaves where a thread waits: the event loop in epoll, the AWS I/O threads for work.
IDLE_LEAVES = ("EpollSelector.select (selectors.py)", "_worker (thread.py)", "Condition.wait (threading.py)")


def frame_name(frame: str) -> str:
    """'function (path/file.py:line)' -> 'function (file.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit('/', 1)[-1].split(':', 1)[0]})" if where else name


def summarise(collapsed: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the busy samples, per function, from py-spy's raw stacks."""
    busy = idle = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";")]
        if frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / max(busy, 1), 1)] for name, n in counter.most_common(top)]

    return {
        "samples": busy + idle,
        "busy_samples": busy,
        "idle_percent": round(100 * idle / max(busy + idle, 1), 1),
        "self": shares(own),
        "inclusive": shares(inclusive),
    }


SCENARIOS = (
    "registration",
    "churn",
    "latency",
    "sustained",
    "profile",
    "profile_registration",
    "datachannel",
    "abuse",
    "overload",
    "memory",
)


def measure(server: Server, sizes: Sizes, results: dict[str, Any], scenarios: set[str], out: Path) -> None:
    """Every scenario in turn; one that fails is recorded under "failures" and the run goes on."""
    for scenario in SCENARIOS:
        if scenario not in scenarios:
            continue
        try:
            measure_one(server, sizes, results, scenario, out)
        except (RuntimeError, subprocess.SubprocessError, json.JSONDecodeError, OSError) as exc:
            log(f"{server.name}: {scenario} FAILED: {str(exc)[-300:]}")
            results["failures"].append({"system": server.name, "scenario": scenario, "error": str(exc)[-1000:]})
    # The machine is shared: how busy it was while this system was measured.
    results["load_average_after"][server.name] = [round(x, 2) for x in os.getloadavg()]


def measure_one(server: Server, sizes: Sizes, results: dict[str, Any], scenario: str, out: Path) -> None:
    name = server.name
    scenarios = {scenario}
    if "registration" in scenarios:
        log(f"{name}: registration latency")
        results["registration"][name] = loadgen(server, "register", dict(sizes.register))
    if "churn" in scenarios:
        log(f"{name}: churn")
        results["churn"][name] = loadgen(server, "churn", dict(sizes.churn))
    if "latency" in scenarios:
        log(f"{name}: latency at fixed rates")
        results["latency"][name] = loadgen(server, "latency", dict(sizes.latency))
    if "sustained" in scenarios:
        log(f"{name}: highest sustained rate")
        ladder = loadgen(server, "latency", dict(sizes.ladder))
        passed = [step["achieved_rate"] for step in ladder["steps"] if step["sustained"]]
        ladder["max_sustained_rate"] = max(passed) if passed else 0
        ladder["first_failed"] = next((step["rate"] for step in ladder["steps"] if not step["sustained"]), None)
        results["sustained"][name] = ladder
    if name == "relay" and "profile" in scenarios:
        log("relay: profile under load (py-spy)")
        results["profile"] = profile(server, sizes, out.with_suffix(".relay.collapsed"))
    if name == "relay" and "profile_registration" in scenarios:
        log("relay: profile of registrations (py-spy)")
        results["profile_registration"] = profile(
            server, sizes, out.with_suffix(".registration.collapsed"), registrations=True
        )
    if name == "relay" and "datachannel" in scenarios:
        log("relay: sign-in to open data channel (aiortc)")
        results["datachannel"] = loadgen(server, "datachannel", dict(sizes.datachannel))
    if name == "relay" and "abuse" in scenarios:
        log("relay: abuse at the default limits, a bystander pinging (a relay of its own)")
        with tempfile.TemporaryFile("w") as logs, relay(logs, RELAY_ABUSE_ENV) as defaults:
            results["abuse"] = loadgen(defaults, "abuse", dict(sizes.abuse))
    if name == "relay" and "overload" in scenarios:
        log("relay: overload, 3x its highest sustained rate")
        ladder = results["sustained"].get(name) or {}
        results["overload"] = overload(server, dict(sizes.overload), ladder.get("max_sustained_rate"))
    if "memory" in scenarios:
        results["memory"][name] = []
        for count in sizes.memory:
            log(f"{name}: memory with {count} idle registered connections")
            results["memory"][name].append(memory(server, count))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every scenario at tiny sizes (a minute or two)")
    parser.add_argument("--systems", default="null,peerjs,relay", help="comma-separated (default: %(default)s)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)")
    parser.add_argument("--memory", help="connection counts of the memory scenario, comma-separated")
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    parser.add_argument("--output", type=Path, help="the JSON's path (default: bench/results/<date>[-quick].json)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    raise_fd_limit()
    sizes = QUICK if args.quick else FULL
    if args.memory:
        sizes = dataclasses.replace(sizes, memory=tuple(int(n) for n in args.memory.split(",")))
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    output = args.output or RESULTS / f"{date}{'-quick' if args.quick else ''}.json"
    results: dict[str, Any] = {
        "date": date,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "settings": {
            "relay": RELAY_BENCH_ENV,
            "relay_abuse": RELAY_ABUSE_ENV,
            "stack": STACK_BENCH_ENV,
            "peerjs_concurrent_limit": PEERJS_CONCURRENT_LIMIT,
        },
        "sizes": sizes.__dict__,
        "registration": {},
        "churn": {},
        "latency": {},
        "sustained": {},
        "memory": {},
        "load_average_after": {},
        "failures": [],
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        for name in args.systems.split(","):
            log(f"starting {name}")
            if name == "null":
                system = null_relay()
            elif name == "peerjs":
                system = peerjs()
            elif name == "relay":
                system = relay((Path(work) / "relay.log").open("w"))
            else:
                raise SystemExit(f"unknown system {name!r}")
            with system as server:
                measure(server, sizes, results, set(args.scenarios.split(",")), output)
    results["duration_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    if not args.no_report:
        from bench import report

        quick = [
            "--doc",
            str(RESULTS / "quick" / "benchmarks.md"),
            "--plot",
            str(RESULTS / "quick" / "latency-vs-rate.png"),
        ]
        report.main([str(output), *(quick if args.quick else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
