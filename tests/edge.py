"""The real edge (Debian package ``caddy``) run with the deployment's Caddyfile, for the tests
that reach the services as peers do: over https and wss, through the proxy."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from container_checks import ROOT
from devstack.ports import AddressInUse, free_port, says_address_in_use
from support import TIMEOUT, terminate
from tools import require

CADDYFILE = ROOT / "services" / "edge" / "Caddyfile"
CA_FILE = Path("data", "caddy", "pki", "authorities", "local", "root.crt")  # under the edge's directory


@dataclass(frozen=True)
class Edge:
    url: str  # https://localhost:PORT
    ca_file: Path  # Caddy's local root CA, which signed the edge's certificate
    health_url: str
    log: list[dict[str, Any]]  # every JSON line Caddy has written so far
    _logged: asyncio.Condition = field(default_factory=asyncio.Condition)  # notified at each

    @property
    def ws_url(self) -> str:
        return "wss" + self.url.removeprefix("https")

    async def logged(self, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first log entry that ``matches``, once Caddy has written it."""

        def first() -> dict[str, Any] | None:
            return next((entry for entry in self.log if matches(entry)), None)

        async with asyncio.timeout(TIMEOUT), self._logged:
            found = await self._logged.wait_for(first)
        assert found is not None
        return found


@asynccontextmanager
async def caddy_edge(
    directory: Path,
    *,
    auth_api: str,
    rooms_api: str,
    ws_relay: str,
    https_port: int | None = None,
    relay_nodes_dir: Path | None = None,
    log_level: str | None = None,
) -> AsyncIterator[Edge]:
    """Caddy with services/edge/Caddyfile as a deployment runs it (EDGE_TLS=internal: a
    certificate for localhost from Caddy's local CA), in front of these upstreams
    (host:port; ``ws_relay`` may list several relay nodes, space-separated), on free ports
    (or ``https_port``, when the relay nodes' public URLs must name it before the edge
    starts), its state in ``directory``; the relay node routes from ``relay_nodes_dir``
    (none by default). With ``log_level`` (DEBUG: each dial of an upstream is logged), the
    Caddyfile is adapted to Caddy's JSON and run with that level, the config otherwise the
    same. AddressInUse when another program took one of its ports before it listened: the
    caller starts it again on others (devstack.ports)."""
    binary = require("caddy")
    https_port = https_port or free_port()
    http_port, health_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("EDGE_", "XDG_"))}
    env.update(
        HOME=str(directory),
        XDG_DATA_HOME=str(directory / "data"),
        XDG_CONFIG_HOME=str(directory / "config"),
        EDGE_DOMAIN="localhost",
        EDGE_TLS="internal",
        EDGE_HTTPS_PORT=str(https_port),
        EDGE_HTTP_PORT=str(http_port),
        EDGE_HEALTH_PORT=str(health_port),
        EDGE_ADMIN="off",
        EDGE_AUTH_API=auth_api,
        EDGE_ROOMS_API=rooms_api,
        EDGE_WS_RELAY=ws_relay,
        EDGE_RELAY_NODES_DIR=str(relay_nodes_dir or directory / "no-relay-nodes"),
    )
    config = ["--config", str(CADDYFILE), "--adapter", "caddyfile"]
    if log_level is not None:
        config = ["--config", str(await adapted(binary, env, directory, log_level))]
    process = await asyncio.create_subprocess_exec(
        binary, "run", *config, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    edge = Edge(f"https://localhost:{https_port}", directory / CA_FILE, f"http://127.0.0.1:{health_port}/healthz", [])
    ready = asyncio.get_running_loop().create_future()
    waiting_for = {"serving initial configuration", "certificate obtained successfully"}

    output: list[str] = []

    async def read(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            output.append(line.decode(errors="replace"))
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            async with edge._logged:
                edge.log.append(entry)
                edge._logged.notify_all()
            waiting_for.discard(entry.get("msg", ""))
            if not waiting_for and not ready.done():
                ready.set_result(None)
        if not ready.done():
            failure = AddressInUse if says_address_in_use("".join(output)) else RuntimeError
            ready.set_exception(failure(f"caddy exited before serving: {output[-3:]}"))

    reader = asyncio.create_task(read(process.stderr))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 6 * TIMEOUT)
        yield edge
    finally:
        await terminate(process)
        await reader


async def adapted(binary: str, env: dict[str, str], directory: Path, log_level: str) -> Path:
    """The Caddyfile adapted to Caddy's JSON as ``env`` configures it, logging at ``log_level``."""
    adapting = await asyncio.create_subprocess_exec(
        binary,
        "adapt",
        "--config",
        str(CADDYFILE),
        "--adapter",
        "caddyfile",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(adapting.communicate(), 2 * TIMEOUT)
    assert adapting.returncode == 0, err.decode()
    config = json.loads(out)
    config.setdefault("logging", {}).setdefault("logs", {}).setdefault("default", {})["level"] = log_level
    path = directory / "caddy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path
