"""HTTP routes of rooms-api. Every route needs a Bearer ID token."""

# No "from __future__ import annotations": FastAPI must resolve the Annotated aliases defined
# inside rooms_router() at runtime.

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from rooms_api.schemas import (
    CreateRoomResponse,
    DeletePeerRequest,
    DeleteRoomRequest,
    DeleteRoomResponse,
    IceServersResponse,
    PeerView,
    RoomView,
)
from rooms_api.service import Deleted, RoomsService
from signaling_shared.auth import Identity
from signaling_shared.errors import (
    AuthProviderUnavailable,
    InvalidIdToken,
    NotRoomCreator,
    RateLimited,
    RoomNotFound,
    StorageUnavailable,
)
from signaling_shared.http import error_responses
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.settings import RoomsSettings
from signaling_shared.tokens import ID_PATTERN
from signaling_shared.turn import ice_servers, identity_tag

# The dependencies of every route: the ID token is checked (JWKS may be unreachable) and
# DynamoDB is called.
_ALWAYS = (InvalidIdToken, AuthProviderUnavailable, StorageUnavailable)

# OpenAPI links: the room_id /create-room returns is what the room routes take (generated
# clients and schemathesis's stateful tests follow them from one call to the next).
_ROOM_ID = {"room_id": "$response.body#/room_id"}
_CREATED_ROOM_LINKS = {
    "GetRoom": {"operationRef": "#/paths/~1rooms~1%7Broom_id%7D/get", "parameters": _ROOM_ID},
    "DeleteRoom": {"operationRef": "#/paths/~1rooms~1%7Broom_id%7D/delete", "parameters": _ROOM_ID},
    "DeletePeersAndRoom": {"operationRef": "#/paths/~1delete-peers-and-room/post", "requestBody": _ROOM_ID},
}


def _deleted(result: Deleted) -> DeleteRoomResponse:
    return DeleteRoomResponse(
        status="deleted",
        room_ids=result.room_ids,
        peers_removed=result.peers_removed,
        users_deleted=result.users_deleted,
    )


def rooms_router(
    service: RoomsService, identity: Callable[..., Awaitable[Identity]], settings: RoomsSettings
) -> APIRouter:
    router = APIRouter(tags=["rooms"])
    ice_limiter = KeyedRateLimiter.per_minute(settings.ice_servers_rate_per_minute, settings.ice_servers_burst)
    Caller = Annotated[Identity, Depends(identity)]
    RoomId = Annotated[str, Path(pattern=ID_PATTERN, description="Room id from /create-room.")]

    @router.post(
        "/create-room",
        response_model=CreateRoomResponse,
        response_model_exclude_none=True,  # no ws_url with a single relay: the seed's body exactly
        summary="Create a room owned by the caller.",
        responses={200: {"links": _CREATED_ROOM_LINKS}, **error_responses(*_ALWAYS, RateLimited)},
    )
    async def create_room(caller: Caller) -> CreateRoomResponse:
        created = await service.create(caller)
        return CreateRoomResponse(
            room_id=created.room.room_id,
            token=created.token,
            expires_at=created.room.expires_at,
            ws_url=created.ws_url,
        )

    @router.post(
        "/delete-peers-and-room",
        response_model=DeleteRoomResponse,
        summary="Delete a room (by id, or by a peer in it) with its peers; creator only.",
        responses=error_responses(*_ALWAYS, RoomNotFound, NotRoomCreator),
    )
    async def delete_peers_and_room(body: DeleteRoomRequest, caller: Caller) -> DeleteRoomResponse:
        if body.room_id:
            return _deleted(await service.delete(caller, body.room_id))
        assert body.peer_id is not None  # the request model requires one of the two
        return _deleted(await service.delete_by_peer(caller, body.peer_id))

    @router.post(
        "/delete-peer",
        response_model=DeleteRoomResponse,
        summary="Remove a peer from its rooms (the seed's successor's route); the room's creator or the peer itself.",
        responses=error_responses(*_ALWAYS),
    )
    async def delete_peer(body: DeletePeerRequest, caller: Caller) -> DeleteRoomResponse:
        return _deleted(await service.delete_peer(caller, body.peer_id))

    @router.get(
        "/rooms/{room_id}",
        response_model=RoomView,
        summary="A room's status, expiry and connected peers; creator only.",
        responses=error_responses(*_ALWAYS, RoomNotFound, NotRoomCreator),
    )
    async def get_room(room_id: RoomId, caller: Caller) -> RoomView:
        room, peers = await service.inspect(caller, room_id)
        return RoomView(
            room_id=room.room_id,
            status="active",
            created_at=room.created_at,
            expires_at=room.expires_at,
            peers=[
                PeerView(
                    peer_id=p.peer_id,
                    role=p.role,
                    metadata=p.metadata,
                    connected_at=p.connected_at,
                    connections=p.connections,  # type: ignore[arg-type]  # validated into PeerConnection
                )
                for p in peers
            ],
        )

    @router.delete(
        "/rooms/{room_id}",
        response_model=DeleteRoomResponse,
        summary="Delete a room with its peers; creator only.",
        responses=error_responses(*_ALWAYS, RoomNotFound, NotRoomCreator),
    )
    async def delete_room(room_id: RoomId, caller: Caller) -> DeleteRoomResponse:
        return _deleted(await service.delete(caller, room_id))

    @router.get(
        "/ice-servers",
        response_model=IceServersResponse,
        response_model_exclude_none=True,  # STUN entries carry no username/credential at all
        summary="STUN/TURN servers with TURN credentials that expire after 'ttl' seconds.",
        responses=error_responses(InvalidIdToken, AuthProviderUnavailable, RateLimited),
    )
    async def get_ice_servers(caller: Caller) -> IceServersResponse:
        ice_limiter.enforce(caller.sub, "ICE server requests by this identity")
        return IceServersResponse.model_validate(ice_servers(settings, identity_tag(caller.sub), time.time()))

    return router
