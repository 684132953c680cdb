"""devstack.ports: the bounded retry on a taken address, and ports held so that nothing can
take them (loopback sockets only, no server)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import pytest

from devstack.ports import (
    ATTEMPTS,
    AddressInUse,
    entered_retrying_on_conflict,
    free_port,
    listening_socket,
    refusing_port,
    retrying_on_conflict,
    says_address_in_use,
)


def test_a_start_is_tried_again_while_its_address_is_taken_and_no_more_than_the_bound() -> None:
    """AddressInUse means "again, on other ports", ATTEMPTS times at most; any other error at once."""
    calls: list[int] = []

    def taken_twice() -> str:
        calls.append(len(calls))
        if len(calls) <= 2:
            raise AddressInUse("taken")
        return "listening"

    assert retrying_on_conflict(taken_twice) == "listening"
    assert len(calls) == 3

    calls.clear()

    def always_taken() -> None:
        calls.append(len(calls))
        raise AddressInUse("taken")

    with pytest.raises(AddressInUse):
        retrying_on_conflict(always_taken)
    assert len(calls) == ATTEMPTS

    calls.clear()

    def broken() -> None:
        calls.append(len(calls))
        raise RuntimeError("not a port conflict")

    with pytest.raises(RuntimeError, match="not a port conflict"):
        retrying_on_conflict(broken)
    assert calls == [0]


async def test_a_context_is_entered_again_while_its_address_is_taken_and_exited_once_at_the_end() -> None:
    """A new context per attempt; the one entered is exited when the block ends, and an
    AddressInUse raised inside the block is the block's own: not retried."""
    entered: list[int] = []
    exited: list[int] = []

    @asynccontextmanager
    async def on_new_ports(attempt: int) -> AsyncIterator[int]:
        if attempt < 3:
            raise AddressInUse(f"attempt {attempt}: taken")
        entered.append(attempt)
        try:
            yield attempt
        finally:
            exited.append(attempt)

    attempts = iter(range(1, 100))
    async with entered_retrying_on_conflict(lambda: on_new_ports(next(attempts))) as attempt:
        assert attempt == 3
        assert exited == []
    assert (entered, exited) == ([3], [3])

    attempts = iter(range(3, 100))
    with pytest.raises(AddressInUse, match="inside"):
        async with entered_retrying_on_conflict(lambda: on_new_ports(next(attempts))):
            raise AddressInUse("inside the block")
    assert (entered, exited) == ([3, 3], [3, 3])

    attempts = iter([0] * ATTEMPTS + [3])
    with pytest.raises(AddressInUse, match="attempt 0"):
        async with entered_retrying_on_conflict(lambda: on_new_ports(next(attempts))):
            pass
    assert next(attempts) == 3  # ATTEMPTS tries, no more


def test_the_programs_messages_for_a_taken_address_are_recognised() -> None:
    """What coturn, Caddy and Prometheus (Go) and Python print when the address is taken."""
    for output in (
        "bind: Address already in use\n",  # coturn
        "Error: loading initial config: loading new config: http app module: start: listening on :8443: "
        "listen tcp :8443: bind: address already in use",  # Caddy (and any Go program)
        "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8080): address already in use",
    ):
        assert says_address_in_use(output)
    assert not says_address_in_use("listen tcp 127.0.0.1:8443: bind: permission denied")


def test_a_free_port_is_free_for_tcp_and_udp() -> None:
    """coturn listens on both at the one port it is told."""
    port = free_port()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))


def test_a_listening_socket_accepts_before_any_server_runs() -> None:
    """The port is known, and connections queue, before the server it is handed to starts."""
    with listening_socket() as server, socket.create_connection(server.getsockname(), timeout=5):
        accepted, _ = server.accept()
        accepted.close()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_refusing_port_refuses_and_cannot_be_taken(transport: Literal["tcp", "udp"]) -> None:
    """Held while the block runs: a TCP connection is refused, a UDP datagram answered with
    port unreachable, and no other socket can bind the port meanwhile."""
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with refusing_port(transport=transport) as port:
        with socket.socket(socket.AF_INET, kind) as client:
            client.settimeout(5)
            if transport == "tcp":
                with pytest.raises(ConnectionRefusedError):
                    client.connect(("127.0.0.1", port))
            else:
                client.connect(("127.0.0.1", port))  # no handshake: the datagram is what is refused
                client.send(b"probe")
                with pytest.raises(ConnectionRefusedError):
                    client.recv(1)
        with socket.socket(socket.AF_INET, kind) as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", port))
