"""Nested dataclasses as a config system: YAML files, ``key.sub=value`` overrides, strict checks.

A config is a tree of dataclasses (written with ``from __future__ import annotations``). This
module builds such a tree from plain data with strict type checks (:func:`from_dict`), turns it
back into YAML-safe data (:func:`to_dict`, :func:`dump_yaml`) and layers the sources a run takes
its settings from (:func:`load_config`): the dataclass defaults, then a YAML file, then
command-line overrides such as ``optim.lr=1e-6`` or ``rewards.0.weight=2``.

Every problem with the data is a :class:`ConfigError` (a ``ValueError``) that says where the bad
value came from (file and line, or the override), its dotted path and what was expected::

    run.yaml, line 7: optim.lr: expected float, got 'abc' (str)
    override 'algo=ppo': algo: expected one of 'grpo', 'bandpo', got 'ppo' (str)

YAML is read with PyYAML's safe loader plus one rule: numbers with an exponent but no dot
(``1e-6``, ``5E3``) are floats, not the strings that YAML 1.1 makes of them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import errno
import itertools
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from rl_trainer._io import atomic_write_text

__all__ = [
    "ConfigError",
    "dump_yaml",
    "from_dict",
    "load_config",
    "merge",
    "parse_overrides",
    "split_cli_args",
    "to_dict",
]

T = TypeVar("T")
Key = str | int
KeyPath = tuple[Key, ...]

_NONE_TYPE = type(None)
_OVERRIDE_FORM = "key.sub=value"
_CLI_FORMS = "--config FILE, --config=FILE, -c FILE, key.sub=value"

# YAML 1.1 (what PyYAML implements) reads an exponent number as a float only with a dot and a
# signed exponent ("1.0e-6"); "1e-6", "5E3" and "1.0e5" come back as strings. This rule makes
# them floats in config files and overrides, and makes the dumper quote strings that look so.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-6``-style numbers as floats."""


class _Dumper(yaml.SafeDumper):
    """Safe YAML dumper that quotes the strings which ``_Loader`` would read as floats."""


for _yaml_class in (_Loader, _Dumper):
    _yaml_class.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789."))


class ConfigError(ValueError):
    """A config problem; the message reads ``<where>: <dotted.path>: <problem>``.

    ``where`` names the source (a file and line, or an override) and is empty when unknown;
    ``path`` holds the key path (strings for mapping keys, integers for list indices).
    """

    def __init__(self, problem: str, path: Sequence[Key] = (), where: str = "") -> None:
        self.problem = problem
        self.path: KeyPath = tuple(path)
        self.where = where
        parts = (where, _dotted(self.path), problem)
        super().__init__(": ".join(part for part in parts if part))

    def __reduce__(self) -> tuple[Any, ...]:
        """Returns the constructor call that rebuilds this error (so it survives pickling)."""
        return (type(self), (self.problem, self.path, self.where))


# --------------------------------------------------------------------------------------------
# dataclass <-> plain data


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Returns an instance of the dataclass ``cls`` built from ``data``, checked field by field.

    Field types come from the annotations of ``cls`` and may be bool, int, float, str,
    ``pathlib.Path``, ``X | None``, ``Literal[...]``, ``list[X]``, ``tuple[X, ...]`` (or a
    fixed-length tuple), ``dict[str, X]``, ``Any`` and nested dataclasses (also inside lists and
    dicts, each given as a mapping). Ints are accepted for floats; nothing else is coerced: a bool
    is not an int, a string is not a number, ``None`` fits only optional fields. Missing keys take
    the dataclass defaults, and each dataclass's own ``__post_init__`` runs as it is built.

    Raises ``ConfigError`` (a ``ValueError``) for unknown keys (naming the closest valid one),
    missing required fields, values of the wrong type and ``ValueError``s from ``__post_init__``
    (a ``ConfigError`` raised there with a path names that field, relative to the dataclass);
    the message starts with ``where`` (e.g. a file name) when given, then the dotted key path.
    Raises ``TypeError`` when ``cls`` is not a dataclass or has an unsupported annotation.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    try:
        return _build(cls, data, ())
    except ConfigError as exc:
        if not where:
            raise
        raise ConfigError(exc.problem, exc.path, where) from exc.__cause__


def to_dict(obj: Any) -> dict[str, Any]:
    """Returns the dataclass instance ``obj`` as nested plain data that YAML can represent.

    Dataclasses become dicts (their ``init`` fields, in declaration order), tuples become lists
    and paths become strings; ``from_dict(type(obj), to_dict(obj))`` rebuilds an equal object.
    Raises ``TypeError`` for a value with no plain form.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict needs a dataclass instance, got {_describe(obj)}")
    plain: dict[str, Any] = _plain(obj, ())
    return plain


def _build(cls: type[T], data: Any, path: KeyPath) -> T:
    """Returns ``cls(**fields)`` with each field of ``data`` converted to its annotated type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {_describe(data)}", path)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    types_ = _field_types(cls)
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(
                f"expected a string key for {cls.__name__}, got {_describe(key)}",
                (*path, key if _is_index(key) else str(key)),
            )
        if key not in fields:
            raise _unknown_key(cls, key, list(fields), path)
    missing = [name for name, f in fields.items() if name not in data and _is_required(f)]
    if len(missing) == 1:
        name = missing[0]
        raise ConfigError(
            f"missing required field of {cls.__name__} (expected {_type_name(types_[name])})",
            (*path, name),
        )
    if missing:
        raise ConfigError(f"missing required fields of {cls.__name__}: {', '.join(missing)}", path)
    kwargs = {
        name: _convert(types_[name], data[name], (*path, name)) for name in fields if name in data
    }
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # A __post_init__ that checks fields together names the one at fault (a path relative to
        # cls), so that load_config can point at the file line or override that set it.
        raise ConfigError(exc.problem, (*path, *exc.path), exc.where) from exc
    except ValueError as exc:  # the dataclass's own __post_init__ checks
        raise ConfigError(str(exc), path) from exc


def _field_types(cls: type) -> dict[str, Any]:
    """Returns the resolved annotations of the dataclass ``cls`` (string annotations evaluated)."""
    try:
        return typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(
            f"cannot resolve the annotations of {cls.__qualname__}: {exc} (config dataclasses "
            "and the types they name must be importable from their module)"
        ) from exc


def _is_required(f: dataclasses.Field[Any]) -> bool:
    """Returns whether the dataclass field ``f`` has neither a default nor a default factory."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _unknown_key(cls: type, key: str, valid: list[str], path: KeyPath) -> ConfigError:
    """Returns the error for ``key`` not being a field of ``cls``, with the closest valid key."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(valid) if valid else "(none)"
    return ConfigError(f"unknown key for {cls.__name__}{hint}; valid keys: {listing}", (*path, key))


def _convert(tp: Any, value: Any, path: KeyPath, expected: str = "") -> Any:
    """Returns ``value`` checked against the annotation ``tp`` (ints widened to floats, lists to
    tuples, strings to paths, mappings to dataclasses); ``expected`` renames ``tp`` in errors.
    """
    expected = expected or _type_name(tp)
    if tp is Any or tp is object:
        return copy.deepcopy(value)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Union or origin is types.UnionType:
        return _convert_union(args, value, path, expected)
    if origin is Literal:
        return _convert_literal(args, value, path, expected)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping for {expected}, got {_describe(value)}", path)
        return _build(tp, value, path)
    if tp is _NONE_TYPE:
        if value is None:
            return None
        raise _mismatch(expected, value, path)
    if tp in (bool, int, float, str):
        return _convert_scalar(tp, value, path, expected)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, PurePath) or (isinstance(value, str) and value):
            return tp(value)
        raise _mismatch(expected, value, path)
    if origin is None and tp in (list, tuple, dict):
        origin = tp
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _mismatch(expected, value, path)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(
                    f"expected {expected} ({len(args)} items), got {len(value)} items: "
                    f"{_describe(value)}",
                    path,
                )
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_convert(a, v, (*path, i)) for i, (a, v) in pairs)
        item_type = args[0] if args else Any
        items = [_convert(item_type, v, (*path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _mismatch(expected, value, path)
        key_type, value_type = args if args else (Any, Any)
        out: dict[Any, Any] = {}
        for key, item in value.items():
            sub = (*path, key if isinstance(key, str) or _is_index(key) else str(key))
            if key_type is str and not isinstance(key, str):
                raise ConfigError(f"expected a string key, got {_describe(key)}", sub)
            out[_convert(key_type, key, sub)] = _convert(value_type, item, sub)
        return out
    if isinstance(tp, type) and origin is None:
        if isinstance(value, tp):
            return value
        raise _mismatch(expected, value, path)
    raise TypeError(f"{_dotted(path) or 'config'}: unsupported field type {tp!r}")


def _convert_scalar(tp: type, value: Any, path: KeyPath, expected: str) -> Any:
    """Returns ``value`` if it is a ``tp`` (bool, int, float or str; ints widen to floats)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and is_number and isinstance(value, int):
        return value
    if tp is float and is_number:
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    hint = ""
    if tp is int and isinstance(value, float) and value.is_integer():
        hint = " (write whole numbers without a decimal point or exponent)"
    elif tp is str and isinstance(value, bool):
        hint = " (YAML reads unquoted true/false/yes/no/on/off as booleans; quote the value)"
    elif tp is str and is_number:
        hint = " (quote the value to pass it as text)"
    raise _mismatch(expected, value, path, hint)


def _convert_union(options: tuple[Any, ...], value: Any, path: KeyPath, expected: str) -> Any:
    """Returns ``value`` converted by the first option of a union that accepts it."""
    if value is None and _NONE_TYPE in options:
        return None
    others = [option for option in options if option is not _NONE_TYPE]
    if len(others) == 1:
        return _convert(others[0], value, path, expected)
    exact = [option for option in others if type(value) is option]
    for option in exact + [option for option in others if option not in exact]:
        with contextlib.suppress(ConfigError):
            return _convert(option, value, path)
    raise _mismatch(expected, value, path)


def _convert_literal(choices: tuple[Any, ...], value: Any, path: KeyPath, expected: str) -> Any:
    """Returns the choice equal to ``value`` (same type too, so ``True`` is not ``1``)."""
    for choice in choices:
        if type(choice) is type(value) and choice == value:
            return choice
    hint = ""
    if isinstance(value, str):
        words = [choice for choice in choices if isinstance(choice, str)]
        close = difflib.get_close_matches(value, words, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    raise _mismatch(expected, value, path, hint)


def _plain(value: Any, path: KeyPath) -> Any:
    """Returns ``value`` as plain YAML-safe data (dicts, lists, str, int, float, bool, None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name), (*path, f.name))
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
        return [_plain(item, (*path, i)) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {
            key: _plain(item, (*path, key if isinstance(key, str) else str(key)))
            for key, item in value.items()
        }
    raise TypeError(f"{_dotted(path) or 'value'}: {_describe(value)} has no plain YAML form")


# --------------------------------------------------------------------------------------------
# overrides and merging


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Returns the nested dict that ``key.sub=value`` strings describe; later keys win.

    The value is read as YAML (``lr=1e-6`` gives a float, ``x=null`` None, ``x=[1,2]`` a list,
    ``name=band`` a string, ``name=`` an empty string). Key segments after the first that are
    digits become ints, which :func:`merge` uses as list indices: ``rewards.0.weight=2``. Raises
    ``ConfigError`` (a ``ValueError``) for an item without ``=``, an empty key segment or a value
    that is not valid YAML.
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a sequence of strings, not one string: {overrides!r}")
    result: dict[str, Any] = {}
    for item in overrides:
        segments, value = _split_override(item)
        _assign(result, segments, value)
    return result


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Returns a new dict: ``base`` deep-merged with ``update`` (neither is modified).

    Mappings merge key by key; lists and scalars in ``update`` replace those in ``base``. A
    mapping with integer keys (from overrides such as ``rewards.0.weight=2``) updates the items of
    a list in ``base`` by index; against a mapping, integer keys are used as string keys. Raises
    ``ConfigError`` (a ``ValueError``) for an index out of range or a non-index key for a list.
    """
    merged: dict[str, Any] = _merged(copy.deepcopy(dict(base)), update, ())
    return merged


def _split_override(item: str) -> tuple[KeyPath, Any]:
    """Returns the key segments and the YAML-parsed value of one ``key.sub=value`` string."""
    if not isinstance(item, str):
        raise TypeError(f"an override must be a string, got {_describe(item)}")
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(
            f"expected an override of the form {_OVERRIDE_FORM} (e.g. optim.lr=1e-6), got {item!r}"
        )
    segments = [segment.strip() for segment in key.split(".")]
    if not all(segments):
        raise ConfigError(
            f"override {item!r} has an empty key segment; expected the form {_OVERRIDE_FORM}"
        )
    path: KeyPath = tuple(
        int(s) if i > 0 and s.isascii() and s.isdigit() else s for i, s in enumerate(segments)
    )
    if not raw.strip():
        return path, ""
    try:
        value = yaml.load(raw, Loader=_Loader)  # _Loader is a SafeLoader
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the value of override {item!r} as YAML: {_yaml_problem(exc)}"
        ) from None
    return path, value


def _assign(root: dict[str, Any], segments: KeyPath, value: Any) -> None:
    """Sets ``value`` at ``segments`` inside ``root``, making (or replacing with) dicts on the way.

    A list put there by an earlier override is indexed in place when the next segment is an
    in-range index; anything else in the way is replaced, so the later override wins.
    """
    node: Any = root
    for segment, following in itertools.pairwise(segments):
        child = node[segment] if _holds(node, segment) else None
        if not (isinstance(child, dict) or (isinstance(child, list) and _holds(child, following))):
            child = {}
            node[segment] = child
        node = child
    node[segments[-1]] = value


def _holds(node: Any, segment: Key) -> bool:
    """Returns whether ``node`` (a dict, or a list for an index) has an entry at ``segment``."""
    if isinstance(node, list):
        return _is_index(segment) and 0 <= int(segment) < len(node)
    return isinstance(node, dict) and segment in node


def _merged(old: Any, new: Any, path: KeyPath) -> Any:
    """Returns ``new`` merged onto ``old``, which is updated in place when it is a dict or list."""
    if isinstance(new, Mapping) and isinstance(old, dict):
        for key, value in new.items():
            key = str(key) if _is_index(key) else key
            old[key] = _merged(old.get(key), value, (*path, key))
        return old
    if isinstance(new, Mapping) and isinstance(old, list):
        for key, value in new.items():
            if not _is_index(key):
                raise ConfigError(
                    f"this is a list of {len(old)} items; address an item by its index, as in "
                    f"{_dotted((*path, 0))}, not by {key!r}",
                    path,
                )
            if not 0 <= key < len(old):
                valid = f"0..{len(old) - 1}" if old else "none, the list is empty"
                raise ConfigError(
                    f"list index {key} is out of range (the list has {len(old)} items; "
                    f"valid indices: {valid})",
                    (*path, key),
                )
            old[key] = _merged(old[key], value, (*path, key))
        return old
    return copy.deepcopy(new)


# --------------------------------------------------------------------------------------------
# files and command lines


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    base_files: Sequence[str | os.PathLike[str]] = (),
) -> T:
    """Returns ``cls`` built from its defaults, then the YAML file ``path``, then ``overrides``.

    ``base_files`` (e.g. a preset) are merged in order between the defaults and ``path``.

    The file must hold a mapping at the top level (an empty file sets nothing); overrides are
    ``key.sub=value`` strings applied in order (see :func:`parse_overrides`). Raises
    ``FileNotFoundError`` for a missing file and ``ConfigError`` (a ``ValueError``) for invalid
    YAML (with file and line) and for everything :func:`from_dict` rejects, naming the file and
    line of the offending key or the override that set it.
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a sequence of strings, not one string: {overrides!r}")
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    data = _defaults(cls)
    for base in base_files:
        base_data, base_lines = _read_yaml(Path(base))
        try:
            data = _merged(data, base_data, ())
        except ConfigError as exc:
            where = _file_where(Path(base), base_lines, exc.path)
            raise ConfigError(exc.problem, exc.path, where) from None
    file = None if path is None else Path(path)
    lines: dict[tuple[str, ...], int] = {}
    if file is not None:
        file_data, lines = _read_yaml(file)
        try:
            data = _merged(data, file_data, ())
        except ConfigError as exc:
            raise ConfigError(exc.problem, exc.path, _file_where(file, lines, exc.path)) from None
    applied: list[tuple[tuple[str, ...], str]] = []
    for item in overrides:
        segments, value = _split_override(item)
        update: dict[str, Any] = {}
        _assign(update, segments, value)
        try:
            data = _merged(data, update, ())
        except ConfigError as exc:
            raise ConfigError(exc.problem, exc.path, f"override {item!r}") from None
        applied.extend((leaf, item) for leaf in _leaf_paths(_normal(segments), value))
    try:
        return _build(cls, data, ())
    except ConfigError as exc:
        where = _locate(exc.path, file, lines, applied)
        raise ConfigError(exc.problem, exc.path, where) from exc.__cause__


def dump_yaml(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Returns ``path`` as a ``Path`` after writing ``to_dict(obj)`` to it as YAML, atomically.

    Written through :func:`rl_trainer._io.atomic_write_text` (a temporary file in the same
    folder, created if missing, fsynced, then ``os.replace``), so readers never see half a
    file; the file gets the mode a plain ``open()`` gives a new file (0o644 under umask 022).
    Keys keep the dataclass field order.
    """
    text = yaml.dump(
        to_dict(obj), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return atomic_write_text(path, text)


def split_cli_args(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """Returns the config file (or None) and the ``key=value`` overrides found in ``argv``.

    Accepted: ``--config FILE``, ``--config=FILE``, ``-c FILE`` (at most once) and
    ``key.sub=value`` items, kept in order. Anything else, such as an unknown ``--flag`` or a word
    without ``=``, raises ``ValueError`` listing the accepted forms.
    """
    if isinstance(argv, str):
        raise TypeError(f"argv must be a sequence of strings, not one string: {argv!r}")
    config: Path | None = None
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "-c"):
            if i + 1 >= len(args) or not args[i + 1] or args[i + 1].startswith("-"):
                raise ValueError(f"{arg} needs a file path after it; accepted forms: {_CLI_FORMS}")
            value = args[i + 1]
            i += 2
        elif arg.startswith("--config="):
            value = arg.removeprefix("--config=")
            if not value:
                raise ValueError(f"--config= needs a file path; accepted forms: {_CLI_FORMS}")
            i += 1
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
            i += 1
            continue
        else:
            raise ValueError(f"unrecognised argument {arg!r}; accepted forms: {_CLI_FORMS}")
        if config is not None:
            raise ValueError(
                f"the config file is given twice ({str(config)!r} and {value!r}); give one"
            )
        config = Path(value)
    return config, overrides


def _defaults(cls: type) -> dict[str, Any]:
    """Returns the plain data of the defaults of ``cls``'s fields (required fields left out)."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        data[f.name] = _plain(value, (f.name,))
    return data


def _read_yaml(file: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Returns the top-level mapping in the YAML ``file`` and the line of each key path in it."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "config file not found", str(file)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(file)
        ) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = str(file) if mark is None else f"{file}, line {mark.line + 1}"
        raise ConfigError(f"invalid YAML: {_yaml_problem(exc)}", where=where) from None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"invalid YAML: {_yaml_problem(exc)}", where=str(file)) from None
    finally:
        loader.dispose()
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of config keys at the top level, got {type(data).__name__}",
            where=str(file),
        )
    lines: dict[tuple[str, ...], int] = {}
    _collect_lines(node, (), lines, set())
    return data, lines


def _collect_lines(
    node: Any, path: tuple[str, ...], lines: dict[tuple[str, ...], int], seen: set[int]
) -> None:
    """Records in ``lines`` the 1-based line of every mapping key and list item under ``node``."""
    if id(node) in seen:  # an alias that contains itself
        return
    seen = seen | {id(node)}
    if isinstance(node, yaml.MappingNode):
        entries = [(key.value, key, value) for key, value in node.value]
    elif isinstance(node, yaml.SequenceNode):
        entries = [(str(i), item, item) for i, item in enumerate(node.value)]
    else:
        return
    for name, marked, child in entries:
        if not isinstance(name, str):
            continue
        sub = (*path, name)
        lines[sub] = marked.start_mark.line + 1  # the last duplicate wins, as in the data
        _collect_lines(child, sub, lines, seen)


def _leaf_paths(path: tuple[str, ...], value: Any) -> list[tuple[str, ...]]:
    """Returns the paths that a merged ``value`` at ``path`` sets: its leaves, when a mapping."""
    if not isinstance(value, Mapping) or not value:
        return [path]
    return [leaf for key, item in value.items() for leaf in _leaf_paths((*path, str(key)), item)]


def _file_where(file: Path, lines: dict[tuple[str, ...], int], path: KeyPath) -> str:
    """Returns ``"<file>, line <n>"`` for the deepest key of ``path`` in it, else the file."""
    key = _normal(path)
    for depth in range(len(key), 0, -1):
        line = lines.get(key[:depth])
        if line is not None:
            return f"{file}, line {line}"
    return str(file)


def _locate(
    path: KeyPath,
    file: Path | None,
    lines: dict[tuple[str, ...], int],
    applied: list[tuple[tuple[str, ...], str]],
) -> str:
    """Returns where the value at ``path`` came from: the last override that set it, else the
    file (and line), noting overrides that changed keys below ``path``.
    """
    key = _normal(path)
    covering = [item for segments, item in applied if key[: len(segments)] == segments]
    if covering:
        return f"override {covering[-1]!r}"
    where = "" if file is None else _file_where(file, lines, path)
    inside = [item for segments, item in applied if segments[: len(key)] == key]
    if inside:
        note = "override " + ", ".join(repr(item) for item in inside)
        return f"{where} (with {note})" if where else note
    return where


# --------------------------------------------------------------------------------------------
# small helpers


def _is_index(key: Any) -> bool:
    """Returns whether ``key`` is an int that is not a bool (a list index)."""
    return isinstance(key, int) and not isinstance(key, bool)


def _normal(path: Sequence[Key]) -> tuple[str, ...]:
    """Returns ``path`` with every segment as a string, for comparing paths from any source."""
    return tuple(str(segment) for segment in path)


def _dotted(path: Sequence[Key]) -> str:
    """Returns ``path`` joined with dots, the form overrides use (``rewards.0.weight``)."""
    return ".".join(str(segment) for segment in path)


def _describe(value: Any) -> str:
    """Returns a short ``repr (type)`` of ``value`` for error messages (``null`` for None)."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _mismatch(expected: str, value: Any, path: KeyPath, hint: str = "") -> ConfigError:
    """Returns the error for ``value`` not being of the type named ``expected``."""
    return ConfigError(f"expected {expected}, got {_describe(value)}{hint}", path)


def _type_name(tp: Any) -> str:
    """Returns a readable name for an annotation: ``float``, ``list[int] or null``, ``one of``."""
    if tp is _NONE_TYPE:
        return "null"
    if tp is Any:
        return "any value"
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Union or origin is types.UnionType:
        names = " | ".join(_type_name(arg) for arg in args if arg is not _NONE_TYPE)
        return f"{names} or null" if _NONE_TYPE in args else names
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else _type_name(arg) for arg in args)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{inner}]" if args else name
    return tp.__name__ if isinstance(tp, type) else str(tp)


def _yaml_problem(exc: Exception) -> str:
    """Returns the readable part of a YAML error (what went wrong, without the file excerpt)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [part for part in (exc.context, exc.problem) if part]
        if parts:
            return "; ".join(parts)
    return " ".join(str(exc).split())
