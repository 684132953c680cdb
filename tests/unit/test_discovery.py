"""discover_peers filters: role, tags and property conditions with every operator, strict types."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ws_relay.discovery import FilterError, condition_holds, matches, same, validate_filters

PROPERTIES: dict[str, Any] = {"gpu_memory_mb": 40960, "sleap_version": "1.3.0", "busy": False}
WORKER: dict[str, Any] = {"tags": ["gpu", "a100"], "properties": PROPERTIES}


def test_the_issues_example_filter() -> None:
    """role + tags + a $gte and an equality condition select the right worker."""
    filters = {
        "role": "worker",
        "tags": ["gpu"],
        "properties": {"gpu_memory_mb": {"$gte": 8192}, "sleap_version": "1.3.0"},
    }
    validate_filters(filters)
    assert matches(filters, "worker", WORKER)
    assert not matches(filters, "client", WORKER)
    assert not matches({**filters, "tags": ["gpu", "tpu"]}, "worker", WORKER)
    small = {**WORKER, "properties": {**PROPERTIES, "gpu_memory_mb": 4096}}
    assert not matches(filters, "worker", small)


@pytest.mark.parametrize(
    ("value", "condition", "expected"),
    [
        (5, {"$eq": 5}, True),
        (5, {"$eq": 5.0}, True),
        (5, {"$ne": 6}, True),
        (5, {"$ne": 5}, False),
        (5, {"$gt": 4}, True),
        (5, {"$gt": 5}, False),
        (5, {"$gte": 5}, True),
        (5, {"$lt": 6}, True),
        (5, {"$lt": 5}, False),
        (5, {"$lte": 5}, True),
        (5, {"$in": [1, 5]}, True),
        (5, {"$in": [1, 2]}, False),
        (5, {"$gte": 1, "$lt": 10}, True),
        (5, {"$gte": 6, "$lt": 10}, False),
        ("b", {"$gt": "a"}, True),
        ("1.3.0", "1.3.0", True),
        ({"a": 1}, {"a": 1}, True),
    ],
)
def test_every_operator(value: Any, condition: Any, expected: bool) -> None:
    """Each operator compares as documented."""
    validate_filters({"properties": {"p": condition}})
    assert condition_holds(value, condition) is expected


@pytest.mark.parametrize(
    ("value", "condition"),
    [
        ("16GB", {"$gte": 8192}),
        (True, {"$eq": 1}),
        (1, {"$eq": True}),
        (1, {"$in": [True]}),
        (None, {"$ne": 5}),
        ([8192], {"$gte": 8192}),
        ({"x": 1}, {"$lt": 2}),
        ("5", 5),
        (5, {"$gt": "4"}),
        (False, {"$ne": 0}),
    ],
)
def test_a_property_of_another_type_does_not_match(value: Any, condition: Any) -> None:
    """Mistyped values never match and never raise (the seed's successor crashed here)."""
    assert condition_holds(value, condition) is False


@pytest.mark.parametrize(
    "filters",
    [
        {"colour": "red"},
        {"role": 5},
        {"tags": "gpu"},
        {"tags": [1]},
        {"tags": ["t"] * 33},
        {"properties": []},
        {"properties": {"p": {"$regex": "x"}}},
        {"properties": {"p": {"$gt": [1]}}},
        {"properties": {"p": {"$gt": True}}},
        {"properties": {"p": {"$in": 5}}},
        {"properties": {"p": {"$gt": float("inf")}}},
        {"room_id": 7},
    ],
)
def test_malformed_filters_are_refused(filters: dict[str, Any]) -> None:
    """A filter the client got wrong is refused (INVALID_MESSAGE), not silently empty."""
    with pytest.raises(FilterError):
        validate_filters(filters)


@pytest.mark.parametrize(
    "metadata",
    [{}, {"tags": "gpu"}, {"tags": None}, {"properties": []}, {"properties": None}, {"properties": {"p": None}}],
)
def test_odd_metadata_simply_does_not_match(metadata: dict[str, Any]) -> None:
    """Peers with missing or oddly shaped tags/properties are left out, not crashed on."""
    assert not matches({"tags": ["gpu"], "properties": {"p": {"$gte": 1}}}, "peer", metadata)


def test_empty_filter_matches_everyone() -> None:
    """No filter: every peer of the room."""
    validate_filters({})
    assert matches({}, "anything", {"tags": 7})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
CONDITION = JSON | st.dictionaries(
    st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$bad"]), JSON, min_size=1, max_size=3
)


@settings(max_examples=500, deadline=None)
@given(
    metadata=st.dictionaries(
        st.sampled_from(["tags", "properties", "x"]), JSON | st.dictionaries(st.text(max_size=3), JSON)
    ),
    filters=st.fixed_dictionaries(
        {}, optional={"role": JSON, "tags": JSON, "properties": st.dictionaries(st.text(max_size=3), CONDITION)}
    ),
)
def test_discovery_never_raises_on_any_input(metadata: dict[str, Any], filters: dict[str, Any]) -> None:
    """Whatever a peer's metadata and whatever the filter: FilterError for bad filters, else a bool."""
    try:
        validate_filters(filters)
    except FilterError:
        return
    assert matches(filters, "peer", metadata) in (True, False)


@given(JSON)
def test_same_is_reflexive(value: Any) -> None:
    """JSON equality holds for any value and itself."""
    assert same(value, value)


def test_tags_match_all_of_or_for_the_successor_any_of() -> None:
    """Ours: every listed tag. The successor's clients list tags any one of which will do."""
    metadata = {"tags": ["sleap-rtc", "training-worker"]}
    wanted = {"tags": ["training-worker", "inference-worker"], "room_id": "r"}
    validate_filters(wanted)  # room_id is accepted: the relay compares it with the caller's room
    assert not matches(wanted, "worker", metadata)
    assert matches(wanted, "worker", metadata, any_tag=True)
    assert not matches({"tags": ["other"]}, "worker", metadata, any_tag=True)
