"""The one error type and the wording helpers every message of the package shares."""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

Key = str | int
KeyPath = tuple[Key, ...]

NONE_TYPE = type(None)


class ConfigError(ValueError):
    """A config problem; the message reads ``<where>: <dotted.path>: <problem>``.

    ``where`` names the source (a file and line, or an override) and is empty when unknown;
    ``path`` holds the key path (strings for mapping keys, integers for list indices).
    A ``__post_init__`` may raise it with a ``path`` relative to its dataclass to name the
    field at fault; the loader then prefixes the dataclass's own path and points ``where`` at
    the file line or override that set that field.
    """

    def __init__(self, problem: str, path: Sequence[Key] = (), where: str = "") -> None:
        self.problem = problem
        self.path: KeyPath = tuple(path)
        self.where = where
        parts = (where, dotted(self.path), problem)
        super().__init__(": ".join(part for part in parts if part))

    def __reduce__(self) -> tuple[Any, ...]:
        """Returns the constructor call that rebuilds this error (so it survives pickling)."""
        return (type(self), (self.problem, self.path, self.where))


def did_you_mean(value: object, valid: Sequence[str], *, style: str = "; ") -> str:
    """Returns ``"; did you mean 'x'?"`` for the entry of ``valid`` closest to ``value``, else "".

    ``style`` is the text before "did you mean" (``" ("`` gives ``" (did you mean 'x'?)"``).
    """
    if not isinstance(value, str) or value in valid:
        return ""
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.6)
    if not close:
        return ""
    text = f"did you mean {close[0]!r}?"
    return f" ({text})" if style == " (" else f"{style}{text}"


def dotted(path: Sequence[Key]) -> str:
    """Returns ``path`` joined with dots, the form overrides use (``rewards.0.weight``)."""
    return ".".join(str(segment) for segment in path)


def is_index(key: Any) -> bool:
    """Returns whether ``key`` is an int that is not a bool (a list index)."""
    return isinstance(key, int) and not isinstance(key, bool)


def describe(value: Any) -> str:
    """Returns a short ``repr (type)`` of ``value`` for error messages (``null`` for None)."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def type_name(tp: Any) -> str:
    """Returns a readable name for an annotation: ``float``, ``list[int] or null``, ``one of``."""
    if tp is NONE_TYPE:
        return "null"
    if tp is Any:
        return "any value"
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Union or origin is types.UnionType:
        names = " | ".join(type_name(arg) for arg in args if arg is not NONE_TYPE)
        return f"{names} or null" if NONE_TYPE in args else names
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else type_name(arg) for arg in args)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{inner}]" if args else name
    return tp.__name__ if isinstance(tp, type) else str(tp)
