"""Anonymous sign-in, free of web-framework code."""

from __future__ import annotations

import structlog

from signaling_shared.cognito import AnonymousUser, CognitoGateway
from signaling_shared.ratelimit import KeyedRateLimiter

log = structlog.stdlib.get_logger("auth_api")


class SignInService:
    def __init__(self, cognito: CognitoGateway, limiter: KeyedRateLimiter) -> None:
        self._cognito = cognito
        self._limiter = limiter

    async def sign_in(self, client_ip: str) -> AnonymousUser:
        """A new anonymous user and its ID token; RateLimited past the per-IP limit."""
        self._limiter.enforce(client_ip, "sign-ins from this address")
        user = await self._cognito.sign_up_anonymous()
        log.info("anonymous_signin", username=user.username)
        return user
