"""Request and response bodies of auth-api."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SignInResponse(BaseModel):
    """The seed's response, unchanged: clients send ``id_token`` as a Bearer token."""

    id_token: str = Field(description="Cognito ID token (JWT, RS256).")
    username: str = Field(description="The anonymous Cognito user's name.")
