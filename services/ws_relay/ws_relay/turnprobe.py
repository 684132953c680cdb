"""The TURN probe: every ``turn_probe_interval_seconds``, a real TURN allocation with
credentials the relay itself signs, against each TURN URL it hands to peers, then released.

It is the one signal for a secret that coturn and the services no longer share (a rotation
done on one side only): peers still get credentials, coturn refuses them, and only peers
that need a relay fail, silently. coturn's exporter counts no authentication failures, so
the relay asks for itself and counts ``signaling_turn_probe_total{url, outcome}``:

- ``ok``: the allocation was granted (and deleted at once);
- ``rejected``: coturn refused the credentials (401 after they were sent);
- ``unreachable``: no answer in time, or no connection;
- ``error``: any other TURN error (a quota, a server error).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qs

import structlog
from aioice.stun import TransactionFailed, TransactionTimeout
from aioice.turn import create_turn_endpoint
from prometheus_client import Counter

from signaling_shared.settings import RelaySettings
from signaling_shared.turn import rest_credentials

log = structlog.get_logger("ws_relay.turnprobe")

PROBE_PEER = "signaling-turn-probe"
PROBE_LIFETIME_SECONDS = 60  # the allocation is deleted at once; this only bounds a leak
UNAUTHORIZED = 401


class Outcome(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    ERROR = "error"


@dataclass(frozen=True)
class TurnServer:
    """A TURN URL (RFC 7065): ``turn:host[:port][?transport=udp|tcp]``, or ``turns:`` (TLS)."""

    url: str
    host: str
    port: int
    transport: str
    secure: bool

    @classmethod
    def parse(cls, url: str) -> TurnServer:
        scheme, _, rest = url.partition(":")
        if scheme not in ("turn", "turns") or not rest:
            raise ValueError(f"not a TURN URL: {url!r}")
        address, _, query = rest.partition("?")
        transport = parse_qs(query).get("transport", ["tcp" if scheme == "turns" else "udp"])[0]
        if transport not in ("udp", "tcp") or (scheme == "turns" and transport != "tcp"):
            raise ValueError(f"unsupported TURN transport in {url!r}")
        if address.startswith("["):  # [IPv6]:port
            host, _, port_text = address[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
        default_port = 5349 if scheme == "turns" else 3478
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad host or port in {url!r}")
        return cls(url=url, host=host, port=port, transport=transport, secure=scheme == "turns")


class _Released(asyncio.DatagramProtocol):
    """Tells when the TURN transport is gone (after the allocation's deletion)."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def allocate(server: TurnServer, username: str, password: str, time_limit: float) -> Outcome:
    """One allocation with these credentials, deleted at once; what happened (each of the
    allocation and its deletion within ``time_limit`` seconds)."""
    context = ssl.create_default_context() if server.secure else None
    try:
        transport, protocol = await asyncio.wait_for(
            create_turn_endpoint(
                _Released,
                (server.host, server.port),
                username,
                password,
                lifetime=PROBE_LIFETIME_SECONDS,
                ssl=context,
                transport=server.transport,
            ),
            time_limit,
        )
    except TransactionFailed as exc:
        code = exc.response.attributes.get("ERROR-CODE", (0, ""))[0]
        return Outcome.REJECTED if code == UNAUTHORIZED else Outcome.ERROR
    except (TransactionTimeout, TimeoutError, OSError):  # ConnectionError is an OSError
        return Outcome.UNREACHABLE
    transport.close()  # deletes the allocation (Refresh with lifetime 0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(protocol.closed), time_limit)
    return Outcome.OK


class TurnProbe:
    """Probes every TURN URL of ``settings`` now and then; counts each outcome."""

    def __init__(
        self,
        settings: RelaySettings,
        counter: Counter,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.counter = counter
        self.clock = clock
        self.servers: list[TurnServer] = []
        self.rounds = 0  # probes done by run_forever; wait_for_rounds() waits on it
        self.last: dict[str, Outcome] = {}
        self._progress = asyncio.Condition()
        for url in settings.turn_urls:
            try:
                self.servers.append(TurnServer.parse(url))
            except ValueError as exc:
                log.warning("turn_probe_skipped", url=url, reason=str(exc))

    @property
    def enabled(self) -> bool:
        return bool(self.servers and self.settings.turn_secrets and self.settings.turn_probe_interval_seconds > 0)

    async def probe_once(self) -> dict[str, Outcome]:
        """Every server, concurrently, with freshly signed credentials; each outcome by URL."""
        credentials = rest_credentials(self.settings, PROBE_PEER, self.clock())
        assert credentials is not None, "probe_once() needs TURN URLs and secrets"
        username, password = credentials
        timeout = self.settings.turn_probe_timeout_seconds
        outcomes = await asyncio.gather(*(allocate(server, username, password, timeout) for server in self.servers))
        results = {server.url: outcome for server, outcome in zip(self.servers, outcomes, strict=True)}
        for url, outcome in results.items():
            self.counter.labels(url=url, outcome=outcome.value).inc()
            if outcome is not Outcome.OK:
                log.warning("turn_probe_failed", url=url, outcome=outcome.value)
        return results

    async def run_forever(self) -> None:
        while True:
            try:
                self.last = await self.probe_once()
            except Exception as exc:  # a bug in one round must not end the probing
                log.exception("turn_probe_crashed", error=type(exc).__name__)
                self.last = {server.url: Outcome.ERROR for server in self.servers}
                for url in self.last:
                    self.counter.labels(url=url, outcome=Outcome.ERROR.value).inc()
            async with self._progress:
                self.rounds += 1
                self._progress.notify_all()
            await asyncio.sleep(self.settings.turn_probe_interval_seconds)

    async def wait_for_rounds(self, rounds: int) -> dict[str, Outcome]:
        """Until run_forever has probed ``rounds`` times; the last outcomes."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.rounds >= rounds)
        return self.last
