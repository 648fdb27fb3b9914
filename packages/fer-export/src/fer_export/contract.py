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

The AU attention map: ``"baked"`` -- the mean-face template map (zeros for a model trained
without AU maps) is a constant inside the graph (one input); ``"input"`` -- the graph takes the
map; ``"none"`` -- the model has no attention. For ``"input"`` models the metadata carries the
template's AU centres (``au_centres`` on an ``au_grid`` x ``au_grid`` grid, diamond
``falloff``) so a runtime can paint the default map itself (:func:`paint_attention_map`).

What a user can trust the model with (optional keys; files exported before them keep
loading, with the defaults in brackets): ``dataset`` (the training data set's name [""]),
``au_source`` (the AU map it was trained with: ``template``, ``landmarks`` -- each face's map
painted from its 68 landmarks by ``au_rule``, so ``attention`` must be ``input`` -- or ``none``
[template, or none without attention]), ``au_rule`` (how AU centres follow from landmarks:
:func:`au_centres_from_rule`), ``calibration`` (temperature scaling:
:meth:`ModelContract.probabilities` turns raw scores into probabilities with it [T = 1]),
``abstention`` (the top probability below which a face is :data:`UNKNOWN_LABEL` [never]) and
``provenance`` (data set, sizes, split, test accuracy...: :meth:`ModelContract.provenance_line`
[unknown]). Rules between keys are checked too (e.g. ``landmarks`` needs ``input`` and a rule).

Metadata rules (README.md has them as a table): plain-text keys (``format``, ``attention``,
``score_kind``, ``channel_order``, ``layout``, ``precision``, ``model_name``,
``model_version``, ``dataset``, ``au_source``) hold the value itself; every other key holds
JSON. Each value is checked for its JSON syntax, type, range and length; numbers must be
finite as float32 (the runtime computes in float32). Unknown ``fer.*`` keys are ignored, so a
newer writer can add keys.
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
from dataclasses import MISSING, dataclass, field, fields
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
#: Where the AU map a model was trained with came from (``fer.au_source``).
AU_SOURCES = ("template", "landmarks", "none")
#: Score transforms before temperature scaling (``fer.calibration`` ``transform``).
SCORE_TRANSFORMS = ("log", "identity")
CALIBRATION_METHODS = ("temperature",)
#: The label a face gets when its top probability is below the abstention threshold.
UNKNOWN_LABEL = "unknown"
#: Landmarks per face in ``fer.au_rule`` (iBUG 68-point scheme, 0-based).
NUM_LANDMARKS = 68
#: The iBUG indices of the two eyes: ``fer.au_rule``'s ``down`` is in units of the distance
#: between their means.
RIGHT_EYE = tuple(range(36, 42))
LEFT_EYE = tuple(range(42, 48))
#: Smallest capsule length the ``log`` transform takes (a zero length would be -inf).
LOG_FLOOR = 1e-12
#: What :meth:`ModelContract.provenance_line` (and ``fer-export info``) says first about a
#: model trained on capsnet-model's synthetic faces.
SYNTHETIC_NOTE = "trained on synthetic faces: a pipeline check, not a real-face model"
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


def _name(value: Any) -> str:
    return _text(value, blank=False)


AURule = tuple[tuple[tuple[int, ...], float], ...]


def _au_rule(value: Any) -> AURule:
    rows = _sequence(value)
    if not 1 <= len(rows) <= MAX_AU_CENTRES:
        raise _Invalid(f"{len(rows)} rows")
    out: list[tuple[tuple[int, ...], float]] = []
    for index, row in enumerate(rows):
        # A JSON object, or a (landmarks, down) pair such as capsnet-model's AUCentre.
        if isinstance(row, Mapping):
            unknown = sorted(str(k) for k in row if k not in ("landmarks", "down"))
            if unknown:
                # Unknown fields could change where the centre goes: never ignore them.
                raise _Invalid(f"row {index} has unknown field(s) {', '.join(unknown)}")
            if "landmarks" not in row or "down" not in row:
                raise _Invalid(f"row {index} lacks 'landmarks' or 'down'")
            points, down = row["landmarks"], row["down"]
        elif isinstance(row, (list, tuple)) and len(row) == 2:
            points, down = row
        else:
            raise _Invalid(f"row {index} is {_show(row)}")
        if not isinstance(points, (list, tuple)) or not 1 <= len(points) <= NUM_LANDMARKS:
            raise _Invalid(f"row {index} landmarks is {_show(points)}")
        indices: list[int] = []
        for point in points:
            try:
                indices.append(_integer(point, 0, NUM_LANDMARKS - 1))
            except _Invalid:
                raise _Invalid(f"row {index} landmark {_show(point)} is not 0..67") from None
        out.append((tuple(indices), _number(down, f"row {index} down")))
    return tuple(out)


def _field(
    obj: Mapping[str, Any], name: str, rule: Callable[[Any, str], Any], *, required: bool = False
) -> None:
    """Checks ``obj[name]`` with ``rule(value, what)`` when present (or raises when it is
    required and missing)."""
    if name not in obj:
        if required:
            raise _Invalid(f"{name} is missing")
        return
    rule(obj[name], name)


def _fraction(value: Any, what: str) -> float:
    number = _number(value, what)
    if not 0.0 <= number <= 1.0:
        raise _Invalid(f"{what} is {number}, not in [0, 1]")
    return number


def _fraction_or_null(value: Any, what: str) -> float | None:
    return None if value is None else _fraction(value, what)


def _non_negative(value: Any, what: str) -> float:
    number = _number(value, what)
    if number < 0:
        raise _Invalid(f"{what} is {number}, not >= 0")
    return number


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise _Invalid(f"{what} is {_show(value)}, not an integer >= 0")
    return int(value)


def _choice(choices: Sequence[str]) -> Callable[[Any, str], str]:
    def rule(value: Any, what: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Invalid(f"{what} is {_show(value)}, not one of {', '.join(choices)}")
        return value

    return rule


def _calibration(value: Any) -> dict[str, Any]:
    out = _object(value)
    _field(out, "method", _choice(CALIBRATION_METHODS), required=True)

    def temperature(v: Any, what: str) -> None:
        if _number(v, what) < _FLOAT32_TINY:
            raise _Invalid(f"{what} is {_show(v)}, not > 0")

    _field(out, "temperature", temperature, required=True)
    _field(out, "transform", _choice(SCORE_TRANSFORMS))
    _field(out, "fitted_on", _text)
    _field(out, "samples", _count)
    for name in ("ece_before", "ece_after"):
        _field(out, name, _fraction)
    for name in ("nll_before", "nll_after"):
        _field(out, name, _non_negative)
    return out


def _abstention(value: Any) -> dict[str, Any]:
    out = _object(value)
    _field(out, "threshold", _fraction, required=True)

    def coverage(v: Any, what: str) -> None:
        if _fraction(v, what) <= 0.0:
            raise _Invalid(f"{what} is {_show(v)}, not > 0")

    _field(out, "coverage_target", coverage, required=True)
    _field(out, "fitted_on", _text)
    _field(out, "val_coverage", _fraction)
    _field(out, "val_accuracy_covered", _fraction_or_null)
    return out


def _provenance(value: Any) -> dict[str, Any]:
    out = _object(value)
    _field(out, "dataset", lambda v, what: _text(v, what, blank=False), required=True)

    def boolean(v: Any, what: str) -> None:
        if not isinstance(v, bool):
            raise _Invalid(f"{what} is {_kind(v)}, not true or false")

    _field(out, "synthetic", boolean, required=True)

    def sizes(v: Any, what: str) -> None:
        if not isinstance(v, Mapping):
            raise _Invalid(f"{what} is {_kind(v)}, not an object")
        for part, n in v.items():
            _text(part, f"{what} name")
            _count(n, f"{what}.{part}")

    _field(out, "sizes", sizes)
    for name in ("split", "trained_with", "note"):
        _field(out, name, _text)
    for name in ("test_accuracy", "mean_class_accuracy"):
        _field(out, name, _fraction_or_null)
    _field(out, "au_source", _choice(AU_SOURCES))
    return out


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
    #: For keys newer than the first format: the field value that means "not stored" (not
    #: written by :meth:`ModelContract.to_metadata`, not checked); None for the others.
    absent: Any = None


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
    # Added for issue 18: absent from files exported before, which keep loading.
    _Key("dataset", "dataset", _name, "non-blank text without control characters", False,
         absent=""),
    _Key("au_source", "au_source", _one_of(AU_SOURCES), f"one of {', '.join(AU_SOURCES)}",
         False, absent=""),
    _Key("au_rule", "au_rule", _au_rule,
         f"a list of 1 to {MAX_AU_CENTRES} objects {{\"landmarks\": [indices 0..67, at least "
         "one], \"down\": number}", True, absent=()),
    _Key("calibration", "calibration", _calibration,
         "an object with \"method\": \"temperature\", \"temperature\" > 0 and optionally "
         "\"transform\" (log or identity), \"fitted_on\" (text), \"samples\" (integer >= 0), "
         "\"ece_before\"/\"ece_after\" in [0, 1], \"nll_before\"/\"nll_after\" >= 0",
         True, absent={}),
    _Key("abstention", "abstention", _abstention,
         "an object with \"threshold\" in [0, 1], \"coverage_target\" in (0, 1] and optionally "
         "\"fitted_on\" (text), \"val_coverage\" in [0, 1], \"val_accuracy_covered\" in "
         "[0, 1] or null", True, absent={}),
    _Key("provenance", "provenance", _provenance,
         "an object with \"dataset\" (non-blank text), \"synthetic\" (true/false) and "
         "optionally \"sizes\" (name -> integer >= 0), \"split\", \"trained_with\", "
         "\"note\" (text), \"test_accuracy\"/\"mean_class_accuracy\" in [0, 1] or null, "
         f"\"au_source\" (one of {', '.join(AU_SOURCES)})", True, absent={}),
)  # fmt: skip
_BY_NAME = {key.name: key for key in _KEYS}


def _is_absent(value: Any, absent: Any) -> bool:
    """Whether a field holds its key's "not stored" value ("", an empty list or object)."""
    if isinstance(absent, str):
        return bool(value == absent)
    if isinstance(absent, tuple):
        return isinstance(value, (list, tuple)) and not value
    return isinstance(value, Mapping) and not value


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


def _consistency_problems(
    values: Mapping[str, Any], valid: Callable[[str], bool], prefix: str
) -> list[str]:
    """Rules between keys (issue 18's keys), one line each; a rule is checked only when every
    key it reads holds a valid value (``valid(attr)``), so one bad value is reported once."""
    out: list[str] = []

    def ok(*names: str) -> bool:
        return all(valid(name) for name in names)

    source, attention = values.get("au_source", ""), values.get("attention", "baked")
    if source and ok("au_source", "attention"):
        if source == "landmarks" and attention != "input":
            out.append(
                f"{prefix}au_source is 'landmarks', which needs {prefix}attention 'input' (got "
                f"{attention!r}): the per-face landmark maps are fed through the attention input"
            )
        if source in ("template", "landmarks") and attention == "none":
            out.append(
                f"{prefix}au_source is {source!r} but {prefix}attention is 'none' (the model "
                "takes no AU map), expected 'none'"
            )
    if source == "landmarks" and ok("au_source", "au_rule") and not values.get("au_rule"):
        out.append(
            f"{prefix}au_rule is missing, expected the AU-centre rule when {prefix}au_source is "
            "'landmarks' (the runtime computes each face's AU centres with it)"
        )
    labels = values.get("labels", ()) if ok("labels") else ()
    if values.get("abstention") and ok("labels", "abstention") and UNKNOWN_LABEL in labels:
        out.append(
            f"{prefix}labels contain {UNKNOWN_LABEL!r}, which {prefix}abstention gives to faces "
            "below its threshold: rename that class, or drop the abstention"
        )
    calibration = (values.get("calibration") or {}) if ok("calibration") else {}
    if (
        ok("calibration", "score_kind")
        and calibration.get("transform") == "log"
        and values.get("score_kind") == "logit"
    ):
        out.append(
            f"{prefix}calibration transform is 'log' but {prefix}score_kind is 'logit' (logits "
            "can be negative), expected transform 'identity'"
        )
    provenance = (values.get("provenance") or {}) if ok("provenance") else {}
    for key, attr in (("dataset", "dataset"), ("au_source", "au_source")):
        mine, theirs = values.get(attr, ""), provenance.get(key)
        if mine and theirs is not None and ok(attr, "provenance") and mine != theirs:
            out.append(
                f"{prefix}provenance says {key} {_show(theirs)} but {prefix}{attr} is "
                f"{_show(mine)}, expected the same"
            )
    return out


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
    #: The training data set's name as fer-train calls it (``synthetic``, ``rafdb``...); ""
    #: when not recorded.
    dataset: str = ""
    #: The AU map the model was trained with: ``template``, ``landmarks``, ``none``, or ""
    #: when not recorded (:attr:`au_map_source` resolves it).
    au_source: str = ""
    #: How AU centres follow from 68 landmarks: ``((landmark indices...), down)`` rows
    #: (``fer.au_rule``; capsnet-model's ``AU_RULE``); () when not recorded.
    au_rule: AURule = ()
    #: Temperature scaling of the scores (``fer.calibration``); {}: uncalibrated.
    calibration: dict[str, Any] = field(default_factory=dict)
    #: The threshold below which a face is ``unknown`` (``fer.abstention``); {}: none.
    abstention: dict[str, Any] = field(default_factory=dict)
    #: What the model was trained and measured on (``fer.provenance``); {}: unknown.
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ContractError("invalid FER contract: " + "; ".join(problems))
        # One form whatever was passed in (JSON rows, capsnet-model AUCentre tuples...).
        object.__setattr__(self, "au_rule", _au_rule(self.au_rule) if self.au_rule else ())
        for name in ("calibration", "abstention", "provenance"):
            object.__setattr__(self, name, dict(getattr(self, name)))

    def problems(self) -> list[str]:
        """Every rule the field values break, one line each (empty when the contract is
        valid); the same rules as the metadata keys (:meth:`from_metadata`)."""
        out: list[str] = []
        invalid: set[str] = set()
        for key in _KEYS:
            if key.attr is None:
                continue
            value = getattr(self, key.attr)
            if key.absent is not None and _is_absent(value, key.absent):
                continue
            try:
                key.rule(value)
            except _Invalid as exc:
                invalid.add(key.attr)
                out.append(_problem(key.attr, _show(value), key, exc.detail, metadata=False))
        centres = self.au_centres if isinstance(self.au_centres, (list, tuple)) else ()
        extra = _attention_problem(self.attention, centres, "")
        if extra:
            out.append(extra)
        values = {k.attr: getattr(self, k.attr) for k in _KEYS if k.attr is not None}
        out.extend(_consistency_problems(values, lambda name: name not in invalid, ""))
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
            # Issue 18's keys: "", [] or {} when the file does not record them.
            "dataset": self.dataset,
            "au_source": self.au_source,
            "au_rule": [{"landmarks": list(points), "down": down} for points, down in self.au_rule],
            "calibration": dict(self.calibration),
            "abstention": dict(self.abstention),
            "provenance": dict(self.provenance),
        }

    def to_metadata(self) -> dict[str, str]:
        """String key/value pairs for ``ModelProto.metadata_props`` (keys a file need not
        have are left out when they hold nothing)."""
        values = self.to_dict()
        del values["num_classes"], values["input_shape"]  # derived, not stored
        for key in _KEYS:
            if key.absent is not None and _is_absent(values[key.name], key.absent):
                del values[key.name]
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
        invalid: set[str] = {k.name for k in _KEYS if k.required and k.name not in fer}
        for name, raw in fer.items():
            key = _BY_NAME.get(name)
            if key is None or name == "format":
                continue
            try:
                if not isinstance(raw, str):
                    raise _Invalid(f"the stored value is {_kind(raw)}, not text")
                value = key.rule(_decode_json(raw) if key.is_json else raw)
            except _Invalid as exc:
                invalid.add(name)
                problems.append(_problem(PREFIX + name, _show(raw), key, exc.detail, metadata=True))
                continue
            if key.attr is not None:
                values[key.attr] = value
        if "attention" in values and ("au_centres" in values or "au_centres" not in fer):
            problem = _attention_problem(values["attention"], values.get("au_centres", ()), PREFIX)
            if problem:
                problems.append(problem)
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        problems.extend(
            _consistency_problems({**defaults, **values}, lambda attr: attr not in invalid, PREFIX)
        )
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
        """The AU map (batch, 1, S, S) float32 a face of an ``attention == "input"`` model gets
        when nothing better is known: the template map painted from ``au_centres``, or zeros
        for a model trained without AU maps (:attr:`au_map_source` ``"none"``)."""
        s = self.input_size
        if self.au_map_source == "none":
            return np.zeros((batch, 1, s, s), np.float32)
        m = paint_attention_map(self.au_centres, self.au_grid, self.au_falloff, s)
        return np.ascontiguousarray(np.broadcast_to(m, (batch, 1, *m.shape)), dtype=np.float32)

    # -- issue 18: AU-map source, calibrated probabilities, abstention, provenance ------------

    @property
    def au_map_source(self) -> str:
        """The AU map the model was trained with: ``fer.au_source``, or when the file does not
        say, ``"template"`` for attention models and ``"none"`` for the others."""
        if self.au_source:
            return self.au_source
        return "none" if self.attention == "none" else "template"

    def au_centres_from_landmarks(self, landmarks: Any) -> np.ndarray:
        """The AU centres ``(len(au_rule), 2)`` float32 (x, y) of one face, in the coordinates
        of its ``(68, 2)`` landmarks, by the model's ``au_rule`` (ValueError without one or for
        other shapes)."""
        if not self.au_rule:
            raise ValueError("this model records no fer.au_rule: AU centres cannot be computed")
        return au_centres_from_rule(self.au_rule, landmarks)

    def landmark_attention(self, landmarks: Any, crop_size: tuple[int, int]) -> np.ndarray:
        """The AU map ``(S, S)`` float32 of one face crop of ``crop_size`` ``(height, width)``
        from its ``(68, 2)`` landmarks (x, y pixels of the crop), made as training made it
        (capsnet-model's ``landmark_attention_map`` on the crop, then its ``Preprocess.resize``
        to ``S``): the rule's centres scaled onto the ``au_grid`` x ``au_grid`` grid (each axis
        separately), painted there, resized (bilinear) to the crop's size, then to ``S`` x
        ``S`` (area when shrinking, else bilinear)."""
        import cv2

        height, width = int(crop_size[0]), int(crop_size[1])
        if height <= 0 or width <= 0:
            raise ValueError(f"crop_size must be positive (height, width), got {crop_size!r}")
        grid, s = self.au_grid, self.input_size
        centres = self.au_centres_from_landmarks(landmarks)
        scale = np.array([grid / width, grid / height], np.float32)
        m = paint_attention_map(centres * scale, grid, self.au_falloff, grid)
        if (height, width) != (grid, grid):
            m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
            m = np.clip(m, 0.0, 1.0)
        if (height, width) != (s, s):
            shrink = height * width > s * s
            m = cv2.resize(m, (s, s), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return np.ascontiguousarray(m, dtype=np.float32)

    @property
    def calibrated(self) -> bool:
        """Whether the file holds a fitted calibration (``fer.calibration``)."""
        return bool(self.calibration)

    @property
    def temperature(self) -> float:
        """The calibration temperature (1.0 when uncalibrated)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def score_transform(self) -> str:
        """``"log"`` or ``"identity"``: what is applied to the scores before the temperature;
        the calibration's, or by default ``log`` for capsule lengths and ``identity`` for
        logits."""
        transform = self.calibration.get("transform")
        if isinstance(transform, str):
            return transform
        return "log" if self.score_kind == "capsule_length" else "identity"

    def probabilities(self, scores: Any) -> np.ndarray:
        """Class probabilities ``(N, C)`` float64, each row summing to 1, for raw model scores
        ``(N, C)``: ``softmax(transform(scores) / T)`` (:attr:`score_transform`,
        :attr:`temperature`). Uncalibrated (T = 1) capsule lengths come out normalised to
        sum 1 (``log`` then softmax); zero lengths count as :data:`LOG_FLOOR`.

        Raises ValueError for another shape or for NaN/inf scores (a broken model).
        """
        x = np.asarray(scores, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.num_classes:
            raise ValueError(
                f"scores must have shape (N, {self.num_classes}), got {np.shape(scores)}"
            )
        if not np.isfinite(x).all():
            raise ValueError("scores hold NaN or inf: the model output is not usable")
        if x.shape[0] == 0:
            return x.copy()
        if self.score_transform == "log":
            x = np.log(np.maximum(x, LOG_FLOOR))
        # Shift first: the differences are <= 0, so exp never overflows and a huge logit
        # gives 1 for its class, 0 for the others (no inf - inf).
        z = (x - x.max(axis=1, keepdims=True)) / self.temperature
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    @property
    def abstain_threshold(self) -> float | None:
        """The top probability below which a face is :data:`UNKNOWN_LABEL`, or None."""
        if not self.abstention:
            return None
        return float(self.abstention["threshold"])

    @property
    def is_synthetic(self) -> bool:
        """Whether the model was trained on the procedurally generated faces (provenance says
        so, or the data set is ``synthetic``): a pipeline check, not a real-face model."""
        if self.provenance.get("synthetic") is True:
            return True
        return "synthetic" in (self.dataset, self.provenance.get("dataset"))

    def provenance_line(self) -> str:
        """One human line saying what the model was trained on and how it measured, e.g.
        ``trained on rafdb (12271 train / 3068 test), test accuracy 0.871, mean class 0.790,
        calibrated T=1.43, abstains below 0.42``."""
        parts: list[str] = []
        p = self.provenance
        unknown = "provenance unknown (exported without fer.provenance)"
        if p:
            head = SYNTHETIC_NOTE if self.is_synthetic else f"trained on {p['dataset']}"
            sizes = p.get("sizes") or {}
            counted = [f"{sizes[k]} {k}" for k in ("train", "test") if k in sizes]
            parts.append(head + (f" ({' / '.join(counted)})" if counted else ""))
            for key, what in (
                ("test_accuracy", "test accuracy"),
                ("mean_class_accuracy", "mean class"),
            ):
                if p.get(key) is not None:
                    parts.append(f"{what} {float(p[key]):.3f}")
        elif self.is_synthetic:
            parts += [SYNTHETIC_NOTE, unknown]
        else:
            parts.append(unknown + (f", data set {self.dataset}" if self.dataset else ""))
        parts.append(f"calibrated T={self.temperature:.3g}" if self.calibrated else "uncalibrated")
        threshold = self.abstain_threshold
        parts.append(
            f"abstains below {threshold:.3g}" if threshold is not None else "no abstention"
        )
        return ", ".join(parts)


def _replace(contract: ModelContract, **changes: Any) -> ModelContract:
    from dataclasses import replace

    return replace(contract, **changes)


def au_centres_from_rule(rule: AURule, landmarks: Any) -> np.ndarray:
    """The AU centres ``(len(rule), 2)`` float32 (x, y) for one face's ``(68, 2)`` landmarks:
    for each ``(indices, down)`` row of ``rule`` (``fer.au_rule``), the mean of those landmarks
    moved down by ``down`` times the distance between the eye centres (landmarks 36-41 and
    42-47). The same arithmetic as capsnet-model's ``au_centres_from_landmarks`` (float64,
    then float32), without torch."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must have shape ({NUM_LANDMARKS}, 2), got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks hold NaN or inf")
    eye = float(np.linalg.norm(lm[list(LEFT_EYE)].mean(axis=0) - lm[list(RIGHT_EYE)].mean(axis=0)))
    rows = [lm[list(points)].mean(axis=0) + np.array([0.0, down * eye]) for points, down in rule]
    if not rows:
        return np.zeros((0, 2), np.float32)
    return np.stack(rows).astype(np.float32)


def paint_attention_map(
    centres: Sequence[Sequence[float]] | np.ndarray, grid: int, falloff: float, size: int
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
