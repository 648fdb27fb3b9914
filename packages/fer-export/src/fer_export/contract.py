"""The preprocessing contract stored in an exported model's ONNX metadata.

An exported FER model carries everything a runtime needs to feed it correctly, as string
key/value pairs in ``ModelProto.metadata_props`` (all keys start with ``fer.``). This module
defines them, writes them (:meth:`ModelContract.to_metadata`), reads them back with every value
checked (:meth:`ModelContract.from_metadata`) and reads whole model files
(:func:`read_model`: the file, the ONNX protobuf, the contract and the graph interface, with one
set of error messages for every caller). The contract itself needs neither torch nor onnx;
:func:`read_model` imports onnx when called.

Graph interface:

* input ``image``: float32 (or float16 for fp16 files with fp16 IO: never, IO stays float32)
  ``(N, 3, S, S)``, RGB, ``(pixel * pixel_scale - mean) / std`` per channel, ``S = input_size``;
* input ``attention`` (only when ``attention == "input"``): float32 ``(N, 1, S, S)`` in [0, 1];
* output ``scores``: float32 ``(N, len(labels))``; capsule lengths in [0, 1) for capsule models
  (``score_kind = "capsule_length"``) or logits (``"logit"``).

The AU attention map: ``"baked"`` -- the mean-face template map is a constant inside the
graph (one input); ``"input"`` -- the graph takes the map; ``"none"`` -- the model has no
attention. For ``"input"`` models the metadata carries the template's AU centres (``au_centres``
on an ``au_grid`` x ``au_grid`` grid, diamond ``falloff``) so a runtime can paint the default
map itself (:func:`paint_attention_map`).

Metadata rules (README.md has them as a table): plain-text keys (``format``, ``attention``,
``score_kind``, ``channel_order``, ``layout``, ``precision``, ``model_name``,
``model_version``) hold the value itself; every other key holds JSON. Each value is checked
for its JSON syntax, type, range and length; numbers must be finite as float32 (the runtime
computes in float32). Unknown ``fer.*`` keys are ignored, so a newer writer can add keys.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import reprlib
import stat
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "fer-export/1"
PREFIX = "fer."
IMAGE_INPUT = "image"
ATTENTION_INPUT = "attention"
SCORES_OUTPUT = "scores"
ATTENTION_MODES = ("baked", "input", "none")
SCORE_KINDS = ("capsule_length", "logit")
PRECISIONS = ("fp32", "fp16", "int8")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUT = "NCHW"
#: Largest ``input_size``: the runtime allocates (N, 3, S, S) float32 batches, so a hostile
#: size must not reach it (FER models take 48 to 299 px).
MAX_INPUT_SIZE = 4096
#: Largest ``au_grid``: the default attention map is painted on a grid x grid float32 array.
MAX_AU_GRID = 1024
#: Most ``au_centres`` (the mean-face template has 20); painting costs one pass per centre.
MAX_AU_CENTRES = 256
#: Deepest nesting of ``extra`` (and ``exporter``): deeper JSON could not be written back out
#: (Python's encoders recurse) and no writer produces it.
MAX_JSON_DEPTH = 32

_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Smallest normal float32: a std or scale below it divides to inf in float32.
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_FLOAT32_MAX_INT = int(_FLOAT32_MAX)  # compared with ints before float() could overflow


class ContractError(ValueError):
    """An ONNX file whose metadata does not hold a valid FER preprocessing contract, or whose
    graph does not match it."""


class ModelLoadError(ValueError):
    """A file that is not a loadable ONNX model (a directory, empty, unreadable, corrupt,
    truncated or not ONNX at all)."""


# ---------------------------------------------------------------------------------------------
# Value rules: each returns the value in its Python form or raises _Invalid with the detail.


class _Invalid(Exception):
    """A value that breaks its key's rule; ``detail`` says how (may be empty)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = 6
_REPR.maxdict = 4


def _show(value: Any) -> str:
    """``repr(value)``, shortened to about 60 characters (with the length of long text)."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # repr of an int past Python's digit limit
        return f"<an integer of {int(value).bit_length()} bits>"
    if isinstance(value, (str, bytes)) and len(value) > _REPR.maxstring:
        text += f" ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
    return text


def _kind(value: Any) -> str:
    """The JSON name of ``value``'s type, with an article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Number):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _text(value: Any, what: str = "value", *, blank: bool = True) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{what} is {_kind(value)}, not text")
    if not blank and not value.strip():
        raise _Invalid(f"{what} is blank")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(f"{what} is not valid Unicode (a lone surrogate)") from None
    for char in value:
        # Control characters would reach terminals (fer-export info), logs and overlays.
        if unicodedata.category(char) == "Cc":
            raise _Invalid(f"{what} contains the control character {char!r}")
    return value


def _number(value: Any, what: str = "value") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _Invalid(f"{what} is {_kind(value)}, not a number")
    if isinstance(value, numbers.Integral) and abs(int(value)) > _FLOAT32_MAX_INT:
        raise _Invalid(f"{what} is beyond the float32 range")
    number = float(value)
    if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
        raise _Invalid(f"{what} is {number}, not finite in float32")
    return number


def _integer(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _Invalid(f"it is {_kind(value)}" + (", not an integer" if _is_real(value) else ""))
    if not low <= int(value) <= high:
        raise _Invalid("out of range")
    return int(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _sequence(value: Any) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"it is {_kind(value)}")
    return value


def _exactly(expected: str) -> Callable[[Any], str]:
    def rule(value: Any) -> str:
        if value != expected:
            raise _Invalid()
        return expected

    return rule


def _one_of(choices: Sequence[str]) -> Callable[[Any], str]:
    def rule(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Invalid()
        return value

    return rule


def _labels(value: Any) -> tuple[str, ...]:
    items = _sequence(value)
    if len(items) < 2:
        raise _Invalid(f"{len(items)} label(s)")
    seen: set[str] = set()
    for index, item in enumerate(items):
        _text(item, f"label {index}", blank=False)
        if item in seen:
            raise _Invalid(f"{_show(item)} appears twice")
        seen.add(item)
    return tuple(items)


def _input_size(value: Any) -> int:
    return _integer(value, 1, MAX_INPUT_SIZE)


def _channels(*, positive: bool) -> Callable[[Any], tuple[float, float, float]]:
    def rule(value: Any) -> tuple[float, float, float]:
        items = _sequence(value)
        if len(items) != 3:
            raise _Invalid(f"{len(items)} value(s)")
        out = [_number(v, f"value {i}") for i, v in enumerate(items)]
        if positive:
            for i, v in enumerate(out):
                if v < _FLOAT32_TINY:
                    raise _Invalid(f"value {i} is {v}")
        return out[0], out[1], out[2]

    return rule


def _positive(value: Any) -> float:
    number = _number(value)
    if number < _FLOAT32_TINY:
        raise _Invalid()
    return number


def _margin(value: Any) -> float:
    number = _number(value)
    if not 0.0 <= number < 1.0:
        raise _Invalid()
    return number


def _centres(value: Any) -> tuple[tuple[float, float], ...]:
    items = _sequence(value)
    if len(items) > MAX_AU_CENTRES:
        raise _Invalid(f"{len(items)} centres")
    out: list[tuple[float, float]] = []
    for index, item in enumerate(items):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise _Invalid(f"centre {index} is {_show(item)}")
        out.append((_number(item[0], f"centre {index} x"), _number(item[1], f"centre {index} y")))
    return tuple(out)


def _au_grid(value: Any) -> int:
    return _integer(value, 1, MAX_AU_GRID)


def _depth(value: Any) -> int:
    """Nesting depth of lists/objects in ``value`` (0 for a scalar); stops counting past
    :data:`MAX_JSON_DEPTH` (iterative: hostile depth cannot exhaust the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (Mapping, list, tuple)):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            children = item.values() if isinstance(item, Mapping) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _Invalid(f"it is {_kind(value)}")
    if _depth(value) > MAX_JSON_DEPTH:
        raise _Invalid(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return dict(value)


def _versions(value: Any) -> dict[str, str]:
    out = _object(value)
    for key, version in out.items():
        _text(key, "a name")
        _text(version, f"the value of {_show(key)}")
    return out


def _free_text(value: Any) -> str:
    return _text(value)


@dataclass(frozen=True)
class _Key:
    """One ``fer.*`` key: its ModelContract field, rule and what the rule wants."""

    name: str
    #: The ModelContract field it fills (None: checked only, e.g. ``format``).
    attr: str | None
    rule: Callable[[Any], Any]
    expected: str
    #: Stored as JSON (else the plain string).
    is_json: bool
    required: bool = False


_KEYS: tuple[_Key, ...] = (
    _Key("format", None, _exactly(FORMAT), f"{FORMAT!r}", False, True),
    _Key(
        "labels", "labels", _labels,
        "a list of at least 2 unique labels, each non-blank text without control characters",
        True, True,
    ),
    _Key("input_size", "input_size", _input_size, f"an integer from 1 to {MAX_INPUT_SIZE}",
         True, True),
    _Key("mean", "mean", _channels(positive=False),
         "3 numbers (R, G, B), finite in float32", True, True),
    _Key("std", "std", _channels(positive=True),
         "3 numbers (R, G, B), each > 0 and finite in float32", True, True),
    _Key("attention", "attention", _one_of(ATTENTION_MODES),
         f"one of {', '.join(ATTENTION_MODES)}", False, True),
    _Key("score_kind", "score_kind", _one_of(SCORE_KINDS),
         f"one of {', '.join(SCORE_KINDS)}", False),
    _Key("channel_order", "channel_order", _one_of(CHANNEL_ORDERS),
         f"one of {', '.join(CHANNEL_ORDERS)}", False),
    _Key("pixel_scale", "pixel_scale", _positive, "a number > 0, finite in float32", True),
    _Key("layout", None, _exactly(LAYOUT), f"{LAYOUT!r}", False),
    _Key("model_name", "model_name", _free_text, "text without control characters", False),
    _Key("model_version", "model_version", _free_text, "text without control characters",
         False),
    _Key("precision", "precision", _one_of(PRECISIONS), f"one of {', '.join(PRECISIONS)}",
         False),
    _Key("face_margin", "face_margin", _margin, "a number >= 0 and < 1", True),
    _Key("au_centres", "au_centres", _centres,
         f"a list of at most {MAX_AU_CENTRES} [x, y] pairs of numbers finite in float32", True),
    _Key("au_grid", "au_grid", _au_grid, f"an integer from 1 to {MAX_AU_GRID}", True),
    _Key("au_falloff", "au_falloff", _positive, "a number > 0, finite in float32", True),
    _Key("exporter", "exporter", _versions,
         "an object of text values (tool name -> version), without control characters", True),
    _Key("extra", "extra", _object,
         f"an object (any JSON inside, nested at most {MAX_JSON_DEPTH} levels)", True),
)  # fmt: skip
_BY_NAME = {key.name: key for key in _KEYS}


def _problem(name: str, shown: str, key: _Key, detail: str, *, metadata: bool) -> str:
    """One line: the key, its bad value, what it should be and (if known) how it is not."""
    expected = ("JSON: " if metadata and key.is_json else "") + key.expected
    return f"{name} is {shown}, expected {expected}" + (f" ({detail})" if detail else "")


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"not JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise _Invalid("not usable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal past Python's digit limit
        raise _Invalid(f"not usable JSON: {str(exc).split(':')[0]}") from None


def _attention_problem(attention: str, centres: Sequence[Any], prefix: str) -> str | None:
    if attention == "input" and not centres:
        return (
            f"{prefix}au_centres is empty, expected at least one [x, y] centre when "
            f"{prefix}attention is 'input' (the default attention map is painted from them)"
        )
    return None


@dataclass(frozen=True)
class ModelContract:
    """What a runtime must know to use an exported FER model (see the module docstring)."""

    labels: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    attention: str = "baked"
    score_kind: str = "capsule_length"
    channel_order: str = "RGB"
    pixel_scale: float = 1.0 / 255.0
    model_name: str = ""
    model_version: str = ""
    precision: str = "fp32"
    #: Fraction of the detected face box added on each side before cropping.
    face_margin: float = 0.15
    au_centres: tuple[tuple[float, float], ...] = ()
    au_grid: int = 100
    au_falloff: float = 0.07
    #: Versions of the tools that produced the file (torch, onnx, onnxscript, fer-export...).
    exporter: dict[str, str] = field(default_factory=dict)
    #: Anything else worth keeping (model arguments, training summary...).
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ContractError("invalid FER contract: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every rule the field values break, one line each (empty when the contract is
        valid); the same rules as the metadata keys (:meth:`from_metadata`)."""
        out: list[str] = []
        for key in _KEYS:
            if key.attr is None:
                continue
            value = getattr(self, key.attr)
            try:
                key.rule(value)
            except _Invalid as exc:
                out.append(_problem(key.attr, _show(value), key, exc.detail, metadata=False))
        centres = self.au_centres if isinstance(self.au_centres, (list, tuple)) else ()
        extra = _attention_problem(self.attention, centres, "")
        if extra:
            out.append(extra)
        return out

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Graph input names, in order."""
        return (IMAGE_INPUT, ATTENTION_INPUT) if self.attention == "input" else (IMAGE_INPUT,)

    def to_dict(self) -> dict[str, Any]:
        """The contract as JSON-ready values: every metadata key without its ``fer.`` prefix
        (the values :meth:`to_metadata` stores, not JSON-encoded) plus ``num_classes`` and
        ``input_shape``.

        The one JSON form of the contract: ``fer-export info --json`` and fer-edge's
        ``GET /metadata`` both answer it, each adding its own keys (file, provider...).
        """
        s = self.input_size
        # In the metadata's key order (to_metadata writes the same order as before).
        return {
            "format": FORMAT,
            "labels": list(self.labels),
            "num_classes": self.num_classes,
            "input_size": s,
            "input_shape": ["N", 3, s, s],
            "mean": list(self.mean),
            "std": list(self.std),
            "attention": self.attention,
            "score_kind": self.score_kind,
            "channel_order": self.channel_order,
            "pixel_scale": self.pixel_scale,
            "layout": LAYOUT,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "precision": self.precision,
            "face_margin": self.face_margin,
            "au_centres": [list(c) for c in self.au_centres],
            "au_grid": self.au_grid,
            "au_falloff": self.au_falloff,
            "exporter": dict(self.exporter),
            "extra": dict(self.extra),
        }

    def to_metadata(self) -> dict[str, str]:
        """String key/value pairs for ``ModelProto.metadata_props``."""
        values = self.to_dict()
        del values["num_classes"], values["input_shape"]  # derived, not stored
        return {
            PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in values.items()
        }

    def with_precision(self, precision: str) -> ModelContract:
        return _replace(self, precision=precision)

    @classmethod
    def from_metadata(cls, meta: Mapping[Any, Any], where: str = "model") -> ModelContract:
        """The contract in ``meta`` (``metadata_props`` as a dict), every value checked.

        Raises :class:`ContractError` naming ``where``, then each bad key with its value
        (shortened) and what it should be; a missing required key is named, a missing
        optional one keeps the field's default.
        """
        fer: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in meta.items():
            if isinstance(key, str) and key.startswith(PREFIX):
                fer[key[len(PREFIX) :]] = value
            elif isinstance(key, bytes) and key.startswith(PREFIX.encode()):
                problems.append(f"metadata key {_show(key)} is not valid UTF-8 text")
        if problems:
            raise ContractError(f"{where}: " + "; ".join(problems))
        if not fer:
            raise ContractError(
                f"{where} has no FER metadata (no '{PREFIX}*' keys): export it with "
                "fer_export.export_onnx, or add the contract with fer_export.contract"
            )
        # Another format's keys may mean other things: check nothing else against ours.
        if "format" not in fer:
            raise ContractError(f"{where}: metadata lacks {PREFIX}format (expected {FORMAT!r})")
        if fer["format"] != FORMAT:
            raise ContractError(
                f"{where}: {PREFIX}format is {_show(fer['format'])}, expected {FORMAT!r} "
                "(written by another fer-export version?)"
            )
        missing = [PREFIX + k.name for k in _KEYS if k.required and k.name not in fer]
        if missing:
            problems.insert(0, f"metadata lacks {', '.join(missing)}")

        values: dict[str, Any] = {}
        for name, raw in fer.items():
            key = _BY_NAME.get(name)
            if key is None or name == "format":
                continue
            try:
                if not isinstance(raw, str):
                    raise _Invalid(f"the stored value is {_kind(raw)}, not text")
                value = key.rule(_decode_json(raw) if key.is_json else raw)
            except _Invalid as exc:
                problems.append(_problem(PREFIX + name, _show(raw), key, exc.detail, metadata=True))
                continue
            if key.attr is not None:
                values[key.attr] = value
        if "attention" in values and ("au_centres" in values or "au_centres" not in fer):
            problem = _attention_problem(values["attention"], values.get("au_centres", ()), PREFIX)
            if problem:
                problems.append(problem)
        if problems:
            raise ContractError(f"{where}: " + "; ".join(problems))
        try:
            return cls(**values)
        except ContractError as exc:  # pragma: no cover - the rules above are the same
            raise ContractError(f"{where}: {exc}") from exc

    def preprocess(self, faces: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 faces in ``channel_order`` -> (N, 3, S, S) float32 input."""
        if faces.ndim != 4 or faces.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(
                f"faces must be (N, {self.input_size}, {self.input_size}, 3), got {faces.shape}"
            )
        if faces.dtype != np.uint8:
            raise ValueError(f"faces must be uint8, got {faces.dtype}")
        x = faces.astype(np.float32) * np.float32(self.pixel_scale)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))

    def default_attention(self, batch: int) -> np.ndarray:
        """The template AU map (batch, 1, S, S) float32 for ``attention == "input"`` models."""
        m = paint_attention_map(self.au_centres, self.au_grid, self.au_falloff, self.input_size)
        return np.ascontiguousarray(np.broadcast_to(m, (batch, 1, *m.shape)), dtype=np.float32)


def _replace(contract: ModelContract, **changes: Any) -> ModelContract:
    from dataclasses import replace

    return replace(contract, **changes)


def paint_attention_map(
    centres: Sequence[Sequence[float]], grid: int, falloff: float, size: int
) -> np.ndarray:
    """Diamonds ``max(0, 1 - falloff (|dx| + |dy|))`` around ``centres`` (x, y) on a
    ``grid`` x ``grid`` map, combined by maximum, resized (bilinear) to ``size`` x ``size``."""
    import cv2

    c = np.asarray(centres, np.float32).reshape(-1, 2)
    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32)
    m = np.zeros((grid, grid), np.float32)
    # One centre at a time: memory stays one grid, however many centres a file names.
    for cx, cy in c:
        d = np.abs(xs - cx) + np.abs(ys - cy)
        np.maximum(m, np.clip(1.0 - falloff * d, 0.0, 1.0), out=m)
    if size != grid:
        m = np.asarray(cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR))
    return np.clip(m, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Model files


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """The ``onnx.ModelProto`` in ``path`` (external weights not loaded).

    The one place that turns a bad file into a message naming its cause, for the CLI and
    :class:`~fer_export.runtime.FERSession` alike.

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: a directory or other non-file, empty, unreadable, not an ONNX
            protobuf (corrupt, truncated, another format), or a protobuf without a graph.
    """
    import onnx

    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"ONNX file not found: {path}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{path} is a directory, expected an .onnx file")
    if not stat.S_ISREG(info.st_mode):
        # Reading a FIFO or a character device could block forever or never end.
        raise ModelLoadError(f"{path} is not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes), expected an ONNX model")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError, or anything else its parser raises
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(
            f"{path} is not a readable ONNX model (cannot parse: {type(exc).__name__}"
            f"{': ' + reason if reason else ''}); corrupt, truncated or another format"
        ) from exc
    if not model.HasField("graph"):
        raise ModelLoadError(f"{path} is not an ONNX model (it parses, but holds no graph)")
    if model.ir_version <= 0:
        raise ModelLoadError(f"{path} is not an ONNX model (IR version {model.ir_version})")
    if not model.graph.node:
        raise ModelLoadError(f"{path} is not a usable ONNX model (its graph has no nodes)")
    return model


def _metadata(model: Any, where: str) -> dict[str, str]:
    """``metadata_props`` as a dict; ContractError for a ``fer.*`` entry that is not UTF-8
    text or appears twice (readers could disagree on which one counts)."""
    out: dict[str, str] = {}
    for entry in model.metadata_props:
        key, value = entry.key, entry.value  # bytes where the protobuf holds invalid UTF-8
        text_key = key if isinstance(key, str) else key.decode("utf-8", "backslashreplace")
        if text_key.startswith(PREFIX):
            if not isinstance(key, str) or not isinstance(value, str):
                raise ContractError(
                    f"{where}: metadata {_show(text_key)} holds bytes that are not UTF-8 text "
                    f"({_show(value)})"
                )
            if key in out:
                raise ContractError(f"{where}: metadata key {key} appears more than once")
        out[text_key] = (
            value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")
        )
    return out


def _dims(value_info: Any) -> list[int | str | None]:
    """Static dims as ints, symbolic ones as their name (or None when unnamed)."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:  # a number outside the enum
        return f"elem_type {elem_type}"


def check_graph(model: Any, contract: ModelContract, where: str) -> int | None:
    """The static batch size of ``model``'s inputs (None when symbolic) after checking its
    inputs and output against ``contract``: names, float32, ranks, channels, the input size
    (``fer.input_size``) and the class count (``fer.labels``) wherever the graph fixes them.

    Raises :class:`ContractError` naming ``where`` and the disagreeing key.
    """
    graph = model.graph
    initialisers = {init.name for init in graph.initializer}
    inputs = {vi.name: vi for vi in graph.input if vi.name not in initialisers}
    outputs = {vi.name: vi for vi in graph.output}
    expected = list(contract.inputs)
    if sorted(inputs) != sorted(expected):
        raise ContractError(
            f"{where}: graph inputs {sorted(inputs)} do not match the contract "
            f"(fer.attention {contract.attention!r} needs {expected})"
        )
    if SCORES_OUTPUT not in outputs:
        raise ContractError(
            f"{where}: graph has no {SCORES_OUTPUT!r} output (outputs: {sorted(outputs)})"
        )
    size = contract.input_size
    float32 = 1  # onnx.TensorProto.FLOAT
    batch: int | None = None
    for name, channels in ((IMAGE_INPUT, 3), (ATTENTION_INPUT, 1)):
        if name not in inputs:
            continue
        vi = inputs[name]
        elem = vi.type.tensor_type.elem_type
        if elem != float32:
            raise ContractError(f"{where}: input {name!r} must be float32, got {_dtype_name(elem)}")
        dims = _dims(vi)
        want = ("N", channels, size, size)
        if len(dims) != 4:
            raise ContractError(
                f"{where}: input {name!r} must have rank 4 {want}, got shape {dims}"
            )
        for axis, (got, exp) in enumerate(zip(dims[1:], want[1:], strict=True), start=1):
            if isinstance(got, int) and got != exp:
                if axis == 1:
                    raise ContractError(
                        f"{where}: input {name!r} has channels {got} on axis 1, expected "
                        f"{exp} (shape {dims})"
                    )
                raise ContractError(
                    f"{where}: fer.input_size is {size} but input {name!r} has size {got} on "
                    f"axis {axis}, expected {exp} (shape {dims})"
                )
        if isinstance(dims[0], int) and dims[0] > 0:
            batch = dims[0]
    scores = outputs[SCORES_OUTPUT]
    elem = scores.type.tensor_type.elem_type
    if elem not in (0, float32):  # 0: not declared
        raise ContractError(
            f"{where}: output {SCORES_OUTPUT!r} must be float32, got {_dtype_name(elem)}"
        )
    dims = _dims(scores)
    if dims:
        if len(dims) != 2:
            raise ContractError(
                f"{where}: output {SCORES_OUTPUT!r} must be (N, {contract.num_classes}), "
                f"got shape {dims}"
            )
        if isinstance(dims[1], int) and dims[1] != contract.num_classes:
            raise ContractError(
                f"{where}: output {SCORES_OUTPUT!r} has {dims[1]} classes but fer.labels "
                f"names {contract.num_classes}: {_show(list(contract.labels))}"
            )
    return batch


@dataclass(frozen=True)
class ModelFile:
    """An ONNX file read by :func:`read_model`: checked against the contract it carries."""

    path: Path
    #: ``onnx.ModelProto`` (external weights not loaded).
    proto: Any
    #: Every ``metadata_props`` entry (text; invalid UTF-8 outside ``fer.*`` escaped).
    metadata: dict[str, str]
    contract: ModelContract
    #: Batch size fixed by the graph's inputs, or None when symbolic.
    static_batch: int | None


def read_model(path: str | os.PathLike[str]) -> ModelFile:
    """The model in ``path`` with its contract: the file (:func:`load_onnx`), the ``fer.*``
    metadata (:meth:`ModelContract.from_metadata`) and the graph interface
    (:func:`check_graph`).

    Raises:
        FileNotFoundError: no such file.
        ModelLoadError: not a loadable ONNX file (the message names the cause).
        ContractError: no, invalid or inconsistent FER metadata.
    """
    path = Path(path)
    where = str(path)
    model = load_onnx(path)
    metadata = _metadata(model, where)
    contract = ModelContract.from_metadata(metadata, where)
    batch = check_graph(model, contract, where)
    return ModelFile(path, model, metadata, contract, batch)
