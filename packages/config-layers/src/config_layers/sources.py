"""Where a configuration comes from: dataclass defaults, then preset and YAML files, then
``key.sub=value`` overrides, merged in that order and validated once (:func:`load_config`).

Every problem is a :class:`~config_layers.errors.ConfigError` that says where the bad value came
from (file and line, or the override), its dotted path and what was expected::

    run.yaml, line 7: optim.lr: expected float, got 'abc' (str)
    override 'algo=ppo': algo: expected one of 'grpo', 'bandpo', got 'ppo' (str)

YAML is read with PyYAML's safe loader plus one rule: numbers with an exponent but no dot
(``1e-6``, ``5E3``) are floats, not the strings that YAML 1.1 makes of them; :func:`to_yaml`
quotes strings that look so, so a dumped configuration reads back equal.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from config_layers.errors import ConfigError, Key, KeyPath, describe, dotted, is_index
from config_layers.validate import from_dict, to_dict, to_plain

T = TypeVar("T")

_OVERRIDE_FORM = "key.sub=value"

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
        segments, value, _ = _split_override(item)
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


def _split_override(item: str) -> tuple[KeyPath, Any, bool]:
    """Returns the key segments and the YAML-parsed value of one ``key.sub=value`` string, and
    whether it is a replacing ``key.sub:=value``."""
    if not isinstance(item, str):
        raise TypeError(f"an override must be a string, got {describe(item)}")
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(
            f"expected an override of the form {_OVERRIDE_FORM} (e.g. optim.lr=1e-6), got {item!r}"
        )
    replace = key.endswith(":")
    segments = [segment.strip() for segment in key.removesuffix(":").split(".")]
    if not all(segments):
        raise ConfigError(
            f"override {item!r} has an empty key segment; expected the form {_OVERRIDE_FORM}"
        )
    path: KeyPath = tuple(
        int(s) if i > 0 and s.isascii() and s.isdigit() else s for i, s in enumerate(segments)
    )
    if not raw.strip():
        return path, "", replace
    try:
        value = yaml.load(raw, Loader=_Loader)  # _Loader is a SafeLoader
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the value of override {item!r} as YAML: {_yaml_problem(exc)}"
        ) from None
    return path, value, replace


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
        return is_index(segment) and 0 <= int(segment) < len(node)
    return isinstance(node, dict) and segment in node


def _merged(old: Any, new: Any, path: KeyPath) -> Any:
    """Returns ``new`` merged onto ``old``, which is updated in place when it is a dict or list."""
    if isinstance(new, Mapping) and isinstance(old, dict):
        for key, value in new.items():
            key = str(key) if is_index(key) else key
            old[key] = _merged(old.get(key), value, (*path, key))
        return old
    if isinstance(new, Mapping) and isinstance(old, list):
        for key, value in new.items():
            if not is_index(key):
                raise ConfigError(
                    f"this is a list of {len(old)} items; address an item by its index, as in "
                    f"{dotted((*path, 0))}, not by {key!r}",
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
# loading


@dataclasses.dataclass
class _Layer:
    """A YAML file merged into the configuration, with the line of each key path in it."""

    file: Path
    lines: dict[tuple[str, ...], int]

    def where(self, path: KeyPath) -> str:
        """Returns ``"<file>, line <n>"`` for the deepest key of ``path`` in it, else the file."""
        key = _normal(path)
        for depth in range(len(key), 0, -1):
            line = self.lines.get(key[:depth])
            if line is not None:
                return f"{self.file}, line {line}"
        return str(self.file)

    def sets(self, path: KeyPath) -> bool:
        """Returns whether this file sets ``path`` or a key above it."""
        key = _normal(path)
        return any(key[:depth] in self.lines for depth in range(len(key), 0, -1))


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    base_files: Sequence[str | os.PathLike[str]] = (),
) -> T:
    """Returns ``cls`` built from its defaults, then ``base_files``, the YAML file ``path`` and
    the ``overrides``, each layer merged onto the ones before it.

    ``base_files`` (e.g. a preset, see :class:`~config_layers.presets.Presets`) are merged in
    order between the defaults and ``path``. Each file must hold a mapping at the top level (an
    empty file sets nothing); overrides are ``key.sub=value`` strings applied in order (see
    :func:`parse_overrides`): a mapping value merges key by key into the mapping already there,
    while ``key.sub:=value`` replaces it whole (``rule_params:={eps: 0.2}`` drops the keys a
    preset set). Raises ``FileNotFoundError`` for a missing file and
    ``ConfigError`` (a ``ValueError``) for invalid YAML (with file and line) and for everything
    :func:`~config_layers.validate.from_dict` rejects, naming the file and line of the
    offending key, or the override that set it.
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a sequence of strings, not one string: {overrides!r}")
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    data = _defaults(cls)
    layers: list[_Layer] = []
    for file in [*base_files, *([] if path is None else [path])]:
        file_data, lines = _read_yaml(Path(file))
        layer = _Layer(Path(file), lines)
        try:
            data = _merged(data, file_data, ())
        except ConfigError as exc:
            raise ConfigError(exc.problem, exc.path, layer.where(exc.path)) from None
        layers.append(layer)
    applied: list[tuple[tuple[str, ...], str]] = []
    for item in overrides:
        segments, value, replace = _split_override(item)
        updates: list[dict[str, Any]] = [{}, {}] if replace else [{}]
        if replace:  # clear what is there first, so that a mapping does not merge into it
            _assign(updates[0], segments, None)
        _assign(updates[-1], segments, value)
        try:
            for update in updates:
                data = _merged(data, update, ())
        except ConfigError as exc:
            raise ConfigError(exc.problem, exc.path, f"override {item!r}") from None
        applied.extend((leaf, item) for leaf in _leaf_paths(_normal(segments), value))
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        where = _locate(exc.path, layers, applied)
        raise ConfigError(exc.problem, exc.path, where) from exc.__cause__


def to_yaml(obj: Any) -> str:
    """Returns ``to_dict(obj)`` as YAML text that :func:`load_config` reads back equal.

    Keys keep the dataclass field order; strings that the loader would read as floats (such as
    ``'1e-6'``) are quoted.
    """
    text: str = yaml.dump(
        to_dict(obj), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return text


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Returns the top-level mapping of the YAML file ``path``, read with this package's rules.

    Raises ``FileNotFoundError`` for a missing file and ``ConfigError`` for invalid YAML (with
    file and line) or a top level that is not a mapping.
    """
    data, _ = _read_yaml(Path(path))
    return data


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
        data[f.name] = to_plain(value, (f.name,))
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


def _locate(path: KeyPath, layers: list[_Layer], applied: list[tuple[tuple[str, ...], str]]) -> str:
    """Returns where the value at ``path`` came from: the last override that set it, else the
    last file that set it (and the line), noting overrides that changed keys below ``path``.
    """
    key = _normal(path)
    covering = [item for segments, item in applied if key[: len(segments)] == segments]
    if covering:
        return f"override {covering[-1]!r}"
    setting = [layer for layer in layers if layer.sets(path)]
    where = setting[-1].where(path) if setting else (layers[-1].where(path) if layers else "")
    inside = [item for segments, item in applied if segments[: len(key)] == key]
    if inside:
        note = "override " + ", ".join(repr(item) for item in inside)
        return f"{where} (with {note})" if where else note
    return where


def _normal(path: Sequence[str | int]) -> tuple[str, ...]:
    """Returns ``path`` with every segment as a string, for comparing paths from any source."""
    return tuple(str(segment) for segment in path)


def _yaml_problem(exc: Exception) -> str:
    """Returns the readable part of a YAML error (what went wrong, without the file excerpt)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [part for part in (exc.context, exc.problem) if part]
        if parts:
            return "; ".join(parts)
    return " ".join(str(exc).split())
