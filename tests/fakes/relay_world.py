"""The relay's workflow without sockets or an emulator: a ``Relay`` on the in-memory
repository, with fake links and verifier and a settable clock. Unit tier only."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry

from fakes.memory_repository import MemoryRepository
from signaling_shared.auth import Identity
from signaling_shared.dynamo import Room
from signaling_shared.errors import InvalidIdToken
from signaling_shared.settings import Environment, RelaySettings
from signaling_shared.tokens import hash_room_token
from support import GENEROUS_LIMITS, TIMEOUT
from ws_relay.connections import Connection
from ws_relay.hub import Member
from ws_relay.metrics import RelayMetrics
from ws_relay.relay import Relay

ROOM_TOKEN = "room-token"


@dataclass
class FakeLink:
    """A ``hub.Link`` that records what is sent and how it was closed."""

    connection_id: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    awaited: list[bool] = field(default_factory=list)  # per numbered frame: does an outcome wait on it
    closed: tuple[int, str] | None = None
    on_confirm: Callable[[int], None] | None = None
    refuse: bool = False  # send() answers False, as a link that cannot keep up
    # The real link's outbox limit, for a client that reads nothing: past it a frame that
    # is not owed already (not ``replay``) closes the link (4501), as WebSocketLink does.
    outbox_max: int | None = None
    unread: int = 0

    def is_open(self) -> bool:
        return self.closed is None

    def send(
        self,
        frame: str,
        relay_started: float | None = None,
        seq: int | None = None,
        *,
        replay: bool = False,
        awaited: bool = True,
    ) -> bool:
        if self.closed is not None or self.refuse:
            return False
        if not replay and self.outbox_max is not None:
            if self.unread >= self.outbox_max:
                self.close(4501, "too many unread messages, reconnect")
                return False
            self.unread += 1
        self.sent.append(json.loads(frame))
        if seq is not None:
            self.seqs.append(seq)
            self.awaited.append(awaited)
        return True

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)

    def close_code(self) -> int | None:
        return self.closed[0] if self.closed is not None else None

    def confirm(self) -> None:
        """The client's pong after everything sent so far."""
        if self.on_confirm is not None and self.seqs:
            self.on_confirm(self.seqs[-1])

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.sent if frame.get("type") == kind]

    def last(self, kind: str) -> dict[str, Any]:
        frames = self.of_type(kind)
        assert frames, f"no {kind!r} frame among {[f.get('type') for f in self.sent]}"
        return frames[-1]

    def errors(self) -> list[str]:
        return [frame["code"] for frame in self.of_type("error")]


class FakeVerifier:
    """ID tokens are the identity's ``sub``; one starting with ``bad`` is refused."""

    async def verify(self, token: str) -> Identity:
        if token.startswith("bad"):
            raise InvalidIdToken()
        return Identity(sub=token, username=f"user-{token}")

    async def check(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Client:
    """One socket of the world: its connection and link."""

    connection: Connection
    link: FakeLink

    @property
    def member(self) -> Member:
        assert self.connection.member is not None
        return self.connection.member


class World:
    def __init__(
        self, *, repository: MemoryRepository | None = None, clock: Clock | None = None, **overrides: Any
    ) -> None:
        self.clock = clock or Clock()
        self.repository = repository or MemoryRepository(clock=self.clock)
        self.settings = RelaySettings(
            **{"environment": Environment.DEVELOPMENT, **GENEROUS_LIMITS, "aws_timeout_seconds": 2.0, **overrides}
        )
        self.metrics = RelayMetrics(CollectorRegistry())
        self.relay = Relay(self.settings, self.repository, FakeVerifier(), self.metrics, clock=self.clock)  # type: ignore[arg-type]
        self._links = 0

    async def room(
        self, room_id: str = "room-1", *, expires_in: int = 3600, node_id: str = "", marked: bool = False
    ) -> Room:
        """A room in the table; ``marked``: with the marks rooms-api writes (nothing held or
        saved in it yet), else as written before the marks existed."""
        now = int(self.clock())
        room = Room(room_id, "creator", hash_room_token(ROOM_TOKEN), now, now + expires_in, node_id)
        if marked:
            room = replace(room, held_until_ms=0, saved_until=0)
        await self.repository.create_room(room)
        return room

    def connect(self, remote_ip: str = "192.0.2.1", *, outbox_max: int | None = None) -> Client:
        self._links += 1
        link = FakeLink(f"link-{self._links}", outbox_max=outbox_max)
        return Client(self.relay.open_connection(link, remote_ip), link)

    async def send(self, client: Client, message: dict[str, Any] | str) -> None:
        frame = message if isinstance(message, str) else json.dumps(message)
        await self.relay.handle_frame(client.connection, frame)
        await self.settle()

    async def register(
        self, peer_id: str, *, sub: str = "alice", room: str = "room-1", client: Client | None = None, **extra: Any
    ) -> Client:
        """A v2 register; the client (new unless given) whatever the outcome."""
        client = client or self.connect()
        message = {
            "type": "register",
            "protocol": 2,
            "peer_id": peer_id,
            "room_id": room,
            "token": ROOM_TOKEN,
            "id_token": sub,
            **extra,
        }
        await self.send(client, message)
        return client

    async def resume(self, old: Client, *, client: Client | None = None, **extra: Any) -> Client:
        """Register again with ``old``'s resume token and last seq."""
        registered = old.link.last("registered_auth")
        last_seq = max([registered.get("last_seq", 0), *old.link.seqs])
        fields = {"resume_token": registered["resume_token"], "last_seq": last_seq, **extra}
        return await self.register(registered["peer_id"], sub=old.member.owner_sub, client=client, **fields)

    async def drop(self, client: Client) -> None:
        """The socket is lost (no close frame): the member is detached."""
        client.link.closed = (1006, "")
        await self.relay.close_connection(client.connection, resumable=True, reason="timeout")
        await self.settle()

    async def close(self, client: Client) -> None:
        client.link.closed = (1000, "")
        await self.relay.close_connection(client.connection, reason="closed")
        await self.settle()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (within the tests' timeout) for a timer of the relay to make ``condition`` true."""
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                await asyncio.sleep(0.01)
                await self.settle()

    async def settle(self) -> None:
        """Let the relay's background tasks (leaves, held messages) run to the end."""
        for _ in range(3):
            await asyncio.sleep(0)
        while self.relay._tasks:
            await asyncio.gather(*list(self.relay._tasks), return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)
