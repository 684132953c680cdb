"""The browser demo page, served by ``make dev`` on its own port (its own origin).

    GET /                   the page (services/devstack/devstack/demo_page/index.html)
    GET /sdk/signaling.js   the JavaScript SDK (sdk/js/), as the page imports it
    GET /config.json        the API and relay URLs of the stack that serves the page

Static files only, from a thread: the page talks to the APIs and the relay itself, from
another origin than theirs (their CORS and Origin allowlists must name this one).
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE_DIR = Path(__file__).parent / "demo_page"
SDK_DIR = Path(__file__).resolve().parents[3] / "sdk" / "js"  # the checkout's sdk/js (editable install)
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".json": "application/json"}


class DemoServer:
    """The page on ``host:port`` (0: a free port) in a daemon thread; ``url`` once started."""

    def __init__(self, host: str, port: int) -> None:
        self.config: dict[str, str] = {}  # the API and relay URLs, set before ``start``
        server = self
        files = {
            "/": PAGE_DIR / "index.html",
            "/index.html": PAGE_DIR / "index.html",
            "/sdk/signaling.js": SDK_DIR / "signaling.js",
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/config.json":
                    self._reply(HTTPStatus.OK, json.dumps(server.config).encode(), TYPES[".json"])
                elif path in files and files[path].is_file():
                    self._reply(HTTPStatus.OK, files[path].read_bytes(), TYPES[files[path].suffix])
                else:
                    self._reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

            def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-page", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def origin(self) -> str:
        """What a browser sends as ``Origin`` from this page."""
        return f"http://{self.host}:{self.port}"

    def start(self, api_url: str, relay_url: str) -> str:
        """Serve the page, pointed at these APIs and relay; its URL."""
        self.config = {"api_url": api_url, "relay_url": relay_url}
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever that never ran
            self._server.shutdown()
        self._server.server_close()
