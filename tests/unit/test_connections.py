"""Open connections per address, and the registration deadline."""

from __future__ import annotations

from fakes.relay_world import World
from signaling_shared.errors import StorageUnavailable
from ws_relay.close_codes import CloseCode


async def test_an_address_may_hold_only_so_many_sockets_and_fewer_unregistered() -> None:
    world = World(max_connections_per_ip=3, max_unregistered_per_ip=2)
    await world.room()
    first = world.connect("192.0.2.7")
    world.connect("192.0.2.7")
    assert world.relay.connections.refuses("192.0.2.7") == "more than 2 unregistered connections from this address"
    assert world.relay.connections.refuses("192.0.2.8") is None
    await world.register("A", client=first)  # registered: no longer counts as unregistered
    assert world.relay.connections.refuses("192.0.2.7") is None
    world.connect("192.0.2.7")
    assert world.relay.connections.refuses("192.0.2.7") == "more than 3 connections from this address"
    await world.close(first)
    assert world.relay.connections.refuses("192.0.2.7") == "more than 2 unregistered connections from this address"


async def test_a_socket_that_does_not_register_in_time_is_closed_with_4001() -> None:
    world = World(register_timeout_seconds=0.05)
    client = world.connect()
    await world.until(lambda: client.link.closed is not None)
    assert client.link.close_code() == CloseCode.REGISTRATION_TIMEOUT


async def test_the_deadline_waits_for_a_register_under_way() -> None:
    """A slow storage call does not turn a register into 4001: it ends with its own answer."""
    world = World(register_timeout_seconds=0.05)
    await world.room()
    fired: list[object] = []
    deadline = world.relay.connections._on_deadline

    def noting(connection: object) -> None:
        fired.append(connection)
        deadline(connection)  # type: ignore[arg-type]

    world.relay.connections._on_deadline = noting
    client = world.connect()
    get_room = world.repository.get_room

    async def slow_get_room(room_id: str) -> object:
        await world.until(lambda: bool(fired))  # the deadline passes meanwhile
        raise StorageUnavailable("DynamoDB was too slow")

    world.repository.get_room = slow_get_room  # type: ignore[assignment]
    await world.register("A", client=client)
    assert client.link.errors() == ["STORAGE_UNAVAILABLE"]
    assert client.link.closed is None
    world.repository.get_room = get_room  # type: ignore[method-assign]
    await world.until(lambda: client.link.closed is not None)  # one more period, then 4001
    assert client.link.close_code() == CloseCode.REGISTRATION_TIMEOUT
