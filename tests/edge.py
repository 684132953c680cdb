"""The real edge (Debian package ``caddy``) run with the deployment's Caddyfile, for the tests
that reach the services as peers do: over https and wss, through the proxy."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from container_checks import ROOT
from devstack.coturn import free_port
from support import TIMEOUT, terminate
from tools import require

CADDYFILE = ROOT / "services" / "edge" / "Caddyfile"


@dataclass(frozen=True)
class Edge:
    url: str  # https://localhost:PORT
    ca_file: Path  # Caddy's local root CA, which signed the edge's certificate
    health_url: str
    log: list[dict[str, Any]]

    @property
    def ws_url(self) -> str:
        return "wss" + self.url.removeprefix("https")


@asynccontextmanager
async def caddy_edge(
    directory: Path,
    *,
    auth_api: str,
    rooms_api: str,
    ws_relay: str,
    https_port: int | None = None,
    relay_nodes_dir: Path | None = None,
) -> AsyncIterator[Edge]:
    """Caddy with services/edge/Caddyfile as a deployment runs it (EDGE_TLS=internal: a
    certificate for localhost from Caddy's local CA), in front of these upstreams
    (host:port; ``ws_relay`` may list several relay nodes, space-separated), on free ports
    (or ``https_port``, when the relay nodes' public URLs must name it before the edge
    starts), its state in ``directory``; the relay node routes from ``relay_nodes_dir``
    (none by default)."""
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
    process = await asyncio.create_subprocess_exec(
        binary,
        "run",
        "--config",
        str(CADDYFILE),
        "--adapter",
        "caddyfile",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[dict[str, Any]] = []
    ready = asyncio.get_running_loop().create_future()
    waiting_for = {"serving initial configuration", "certificate obtained successfully"}

    async def read(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            log.append(entry)
            waiting_for.discard(entry.get("msg", ""))
            if not waiting_for and not ready.done():
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(RuntimeError(f"caddy exited before serving: {log[-3:]}"))

    reader = asyncio.create_task(read(process.stderr))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 6 * TIMEOUT)
        ca_file = directory / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        yield Edge(f"https://localhost:{https_port}", ca_file, f"http://127.0.0.1:{health_port}/healthz", log)
    finally:
        await terminate(process)
        await reader
