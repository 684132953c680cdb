"""The relay's limits, each on a relay of its own with a small limit.

Every test checks both sides: the limit bites with its typed error or close code, and
whatever is under the limit keeps working.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import RelayFactory
from support import TIMEOUT, Peer, closed_after_test, create_room, scaled, sign_in
from ws_relay.server import RelayServer

pytestmark = pytest.mark.integration


async def drain(ws: ClientConnection) -> int:
    """Read until the server closes us; how many frames came first."""
    frames = 0
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
            frames += 1
    except ConnectionClosed:
        return frames


def url(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def test_frames_over_the_size_limit_close_with_1009(api: str, relay_with: RelayFactory) -> None:
    """A frame over max_frame_bytes closes the socket with 1009; one just under is relayed."""
    async with relay_with(max_frame_bytes=4096) as server:
        user_a, user_b = await sign_in(api), await sign_in(api)
        room = await create_room(api, user_a)
        a, b = await Peer.connect(url(server)), await Peer.connect(url(server))
        await a.register("A", room, user_a)
        await b.register("B", room, user_b)
        await a.expect("peer_joined")
        fits = {"type": "offer", "target": "A", "sdp": ""}
        fits["sdp"] = "x" * (4096 - len(json.dumps(fits)))
        await b.send(fits)
        assert len((await a.expect("offer"))["sdp"]) == len(fits["sdp"])
        await b.send({**fits, "sdp": "x" * 5000})
        code, _ = await b.closed()
        assert code == 1009
        assert (await a.expect("peer_left"))["peer_id"] == "B"
        await a.close()


async def test_message_rate_per_connection(api: str, relay_with: RelayFactory) -> None:
    """Past the burst, frames get RATE_LIMITED and are not processed; other sockets are unaffected."""
    async with relay_with(messages_per_second=0.5, message_burst=3) as server:
        noisy, quiet = await Peer.connect(url(server)), await Peer.connect(url(server))
        for _ in range(3):
            await noisy.send_raw("{}")
            await noisy.expect_error("INVALID_MESSAGE")
        await noisy.send_raw("{}")
        limited = await noisy.expect_error("RATE_LIMITED")  # no id: v1's shape, no hint
        assert "per second" in limited["reason"]
        await noisy.send({"type": "ping", "id": "p1"})
        limited = await noisy.expect_error_with_id("RATE_LIMITED", "p1")  # v2: when to send it again
        assert limited["retry_after_ms"] <= 2000  # one token at 0.5/s
        await quiet.send_raw("{}")
        await quiet.expect_error("INVALID_MESSAGE")
        await noisy.close()
        await quiet.close()


async def test_registration_attempts_per_address(api: str, relay_with: RelayFactory) -> None:
    """Registration attempts (failed ones too) are limited per client address."""
    async with relay_with(register_burst_per_ip=2, register_rate_per_minute_per_ip=1) as server:
        user = await sign_in(api)
        room = await create_room(api, user)
        peer = await Peer.connect(url(server))
        bad = {
            "type": "register",
            "protocol": 2,
            "peer_id": "P",
            "room_id": room.room_id,
            "token": "wrong",
            "id_token": "x",
        }
        for _ in range(2):
            await peer.send(bad)
            await peer.expect_error("INVALID_ID_TOKEN")
        await peer.send({**bad, "token": room.token, "id_token": user.id_token})
        await peer.expect_error("RATE_LIMITED")
        await peer.send({**bad, "token": room.token, "id_token": user.id_token, "id": "r1"})
        limited = await peer.expect_error_with_id("RATE_LIMITED", "r1")
        assert limited["retry_after_ms"] <= 60_000  # one attempt a minute
        await peer.close()


async def test_failed_registrations_per_room(api: str, relay_with: RelayFactory) -> None:
    """Wrong room tokens are limited per room, but that cannot lock out a peer with the right token."""
    async with relay_with(register_burst_per_room=2, register_rate_per_minute_per_room=1) as server:
        user = await sign_in(api)
        room, other_room = await create_room(api, user), await create_room(api, user)
        guesser, member = await Peer.connect(url(server)), await Peer.connect(url(server))
        guess = {
            "type": "register",
            "protocol": 2,
            "peer_id": "G",
            "room_id": room.room_id,
            "token": "guess",
            "id_token": user.id_token,
        }
        for _ in range(2):
            await guesser.send(guess)
            await guesser.expect_error("INVALID_ROOM_TOKEN")
        await guesser.send(guess)
        limited = await guesser.expect_error("RATE_LIMITED")
        assert "failed registrations in this room" in limited["reason"]
        await guesser.send({**guess, "room_id": other_room.room_id})  # other rooms keep their own budget
        await guesser.expect_error("INVALID_ROOM_TOKEN")
        await member.register("M", room, user)  # the right token still gets in
        await guesser.close()
        await member.close()


async def test_room_capacity(api: str, relay_with: RelayFactory) -> None:
    """The peer past max_peers_per_room gets ROOM_FULL; when one leaves, there is room again."""
    async with relay_with(max_peers_per_room=2) as server:
        users = [await sign_in(api) for _ in range(3)]
        room = await create_room(api, users[0])
        a, b, c = [await Peer.connect(url(server)) for _ in range(3)]
        await a.register("A", room, users[0])
        await b.register("B", room, users[1])
        message = {
            "type": "register",
            "protocol": 2,
            "peer_id": "C",
            "room_id": room.room_id,
            "token": room.token,
            "id_token": users[2].id_token,
        }
        await c.send(message)
        await c.expect_error("ROOM_FULL")
        await b.close()
        await a.expect("peer_joined")
        await a.expect("peer_left")
        await c.register("C", room, users[2])
        await a.close()
        await c.close()


async def test_unregistered_sockets_are_closed_after_the_deadline(relay_with: RelayFactory) -> None:
    """A socket that does not register in time is closed with 4001."""
    async with relay_with(register_timeout_seconds=scaled(0.2)) as server:
        idle = await Peer.connect(url(server))
        code, reason = await idle.closed()
        assert code == 4001
        assert reason
        assert "register" in reason


async def test_connection_limit(relay_with: RelayFactory) -> None:
    """Past max_connections new sockets are refused with HTTP 503; existing ones keep working."""
    async with relay_with(max_connections=1) as server:
        first = await Peer.connect(url(server))
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url(server), open_timeout=TIMEOUT):
                pass
        assert refused.value.response.status_code == 503
        await first.send_raw("{}")
        await first.expect_error("INVALID_MESSAGE")
        await first.close()


async def test_a_reader_that_stops_reading_is_cut_off_and_senders_are_told(api: str, relay_with: RelayFactory) -> None:
    """A peer whose outbox overflows is closed with 4501; its sender gets DELIVERY_FAILED, others carry on."""
    # The resume buffer (what a detached peer keeps) is made large, so that the outbox limit
    # is the one that is reached, however slowly a loaded machine drains the socket.
    limits = {"resume_buffer_bytes": 64 * 2**20, "resume_buffer_messages": 100_000}
    async with relay_with(outbox_max_messages=2, messages_per_second=10_000, message_burst=10_000, **limits) as server:
        users = [await sign_in(api) for _ in range(3)]
        room = await create_room(api, users[0])
        sender, other = await Peer.connect(url(server)), await Peer.connect(url(server))
        # The stalled reader: a raw client that stops reading once registered.
        stalled = closed_after_test(await connect(url(server), max_queue=1, open_timeout=TIMEOUT, max_size=None))
        register = {
            "type": "register",
            "protocol": 2,
            "peer_id": "Stalled",
            "room_id": room.room_id,
            "token": room.token,
            "id_token": users[1].id_token,
        }
        await stalled.send(json.dumps(register))
        assert json.loads(await asyncio.wait_for(stalled.recv(), TIMEOUT))["type"] == "registered_auth"
        await sender.register("Sender", room, users[0])
        await other.register("Other", room, users[2])
        await sender.expect("peer_joined")

        errors: asyncio.Queue[dict[str, object]] = asyncio.Queue()

        async def read_errors() -> None:  # keeps reading, so the sender itself never stalls
            while True:
                message = await sender.recv()
                if message["type"] == "error":
                    await errors.put(message)

        reader = asyncio.create_task(read_errors())
        big = json.dumps({"type": "offer", "target": "Stalled", "sdp": "x" * 60_000})
        sent = 0
        while errors.empty() and sent < 5_000:  # fills the socket buffers, then the outbox
            await sender.send_raw(big)
            sent += 1
        first = await asyncio.wait_for(errors.get(), TIMEOUT)
        assert first["code"] == "DELIVERY_FAILED"
        assert sent < 5_000

        drained = await drain(stalled)
        assert stalled.close_code == 4501
        assert drained < sent  # frames queued past the limit were dropped with the connection

        await sender.send({"type": "offer", "target": "Other", "sdp": "still relaying"})
        while (message := await other.recv())["type"] != "offer":
            assert message["type"] in {"peer_joined", "peer_left"}
        assert message["sdp"] == "still relaying"
        reader.cancel()
        await sender.close()
        await other.close()


async def test_pipelined_frames_do_not_overflow_the_senders_own_replies(relay_with: RelayFactory) -> None:
    """A client that sends many frames before reading gets every reply (not a slow-consumer close)."""
    async with relay_with(outbox_max_messages=4, messages_per_second=10_000, message_burst=10_000) as server:
        peer = await Peer.connect(url(server))
        for _ in range(50):
            await peer.send_raw("{}")
        for _ in range(50):
            await peer.expect_error("INVALID_MESSAGE")
        await peer.close()
