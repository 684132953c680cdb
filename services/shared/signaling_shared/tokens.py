"""Room ids and room tokens.

A room token is a bearer secret (the room's "meeting password"): 256 random bits,
stored only as its SHA-256 and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ROOM_TOKEN_BYTES = 32  # 256 bits; the seed used 24.

# Room ids and peer ids: printable, no spaces or quotes, so they are safe in logs and keys.
ID_PATTERN = r"^[A-Za-z0-9_.:@+-]{1,128}$"


def new_room_id() -> str:
    """A room id: 64 random bits in hex. Not a secret (the token is)."""
    return secrets.token_hex(8)


def new_room_token() -> str:
    return secrets.token_urlsafe(ROOM_TOKEN_BYTES)


def hash_room_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def room_token_matches(token: str, token_hash: str) -> bool:
    """Constant-time comparison of a presented token with the stored hash."""
    return hmac.compare_digest(hash_room_token(token), token_hash)
