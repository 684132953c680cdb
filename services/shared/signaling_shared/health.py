"""Readiness checks shared by the HTTP services and the relay (no web framework here)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from pydantic import BaseModel, Field

from signaling_shared.errors import as_signaling_error

ReadinessCheck = Callable[[], Awaitable[None]]
READINESS_TIMEOUT_SECONDS = 3.0


class HealthBody(BaseModel):
    status: str


class ReadinessBody(BaseModel):
    status: str = Field(description="'ready' or 'unavailable'.")
    checks: dict[str, str] = Field(description="Each dependency and 'ok' or why it failed.")
    failing: list[str] = Field(default_factory=list, description="Names of the failing dependencies.")


async def run_readiness_checks(checks: Mapping[str, ReadinessCheck]) -> ReadinessBody:
    async def run(check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), timeout=READINESS_TIMEOUT_SECONDS)
        except TimeoutError:
            return "timeout"
        except Exception as exc:  # noqa: BLE001 - readiness reports every failure by name
            return f"failed: {as_signaling_error(exc).code.value.lower()}"
        return "ok"

    names = list(checks)
    results = await asyncio.gather(*(run(checks[name]) for name in names))
    outcome = dict(zip(names, results, strict=True))
    failing = [name for name, result in outcome.items() if result != "ok"]
    return ReadinessBody(status="unavailable" if failing else "ready", checks=outcome, failing=failing)
