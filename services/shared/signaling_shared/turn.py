"""ICE servers for peers, with ephemeral TURN credentials (the TURN REST API scheme).

coturn's ``use-auth-secret`` checks ``username = "<expiry unix time>:<user>"`` and
``credential = base64(HMAC-SHA1(secret, username))``; the credential is worthless after
its expiry, so a leaked one expires by itself. ``<user>`` is a hash of the server-side
identity (``identity_tag``), never a name the client chose: coturn counts its per-user
quota by it, so one identity's allocations are counted together and nobody can spend
another's. The first configured secret signs; coturn
accepts every secret it is configured with, which is how a secret is rotated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from signaling_shared.settings import CommonSettings


def turn_credential(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def identity_tag(sub: str) -> str:
    """The TURN user for a Cognito identity: 16 hex digits of its SHA-256 (no identity in the clear)."""
    return hashlib.sha256(f"turn-user:{sub}".encode()).hexdigest()[:16]


def rest_credentials(settings: CommonSettings, peer: str, now: float) -> tuple[str, str] | None:
    """TURN username and credential for the TURN user ``peer`` (``identity_tag``), valid for
    the configured TTL from ``now``, signed with the first secret; None without TURN."""
    if not (settings.turn_urls and settings.turn_secrets):
        return None
    username = f"{int(now) + settings.turn_credential_ttl_seconds}:{peer}"
    return username, turn_credential(settings.turn_secrets[0].get_secret_value(), username)


def ice_servers(settings: CommonSettings, peer: str, now: float) -> dict[str, Any]:
    """``{"ice_servers": [...], "ttl": seconds}`` for ``peer``, valid from ``now``."""
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    credentials = rest_credentials(settings, peer, now)
    if credentials is not None:
        username, credential = credentials
        servers.append({"urls": list(settings.turn_urls), "username": username, "credential": credential})
    return {"ice_servers": servers, "ttl": settings.turn_credential_ttl_seconds}
