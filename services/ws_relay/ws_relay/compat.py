"""Which clients get what: the seed's (v1), ours (v2), and the seed's successor's. Pure
functions, no I/O; the one place these rules are written (docs/protocol.md, Compatibility).

- **v1**: a ``register`` with only the seed's fields (``peer_id``, ``room_id``, ``token``,
  ``id_token``). Such a peer receives only what the seed sent: ``registered_auth``, errors,
  and the relayed ``offer``/``answer``/``candidate``. The seed's clients raise on any other
  type, so nothing else is ever pushed to them.
- **v2**: a ``register`` with anything more of ours (``role``, ``metadata``, ``id``,
  ``resume_token``, ``last_seq``, or ``"protocol": 2``). Receives everything.
- **successor**: a ``register`` in the shape of webRTC-connect's successor server, which
  sleap-RTC uses today: it says ``is_admin`` (or carries the successor's ``api_key``/``jwt``).
  A v2 peer with the successor's extras in ``registered_auth`` (``admin_peer_id``,
  ``peer_list``, ``peer_metadata``, ``mesh_ice_servers``), an admin role per room, and a
  second ``register`` on its socket refreshing its registration.

A message in the successor's shape (it names its own peer: ``from_peer_id``, or ``peer_id``
in ``update_metadata``) gets the successor's semantics, from any peer: tags match any-of in
discovery, and metadata updates merge.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class Profile(enum.Enum):
    V1 = "v1"
    V2 = "v2"
    SUCCESSOR = "successor"


SEED_REGISTER_KEYS = frozenset({"type", "peer_id", "room_id", "token", "id_token"})
SUCCESSOR_MARKERS = frozenset({"is_admin", "api_key", "jwt"})
# What the seed ever sent a client; a v1 peer receives nothing else.
V1_FRAMES = frozenset({"registered_auth", "error", "offer", "answer", "candidate"})


def profile_of(register: Mapping[str, Any]) -> Profile:
    """The profile a ``register`` frame (decoded, not yet validated) opts into."""
    if SUCCESSOR_MARKERS & register.keys():
        return Profile.SUCCESSOR
    if register.get("protocol") == 1 or register.keys() <= SEED_REGISTER_KEYS:
        return Profile.V1
    return Profile.V2


# A peer's own error relayed to another (code PEER_ERROR): of type "error" on the wire, but
# not the seed's error, and a seed client would take it for the relay's (its worker exits).
PEER_ERROR_KIND = "peer_error"


def kind_of(frame_type: str, frame: str) -> str:
    """The kind of an encoded frame of ours, for ``receives``: its type, but a relayed peer
    error's own kind."""
    if frame_type == "error" and '"code":"PEER_ERROR"' in frame:
        return PEER_ERROR_KIND
    return frame_type


def receives(profile: Profile, kind: str) -> bool:
    """Whether a peer of ``profile`` may be sent a frame of type ``kind``."""
    return profile is not Profile.V1 or kind in V1_FRAMES


def successor_shaped(message: Mapping[str, Any]) -> bool:
    """Whether a decoded client message is in the successor's shape (it names its sender)."""
    return "from_peer_id" in message or ("peer_id" in message and message.get("type") == "update_metadata")


def merge_metadata(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """The successor's merge of ``tags`` (the union, in first-seen order) and ``properties``
    (key by key, the update's win), keeping, unlike the successor, the top-level keys the
    update does not mention (the successor drops them, ``tags`` included, so a status update
    would make a worker undiscoverable by its tags). A ``tags`` or ``properties`` of another
    type replaces as any key."""
    merged = {**current, **update}
    old_tags, new_tags = current.get("tags"), update.get("tags")
    if isinstance(old_tags, list) and isinstance(new_tags, list):
        merged["tags"] = list(dict.fromkeys(tag for tag in [*old_tags, *new_tags] if isinstance(tag, str)))
    old_properties, new_properties = current.get("properties"), update.get("properties")
    if isinstance(old_properties, dict) and isinstance(new_properties, dict):
        merged["properties"] = {**old_properties, **new_properties}
    return merged


def mesh_ice_servers(ice_servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ICE servers for worker-to-worker (mesh) connections: STUN only, as the successor
    gives them (workers reach each other directly; TURN quota is for clients)."""
    return [server for server in ice_servers if "username" not in server]
