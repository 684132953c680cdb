"""Anonymous sign-in's failure paths, on botocore's own Stubber (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from signaling_shared.cognito import CognitoGateway
from signaling_shared.errors import AuthProviderUnavailable


@pytest.fixture
def stubbed() -> Iterator[tuple[CognitoGateway, Any]]:
    client = boto3.session.Session().client(
        "cognito-idp", region_name="us-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stubber:
        yield CognitoGateway(client, user_pool_id="pool", client_id="app"), stubber
    client.close()


def expect_user_created(stubber: Any) -> None:
    """As an administrator (the pool allows no SignUp): created, then given its password."""
    stubber.add_response(
        "admin_create_user",
        {"User": {"Username": "u"}},
        {"UserPoolId": "pool", "Username": ANY, "MessageAction": "SUPPRESS"},
    )
    stubber.add_response(
        "admin_set_user_password", {}, {"UserPoolId": "pool", "Username": ANY, "Password": ANY, "Permanent": True}
    )


@pytest.mark.parametrize(
    "initiate",
    [
        {"error": "NotAuthorizedException"},
        {"response": {"ChallengeName": "NEW_PASSWORD_REQUIRED", "ChallengeParameters": {}}},
    ],
)
async def test_a_user_that_cannot_sign_in_is_deleted(
    stubbed: tuple[CognitoGateway, Any], initiate: dict[str, Any]
) -> None:
    """When sign-in fails after the user was created, the user is deleted and the caller gets a 503 error."""
    gateway, stubber = stubbed
    expect_user_created(stubber)
    if "error" in initiate:
        stubber.add_client_error("admin_initiate_auth", initiate["error"])
    else:
        stubber.add_response("admin_initiate_auth", initiate["response"])
    stubber.add_response("admin_delete_user", {}, {"UserPoolId": "pool", "Username": ANY})
    with pytest.raises(AuthProviderUnavailable):
        await gateway.sign_up_anonymous()
    stubber.assert_no_pending_responses()


async def test_a_failed_sign_up_leaves_nothing_to_delete(stubbed: tuple[CognitoGateway, Any]) -> None:
    """If the user was never created there is nothing to clean up, and the error is typed."""
    gateway, stubber = stubbed
    stubber.add_client_error("admin_create_user", "InvalidParameterException")
    with pytest.raises(AuthProviderUnavailable):
        await gateway.sign_up_anonymous()
    stubber.assert_no_pending_responses()
