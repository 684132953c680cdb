"""The relay's open connections: one ``Connection`` per socket, counted per client address.

A socket may stay unregistered only until its registration deadline, and one address may
hold only so many sockets (fewer unregistered ones), so it cannot take the relay's capacity
from everyone else. The caps are checked at the handshake (``refuses``: HTTP 429).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from signaling_shared.errors import RateLimited
from signaling_shared.ratelimit import TokenBucket
from signaling_shared.settings import RelaySettings
from ws_relay import compat
from ws_relay.close_codes import REASONS, CloseCode
from ws_relay.hub import Link, Member
from ws_relay.metrics import RelayMetrics


@dataclass(eq=False, slots=True)
class Connection:
    """One client socket: its link, address, message budget and (once registered) member."""

    link: Link
    remote_ip: str
    bucket: TokenBucket
    member: Member | None = None
    deadline: asyncio.TimerHandle | None = None
    profile: compat.Profile = compat.Profile.V2  # set by its register (ws_relay.compat)
    registering: bool = False  # a register is being handled


def _count_down(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


class Connections:
    """Every open connection, with the per-address counts and the registration deadlines."""

    def __init__(self, settings: RelaySettings, *, on_deadline: Callable[[Connection], None]) -> None:
        self.settings = settings
        self._on_deadline = on_deadline  # an unregistered socket's deadline passed
        self.open: set[Connection] = set()
        self._open_by_ip: Counter[str] = Counter()
        self._unregistered_by_ip: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.open)

    def refuses(self, remote_ip: str) -> str | None:
        """Why a new socket from ``remote_ip`` is refused at the handshake, if it is."""
        if self._open_by_ip[remote_ip] >= self.settings.max_connections_per_ip:
            return f"more than {self.settings.max_connections_per_ip} connections from this address"
        if self._unregistered_by_ip[remote_ip] >= self.settings.max_unregistered_per_ip:
            return f"more than {self.settings.max_unregistered_per_ip} unregistered connections from this address"
        return None

    def add(self, link: Link, remote_ip: str) -> Connection:
        connection = Connection(
            link=link,
            remote_ip=remote_ip,
            bucket=TokenBucket(
                self.settings.messages_per_second, self.settings.message_burst, updated=time.monotonic()
            ),
        )
        self.open.add(connection)
        self._open_by_ip[remote_ip] += 1
        self._unregistered_by_ip[remote_ip] += 1
        self.arm_deadline(connection)
        return connection

    def arm_deadline(self, connection: Connection) -> None:
        connection.deadline = asyncio.get_running_loop().call_later(
            self.settings.register_timeout_seconds, self._on_deadline, connection
        )

    def registered(self, connection: Connection) -> None:
        """``connection`` holds a member for the first time: it no longer counts as unregistered."""
        if connection.deadline is not None:
            connection.deadline.cancel()
            connection.deadline = None
            _count_down(self._unregistered_by_ip, connection.remote_ip)

    def remove(self, connection: Connection) -> None:
        if connection in self.open:
            self.open.discard(connection)
            _count_down(self._open_by_ip, connection.remote_ip)
            self.registered(connection)  # no longer unregistered either: it is gone


def close_link(link: Link | None, code: CloseCode, metrics: RelayMetrics) -> None:
    """Close ``link`` (if any) with ``code`` and its reason, counted by code."""
    if link is not None:
        metrics.closes.labels(str(int(code))).inc()
        link.close(code, REASONS[code])


def charge_fan_out(connection: Connection, recipients: int, what: str, messages_per_second: float) -> None:
    """A frame sent to ``recipients`` peers costs one message per recipient (the first was
    paid on arrival), at most the burst; RateLimited, before anything is sent, if short."""
    extra = recipients - 1
    now = time.monotonic()
    if extra > 0 and not connection.bucket.take(now, extra):
        raise RateLimited(
            f"{what} to {recipients} peers counts as {recipients} messages;"
            f" more than {messages_per_second:g} per second",
            retry_after=connection.bucket.retry_after(now, extra),
        )
