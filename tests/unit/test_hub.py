"""Room membership and routing rules, without sockets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from signaling_shared.errors import PeerIdTaken, RoomFull
from ws_relay.hub import Hub, Member, MemberState, Owed


@dataclass
class FakeLink:
    """A Link that records frames (the hub never calls it; members need one)."""

    connection_id: str
    frames: list[str] = field(default_factory=list)
    on_confirm: Callable[[int], None] | None = None

    def is_open(self) -> bool:
        return True

    def send(
        self,
        frame: str,
        relay_started: float | None = None,
        seq: int | None = None,
        *,
        replay: bool = False,
        awaited: bool = True,
    ) -> bool:
        self.frames.append(frame)
        return True

    def close(self, code: int, reason: str) -> None:
        pass


def member_of(room: str, peer: str, sub: str, link: FakeLink) -> Member:
    return Member(room, peer, sub, "", link, link.connection_id, 0, 10**10)


def seat(hub: Hub, room: str, peer: str, sub: str) -> Member:
    reservation = hub.reserve(room, peer, sub)
    member = member_of(room, peer, sub, FakeLink(f"{room}/{peer}/{sub}"))
    hub.commit(reservation, member)
    return member


def test_a_peer_is_found_only_in_its_own_room() -> None:
    """The relay looks targets up in the sender's room: a peer of another room is not there."""
    hub = Hub(max_peers_per_room=4)
    a = seat(hub, "r1", "a", "s1")
    b = seat(hub, "r1", "b", "s2")
    c = seat(hub, "r2", "c", "s3")
    assert hub.get(a.room_id, "b") is b
    assert hub.get(a.room_id, "c") is None
    assert hub.in_room("r2") == [c]


def test_other_identity_cannot_take_a_live_peer_id() -> None:
    """A live peer id belongs to its identity: another identity gets PEER_ID_TAKEN."""
    hub = Hub(max_peers_per_room=4)
    a = seat(hub, "r", "a", "owner")
    with pytest.raises(PeerIdTaken):
        hub.reserve("r", "a", "intruder")
    assert hub.is_current(a)


def test_same_identity_takes_over_and_old_member_is_returned() -> None:
    """The same identity may take its peer id over; commit hands back the replaced member."""
    hub = Hub(max_peers_per_room=2)
    old = seat(hub, "r", "a", "owner")
    seat(hub, "r", "b", "other")
    reservation = hub.reserve("r", "a", "owner")  # room is full, but this is a takeover
    assert reservation.replaces is old
    new = member_of("r", "a", "owner", FakeLink("new"))
    assert hub.commit(reservation, new) is old
    assert hub.is_current(new)
    assert not hub.leave(old)  # the replaced member's departure removes nobody
    assert hub.is_current(new)


def test_cancelled_reservation_changes_nothing() -> None:
    """A registration that fails after reserving evicts no one and frees its place."""
    hub = Hub(max_peers_per_room=2)
    old = seat(hub, "r", "a", "owner")
    reservation = hub.reserve("r", "a", "owner")
    hub.cancel(reservation)
    assert hub.is_current(old)
    assert hub.member_count == 1
    seat(hub, "r", "b", "other")  # the place is free again


def test_room_capacity_counts_pending_registrations() -> None:
    """Concurrent registrations cannot overfill a room."""
    hub = Hub(max_peers_per_room=2)
    seat(hub, "r", "a", "s1")
    hub.reserve("r", "b", "s2")
    with pytest.raises(RoomFull):
        hub.reserve("r", "c", "s3")
    hub.reserve("other-room", "c", "s3")  # other rooms are unaffected


def test_concurrent_registration_of_one_peer_id_is_refused() -> None:
    """Two registrations racing for one peer id: the second is refused."""
    hub = Hub(max_peers_per_room=4)
    hub.reserve("r", "a", "owner")
    with pytest.raises(PeerIdTaken):
        hub.reserve("r", "a", "owner")


def test_leave_empties_rooms_and_others_lists_the_rest() -> None:
    """Members leave once; empty rooms disappear; others() excludes the member itself."""
    hub = Hub(max_peers_per_room=4)
    a = seat(hub, "r", "a", "s1")
    b = seat(hub, "r", "b", "s2")
    assert hub.others(a) == [b]
    assert hub.leave(a)
    assert not hub.leave(a)
    assert hub.leave(b)
    assert hub.room_count == 0
    assert hub.member_count == 0


def test_frames_are_numbered_and_kept_until_confirmed() -> None:
    """Every frame gets the next seq; confirmed frames are forgotten; a resume gets the rest."""
    member = member_of("r", "a", "s", FakeLink("c"))
    stamped = [member.stamp(f'{{"type":"t{i}"}}') for i in range(5)]
    assert [seq for seq, _ in stamped] == [1, 2, 3, 4, 5]
    assert stamped[0][1] == '{"seq":1,"type":"t0"}'
    member.confirm(2)
    assert member.missed_since(2) == stamped[2:]
    assert member.missed_since(4) == [stamped[4]]
    assert member.missed_since(5) == []
    assert member.missed_since(1) is None  # seq 2 was confirmed and forgotten
    assert member.missed_since(6) is None  # never sent
    member.confirm(5)
    assert member.missed_since(5) == []


def test_confirming_a_frame_settles_what_waits_on_it_and_leaving_returns_the_rest() -> None:
    """Acks wait for the client's confirmation of their frame; what is unconfirmed at leave is unsettled."""
    target = member_of("r", "t", "t", FakeLink("ct"))
    ack_1, held_2, ack_4 = Owed("s", "s", "m1"), Owed(held_key="k2"), Owed("s", "s", 4)
    target.stamp('{"type":"a"}', ack_1)
    target.stamp('{"type":"b"}', held_2)
    target.stamp('{"type":"c"}')
    target.stamp('{"type":"d"}', ack_4)
    assert target.confirm(1) == [ack_1]
    assert target.confirm(3) == [held_2]
    assert target.confirm(3) == []  # settled once
    assert target.unsettled() == [ack_4]
    assert target.confirm(4) == []
    assert [Owed.from_json(o.to_json()) for o in (ack_1, held_2)] == [ack_1, held_2]


def test_a_rooms_first_admin_claim_wins_until_its_peer_leaves() -> None:
    """The successor's admin per room: a second claimant hears who holds it; leaving frees it."""
    hub = Hub(max_peers_per_room=4)
    first, second = seat(hub, "r", "w1", "s1"), seat(hub, "r", "w2", "s2")
    elsewhere = seat(hub, "other", "w3", "s3")
    assert hub.claim_admin(first) == "w1"
    assert hub.claim_admin(second) == "w1"
    assert hub.claim_admin(elsewhere) == "w3"
    assert hub.claim_admin(first) == "w1"  # claiming again is harmless
    hub.leave(second)
    assert hub.admin_of("r") == "w1"
    hub.leave(first)
    assert hub.admin_of("r") is None
    assert hub.admin_of("other") == "w3"


def state(member: Member) -> MemberState:
    return member.state  # read through a call: each step below changes it


def test_a_members_state_follows_its_life() -> None:
    """OPENING while its held messages are read, LIVE on a link, DETACHED without one,
    RESUMING during a resume's write and back, GONE for good."""
    link = FakeLink("c1")
    member = Member("r", "a", "s", "", link, "c1", 0, 10**10, waiting=[])
    assert state(member) is MemberState.OPENING
    member.detach()  # its socket dropped while the inbox was read: still opening
    assert state(member) is MemberState.OPENING
    assert member.link is None
    member.waiting.append(("{}", None, None, False, "offer"))  # type: ignore[union-attr]
    assert member.take_waiting() == [("{}", None, None, False, "offer")]
    assert state(member) is MemberState.DETACHED
    member.begin_resume()
    assert member.resuming
    member.end_resume()
    assert state(member) is MemberState.DETACHED
    member.attach(FakeLink("c2"))
    assert state(member) is MemberState.LIVE
    member.begin_resume()
    member.leave()  # it left during the resume's write: the end of the resume changes nothing
    member.end_resume()
    assert member.gone
    assert state(member) is MemberState.GONE
