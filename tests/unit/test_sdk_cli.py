"""The signaling CLI's argument parsing (its commands run end to end in tests/e2e/test_cli.py)."""

from __future__ import annotations

import pytest

from signaling_sdk import cli


@pytest.mark.parametrize("form", [["--token", "-starts-with-a-dash"], ["--token=-starts-with-a-dash"]])
def test_the_cli_takes_a_room_token_that_starts_with_a_dash(form: list[str]) -> None:
    """Room tokens are URL-safe base64: one in 64 starts with '-', which argparse reads as an option."""
    args = cli.parse_args(["worker", "--room", "r1", *form, "--once"])
    assert (args.token, args.once) == ("-starts-with-a-dash", True)
