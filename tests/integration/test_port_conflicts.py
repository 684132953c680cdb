"""The programs that must be told their port, told one another program has: each failure is
recognised as AddressInUse (what devstack.ports retries on), and coturn starts again on
another port by itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coturn import require_coturn
from devstack import coturn
from devstack.ports import AddressInUse, free_port
from devstack.stack import StackInfo
from edge import caddy_edge
from support import TIMEOUT, relay_process
from tools import require

pytestmark = pytest.mark.integration


@contextmanager
def taken_port() -> Iterator[int]:
    """A port another program listens on (TCP) and holds (UDP) while the block runs."""
    with socket.create_server(("127.0.0.1", 0)) as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        port = int(tcp.getsockname()[1])
        udp.bind(("127.0.0.1", port))
        yield port


def test_coturn_starts_again_on_another_port_when_its_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first free port it picks is taken before coturn listens: coturn says so, and it is
    started on the next one."""
    require_coturn()
    with taken_port() as port:
        picks = iter([port])
        monkeypatch.setattr(coturn, "free_port", lambda host: next(picks, None) or free_port(host))
        server = coturn.Coturn(tmp_path, ["a-secret"])
        try:
            started = server.start(timeout=6 * TIMEOUT)
        finally:
            server.stop(timeout=TIMEOUT)
    assert started not in (0, port)
    assert next(picks, None) is None  # the taken port was tried first


async def test_a_relay_process_told_a_taken_port_fails_with_address_in_use(stack: StackInfo) -> None:
    """``relay_process`` on a port another program listens on raises AddressInUse."""
    with taken_port() as port, pytest.raises(AddressInUse, match="address already in use"):
        async with relay_process(stack, port=port):
            pass


async def test_caddy_told_a_taken_port_fails_with_address_in_use(tmp_path: Path) -> None:
    """``caddy_edge`` on an https port another program listens on raises AddressInUse."""
    require("caddy")
    with taken_port() as port, pytest.raises(AddressInUse, match="address already in use"):
        async with caddy_edge(
            tmp_path, auth_api="127.0.0.1:9", rooms_api="127.0.0.1:9", ws_relay="127.0.0.1:9", https_port=port
        ):
            pass
