"""The signaling CLI's argument parsing (its commands run end to end in tests/e2e/test_cli.py)."""

from __future__ import annotations

import pytest

from signaling_sdk import cli

TOKEN = "-Y3tB2hWq0m7o0eJxO1l4pTq9sKk2Zr8dN5vUa6cFgE"  # the shape of a room token


@pytest.mark.parametrize("form", [["--token", TOKEN], [f"--token={TOKEN}"]])
def test_the_cli_takes_a_room_token_that_starts_with_a_dash(form: list[str]) -> None:
    """Room tokens are URL-safe base64: one in 64 starts with '-', which argparse reads as an option."""
    args = cli.parse_args(["worker", "--room", "r1", *form, "--once"])
    assert (args.token, args.once) == (TOKEN, True)


def test_a_missing_token_is_still_an_error() -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["worker", "--room", "r1", "--token", "--once"])


def test_the_worker_takes_max_claims_within_the_relays_bounds() -> None:
    """--max-claims goes to the registration (1 to 64); without it the relay's default holds."""
    assert cli.parse_args(["worker", "--room", "r1", "--token", "t", "--max-claims", "3"]).max_claims == 3
    assert cli.parse_args(["worker", "--room", "r1", "--token", "t"]).max_claims is None
    for wrong in ("0", "65", "two"):
        with pytest.raises(SystemExit):
            cli.parse_args(["worker", "--room", "r1", "--token", "t", "--max-claims", wrong])
