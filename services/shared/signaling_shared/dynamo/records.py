"""What the tables hold: the records services read and write, and their DynamoDB items.

Every item is written and read here only, so a table's layout is in one place: the rooms
table (rooms, their tombstones, the relay-node registry), the peers routing table (live
peers, and the sessions saved on their entries) and the messages table (held messages, and
the frames of saved sessions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PEER_ID_INDEX = "peer_id-index"
HELD_TTL_MARGIN_SECONDS = 3600

# The relay nodes live in one item of the rooms table (room ids never contain '#'): one
# consistent read lists them all, and each node writes only its own entry of the map.
NODES_ITEM = "#relay-nodes"
# A deleted room leaves a tombstone for a day (the TTL removes it): a relay that finds a
# room gone can tell a deletion by its creator from a record lost in a storage fault.
TOMBSTONE_PREFIX = "#deleted:"
TOMBSTONE_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class Room:
    room_id: str
    created_by: str
    token_hash: str
    created_at: int
    expires_at: int
    node_id: str = ""  # the relay node that serves it ("": any node, as with a single relay)
    # Marks that spare a registration a read: messages may be held in it until
    # ``held_until_ms``, and a process may have saved sessions in it until ``saved_until``.
    # None (a room written before the marks existed): anything may be there; look.
    held_until_ms: int | None = None
    saved_until: int | None = None

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def may_hold_messages(self, now: float) -> bool:
        return self.held_until_ms is None or self.held_until_ms > now * 1000

    def may_have_saved_sessions(self, now: float) -> bool:
        return self.saved_until is None or self.saved_until > now


@dataclass(frozen=True, slots=True)
class RelayNode:
    """A ws-relay process as rooms-api places rooms on it."""

    node_id: str
    ws_url: str
    rooms: int  # rooms with peers at its last heartbeat
    capacity: int  # its max_connections
    expires_at: float  # its last heartbeat plus the node TTL (to the millisecond: fencing needs it)
    assigned: int = 0  # rooms placed on it since that heartbeat
    draining: bool = False  # stopping: no new rooms, but it keeps its rooms until it expires

    def is_live(self, now: float) -> bool:
        return now < self.expires_at

    @property
    def load(self) -> float:
        """What placement compares: rooms served and promised, per unit of capacity."""
        return (self.rooms + self.assigned) / max(self.capacity, 1)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A live peer in the routing table: who owns the peer id and which relay holds it."""

    room_id: str
    peer_id: str
    owner_sub: str
    owner_username: str
    connection_id: str
    node_id: str
    connected_at: int
    expires_at: int
    role: str = "peer"
    metadata: dict[str, Any] = field(default_factory=dict)
    saved: bool = False  # a previous process saved this peer's session for a resume
    # The registration it belongs to (kept over resumes): a node that takes over the room of
    # a node that died recovers the session under it, so what was owed to it still is.
    session_id: str = ""
    max_claims: int = 1  # how many leases (bookings.Booking) it may be under at once
    # The last connection outcome it reported per other peer (ws_relay.outcomes): other
    # peer id -> {"outcome", "path", "time_to_connect_ms", "at"}.
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message held for a peer that is not in its room yet, until delivered or expired.

    ``key`` sorts a room's messages by target, then in the order they were accepted.
    """

    room_id: str
    key: str
    to_peer_id: str
    from_peer_id: str
    from_session: str  # the sender's session (one registration and its resumes)
    correlation_id: str | int
    expires_at_ms: int
    frame: str = ""  # left out when listing for timers
    # Sent to its target by a process that then shut down: being delivered through the
    # target's saved session until then.
    claimed_until_ms: int = 0
    # Set on an answer (ack, failure) held for a sender that had not resumed here yet: only
    # that session may receive it, and nobody is told when it expires.
    for_session: str = ""

    @staticmethod
    def key_for(to_peer_id: str, accepted_ms: int, node_id: str, counter: int) -> str:
        # '#' is not allowed in peer ids, so a target's prefix never matches another's.
        return f"{to_peer_id}#{accepted_ms:015d}#{node_id}#{counter:012d}"


@dataclass(frozen=True, slots=True)
class SavedSession:
    """A peer's session as a relay process left it at shutdown, for the next one to resume:
    the routing entry plus what a resume needs. ``frames`` are the numbered frames the client
    had not confirmed, oldest first; ``owed`` says what each one's receipt settles."""

    peer: PeerRecord
    session_id: str
    resume_hashes: tuple[str, ...]
    seq: int
    frames: list[tuple[int, str]] = field(default_factory=list)
    owed: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # the seqs of frames that are answers
    in_flight: list[str | int] = field(default_factory=list)  # ids it sent, awaiting an outcome


# Attribute values ------------------------------------------------------------------


def string(value: str) -> dict[str, str]:
    return {"S": value}


def number(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# Items -----------------------------------------------------------------------------


def room_item(room: Room) -> dict[str, Any]:
    item = {
        "room_id": string(room.room_id),
        "created_by": string(room.created_by),
        "token_hash": string(room.token_hash),
        "created_at": number(room.created_at),
        "expires_at": number(room.expires_at),
    }
    if room.node_id:
        item["node_id"] = string(room.node_id)
    if room.held_until_ms is not None:
        item["held_until_ms"] = number(room.held_until_ms)
    if room.saved_until is not None:
        item["saved_until"] = number(room.saved_until)
    return item


def room_from(item: dict[str, Any]) -> Room:
    return Room(
        room_id=item["room_id"]["S"],
        created_by=item["created_by"]["S"],
        token_hash=item["token_hash"]["S"],
        created_at=int(item["created_at"]["N"]),
        expires_at=int(item["expires_at"]["N"]),
        node_id=item.get("node_id", {}).get("S", ""),
        held_until_ms=int(item["held_until_ms"]["N"]) if "held_until_ms" in item else None,
        saved_until=int(item["saved_until"]["N"]) if "saved_until" in item else None,
    )


def tombstone_item(room_id: str, *, now: float) -> dict[str, Any]:
    return {"room_id": string(TOMBSTONE_PREFIX + room_id), "expires_at": number(int(now) + TOMBSTONE_SECONDS)}


def node_entry(node: RelayNode) -> dict[str, Any]:
    return {
        "M": {
            "ws_url": string(node.ws_url),
            "rooms": number(node.rooms),
            "capacity": number(node.capacity),
            "expires_at": {"N": f"{node.expires_at:.3f}"},
            "assigned": number(node.assigned),
            "draining": {"BOOL": node.draining},
        }
    }


def node_from(node_id: str, entry: dict[str, Any]) -> RelayNode:
    fields = entry["M"]
    return RelayNode(
        node_id=node_id,
        ws_url=fields["ws_url"]["S"],
        rooms=int(fields["rooms"]["N"]),
        capacity=int(fields["capacity"]["N"]),
        expires_at=float(fields["expires_at"]["N"]),
        assigned=int(fields.get("assigned", {"N": "0"})["N"]),
        draining=bool(fields.get("draining", {"BOOL": False})["BOOL"]),
    )


def peer_item(peer: PeerRecord) -> dict[str, Any]:
    return {
        "room_id": string(peer.room_id),
        "peer_id": string(peer.peer_id),
        "owner_sub": string(peer.owner_sub),
        "owner_username": string(peer.owner_username),
        "connection_id": string(peer.connection_id),
        "node_id": string(peer.node_id),
        "connected_at": number(peer.connected_at),
        "expires_at": number(peer.expires_at),
        "role": string(peer.role),
        "metadata": string(compact_json(peer.metadata)),
        **({"session_id": string(peer.session_id)} if peer.session_id else {}),
        **({"max_claims": number(peer.max_claims)} if peer.max_claims != 1 else {}),
        **({"connections": string(compact_json(peer.connections))} if peer.connections else {}),
    }


def peer_from(item: dict[str, Any]) -> PeerRecord:
    return PeerRecord(
        room_id=item["room_id"]["S"],
        peer_id=item["peer_id"]["S"],
        owner_sub=item["owner_sub"]["S"],
        owner_username=item.get("owner_username", {}).get("S", ""),
        connection_id=item["connection_id"]["S"],
        node_id=item.get("node_id", {}).get("S", ""),
        connected_at=int(item["connected_at"]["N"]),
        expires_at=int(item["expires_at"]["N"]),
        role=item.get("role", {}).get("S", "peer"),
        metadata=json_object(item.get("metadata", {}).get("S", "{}")),
        saved="saved_session" in item,
        session_id=item.get("session_id", {}).get("S", ""),
        max_claims=int(item.get("max_claims", {}).get("N", "1")),
        connections=json_object(item.get("connections", {}).get("S", "{}")),
    )


def message_item(message: QueuedMessage) -> dict[str, Any]:
    return {
        "room_id": string(message.room_id),
        "msg_key": string(message.key),
        "to_peer_id": string(message.to_peer_id),
        "from_peer_id": string(message.from_peer_id),
        "from_session": string(message.from_session),
        "correlation_id": string(json.dumps(message.correlation_id)),
        "expires_at_ms": number(message.expires_at_ms),
        # TTL: a margin past the expiry, so the sender can still be told if it is away then.
        "expires_at": number(-(-message.expires_at_ms // 1000) + HELD_TTL_MARGIN_SECONDS),
        "frame": string(message.frame),
        "for_session": string(message.for_session),
    }


def message_from(item: dict[str, Any]) -> QueuedMessage:
    correlation_id = json.loads(item["correlation_id"]["S"])
    return QueuedMessage(
        room_id=item["room_id"]["S"],
        key=item["msg_key"]["S"],
        to_peer_id=item["to_peer_id"]["S"],
        from_peer_id=item["from_peer_id"]["S"],
        from_session=item["from_session"]["S"],
        correlation_id=correlation_id if isinstance(correlation_id, str | int) else str(correlation_id),
        expires_at_ms=int(item["expires_at_ms"]["N"]),
        frame=item.get("frame", {}).get("S", ""),
        claimed_until_ms=int(item.get("claimed_until_ms", {}).get("N", "0")),
        for_session=item.get("for_session", {}).get("S", ""),
    )


@dataclass(frozen=True, slots=True)
class Lease:
    """One client's claim on a peer (a worker), until ``expires_at`` unless renewed."""

    lease_id: str
    holder_peer_id: str
    holder_sub: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Booking:
    """The leases on one peer of a room, as stored: written only over the ``version`` read
    (``version`` 0: nothing stored yet), so two writers cannot both add to what they read."""

    room_id: str
    peer_id: str
    leases: tuple[Lease, ...] = ()
    version: int = 0
    expires_at: int = 0  # the TTL: its room's expiry and a margin

    def live(self, now: float) -> tuple[Lease, ...]:
        return tuple(lease for lease in self.leases if lease.expires_at > now)

    def lease(self, lease_id: str) -> Lease | None:
        return next((lease for lease in self.leases if lease.lease_id == lease_id), None)


# In the messages table under a key no held message (no '!') or saved frame ('<peer>!')
# has: it goes with the room's messages when the room is deleted.
def booking_key(peer_id: str) -> str:
    return f"!booking!{peer_id}"


def booking_item(booking: Booking) -> dict[str, Any]:
    return {
        "room_id": string(booking.room_id),
        "msg_key": string(booking_key(booking.peer_id)),
        "leases": string(
            compact_json(
                [[lease.lease_id, lease.holder_peer_id, lease.holder_sub, lease.expires_at] for lease in booking.leases]
            )
        ),
        "version": number(booking.version),
        "expires_at": number(booking.expires_at),
    }


def booking_from(room_id: str, peer_id: str, item: dict[str, Any] | None) -> Booking:
    if item is None:
        return Booking(room_id, peer_id)
    leases = tuple(
        Lease(str(lease_id), str(holder), str(sub), int(expires_at))
        for lease_id, holder, sub, expires_at in json.loads(item["leases"]["S"])
    )
    return Booking(room_id, peer_id, leases, int(item["version"]["N"]), int(item["expires_at"]["N"]))


def is_held_message_key(key: str) -> bool:
    """Whether a messages-table key is a held message's (not a saved session's frame)."""
    return "!" not in key
