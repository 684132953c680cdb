"""ID-token verification: RS256 only, iss/aud/token_use/exp checked, JWKS cached and refreshed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

from signaling_shared.auth import Identity, TokenVerifier
from signaling_shared.errors import AuthProviderUnavailable, InvalidIdToken

ISSUER = "https://cognito-idp.us-west-1.amazonaws.com/us-west-1_pool"
AUDIENCE = "client-123"


class KeyPair:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_pem = (
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def jwk(self) -> dict[str, Any]:
        key = jwk.construct(self.public_pem, "RS256").to_dict()
        return {**key, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def sign(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "sub": "user-1",
            "cognito:username": "anon-1",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "token_use": "id",
            "iat": now,
            "exp": now + 3600,
            **overrides,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        return str(jwt.encode(claims, self.private_pem, algorithm="RS256", headers={"kid": self.kid}))


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return KeyPair("kid-1")


class Jwks:
    """A JWKS source that counts fetches (stands in for the HTTP fetch only)."""

    def __init__(self, *keys: KeyPair) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.fail = False

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.fail:
            raise ValueError("unreachable")
        return {"keys": [k.jwk() for k in self.keys]}


def verifier(jwks: Jwks, clock: Any = time.monotonic) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, fetch_jwks=jwks, min_refresh_seconds=30, clock=clock)


async def test_valid_token_gives_identity(key: KeyPair) -> None:
    """A well-formed Cognito ID token yields its subject and username."""
    assert await verifier(Jwks(key)).verify(key.sign()) == Identity(sub="user-1", username="anon-1")


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://cognito-idp.us-west-1.amazonaws.com/other-pool"},
        {"aud": "another-client"},
        {"aud": None},
        {"iss": None},
        {"token_use": "access"},
        {"token_use": None},
        {"exp": int(time.time()) - 3600},
        {"exp": None},
        {"iat": None},
        {"sub": None},
    ],
)
async def test_claims_are_enforced(key: KeyPair, claims: dict[str, Any]) -> None:
    """Wrong issuer, audience or token_use, expiry, or a missing claim is refused."""
    with pytest.raises(InvalidIdToken):
        await verifier(Jwks(key)).verify(key.sign(**claims))


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_only_rs256_is_accepted(key: KeyPair) -> None:
    """HS256 signed with the public key (algorithm confusion) and alg=none are refused."""
    claims = jwt.get_unverified_claims(key.sign())
    signing_input = f"{_b64({'alg': 'HS256', 'kid': key.kid})}.{_b64(claims)}"
    mac = hmac.new(key.public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    unsigned = f"{_b64({'alg': 'none', 'kid': key.kid})}.{_b64(claims)}."
    for token in (confused, unsigned):
        with pytest.raises(InvalidIdToken):
            await verifier(Jwks(key)).verify(token)


async def test_signature_from_an_unknown_key_is_refused(key: KeyPair) -> None:
    """A token signed by another key under a known kid fails verification."""
    forger = KeyPair(key.kid)
    with pytest.raises(InvalidIdToken):
        await verifier(Jwks(key)).verify(forger.sign())


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 9000])
async def test_garbage_is_refused(key: KeyPair, token: str) -> None:
    """Malformed or oversized tokens are INVALID_ID_TOKEN, not crashes."""
    with pytest.raises(InvalidIdToken):
        await verifier(Jwks(key)).verify(token)


async def test_jwks_is_cached_and_refetched_for_an_unknown_kid(key: KeyPair) -> None:
    """Keys are fetched once; a rotated key (new kid) triggers one refetch, rate-limited."""
    now = [0.0]
    jwks = Jwks(key)
    v = verifier(jwks, clock=lambda: now[0])
    await v.verify(key.sign())
    await v.verify(key.sign())
    assert jwks.fetches == 1

    rotated = KeyPair("kid-2")
    jwks.keys.append(rotated)
    with pytest.raises(InvalidIdToken):  # within the refresh interval: no refetch yet
        await v.verify(rotated.sign())
    assert jwks.fetches == 1
    now[0] += 31
    assert (await v.verify(rotated.sign())).sub == "user-1"
    assert jwks.fetches == 2
    with pytest.raises(InvalidIdToken):  # garbage kids cannot force more fetches
        await v.verify(KeyPair("kid-3").sign())
    assert jwks.fetches == 2


async def test_unreachable_jwks_is_a_dependency_error(key: KeyPair) -> None:
    """When the keys cannot be fetched the caller sees AUTH_PROVIDER_UNAVAILABLE."""
    jwks = Jwks(key)
    jwks.fail = True
    v = verifier(jwks)
    for _ in range(3):  # failed fetches are rate-limited too: one attempt per interval
        with pytest.raises(AuthProviderUnavailable):
            await v.verify(key.sign())
    assert jwks.fetches == 1


async def test_each_key_is_built_once_and_a_malformed_one_spoils_no_other(
    key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys are built when fetched, not for every token; a JWKS entry that is not an RSA
    key (or is broken) is left out, and the others still verify."""
    token, naming_the_broken_key = key.sign(), KeyPair("broken").sign()
    entries = [key.jwk(), {"kid": "broken", "kty": "RSA", "n": "!!", "e": "AQAB"}, {"kid": "ec", "kty": "EC"}]
    built: list[str] = []
    construct = jwk.construct

    def counting(data: Any, algorithm: str | None = None) -> Any:
        built.append(str(data.get("kid")))
        return construct(data, algorithm)

    monkeypatch.setattr(jwk, "construct", counting)

    async def with_broken_entries() -> dict[str, Any]:
        return {"keys": entries}

    checker = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, fetch_jwks=with_broken_entries, min_refresh_seconds=30)
    for _ in range(3):
        assert (await checker.verify(token)).sub == "user-1"
    assert built == [key.kid, "broken", "ec"]  # once each, when fetched
    with pytest.raises(InvalidIdToken, match="unknown key"):
        await checker.verify(naming_the_broken_key)
