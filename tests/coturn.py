"""A real coturn (Debian package ``coturn``) for the tests that need a TURN server."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from devstack import coturn
from support import TIMEOUT
from tools import require


def require_coturn() -> None:
    """Skip where coturn is missing, unless this run requires it (CI: SIGNALING_REQUIRE_TURN=1)."""
    require(coturn.BINARY)


@contextmanager
def coturn_server(directory: Path, secrets: list[str], *, extra: Sequence[str] = ()) -> Iterator[tuple[str, int]]:
    """coturn on loopback with ``use-auth-secret`` and these static secrets; its address."""
    require_coturn()
    server = coturn.Coturn(directory, secrets, extra=extra)
    port = server.start(timeout=6 * TIMEOUT)
    try:
        yield "127.0.0.1", port
    finally:
        server.stop(timeout=TIMEOUT)
