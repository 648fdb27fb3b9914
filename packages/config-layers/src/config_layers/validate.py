"""Dataclass trees <-> plain data, validated by pydantic in strict mode.

The configuration classes stay plain ``dataclasses`` (no pydantic import where they are
declared); pydantic builds and checks them. Plain data is validated the way pydantic validates
JSON in strict mode: ints are accepted for floats and lists for tuples, strings for paths;
nothing else is coerced (a bool is not an int, ``'3'`` is not a number, ``None`` fits only
optional fields). Unknown keys are refused. pydantic's errors are then reworded into one
:class:`~config_layers.errors.ConfigError` that names the dotted path, the expected type and the
closest valid key or choice.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import pydantic

from config_layers.errors import (
    NONE_TYPE,
    ConfigError,
    KeyPath,
    describe,
    did_you_mean,
    dotted,
    is_index,
    type_name,
)

T = TypeVar("T")
_Error = Mapping[str, Any]  # one of pydantic's ValidationError.errors()

_VALUE = "value"  # the one field of the wrapper model that carries the configuration
_UNKNOWN_KEY = frozenset({"unexpected_keyword_argument", "extra_forbidden"})
_NOT_A_MAPPING = frozenset({"dataclass_type", "dataclass_exact_type", "model_type", "dict_type"})


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Returns an instance of the dataclass ``cls`` built from ``data``, checked field by field.

    Field types come from the annotations of ``cls`` (anything pydantic validates: bool, int,
    float, str, ``pathlib.Path``, ``X | None``, ``Literal[...]``, lists, tuples, dicts, ``Any``
    and nested dataclasses, also inside lists and dicts). Ints are accepted for floats, lists
    for tuples and strings for paths; nothing else is coerced. Missing keys take the dataclass
    defaults, and each dataclass's own ``__post_init__`` runs as it is built.

    Raises ``ConfigError`` (a ``ValueError``) for unknown keys (naming the closest valid one),
    missing required fields, values of the wrong type and ``ValueError``s from ``__post_init__``
    (a ``ConfigError`` raised there with a path names that field, relative to the dataclass);
    the message starts with ``where`` (e.g. a file name) when given, then the dotted key path.
    Raises ``TypeError`` when ``cls`` is not a dataclass or its annotations cannot be resolved.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        error = ConfigError(f"expected a mapping for {cls.__name__}, got {describe(data)}")
        raise ConfigError(error.problem, (), where)
    text = json.dumps({_VALUE: _jsonable(data, ())}, allow_nan=True)
    try:
        built = _adapter(cls).validate_json(text, strict=True)
    except pydantic.ValidationError as exc:
        error = _translate(cls, exc.errors(include_url=False))
        cause = error.__cause__
        raise ConfigError(error.problem, error.path, where) from cause
    value: T = getattr(built, _VALUE)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Returns the dataclass instance ``obj`` as nested plain data that YAML can represent.

    Dataclasses become dicts (their ``init`` fields, in declaration order), tuples become lists
    and paths become strings; ``from_dict(type(obj), to_dict(obj))`` rebuilds an equal object.
    Raises ``TypeError`` for a value with no plain form.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict needs a dataclass instance, got {describe(obj)}")
    plain: dict[str, Any] = to_plain(obj, ())
    return plain


def to_plain(value: Any, path: KeyPath = ()) -> Any:
    """Returns ``value`` as plain YAML-safe data (dicts, lists, str, int, float, bool, None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_plain(getattr(value, f.name), (*path, f.name))
            for f in dataclasses.fields(value)
            if f.init
        }
    if value is None:
        return None
    for base in (bool, int, float, str):  # bool first: it is an int too
        if isinstance(value, base):
            return base(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(item, (*path, i)) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {
            key: to_plain(item, (*path, key if isinstance(key, str) else str(key)))
            for key, item in value.items()
        }
    raise TypeError(f"{dotted(path) or 'value'}: {describe(value)} has no plain YAML form")


def field_types(cls: type) -> dict[str, Any]:
    """Returns the resolved annotations of the dataclass ``cls`` (string annotations evaluated)."""
    try:
        return typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(
            f"cannot resolve the annotations of {cls.__qualname__}: {exc} (config dataclasses "
            "and the types they name must be importable from their module)"
        ) from exc


@functools.lru_cache(maxsize=256)
def _adapter(cls: type) -> pydantic.TypeAdapter[Any]:
    """Returns the validator of ``{"value": <cls>}``: a model whose config (unknown keys
    forbidden) reaches every plain dataclass below it."""
    field_types(cls)  # a clear TypeError for annotations that do not resolve
    wrapper = pydantic.create_model(
        f"{cls.__name__}Config",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False),
        **{_VALUE: (cls, ...)},  # type: ignore[call-overload]
    )
    return pydantic.TypeAdapter(wrapper)


def _jsonable(value: Any, path: KeyPath) -> Any:
    """Returns ``value`` as JSON-ready data, refusing what neither JSON nor the config holds."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                sub = (*path, key if is_index(key) else str(key))
                raise ConfigError(f"expected a string key, got {describe(key)}", sub)
            out[key] = _jsonable(item, (*path, key))
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, (*path, i)) for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value  # NaN and infinities travel as JSON's NaN / Infinity extension
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(to_plain(value, path), path)
    hint = " (quote it to pass it as text)" if not isinstance(value, (bytes, set)) else ""
    raise ConfigError(f"unsupported value {describe(value)}{hint}", path)


# --------------------------------------------------------------------------------------------
# pydantic errors -> one ConfigError


def _translate(cls: type, errors: Sequence[_Error]) -> ConfigError:
    """Returns the ConfigError for the most telling of pydantic's ``errors`` (unknown keys
    first, then missing fields, then the first value error, in document order)."""
    located = [(_strip(error["loc"]), error) for error in errors]

    def rank(item: tuple[KeyPath, _Error]) -> int:
        kind = item[1]["type"]
        return 0 if kind in _UNKNOWN_KEY else 1 if kind == "missing" else 2

    loc, error = min(located, key=rank)  # min keeps document order among equals
    kind = error["type"]
    if kind in _UNKNOWN_KEY:
        return _unknown_key(cls, loc)
    if kind == "missing":
        missing = [
            other for other, e in located if e["type"] == "missing" and other[:-1] == loc[:-1]
        ]
        return _missing(cls, loc, missing, error)
    if kind in ("value_error", "assertion_error"):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):
            result = ConfigError(cause.problem, (*loc, *cause.path))
        else:
            result = ConfigError(str(cause) if cause is not None else error["msg"], loc)
        result.__cause__ = cause if isinstance(cause, BaseException) else None
        return result
    tp, loc = _annotation_at(cls, loc)
    value = error.get("input")
    if kind in _NOT_A_MAPPING and _dataclass(tp) is not None:
        name = _dataclass(tp).__name__  # type: ignore[union-attr]
        return ConfigError(f"expected a mapping for {name}, got {describe(value)}", loc)
    if kind == "too_long" and get_origin(tp) is tuple:
        return _tuple_length(tp, value, loc)
    return ConfigError(f"expected {type_name(tp)}, got {describe(value)}{_hint(tp, value)}", loc)


def _strip(loc: tuple[int | str, ...]) -> KeyPath:
    """Returns pydantic's error location without the wrapper model's field."""
    return tuple(loc[1:]) if loc[:1] == (_VALUE,) else tuple(loc)


def _annotation_at(cls: type, loc: KeyPath) -> tuple[Any, KeyPath]:
    """Returns the annotation at ``loc`` below ``cls`` and the part of ``loc`` that reaches it.

    Walking stops at a union of several types (pydantic adds a segment per member there), so
    the error then names the whole union at that key.
    """
    tp: Any = cls
    for depth, segment in enumerate(loc):
        tp = _optional_inner(tp)
        origin, args = get_origin(tp), get_args(tp)
        if origin is Union or origin is types.UnionType:
            return tp, loc[:depth]
        klass = _dataclass(tp)
        if klass is not None:
            hints = field_types(klass)
            if not isinstance(segment, str) or segment not in hints:
                return tp, loc[:depth]
            tp = hints[segment]
        elif origin in (list, Sequence, set, frozenset) and is_index(segment):
            tp = args[0] if args else Any
        elif origin is tuple and is_index(segment):
            if len(args) == 2 and args[1] is Ellipsis:
                tp = args[0]
            elif isinstance(segment, int) and segment < len(args):
                tp = args[segment]
            else:
                return tp, loc[:depth]
        elif origin in (dict, Mapping) and isinstance(segment, str):
            tp = args[1] if args else Any
        else:
            return tp, loc[:depth]
    return tp, loc


def _optional_inner(tp: Any) -> Any:
    """Returns ``X`` for ``X | None`` when it is followed into (pydantic adds no segment)."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        others = [arg for arg in get_args(tp) if arg is not NONE_TYPE]
        if len(others) == 1:
            return others[0]
    return tp


def _dataclass(tp: Any) -> type | None:
    """Returns ``tp`` (or the one type of ``tp | None``) when it is a dataclass type."""
    tp = _optional_inner(tp)
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _unknown_key(cls: type, loc: KeyPath) -> ConfigError:
    """Returns the error for the last key of ``loc`` not being a field of its dataclass."""
    parent, _ = _annotation_at(cls, loc[:-1])
    klass = _dataclass(parent)
    key = loc[-1]
    if klass is None:
        return ConfigError("unknown key", loc)
    valid = [f.name for f in dataclasses.fields(klass) if f.init]
    hint = did_you_mean(str(key), valid, style=" (")
    listing = ", ".join(valid) if valid else "(none)"
    return ConfigError(f"unknown key for {klass.__name__}{hint}; valid keys: {listing}", loc)


def _missing(cls: type, loc: KeyPath, siblings: list[KeyPath], error: _Error) -> ConfigError:
    """Returns the error for required fields (or tuple items) that the data leaves out."""
    parent, parent_loc = _annotation_at(cls, loc[:-1])
    if get_origin(parent) is tuple:
        return _tuple_length(parent, error.get("input"), parent_loc)
    klass = _dataclass(parent)
    if klass is None:
        return ConfigError("missing required value", loc)
    names = [str(path[-1]) for path in siblings]
    if len(names) == 1:
        expected = type_name(field_types(klass)[names[0]])
        return ConfigError(f"missing required field of {klass.__name__} (expected {expected})", loc)
    return ConfigError(f"missing required fields of {klass.__name__}: {', '.join(names)}", loc[:-1])


def _tuple_length(tp: Any, value: Any, loc: KeyPath) -> ConfigError:
    """Returns the error for a list of the wrong length for the fixed-length tuple ``tp``."""
    count = len(value) if isinstance(value, (list, tuple)) else "?"
    return ConfigError(
        f"expected {type_name(tp)} ({len(get_args(tp))} items), got {count} items: "
        f"{describe(value)}",
        loc,
    )


def _hint(tp: Any, value: Any) -> str:
    """Returns advice for the common mix-ups of YAML scalars (or the closest literal choice)."""
    tp = _optional_inner(tp)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if get_origin(tp) is Literal:
        words = [choice for choice in get_args(tp) if isinstance(choice, str)]
        return did_you_mean(value, words)
    if tp is int and isinstance(value, float) and value.is_integer():
        return " (write whole numbers without a decimal point or exponent)"
    if tp is str and isinstance(value, bool):
        return " (YAML reads unquoted true/false/yes/no/on/off as booleans; quote the value)"
    if tp is str and is_number:
        return " (quote the value to pass it as text)"
    return ""
