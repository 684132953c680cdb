"""Anonymous sign-in, free of web-framework code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from signaling_shared.cognito import AnonymousUser, CognitoGateway
from signaling_shared.errors import AuthProviderUnavailable
from signaling_shared.ratelimit import KeyedRateLimiter

log = structlog.stdlib.get_logger("auth_api")
SWEEP_PAGES = 10  # of 60 users: up to 600 old users deleted per sweep


class SignInService:
    """Sign-ins, and the sweep of the users they leave: each anonymous sign-in creates a
    Cognito user that is of no use once its one-hour ID token has expired. Sign-ins pay for
    the sweep: at most once per ``sweep_interval`` one page of the pool is read and its users
    older than ``user_lifetime`` deleted, in the background, so the pool stays as large as
    the last lifetime's sign-ins."""

    def __init__(
        self,
        cognito: CognitoGateway,
        limiter: KeyedRateLimiter,
        *,
        user_lifetime: float,
        sweep_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cognito = cognito
        self._limiter = limiter
        self._user_lifetime = user_lifetime
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._last_sweep = -float("inf")
        self._page: str | None = None
        self._sweeping: asyncio.Task[None] | None = None

    async def sign_in(self, client_ip: str) -> AnonymousUser:
        """A new anonymous user and its ID token; RateLimited past the per-IP limit."""
        self._limiter.enforce(client_ip, "sign-ins from this address")
        user = await self._cognito.sign_up_anonymous()
        log.info("anonymous_signin", username=user.username)
        self._sweep_if_due()
        return user

    def _sweep_if_due(self) -> None:
        now = self._clock()
        if now - self._last_sweep < self._sweep_interval or (self._sweeping and not self._sweeping.done()):
            return
        self._last_sweep = now
        self._sweeping = asyncio.get_running_loop().create_task(self.sweep_once(now))

    async def sweep_once(self, now: float) -> None:
        """Delete the old users of the pool's next pages: page after page while they hold old
        users, at most ``SWEEP_PAGES`` (so one sweep can keep up with many sign-ins a minute)."""
        deleted = 0
        try:
            for _ in range(SWEEP_PAGES):
                count, self._page = await self._cognito.sweep(older_than=now - self._user_lifetime, page=self._page)
                deleted += count
                if not count or self._page is None:
                    break
        except AuthProviderUnavailable:
            self._page = None  # start again from the first page: the token may be what failed
            log.warning("user_sweep_failed")  # the next sign-in's sweep tries again
        if deleted:
            log.info("old_users_deleted", count=deleted)
