"""Room tokens and the relay's close codes."""

from __future__ import annotations

import base64
import hashlib

from signaling_shared.tokens import hash_room_token, new_room_id, new_room_token, room_token_matches
from ws_relay.close_codes import REASONS, RETRYABLE_RANGE, TERMINAL_RANGE, CloseCode


def test_room_tokens_carry_at_least_128_random_bits() -> None:
    """A room token decodes to 32 random bytes (256 bits) and tokens do not repeat."""
    tokens = {new_room_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for token in list(tokens)[:10]:
        assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8 >= 128


def test_only_the_hash_is_compared() -> None:
    """The stored form is SHA-256; matching needs the exact token."""
    token = new_room_token()
    stored = hash_room_token(token)
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    assert token not in stored
    assert room_token_matches(token, stored)
    assert not room_token_matches(token[:-1], stored)
    assert not room_token_matches("", stored)


def test_room_ids_are_unique_hex() -> None:
    """Room ids are 16 hex characters."""
    ids = {new_room_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


def test_close_codes_are_documented_and_in_their_ranges() -> None:
    """Every close code has a reason under 123 bytes and sits in the terminal or retryable range."""
    for code in CloseCode:
        assert code in REASONS
        assert len(REASONS[code].encode()) < 123
        assert (code.value in TERMINAL_RANGE) != (code.value in RETRYABLE_RANGE)
    assert CloseCode.SERVER_SHUTDOWN.retryable
    assert not CloseCode.REPLACED.retryable
