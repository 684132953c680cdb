"""The SDK's public API is documented and typed: every public class, function, method and
property has its own docstring and annotations (mypy --strict checks the types themselves)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import signaling_sdk
import signaling_sdk.webrtc
from signaling_sdk import http, session


def public_names(module: ModuleType) -> list[str]:
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return list(exported)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    ]


def api() -> Iterator[tuple[str, Any]]:
    """(name, object) for each public class and function, and each public method or property."""
    for module in (signaling_sdk, signaling_sdk.webrtc, http, session):
        for name in public_names(module):
            value = getattr(module, name)
            yield f"{module.__name__}.{name}", value
            if inspect.isclass(value):
                for member, attribute in vars(value).items():
                    if member.startswith("_"):
                        continue
                    if isinstance(attribute, classmethod | staticmethod):
                        yield f"{name}.{member}", attribute.__func__
                    elif isinstance(attribute, property) and attribute.fget is not None:
                        yield f"{name}.{member}", attribute.fget
                    elif inspect.isfunction(attribute):
                        yield f"{name}.{member}", attribute


API = dict(api())


def test_the_public_api_is_found() -> None:
    assert {"signaling_sdk.Session", "Session.send", "signaling_sdk.webrtc.connect", "PeerLink.recv"} <= set(API)


@pytest.mark.parametrize("name", sorted(API))
def test_has_its_own_docstring(name: str) -> None:
    value = API[name]
    own = value.__doc__ if not inspect.isclass(value) else vars(value).get("__doc__")
    generated = inspect.isclass(value) and own is not None and own.startswith(f"{value.__name__}(")  # dataclass
    assert own, f"{name} has no docstring"
    assert own.strip(), f"{name} has an empty docstring"
    assert not generated, f"{name} has only the docstring dataclass generates"


@pytest.mark.parametrize("name", sorted(n for n, v in API.items() if inspect.isfunction(v)))
def test_is_fully_annotated(name: str) -> None:
    signature = inspect.signature(API[name])
    unannotated = [
        p.name
        for p in signature.parameters.values()
        if p.annotation is inspect.Parameter.empty and p.name not in ("self", "cls")
    ]
    assert not unannotated, f"{name}: {unannotated} not annotated"
    assert signature.return_annotation is not inspect.Signature.empty, f"{name}: no return annotation"
