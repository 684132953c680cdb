"""The machine-readable protocol matches the code, the server's frames match it, the docs cover it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from signaling_shared.errors import ErrorCode, InvalidJson, PeerNotFound
from ws_relay import frames, schema
from ws_relay.close_codes import CloseCode

DOCS = Path(__file__).resolve().parents[2] / "docs"
VIEW = frames.peer_view("W", "worker", {"tags": ["gpu"]}, 1)
ICE = {"ice_servers": [{"urls": ["stun:s"]}, {"urls": ["turn:t"], "username": "9:W", "credential": "c"}], "ttl": 60}


def test_checked_in_schema_is_what_the_code_generates() -> None:
    """docs/protocol.schema.json is up to date (`make schema` regenerates it)."""
    assert schema.main(["--check"]) == 0


@pytest.mark.parametrize(
    "frame",
    [
        frames.registered_auth("r", "t", "p", peers=[VIEW], ice=ICE, resume_token="rt", correlation_id=None),
        frames.registered_auth(
            "r", "t", "p", peers=[], ice={"ice_servers": [], "ttl": 60}, resume_token="rt", correlation_id="x"
        ),
        frames.ice_servers(ICE),
        frames.peer_joined(VIEW),
        frames.metadata_updated(VIEW),
        frames.peer_left("p", "closed"),
        frames.peer_list([VIEW], 3),
        frames.peer_list([], None),
        frames.peer_message("a", "b", {"any": ["json"]}),
        frames.broadcast("a", None),
        frames.relayed_frame({"type": "offer", "target": "b", "sdp": "v=0", "extra": 1, "id": 4}, "a"),
        frames.relayed_frame({"type": "answer", "target": "b", "sdp": "v=0"}, "a"),
        frames.relayed_frame({"type": "candidate", "target": "b", "candidate": None}, "a"),
        frames.ack("m1"),
        frames.ack(2, queued=True),
        frames.expired("m3", "b"),
        frames.go_away("SERVER_SHUTDOWN", 5300),
        frames.pong(None),
        frames.pong(7),
        frames.error_frame(InvalidJson()),
        frames.error_frame(PeerNotFound(), "m2"),
        frames.claimed("w", "l~w", 1_800_000_000, "c1"),
        frames.claimed("w", "l~w", 1_800_000_000, None),
        frames.released("w", "l~w", 3),
        frames.booked("l~w", "c", 1_800_000_000),
        frames.lease_ended("w", "l~w", "c", "expired"),
        frames.peer_availability("w", 1, 2),
    ],
)
def test_every_server_frame_matches_the_schema(frame: str) -> None:
    """What the server encodes validates against its published models (no undocumented field)."""
    schema.SERVER_MESSAGE.validate_json(frame)


def _message_types(document: dict[str, Any]) -> set[str]:
    return {
        definition["properties"]["type"]["const"]
        for definition in document["$defs"].values()
        if "type" in definition.get("properties", {}) and "const" in definition["properties"]["type"]
    }


def test_docs_cover_every_message_error_and_close_code() -> None:
    """docs/protocol.md names every message type both ways, every error code and every close code."""
    text = (DOCS / "protocol.md").read_text()
    document = json.loads((DOCS / "protocol.schema.json").read_text())
    names = set(re.findall(r"`([a-z_]+)`", text))
    assert _message_types(document["client_messages"]) - names == set()
    assert _message_types(document["server_messages"]) - names == set()
    assert {code.value for code in ErrorCode} - set(re.findall(r"`([A-Z_]+)`", text)) == set()
    for code in CloseCode:
        assert f"| {int(code)} | `{code.name}` |" in text
