"""HTTP routes of auth-api."""

from __future__ import annotations

from fastapi import APIRouter, Request

from auth_api.schemas import SignInResponse
from auth_api.service import SignInService
from signaling_shared.errors import AuthProviderUnavailable, RateLimited
from signaling_shared.http import client_ip, error_responses


def signin_router(service: SignInService) -> APIRouter:
    router = APIRouter(tags=["auth"])

    @router.post(
        "/anonymous-signin",
        response_model=SignInResponse,
        summary="Create an anonymous user and return its ID token.",
        responses=error_responses(RateLimited, AuthProviderUnavailable),
    )
    async def anonymous_signin(request: Request) -> SignInResponse:
        user = await service.sign_in(client_ip(request))
        return SignInResponse(id_token=user.id_token, username=user.username)

    return router
