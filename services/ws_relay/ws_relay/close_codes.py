"""Every code the relay closes a socket with, in one place.

4000-4499 are terminal: reconnecting unchanged will fail the same way.
4500-4999 are retryable: reconnect with jittered backoff.
The library's own codes also apply: 1009 (frame over the size limit), 1011 (bug).
Reasons stay under 123 bytes (the WebSocket limit).
"""

from __future__ import annotations

from enum import IntEnum

TERMINAL_RANGE = range(4000, 4500)
RETRYABLE_RANGE = range(4500, 5000)


class CloseCode(IntEnum):
    REGISTRATION_TIMEOUT = 4001
    REPLACED = 4002
    ROOM_DELETED = 4003
    ROOM_EXPIRED = 4004
    OVERFLOW = 4005
    QUIT = 4006
    ROOM_LOST = 4007
    SERVER_SHUTDOWN = 4500
    SLOW_CONSUMER = 4501
    REDIRECTED = 4502
    TOO_MANY_CONNECTIONS = 4503

    @property
    def retryable(self) -> bool:
        return self.value in RETRYABLE_RANGE


REASONS: dict[CloseCode, str] = {
    CloseCode.REGISTRATION_TIMEOUT: "no register message within the deadline",
    CloseCode.REPLACED: "peer id taken over by a newer connection of the same identity",
    CloseCode.ROOM_DELETED: "room deleted by its creator",
    CloseCode.ROOM_EXPIRED: "room expired",
    CloseCode.OVERFLOW: "too many messages owed to this peer; register again",
    CloseCode.QUIT: "the peer quit the room",
    CloseCode.ROOM_LOST: "the room's record is gone, not deleted by its creator (a storage fault): create a room",
    CloseCode.SERVER_SHUTDOWN: "server shutting down, reconnect",
    CloseCode.SLOW_CONSUMER: "too many unread messages, reconnect",
    CloseCode.TOO_MANY_CONNECTIONS: "too many connections from this address: close some, or retry later",
    CloseCode.REDIRECTED: "the room is served by another relay node: register at redirect's ws_url",
}
