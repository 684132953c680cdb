"""Ports for local servers, without the race of choosing a free port and releasing it before
the server takes it (any program, or any client's outgoing connection, may take it between).

- A server of ours takes a socket already listening: ``listening_socket()`` binds port 0 and
  listens, and the socket is handed over (``RelayServer.start(sock=...)``, uvicorn's
  ``sockets=``, websockets' ``serve(sock=...)``); the port is known before the server runs.
- A program that listens itself, on a port it must be told in advance (coturn, Caddy,
  Prometheus), is started on ``free_port()``; when it fails because the address is in use it
  raises ``AddressInUse`` and is started again on other ports (``retrying_on_conflict``,
  ``entered_retrying_on_conflict``), a bounded number of times.
- A port where nothing listens (to see a dial fail) is held: ``refusing_port()``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, contextmanager
from typing import Literal, TypeVar

T = TypeVar("T")

ATTEMPTS = 5  # an address taken by chance five times in a row is not chance


class AddressInUse(RuntimeError):
    """A program could not listen: another one had its address. Starting it again on another
    port is the remedy (see ``retrying_on_conflict``)."""


def says_address_in_use(output: str) -> bool:
    """Whether a program's output says it could not listen because the address is taken
    (coturn, Caddy, Prometheus and Python all say "address already in use")."""
    return "address already in use" in output.lower()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` for both TCP and UDP now, for a program that cannot be handed a
    socket and must be told its port. Another program may take it before that one listens:
    start it with ``retrying_on_conflict``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket listening on a port of its own on ``host``, for a server to be handed."""
    return socket.create_server((host, 0))


@contextmanager
def refusing_port(host: str = "127.0.0.1", transport: Literal["tcp", "udp"] = "tcp") -> Iterator[int]:
    """A port on ``host`` that refuses every TCP connection, or every UDP datagram (the host
    answers port unreachable), while the block runs, and that no other program can take
    meanwhile (as it could a port that was merely free when chosen): held by a socket that
    never listens (TCP), or that is connected elsewhere (UDP: the kernel then delivers it
    nothing from anyone else)."""
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        if transport == "udp":
            sock.connect((host, 9))  # the discard port: no probe comes from there
        yield int(sock.getsockname()[1])


def retrying_on_conflict(start: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
    """``start()``, again while it raises ``AddressInUse``, at most ``attempts`` times;
    ``start`` picks its ports afresh each time."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except AddressInUse:
            if attempt == attempts:
                raise
    raise ValueError(f"attempts must be at least 1, not {attempts}")


@asynccontextmanager
async def entered_retrying_on_conflict(
    open_: Callable[[], AbstractAsyncContextManager[T]], *, attempts: int = ATTEMPTS
) -> AsyncIterator[T]:
    """The context ``open_()`` returns, entered again (a new one, on new ports) while its entry
    raises ``AddressInUse``, at most ``attempts`` times; exited when the block ends."""
    for attempt in range(1, attempts + 1):
        async with AsyncExitStack() as entered:
            try:
                value = await entered.enter_async_context(open_())
            except AddressInUse:
                if attempt == attempts:
                    raise
                continue
            yield value
            return
    raise ValueError(f"attempts must be at least 1, not {attempts}")
