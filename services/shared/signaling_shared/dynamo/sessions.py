"""Sessions a relay process saves at shutdown for the next one to resume: the state on the
peer's routing entry (``saved_session``), the frames the client had not confirmed in the
messages table (keys ``<peer_id>!<seq>``). One resume wins: it takes the entry over."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from signaling_shared.dynamo.client import Dynamo, Store
from signaling_shared.dynamo.messages import MessageStore
from signaling_shared.dynamo.peers import PeerStore
from signaling_shared.dynamo.records import (
    HELD_TTL_MARGIN_SECONDS,
    PeerRecord,
    SavedSession,
    compact_json,
    number,
    peer_from,
    string,
)
from signaling_shared.errors import ConditionFailed, RepositoryError


def session_frame_key(peer_id: str, seq: int) -> str:
    # '!' is not allowed in peer ids and sorts before '#': never a held message's key.
    return f"{peer_id}!{seq:015d}"


def session_frame_prefix(peer_id: str) -> str:
    return f"{peer_id}!"


def session_frame_seq(key: str) -> int:
    return int(key.rpartition("!")[2])


def session_frame_item(peer: PeerRecord, seq: int, frame: str) -> dict[str, Any]:
    return {
        "room_id": string(peer.room_id),
        "msg_key": string(session_frame_key(peer.peer_id, seq)),
        "frame": string(frame),
        "expires_at": number(peer.expires_at + HELD_TTL_MARGIN_SECONDS),
    }


def session_state(session: SavedSession) -> str:
    """What a saved session adds to its routing entry (``saved_session``), as stored."""
    return compact_json(
        {
            "session_id": session.session_id,
            "answers": session.answers,
            "in_flight": session.in_flight,
            "resume_hashes": list(session.resume_hashes),
            "seq": session.seq,
            "frames": [seq for seq, _ in session.frames],
            "owed": [[seq, owed] for seq, owed in session.owed],
        }
    )


def saved_session_from(
    item: dict[str, Any], state: dict[str, Any], stored: dict[int, str], *, whole: bool
) -> SavedSession | None:
    """The session saved on a routing entry (``state``: its ``saved_session``, parsed), with
    those of its frames ``stored`` holds (by seq); None if ``whole`` and some are missing
    (expired: it cannot be resumed)."""
    frames = [(seq, stored[seq]) for seq in state["frames"] if seq in stored]
    if whole and len(frames) != len(state["frames"]):
        return None
    return SavedSession(
        peer=peer_from(item),
        session_id=str(state["session_id"]),
        answers=[int(seq) for seq in state["answers"]],
        in_flight=list(state.get("in_flight", [])),
        resume_hashes=tuple(state["resume_hashes"]),
        seq=int(state["seq"]),
        frames=frames,
        owed=[(int(seq), owed) for seq, owed in state["owed"]],
    )


class SessionStore(Store):
    def __init__(self, db: Dynamo, peers: PeerStore, messages: MessageStore) -> None:
        super().__init__(db)
        self._peers = peers
        self._messages = messages

    async def save_session(self, session: SavedSession) -> None:
        """Store a session for the next process: its frames in the messages table, then the
        rest on its routing entry (so an entry with a session always has all its frames).
        ConditionFailed if the entry is no longer this connection's."""
        peer = session.peer
        frames = [{"PutRequest": {"Item": session_frame_item(peer, seq, frame)}} for seq, frame in session.frames]
        if frames:
            await self._call("save_session", self._db.batch_write, self._db.messages_table, frames)
        await self._call(
            "save_session",
            self._client.update_item,
            TableName=self._db.peers_table,
            Key={"room_id": string(peer.room_id), "peer_id": string(peer.peer_id)},
            UpdateExpression="SET saved_session = :s, expires_at = :exp",
            ConditionExpression="connection_id = :cid",
            ExpressionAttributeValues={
                ":s": string(session_state(session)),
                ":exp": number(peer.expires_at),
                ":cid": string(peer.connection_id),
            },
        )

    async def drop_session(self, saved: SavedSession) -> bool:
        """Delete the entry of a saved session nobody resumed; False if it was taken."""
        try:
            await self._call(
                "drop_session",
                self._client.delete_item,
                TableName=self._db.peers_table,
                Key={"room_id": string(saved.peer.room_id), "peer_id": string(saved.peer.peer_id)},
                ConditionExpression="connection_id = :cid AND attribute_exists(saved_session)",
                ExpressionAttributeValues={":cid": string(saved.peer.connection_id)},
            )
        except ConditionFailed:
            return False
        return True

    async def delete_session_frames(self, saved: SavedSession) -> None:
        keys = [session_frame_key(saved.peer.peer_id, seq) for seq, _ in saved.frames]
        if keys:
            with contextlib.suppress(RepositoryError):  # their TTL cleans up
                await self._messages.delete_messages(saved.peer.room_id, keys)

    async def load_session(self, room_id: str, peer_id: str, *, whole: bool = True) -> SavedSession | None:
        """The session a previous process saved for this peer, or None. ``whole``: with all
        its frames (else None: it cannot be resumed); otherwise the frames found, if any."""
        item = await self._peers.peer_item("load_session", room_id, peer_id)
        if not item or "saved_session" not in item:
            return None
        state = json.loads(item["saved_session"]["S"])
        stored = await self._call("load_session", self._session_frames, room_id, peer_id)
        return saved_session_from(item, state, stored, whole=whole)

    def _session_frames(self, room_id: str, peer_id: str) -> dict[int, str]:
        frames: dict[int, str] = {}
        for page in self._client.get_paginator("query").paginate(
            TableName=self._db.messages_table,
            KeyConditionExpression="room_id = :r AND begins_with(msg_key, :p)",
            ExpressionAttributeValues={":r": string(room_id), ":p": string(session_frame_prefix(peer_id))},
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                frames[session_frame_seq(item["msg_key"]["S"])] = item["frame"]["S"]
        return frames

    async def take_session(self, peer: PeerRecord, saved: SavedSession, *, now: int) -> None:
        """Write ``peer`` over the saved session's entry, if it is still that one (one resume
        wins); the saved session is gone with it. NotFound: the room is gone or expired;
        ConditionFailed: the entry changed (resumed or registered elsewhere)."""
        await self._peers.put_in_live_room(
            "take_session",
            peer,
            now=now,
            condition="connection_id = :cid AND attribute_exists(saved_session)",
            values={":cid": string(saved.peer.connection_id)},
        )
        await self.delete_session_frames(saved)
