"""The whole stack in one process: AWS emulator, bootstrap, both APIs and the relay.

Used by ``make dev`` (ports 8001/8080 like the seed) and by the tests (port 0). In
production each service runs alone (its own ``main.py``, its own container); nothing
in the services depends on being composed here.

    HTTP :8001  /anonymous-signin               -> auth-api
                /auth-api/{healthz,readyz,metrics,openapi.json} -> auth-api
                everything else                 -> rooms-api
    WS   :8080  ws-relay (plus /healthz /readyz /metrics)
    AWS  :4566  embedded moto server, unless AWS_ENDPOINT_URL names another emulator
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from auth_api.main import create_app as create_auth_app
from devstack import coturn
from devstack.demo import DemoServer
from rooms_api.main import create_app as create_rooms_app
from signaling_shared.aws import use_io_threads
from signaling_shared.bootstrap import Bootstrapped, bootstrap
from signaling_shared.http import uvicorn_config
from signaling_shared.settings import (
    DEVELOPMENT_TURN_SECRET,
    AuthSettings,
    CommonSettings,
    Environment,
    RelaySettings,
    RoomsSettings,
)
from ws_relay.server import RelayServer

AUTH_PREFIX = "/auth-api"
AUTH_ROUTES = frozenset({"/anonymous-signin"})
# moto accepts any credentials; boto3 only needs some to sign requests.
TURN_HOST = "127.0.0.1"
EMULATOR_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class ComposedApis:
    """One ASGI app in front of auth-api and rooms-api (development only)."""

    def __init__(self, auth: ASGIApp, rooms: ASGIApp) -> None:
        self.auth = auth
        self.rooms = rooms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(AUTH_PREFIX + "/"):
            inner = path[len(AUTH_PREFIX) :]
            await self.auth({**scope, "path": inner, "raw_path": inner.encode()}, receive, send)
        elif scope["type"] == "http" and path in AUTH_ROUTES:
            await self.auth(scope, receive, send)
        else:
            await self.rooms(scope, receive, send)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the stack owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """An ASGI app served by uvicorn on the running loop (port 0 picks a free port)."""

    def __init__(self, app: ASGIApp, settings: CommonSettings, port: int) -> None:
        self._server = _EmbeddedUvicorn(uvicorn_config(app, settings, port))
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.host = settings.host

    async def start(self) -> int:
        # Bind here, not in uvicorn: a busy port is then an OSError for the caller
        # (uvicorn would call sys.exit), and port 0 resolves before serving.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._server.config.port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:  # uvicorn offers no startup event to await
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("HTTP server exited during startup")
            await asyncio.sleep(0.01)
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await self._task
            self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


@dataclass
class StackConfig:
    host: str = "127.0.0.1"
    api_port: int = 8001
    relay_port: int = 8080
    aws_port: int = 4566
    table_prefix: str = "dev-"
    region: str = "us-west-1"
    log_level: str = "INFO"
    # STUN/TURN on 127.0.0.1:turn_port, credentials signed with turn_secret. start_turn
    # (``make dev``): the stack runs coturn there (0: a free port), or hands out no ICE
    # servers if coturn is not installed. Otherwise it hands out URLs for a coturn someone
    # else runs there (the tests start theirs: tests/coturn.py).
    start_turn: bool = False
    turn_port: int | None = 3478  # None: no ICE servers at all
    turn_secret: str = DEVELOPMENT_TURN_SECRET
    # The browser demo page (devstack/demo.py) on its own port, so its own origin, which
    # the services' CORS and Origin allowlists then name. None: no page (0: a free port).
    demo_port: int | None = None
    # Extra settings for every service (e.g. {"room_ttl_seconds": 60}); unknown keys are ignored.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StackInfo:
    api_url: str
    relay_url: str
    aws_endpoint: str
    embedded_emulator: bool
    resources: Bootstrapped
    common: CommonSettings
    turn: str = "none"  # what the TURN line of the banner says
    demo_url: str = ""  # the browser demo page ("" when the stack serves none)

    def banner(self) -> str:
        emulator = "embedded moto server" if self.embedded_emulator else "external emulator (AWS_ENDPOINT_URL)"
        return "\n".join(
            [
                "signaling dev stack is up",
                f"  HTTP APIs  {self.api_url}   POST /anonymous-signin, /create-room, /delete-peers-and-room,"
                " GET|DELETE /rooms/{id}; /docs",
                f"             {self.api_url}{AUTH_PREFIX}/docs for auth-api's own docs and metrics",
                f"  WebSocket  {self.relay_url}   the relay (HTTP /healthz /readyz /metrics on the same port)",
                f"  AWS        {self.aws_endpoint}   {emulator}",
                f"             tables {self.resources.rooms_table}, {self.resources.peers_table},"
                f" {self.resources.messages_table};"
                f" user pool {self.resources.user_pool_id}",
                f"  TURN       {self.turn}",
                *(
                    [f"  Demo page  {self.demo_url}   a browser sends a file to a worker (signaling worker)"]
                    if self.demo_url
                    else []
                ),
                "Ctrl-C stops everything.",
                f"READY api={self.api_url} relay={self.relay_url} aws={self.aws_endpoint}",
            ]
        )


class Stack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self._moto: Any = None
        self._api: HttpServer | None = None
        self.relay: RelayServer | None = None
        self.info: StackInfo | None = None
        self._turn: coturn.Coturn | None = None
        self._stopping = False
        self._turn_dir: tempfile.TemporaryDirectory[str] | None = None
        self._demo: DemoServer | None = None

    def _start_emulator(self) -> str:
        external = os.environ.get("AWS_ENDPOINT_URL")
        if external:
            return external
        from moto.server import ThreadedMotoServer  # dev/test dependency, imported only here

        if self.config.aws_port:
            # moto's server thread dies silently on a busy port and start() then waits forever.
            with socket.socket() as probe:
                probe.bind((self.config.host, self.config.aws_port))
        self._moto = ThreadedMotoServer(ip_address=self.config.host, port=self.config.aws_port, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        return f"http://{host}:{port}"

    def _start_turn(self) -> int | None:
        """coturn on TURN_HOST with the stack's secret; its port (None: coturn is not installed)."""
        if coturn.installed() is None or self.config.turn_port is None:
            return None
        self._turn_dir = tempfile.TemporaryDirectory(prefix="devstack-coturn-")
        self._turn = coturn.Coturn(
            Path(self._turn_dir.name),
            [self.config.turn_secret],
            host=TURN_HOST,
            port=self.config.turn_port,
            extra=["allow-loopback-peers"],  # development only: peers on this machine
        )
        if self._stopping:  # stop() ran meanwhile (Ctrl-C at start-up) and saw no coturn yet
            return None
        return self._turn.start()

    async def start(self) -> StackInfo:
        cfg = self.config
        use_io_threads(asyncio.get_running_loop(), CommonSettings(environment=Environment.DEVELOPMENT))
        for key, value in EMULATOR_CREDENTIALS.items():
            os.environ.setdefault(key, value)
        endpoint = await asyncio.to_thread(self._start_emulator)
        turn_port = await asyncio.to_thread(self._start_turn) if cfg.start_turn else cfg.turn_port
        base: dict[str, Any] = {
            "environment": Environment.DEVELOPMENT,
            "host": cfg.host,
            "log_level": cfg.log_level,
            "aws_region": cfg.region,
            "aws_endpoint_url": endpoint,
            "table_prefix": cfg.table_prefix,
            "stun_urls": [f"stun:{TURN_HOST}:{turn_port}"] if turn_port else [],
            "turn_urls": [f"turn:{TURN_HOST}:{turn_port}?transport={t}" for t in ("udp", "tcp")] if turn_port else [],
            "turn_secrets": [cfg.turn_secret],
            **self._demo_origin(),
            **cfg.overrides,
        }
        common = CommonSettings(**base)
        resources = await asyncio.to_thread(bootstrap, common)
        base.update(cognito_user_pool_id=resources.user_pool_id, cognito_client_id=resources.client_id)

        # Built in a worker thread: creating AWS clients reads files, off the event loop.
        self.relay = await asyncio.to_thread(RelayServer, RelaySettings(**{**base, "port": cfg.relay_port}))
        relay_port = await self.relay.start()

        auth_app, rooms_app = await asyncio.gather(
            asyncio.to_thread(create_auth_app, AuthSettings(**base)),
            asyncio.to_thread(create_rooms_app, RoomsSettings(**base)),
        )
        apis = ComposedApis(auth_app, rooms_app)
        self._api = HttpServer(apis, common, cfg.api_port)
        api_port = await self._api.start()

        api_url, relay_url = f"http://{cfg.host}:{api_port}", f"ws://{cfg.host}:{relay_port}"
        demo_url = self._demo.start(api_url, relay_url) if self._demo is not None else ""
        self.info = StackInfo(
            api_url=api_url,
            relay_url=relay_url,
            aws_endpoint=endpoint,
            embedded_emulator=self._moto is not None,
            resources=resources,
            common=CommonSettings(**base),
            turn=self._turn_summary(turn_port),
            demo_url=demo_url,
        )
        return self.info

    def _demo_origin(self) -> dict[str, Any]:
        """Bind the demo page's port (its origin must be known before the services start)
        and allow that origin in the services' CORS and Origin allowlists."""
        if self.config.demo_port is None:
            return {}
        self._demo = DemoServer(self.config.host, self.config.demo_port)
        return {"cors_origins": [self._demo.origin]}

    def _turn_summary(self, port: int | None) -> str:
        if self._turn is not None:
            return f"turn:{TURN_HOST}:{port} (coturn run by this stack; STUN on the same port)"
        if port is not None:
            return f"turn:{TURN_HOST}:{port} handed out (coturn is not run by this stack)"
        if self.config.start_turn:
            return "none: coturn is not installed (apt-get install coturn); peers use host candidates only"
        return "none: no ICE servers handed out"

    async def stop(self) -> None:
        self._stopping = True
        if self._demo is not None:
            await asyncio.to_thread(self._demo.stop)
            self._demo = None
        if self.relay is not None:
            await self.relay.stop()
        if self._api is not None:
            await self._api.stop()
        if self._moto is not None:
            await asyncio.to_thread(self._moto.stop)
            self._moto = None
        if self._turn is not None:
            await asyncio.to_thread(self._turn.stop)
            self._turn = None
        if self._turn_dir is not None:
            self._turn_dir.cleanup()
            self._turn_dir = None


class StackThread:
    """A stack on its own event loop in a background thread (for synchronous callers)."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.stack = Stack(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="devstack", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    def start(self, timeout: float = 60.0) -> StackInfo:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.stack.start(), self._loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        asyncio.run_coroutine_threadsafe(self.stack.stop(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
