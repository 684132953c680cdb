"""The one rule for who gets what (ws_relay.compat): the profile a register opts into, the
frames a v1 peer may receive, the successor's metadata merge."""

from __future__ import annotations

from typing import Any

import pytest

from ws_relay.compat import Profile, merge_metadata, mesh_ice_servers, profile_of, receives, successor_shaped

SEED = {"type": "register", "peer_id": "W", "room_id": "R", "token": "t", "id_token": "i"}


@pytest.mark.parametrize(
    ("extra", "profile"),
    [
        ({}, Profile.V1),
        ({"protocol": 1, "role": "worker"}, Profile.V1),
        ({"protocol": 2}, Profile.V2),
        ({"role": "worker"}, Profile.V2),
        ({"metadata": {}}, Profile.V2),
        ({"id": 1}, Profile.V2),
        ({"resume_token": "x", "last_seq": 3}, Profile.V2),
        ({"is_admin": False, "role": "worker"}, Profile.SUCCESSOR),
        ({"api_key": "slp_x"}, Profile.SUCCESSOR),
    ],
)
def test_a_register_opts_into_its_profile_by_what_it_sends(extra: dict[str, Any], profile: Profile) -> None:
    assert profile_of({**SEED, **extra}) is profile


def test_a_v1_peer_receives_only_what_the_seed_sent() -> None:
    for kind in ("registered_auth", "error", "offer", "answer", "candidate"):
        assert receives(Profile.V1, kind)
    for kind in ("peer_joined", "peer_left", "metadata_updated", "ice_servers", "go_away", "ack", "pong", "broadcast"):
        assert not receives(Profile.V1, kind)
        assert receives(Profile.V2, kind)
        assert receives(Profile.SUCCESSOR, kind)


def test_the_successors_messages_name_their_sender() -> None:
    assert successor_shaped({"type": "discover_peers", "from_peer_id": "C", "filters": {}})
    assert successor_shaped({"type": "update_metadata", "peer_id": "W", "metadata": {}})
    assert not successor_shaped({"type": "update_metadata", "metadata": {}})
    assert not successor_shaped({"type": "discover_peers", "filters": {}})


def test_a_merge_keeps_what_the_update_does_not_mention() -> None:
    current = {"tags": ["gpu", "train"], "properties": {"status": "available", "gpu_memory_mb": 8192}, "note": 1}
    merged = merge_metadata(current, {"properties": {"status": "busy"}, "tags": ["train", "infer"]})
    assert merged == {
        "tags": ["gpu", "train", "infer"],
        "properties": {"status": "busy", "gpu_memory_mb": 8192},
        "note": 1,
    }
    assert current["properties"] == {"status": "available", "gpu_memory_mb": 8192}  # not changed in place
    # Of another type, tags and properties are replaced like any key; nothing raises.
    assert merge_metadata({"tags": "x", "properties": 3}, {"tags": ["a"], "properties": {"b": 1}}) == {
        "tags": ["a"],
        "properties": {"b": 1},
    }
    assert merge_metadata({"tags": [{"not": "hashable"}]}, {"tags": ["a"]}) == {"tags": ["a"]}


def test_the_mesh_gets_stun_only() -> None:
    servers: list[dict[str, Any]] = [
        {"urls": ["stun:s:3478"]},
        {"urls": ["turn:s:3478"], "username": "u", "credential": "c"},
    ]
    assert mesh_ice_servers(servers) == [{"urls": ["stun:s:3478"]}]
