"""The relay's wire protocol: parsing frames into typed messages, and encoding replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from signaling_shared.errors import InvalidJson, InvalidMessage, SignalingError, UnknownMessageType
from ws_relay import frames, protocol


def parse(frame: str | bytes) -> tuple[protocol.AnyClientMessage, dict[str, Any]]:
    """What the relay does with a frame: decode it, then type it."""
    data = protocol.decode_frame(frame)
    return protocol.parse_message(data), data


REGISTER = {"type": "register", "peer_id": "Worker-1", "room_id": "abc123", "token": "t" * 43, "id_token": "x.y.z"}


def test_register_parses_with_seed_fields() -> None:
    """A seed register message becomes a typed Register."""
    message, _ = parse(json.dumps(REGISTER))
    assert isinstance(message, protocol.Register)
    assert message.peer_id == "Worker-1"


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json", InvalidJson),
        ('{"type": "offer", "target": "a", "sdp": NaN}', InvalidJson),
        ('{"type": "offer", "target": "a", "sdp": "v=0", "x": 1e400}', InvalidJson),  # no encoder sends it on
        ('{"type": "offer", "target": "a", "sdp": "v=0", "x": -Infinity}', InvalidJson),
        ('{"type": "offer", "target": "a", "sdp": "v=0"} trailing', InvalidJson),
        ("[" * 100_000, InvalidJson),
        ("[1, 2]", InvalidMessage),
        ('"register"', InvalidMessage),
        ("{}", InvalidMessage),
        ('{"type": 5}', InvalidMessage),
        ('{"type": "subscribe"}', UnknownMessageType),
        ('{"type": "offer", "target": "w"}', InvalidMessage),
        ('{"type": "offer", "target": "has space", "sdp": "v=0"}', InvalidMessage),
        ('{"type": "offer", "target": "w", "sdp": 5}', InvalidMessage),
        ('{"type": "candidate", "target": "w"}', InvalidMessage),
        ('{"type": "candidate", "target": "w", "candidate": 7}', InvalidMessage),
        ('{"type": "register", "peer_id": "a", "room_id": "r", "token": "t"}', InvalidMessage),
        (json.dumps({**REGISTER, "peer_id": "x" * 129}), InvalidMessage),
        (json.dumps({**REGISTER, "room_id": "../etc"}), InvalidMessage),
        (b'{"type": "register"}', InvalidMessage),
    ],
)
def test_bad_frames_raise_typed_errors(frame: str | bytes, error: type[SignalingError]) -> None:
    """Every malformed frame maps to exactly one typed error, never a crash."""
    with pytest.raises(error) as raised:
        parse(frame)
    assert raised.value.reason


def test_unknown_type_reason_is_bounded() -> None:
    """An unknown type is echoed back truncated, so replies stay small."""
    with pytest.raises(UnknownMessageType) as raised:
        parse(json.dumps({"type": "z" * 10_000}))
    assert len(raised.value.reason) < 100


def test_relayed_frame_stamps_sender_and_keeps_other_fields() -> None:
    """The target sees the registered sender and every field the sender put in."""
    data = {"type": "offer", "target": "w", "sdp": "v=0", "custom": {"a": [1, 2]}}
    frame = json.loads(frames.relayed_frame(data, "c"))
    assert frame == {**data, "sender": "c"}


def test_relayed_frame_is_reencoded_so_duplicate_keys_cannot_spoof() -> None:
    """Duplicate 'sender' keys collapse to the stamped one in the relayed frame."""
    raw = '{"type":"offer","sender":"evil","target":"w","sdp":"v=0","sender":"c"}'
    _, data = parse(raw)
    frame = frames.relayed_frame(data, "c")
    assert frame.count('"sender"') == 1
    assert json.loads(frame)["sender"] == "c"


def test_lone_surrogates_stay_sendable() -> None:
    """A JSON escape of a lone surrogate is relayed as an escape (valid UTF-8 on the wire)."""
    _, data = parse('{"type":"offer","target":"w","sdp":"\\ud800"}')
    frame = frames.relayed_frame(data, "c")
    frame.encode("utf-8")
    assert json.loads(frame)["sdp"] == "\ud800"


def test_what_a_sender_puts_in_is_relayed_exactly() -> None:
    """Integers of any size, non-ASCII text, escapes, nulls and floats arrive as they were
    sent (the target decodes the same values)."""
    sent = {
        "type": "peer_message",
        "to_peer_id": "w",
        "payload": {"big": 2**80, "neg": -(2**70), "text": "é ✓ \u2028 \x00", "f": 0.1, "none": None, "t": True},
    }
    _, data = parse(json.dumps(sent))
    assert json.loads(frames.relayed_frame(data, "c")) == {**sent, "sender": "c"}
    _, data = parse(json.dumps(sent, ensure_ascii=False))  # raw UTF-8 text decodes the same
    assert json.loads(frames.relayed_frame(data, "c")) == {**sent, "sender": "c"}


def test_nesting_is_counted_by_levels_of_containers() -> None:
    """32 levels of arrays and objects are decoded; 33 are refused; scalars do not count."""
    assert protocol.decode_frame('{"a":' + "[" * 31 + "1" + "]" * 31 + "}")
    assert not protocol.depth_exceeds({"a": "b", "c": [1, {"d": 2}]}, 3)
    assert protocol.depth_exceeds({"a": "b", "c": [1, {"d": []}]}, 3)
    with pytest.raises(InvalidJson):
        protocol.decode_frame('{"a":' + "[" * 32 + "1" + "]" * 32 + "}")


def test_error_frame_has_the_v1_shape() -> None:
    """Errors are {type, code, reason} with an upper-case stable code."""
    frame = json.loads(frames.error_frame(InvalidJson()))
    assert frame == {"type": "error", "code": "INVALID_JSON", "reason": "frame is not valid JSON"}


def test_server_messages() -> None:
    """registered_auth, peer_joined and peer_left carry the seed's fields (v2 adds to them)."""
    view = frames.peer_view("q", "worker", {"tags": ["gpu"]}, 7)
    ice = {"ice_servers": [{"urls": ["stun:s"]}], "ttl": 60}
    assert json.loads(
        frames.registered_auth("r", "t", "p", peers=[view], ice=ice, resume_token="rt", correlation_id=None)
    ) == {
        "type": "registered_auth",
        "room_id": "r",
        "token": "t",
        "peer_id": "p",
        "peers": [{"peer_id": "q", "role": "worker", "metadata": {"tags": ["gpu"]}, "connected_at": 7}],
        "ice_servers": [{"urls": ["stun:s"]}],
        "ttl": 60,
        "resume_token": "rt",
        "resumed": False,
        "last_seq": 0,
    }
    assert (
        json.loads(frames.registered_auth("r", "t", "p", peers=[], ice=ice, resume_token="rt", correlation_id=5))["id"]
        == 5
    )
    assert json.loads(frames.peer_joined(view)) == {"type": "peer_joined", **view}
    assert json.loads(frames.peer_left("p", "closed")) == {
        "type": "peer_left",
        "peer_id": "p",
        "reason": "closed",
    }


def test_relayed_frame_drops_the_keys_the_server_owns() -> None:
    """The sender's id, a forged seq or sender never reach the target."""
    data = {"type": "offer", "target": "w", "sdp": "v", "id": 3, "seq": 999, "sender": "c"}
    frame = frames.relayed_frame(data, "c")
    assert json.loads(frame) == {"type": "offer", "target": "w", "sdp": "v", "sender": "c"}
    assert frame.count('"seq"') == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"id": "abc"}, "abc"),
        ({"id": 7}, 7),
        ({"id": True}, None),
        ({"id": -1}, None),
        ({"id": "x" * 65}, None),
        ({"id": ["a"]}, None),
        ([], None),
    ],
)
def test_correlation_ids(data: object, expected: object) -> None:
    """Only short strings and safe non-negative integers are echoed back as ids."""
    assert protocol.correlation_id_of(data) == expected


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "peer_message", "to_peer_id": "a", "payload": {"x": [1, {"y": null}]}, "id": "m1"}',
        '{"type": "broadcast", "payload": "hi"}',
        '{"type": "discover_peers", "filters": {"role": "worker"}}',
        '{"type": "update_metadata", "metadata": {"tags": []}, "id": 9}',
        '{"type": "ping"}',
        '{"type": "register", "peer_id": "a", "room_id": "r", "token": "t", "id_token": "j", "role": "worker",'
        ' "metadata": {"tags": ["gpu"]}}',
    ],
)
def test_v2_messages_parse(frame: str) -> None:
    """Every v2 message type parses into its model."""
    message, _ = parse(frame)
    assert message.type == json.loads(frame)["type"]


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "register", "peer_id": "a", "room_id": "r", "token": "t", "id_token": "j", "role": "a b"}',
        '{"type": "register", "peer_id": "a", "room_id": "r", "token": "t", "id_token": "j", "metadata": []}',
        '{"type": "update_metadata", "metadata": "x"}',
        '{"type": "peer_message", "payload": 1}',
        '{"type": "discover_peers", "filters": []}',
        '{"type": "ping", "id": {"a": 1}}',
    ],
)
def test_malformed_v2_messages(frame: str) -> None:
    """Wrongly typed v2 fields are INVALID_MESSAGE."""
    with pytest.raises(InvalidMessage):
        parse(frame)
