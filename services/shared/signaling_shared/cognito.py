"""Cognito calls the services make, with botocore hidden behind typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from signaling_shared.aws import make_client
from signaling_shared.errors import AuthProviderUnavailable
from signaling_shared.settings import CommonSettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AnonymousUser:
    username: str
    id_token: str


class CognitoGateway:
    """Anonymous users in one user pool, through one app client."""

    def __init__(
        self,
        client: Any,
        *,
        user_pool_id: str,
        client_id: str,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self._client = client
        self.user_pool_id = user_pool_id
        self.client_id = client_id
        self._on_error = on_error

    @classmethod
    def from_settings(
        cls, settings: CommonSettings, on_error: Callable[[str, str], None] | None = None
    ) -> CognitoGateway:
        return cls(
            make_client(settings, "cognito-idp"),
            user_pool_id=settings.cognito_user_pool_id,
            client_id=settings.cognito_client_id,
            on_error=on_error,
        )

    async def _call(self, operation: str, fn: Callable[..., T], *, missing_ok: bool = False, **kwargs: Any) -> T | None:
        """Run a blocking call in a worker thread; None if ``missing_ok`` and the user is gone."""
        try:
            return await asyncio.to_thread(partial(fn, **kwargs))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            if missing_ok and code == "UserNotFoundException":
                return None
            failure: Exception = exc
        except BotoCoreError as exc:
            code, failure = type(exc).__name__, exc
        if self._on_error is not None:
            self._on_error(operation, code)
        raise AuthProviderUnavailable(f"identity provider failed ({operation})") from failure

    async def sign_up_anonymous(self) -> AnonymousUser:
        """Create and sign in a user with random credentials. Only an administrator creates
        users in the pool (AllowAdminCreateUserOnly): nobody can sign up past auth-api's rate
        limit by calling Cognito's SignUp with the app client id."""
        username = str(uuid.uuid4())
        # Random, never stored or returned; the suffix satisfies any character-class policy.
        password = f"{secrets.token_urlsafe(32)}Aa1!"
        await self._call(
            "admin_create_user",
            self._client.admin_create_user,
            UserPoolId=self.user_pool_id,
            Username=username,
            MessageAction="SUPPRESS",  # no invitation: the user has no e-mail or phone
        )
        try:
            await self._call(
                "admin_set_user_password",
                self._client.admin_set_user_password,
                UserPoolId=self.user_pool_id,
                Username=username,
                Password=password,
                Permanent=True,
            )
            response = await self._call(
                "admin_initiate_auth",
                self._client.admin_initiate_auth,
                UserPoolId=self.user_pool_id,
                ClientId=self.client_id,
                AuthFlow="ADMIN_USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": username, "PASSWORD": password},
            )
            try:
                id_token = str(response["AuthenticationResult"]["IdToken"])  # type: ignore[index]
            except (KeyError, TypeError) as exc:  # e.g. a challenge instead of tokens
                raise AuthProviderUnavailable("identity provider returned no ID token") from exc
        except AuthProviderUnavailable:
            with contextlib.suppress(AuthProviderUnavailable):  # leave no orphan user behind
                await self.delete_user(username)
            raise
        return AnonymousUser(username=username, id_token=id_token)

    async def sweep(self, *, older_than: float, page: str | None) -> tuple[int, str | None]:
        """Delete the users of one page of the pool (60) created before ``older_than`` (Unix
        time); how many, and the next page (None: the pool's end, start again)."""
        options: dict[str, Any] = {"UserPoolId": self.user_pool_id, "Limit": 60}
        if page:
            options["PaginationToken"] = page
        response = await self._call("list_users", self._client.list_users, **options)
        assert response is not None
        deleted = 0
        for user in response.get("Users", []):
            created = user.get("UserCreateDate")
            if created is not None and created.timestamp() < older_than:
                deleted += await self.delete_user(str(user["Username"]))
        next_page = response.get("PaginationToken")
        return deleted, str(next_page) if next_page else None

    async def delete_user(self, username: str) -> bool:
        """Delete a user; False if it no longer exists."""
        result = await self._call(
            "admin_delete_user",
            self._client.admin_delete_user,
            missing_ok=True,
            UserPoolId=self.user_pool_id,
            Username=username,
        )
        return result is not None

    async def check(self) -> None:
        """Readiness: the app client exists in the pool."""
        await self._call(
            "describe_user_pool_client",
            self._client.describe_user_pool_client,
            UserPoolId=self.user_pool_id,
            ClientId=self.client_id,
        )
