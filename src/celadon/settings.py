"""Type checks of settings against a config dataclass's field types, so a YAML or JSON mistake (`epochs: three`,
`seeds: "0,1"`) is a one-line error naming the key before any work starts, not a traceback minutes later."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from celadon.errors import CeladonError


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` (as YAML or JSON gives it) fits the type annotation `hint`."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # a YAML 1 is a fine float
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args, strict=True))
        return all(matches(v, args[0] if args else Any) for v in value)
    if origin is dict:
        keys, values = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(matches(k, keys) and matches(v, values) for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict | hint)
    return isinstance(value, hint) if isinstance(hint, type) else True


def describe(hint: Any) -> str:
    """A type annotation in words: 'a whole number', 'a list of whole numbers or null'."""
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "null",
             Any: "any value"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "a list" + (f" of ({describe(args[0])})" if args else "")
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping of settings"
    return getattr(hint, "__name__", str(hint))


def check_types(cls: type, values: dict, where: str) -> None:
    """Every key of `values` that names a field of `cls` holds a value of that field's type."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not matches(value, hints[key]):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise CeladonError(f"{where + '.' if where else ''}{key}: expected {describe(hints[key])}, got {shown}")


def build(cls: type, values: dict, where: str):
    """A config dataclass from plain values (YAML, JSON, flags): unknown keys and wrong types are one-line
    errors naming the key, and lists become the tuples the dataclass declares."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise CeladonError(f"{where}: {key} is not a setting of this command; known: {', '.join(names)}")
    check_types(cls, values, where)
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        hint = hints[key]
        wants_tuple = typing.get_origin(hint) is tuple or any(
            typing.get_origin(h) is tuple for h in typing.get_args(hint))
        if isinstance(value, list) and wants_tuple:
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        converted[key] = value
    return cls(**converted)
