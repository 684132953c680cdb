"""Verification of Cognito ID tokens (RS256 only).

The signing keys (JWKS) are fetched once, cached, and fetched again when a token names
a key id we do not know (Cognito rotates keys), at most once per
``min_refresh_seconds`` so that garbage key ids cannot make us hammer the JWKS URL.
Each key is built once, when fetched (python-jose would build it from its JWK again for
every token it verifies).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError

from signaling_shared.errors import AuthProviderUnavailable, InvalidIdToken
from signaling_shared.settings import CommonSettings

JwksFetcher = Callable[[], Awaitable[dict[str, Any]]]

ALGORITHM = "RS256"
MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified ID token belongs to."""

    sub: str
    username: str


def http_jwks_fetcher(url: str, *, timeout: float) -> JwksFetcher:
    """A fetcher that GETs the JWKS document from ``url``."""

    async def fetch() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url)
            response.raise_for_status()
            document = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("JWKS document has no 'keys' list")
        return document

    return fetch


class TokenVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        fetch_jwks: JwksFetcher,
        min_refresh_seconds: float = 30.0,
        leeway_seconds: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._fetch_jwks = fetch_jwks
        self._min_refresh = min_refresh_seconds
        self._clock = clock
        self._leeway = leeway_seconds
        self._keys: dict[str, Key] = {}
        self._attempted_at: float | None = None
        self._failed = False
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> TokenVerifier:
        return cls(
            issuer=settings.issuer,
            audience=settings.cognito_client_id,
            fetch_jwks=http_jwks_fetcher(settings.jwks_url, timeout=settings.http_timeout_seconds),
            min_refresh_seconds=settings.jwks_min_refresh_seconds,
            leeway_seconds=settings.jwt_leeway_seconds,
        )

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the keys, at most once per refresh interval (failed attempts count too)."""
        async with self._lock:
            now = self._clock()
            recent = self._attempted_at is not None and now - self._attempted_at < self._min_refresh
            if recent and not force:
                if self._failed:
                    raise AuthProviderUnavailable("signing keys could not be fetched")
                return
            self._attempted_at = now
            try:
                document = await self._fetch_jwks()
            except (httpx.HTTPError, ValueError) as exc:
                self._failed = True
                raise AuthProviderUnavailable("signing keys could not be fetched") from exc
            self._failed = False
            self._keys = {
                str(key["kid"]): built
                for key in document["keys"]
                if isinstance(key, dict) and "kid" in key and (built := _rs256_key(key)) is not None
            }

    async def check(self) -> None:
        """Readiness: the keys were fetched within the refresh interval, or can be now."""
        await self.refresh()

    async def _key_for(self, kid: str) -> Key:
        if kid not in self._keys:
            await self.refresh()
        key = self._keys.get(kid)
        if key is None:
            raise InvalidIdToken("ID token is signed with an unknown key")
        return key

    async def verify(self, token: str) -> Identity:
        """The identity of a valid ID token; InvalidIdToken otherwise."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidIdToken()
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError as exc:
            raise InvalidIdToken("ID token is malformed") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidIdToken("ID token must be signed with RS256")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidIdToken("ID token has no key id")
        key = await self._key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require_aud": True,
                    "require_iss": True,
                    "require_exp": True,
                    "require_iat": True,
                    "require_sub": True,
                    "leeway": self._leeway,
                },
            )
        except JOSEError as exc:
            raise InvalidIdToken("ID token failed verification") from exc
        if claims.get("token_use") != "id":
            raise InvalidIdToken("token is not an ID token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidIdToken("ID token has no subject")
        username = claims.get("cognito:username")
        return Identity(sub=sub, username=username if isinstance(username, str) else "")


def _rs256_key(data: dict[str, Any]) -> Key | None:
    """The RS256 verifying key of a JWK; None for a key of another kind (never accepted)."""
    try:
        return jwk.construct(data, ALGORITHM)
    except (JOSEError, ValueError, TypeError, KeyError):  # a malformed entry spoils no other key
        return None
