"""The service's HTTP APIs: anonymous sign-in, rooms, ICE servers."""

from __future__ import annotations

from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import httpx

from signaling_sdk.errors import SignalingError, error_from


@dataclass(frozen=True)
class Identity:
    """An anonymous identity: present ``id_token`` as the Bearer token and in ``register``."""

    id_token: str
    username: str


@dataclass(frozen=True)
class Room:
    """A room to register in: its id and token (the room's password: give it only to
    peers that may join). ``expires_at`` (Unix seconds) is known to its creator; 0 if not.
    ``ws_url``, also known to its creator only, is the relay node that serves the room when
    the service runs several ("": any relay; peers that dial another node are redirected)."""

    room_id: str
    token: str
    expires_at: int = 0
    ws_url: str = ""


class ServiceClient:
    """The HTTP APIs at ``api_url`` (``make dev``: http://127.0.0.1:8001; behind the edge:
    its https URL). ``ssl``: the TLS context to verify the edge with (e.g. trusting a
    private CA: ``ssl.create_default_context(cafile=...)``); default, the public CAs."""

    def __init__(
        self,
        api_url: str,
        *,
        timeout: float = 10.0,
        ssl: SSLContext | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._client = client or httpx.AsyncClient(base_url=api_url, timeout=timeout, verify=ssl or True)

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections (``async with`` does it)."""
        await self._client.aclose()

    async def sign_in(self) -> Identity:
        """A new anonymous identity (raises RateLimited past the sign-in rate)."""
        body = await self._call("POST", "/anonymous-signin")
        return Identity(str(body["id_token"]), str(body["username"]))

    async def create_room(self, identity: Identity) -> Room:
        """A new room owned by ``identity``; share its id and token with the peers that may join."""
        body = await self._call("POST", "/create-room", identity)
        return Room(str(body["room_id"]), str(body["token"]), int(body["expires_at"]), str(body.get("ws_url") or ""))

    async def room(self, identity: Identity, room_id: str) -> dict[str, Any]:
        """A room's status and peers (its creator only)."""
        return await self._call("GET", f"/rooms/{room_id}", identity)

    async def delete_room(self, identity: Identity, room_id: str) -> dict[str, Any]:
        """Delete a room (its creator only); its peers are disconnected."""
        return await self._call("DELETE", f"/rooms/{room_id}", identity)

    async def ice_servers(self, identity: Identity) -> dict[str, Any]:
        """``{"ice_servers": [...], "ttl": seconds}``: STUN, and TURN with credentials that expire."""
        return await self._call("GET", "/ice-servers", identity)

    async def _call(self, method: str, path: str, identity: Identity | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {identity.id_token}"} if identity is not None else {}
        try:
            response = await self._client.request(method, path, headers=headers)
        except httpx.HTTPError as exc:
            # Unreachable, timed out, or TLS refused (e.g. CERTIFICATE_VERIFY_FAILED): say which.
            raise error_from("SERVER_BUSY", f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.is_success:
            body = response.json()
            if not isinstance(body, dict):
                raise SignalingError("INTERNAL_ERROR", f"{method} {path}: not a JSON object")
            return body
        try:
            detail = response.json()
        except ValueError:
            detail = {}
        retry_after = response.headers.get("Retry-After")
        raise error_from(
            str(detail.get("error", f"HTTP_{response.status_code}")),
            str(detail.get("detail", response.reason_phrase)),
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )
