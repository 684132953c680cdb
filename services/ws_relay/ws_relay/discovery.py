"""Which peers a ``discover_peers`` filter matches. Pure functions, no I/O.

A peer matches when it has the filter's role, every listed tag (``metadata["tags"]``;
any one of them for the successor's clients: ``any_tag``) and every property condition
(on ``metadata["properties"]``). A condition is a value (equality) or an object of
operators: ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$in``. Types are
strict: a number never equals a string or a boolean, and a property of another type (or a
missing one) simply does not match, whatever the operator. Nothing here can raise on a
peer's metadata, however it is shaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

COMPARISONS = frozenset({"$gt", "$gte", "$lt", "$lte"})
OPERATORS = frozenset({"$eq", "$ne", "$in"}) | COMPARISONS
MAX_TAGS = 32
MAX_PROPERTIES = 32
MAX_IN_VALUES = 64


class FilterError(ValueError):
    """The filter itself is malformed (the client's mistake, not the peers')."""


def _kind(value: Any) -> str:
    """A strict JSON type name: bool is not a number."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "other"


def same(a: Any, b: Any) -> bool:
    """JSON equality without Python's 1 == True == 1.0-across-types surprises."""
    if _kind(a) != _kind(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def _is_operator_object(condition: Any) -> bool:
    return isinstance(condition, dict) and bool(condition) and all(str(k).startswith("$") for k in condition)


def validate_filters(filters: Mapping[str, Any]) -> None:
    """Raise FilterError if ``filters`` is not a well-formed filter."""
    unknown = set(filters) - {"role", "tags", "properties", "room_id", "available"}
    if unknown:
        raise FilterError(f"unknown filter key {sorted(unknown)[0]!r}")
    role = filters.get("role")
    if role is not None and not isinstance(role, str):
        raise FilterError("filters.role must be a string")
    if not isinstance(filters.get("available", True), bool):
        raise FilterError("filters.available must be true or false (a free claim slot, ws_relay.booking)")
    if not isinstance(filters.get("room_id", ""), str):
        raise FilterError("filters.room_id must be a string (the caller's own room)")
    tags = filters.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or len(tags) > MAX_TAGS:
        raise FilterError(f"filters.tags must be a list of at most {MAX_TAGS} strings")
    properties = filters.get("properties", {})
    if not isinstance(properties, dict) or len(properties) > MAX_PROPERTIES:
        raise FilterError(f"filters.properties must be an object of at most {MAX_PROPERTIES} conditions")
    for name, condition in properties.items():
        if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition):
            _validate_operators(name, condition)


def _validate_operators(name: str, condition: Mapping[str, Any]) -> None:
    for operator, operand in condition.items():
        if operator not in OPERATORS:
            raise FilterError(f"filters.properties.{name}: unknown operator {operator!r}")
        if operator in COMPARISONS and _kind(operand) not in ("number", "string"):
            raise FilterError(f"filters.properties.{name}: {operator} takes a number or a string")
        if operator in COMPARISONS and isinstance(operand, float) and not math.isfinite(operand):
            raise FilterError(f"filters.properties.{name}: {operator} takes a finite number")
        if operator == "$in" and (not isinstance(operand, list) or len(operand) > MAX_IN_VALUES):
            raise FilterError(f"filters.properties.{name}: $in takes a list of at most {MAX_IN_VALUES} values")


def _holds(operator: str, value: Any, operand: Any) -> bool:
    if operator == "$eq":
        return same(value, operand)
    if operator == "$ne":
        return _kind(value) == _kind(operand) and not same(value, operand)
    if operator == "$in":
        return any(same(value, option) for option in operand)
    if _kind(value) != _kind(operand) or _kind(value) not in ("number", "string"):
        return False
    if operator == "$gt":
        return bool(value > operand)
    if operator == "$gte":
        return bool(value >= operand)
    if operator == "$lt":
        return bool(value < operand)
    return bool(value <= operand)  # $lte


def condition_holds(value: Any, condition: Any) -> bool:
    """Whether a property's value satisfies a condition (never raises)."""
    if _is_operator_object(condition):
        return all(_holds(op, value, operand) for op, operand in condition.items())
    return same(value, condition)


def matches(
    filters: Mapping[str, Any],
    role: str,
    metadata: Mapping[str, Any],
    *,
    any_tag: bool = False,
    available: bool = True,
) -> bool:
    """Whether a peer with ``role`` and ``metadata`` matches validated ``filters`` (``room_id``
    is the caller's to check). ``any_tag``: one listed tag is enough. ``available``: whether
    the peer has a free claim slot, for ``"available": true|false``."""
    wanted_available = filters.get("available")
    if wanted_available is not None and wanted_available is not available:
        return False
    wanted_role = filters.get("role")
    if wanted_role is not None and role != wanted_role:
        return False
    wanted_tags: Sequence[str] = filters.get("tags") or []
    if wanted_tags:
        tags = metadata.get("tags")
        if not isinstance(tags, list):
            return False
        present = (tag in tags for tag in wanted_tags)
        if not (any(present) if any_tag else all(present)):
            return False
    conditions: Mapping[str, Any] = filters.get("properties") or {}
    if conditions:
        properties = metadata.get("properties")
        if not isinstance(properties, dict):
            return False
        for name, condition in conditions.items():
            if name not in properties or not condition_holds(properties[name], condition):
                return False
    return True
