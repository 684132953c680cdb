"""Property-based fuzzing of the live relay: thousands of generated frames.

Valid messages of every type, malformed JSON, wrong types, unicode, deep nesting,
binary and oversized frames go to a registered peer's socket. After each frame a probe
proves the relay still answers; every frame the relay sent back in between must be a
well-formed server message (errors carry a known code), the room's other peer only
ever sees well-formed relayed messages, and a peer in another room sees nothing at all.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from devstack.stack import StackInfo
from signaling_shared.errors import ErrorCode
from signaling_shared.settings import RelaySettings
from support import GENEROUS_LIMITS, TIMEOUT, Peer, RoomGrant, User, create_room, sign_in
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration

T = TypeVar("T")
PROBE = "fuzz-probe"  # not JSON: always answered with INVALID_JSON, and nothing else is
CODES = {code.value for code in ErrorCode}
SERVER_TYPES = {
    "registered_auth", "peer_joined", "peer_left", "error", "ack", "pong", "peer_list", "metadata_updated",
    "peer_message", "broadcast", "offer", "answer", "candidate", "ice_servers",
}  # fmt: skip
CLIENT_TYPES = ["register", "offer", "answer", "candidate", "update_metadata", "discover_peers", "peer_message",
                "broadcast", "ping"]  # fmt: skip

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _message(kind: str, fields: dict[str, Any]) -> str:
    return json.dumps({"type": kind, **fields})


MESSAGES = st.builds(
    _message,
    st.sampled_from(CLIENT_TYPES),
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.text(max_size=70), st.integers(min_value=-5, max_value=2**60), JSON),
            "target": st.sampled_from(["B", "Observer", "Fuzzer", "nobody", "", "x y"]) | st.text(max_size=10),
            "to_peer_id": st.sampled_from(["B", "Observer", "nobody"]) | JSON,
            "sender": st.sampled_from(["Fuzzer", "B", None]) | JSON,
            "sdp": st.text(max_size=50) | JSON,
            "candidate": JSON,
            "payload": JSON,
            "metadata": JSON,
            "filters": st.fixed_dictionaries(
                {},
                optional={
                    "role": JSON,
                    "tags": JSON,
                    "properties": st.dictionaries(
                        st.text(max_size=5),
                        JSON | st.dictionaries(st.sampled_from(["$eq", "$gt", "$in", "$x"]), JSON, max_size=2),
                    ),
                },
            )
            | JSON,
            "peer_id": st.text(max_size=10),
            "room_id": st.text(max_size=10),
            "token": st.text(max_size=10),
            "id_token": st.text(max_size=30),
            "role": JSON,
        },
    ),
)
FRAMES = st.one_of(
    MESSAGES,
    JSON.map(json.dumps),
    st.text(max_size=100),
    st.binary(max_size=50),
    st.integers(min_value=1, max_value=60_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(min_value=1, max_value=3_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.just('{"type": "offer", "target": "B", "sdp": "' + "\\ud800" * 10 + '"}'),
    st.just("x" * (70 * 1024)),  # over the 64 KiB frame limit: closed with 1009
)


class Harness:
    """Three peers on the live relay, driven from an event loop of their own."""

    def __init__(self, stack: StackInfo) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relayed: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30 * TIMEOUT)

    async def setup(self) -> None:
        # A relay of its own: the fuzzer sends far more than the default message rate.
        # No keepalive pings either way: websockets draws their payload from the global
        # `random`, and hypothesis fails a run whose global random state moved while it drew
        # an example (a ping from this thread landing mid-draw: seen once in CI).
        overrides = {
            "port": 0,
            "messages_per_second": 1e6,
            "message_burst": 10**6,
            "max_frame_bytes": 64 * 1024,
            "ping_interval_seconds": None,
        }
        self.server = RelayServer(RelaySettings(**{**self.stack.common.model_dump(), **GENEROUS_LIMITS, **overrides}))
        await self.server.start()
        self.relay_url = f"ws://127.0.0.1:{self.server.port}"
        api, relay = self.stack.api_url, self.relay_url
        self.user, other_user, observer_user = await sign_in(api), await sign_in(api), await sign_in(api)
        self.room: RoomGrant = await create_room(api, self.user)
        elsewhere = await create_room(api, observer_user)
        self.fuzzer = await self._fuzzer()
        self.target = await Peer.connect(relay, ping_interval=None)
        await self.target.register("B", self.room, other_user)
        self.observer = await Peer.connect(relay, ping_interval=None)
        await self.observer.register("Observer", elsewhere, observer_user)
        self.reader = asyncio.create_task(self._read_target())

    async def _fuzzer(self) -> Peer:
        peer = await Peer.connect(self.relay_url, ping_interval=None)
        await peer.register("Fuzzer", self.room, self.user)  # takes over after a 1009 close
        return peer

    async def _read_target(self) -> None:
        """The room's other peer: drains and checks everything it receives."""
        try:
            while True:
                message = json.loads(await self.target.ws.recv())
                if message.get("type") not in SERVER_TYPES:
                    self.problems.append(f"target got {message!r:.200}")
                self.relayed.append(message)
        except ConnectionClosed:
            return

    async def send(self, frame: str | bytes, user: User) -> list[dict[str, Any]]:
        """Send one frame then the probe; what came back before the probe's answer."""
        try:
            await self.fuzzer.send_raw(frame)
            await self.fuzzer.send_raw(PROBE)
            replies: list[dict[str, Any]] = []
            while True:
                reply = await self.fuzzer.recv()
                if reply == {"type": "error", "code": "INVALID_JSON", "reason": "frame is not valid JSON"}:
                    return replies
                replies.append(reply)
        except ConnectionClosed as closed:
            code = self.fuzzer.ws.close_code
            if code != 1009:
                raise AssertionError(f"closed with {code} after {frame!r:.100}") from closed
            self.fuzzer = await self._fuzzer()
            return []

    async def teardown(self) -> None:
        await self.observer.barrier()  # nothing from the fuzzed room reached another room
        for peer in (self.fuzzer, self.target, self.observer):
            await peer.close()
        await asyncio.wait_for(self.reader, TIMEOUT)
        await self.server.stop()


def well_formed(reply: dict[str, Any]) -> bool:
    kind = reply.get("type")
    if kind == "error":
        return reply.get("code") in CODES and isinstance(reply.get("reason"), str) and set(reply) <= {
            "type", "code", "reason", "id"}  # fmt: skip
    return kind in SERVER_TYPES


@pytest.fixture(scope="module")
def harness(stack: StackInfo) -> Iterator[Harness]:
    harness = Harness(stack)
    harness.run(harness.setup())
    try:
        yield harness
    finally:
        try:
            harness.run(harness.teardown())
        finally:
            harness.loop.call_soon_threadsafe(harness.loop.stop)
            harness.thread.join(TIMEOUT)
            harness.loop.close()


@settings(max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=FRAMES)
def test_every_frame_is_answered_well_and_nothing_crosses_rooms(harness: Harness, frame: str | bytes) -> None:
    """Any frame: the relay keeps answering, only with well-formed messages and known error codes."""
    replies = harness.run(harness.send(frame, harness.user))
    bad = [reply for reply in replies if not well_formed(reply)]
    assert not bad, (frame, bad)
    assert not harness.problems, harness.problems
