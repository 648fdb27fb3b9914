"""Reward functions in a registry, and ``compute_rewards`` to score a batch robustly.

A reward function has the signature ``fn(prompts, completions, **columns) -> list[float | None]``:
``prompts`` and ``completions`` are lists of strings of the same length N, and ``columns`` holds
the dataset's other columns as lists aligned with the samples (``answer=[...]``). A function must
accept and ignore the columns it does not use (``**_``); its own parameters are keyword-only
arguments with defaults, bound by ``get_reward(name, **params)``. ``None`` (or NaN, inf, or a
value that is not a number) marks a sample the function could not score.

``compute_rewards`` combines weighted functions into one reward per sample. A function that
raises for the batch is retried sample by sample, so that only the samples it cannot score are
masked (``RewardResult.valid``) and recorded (``RewardResult.failures``); configuration errors
(``RewardConfigError``, e.g. a missing ``answer`` column) and programming errors (a list of the
wrong length) are raised instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list[float | None]]
_REWARDS: dict[str, RewardFn] = {}
_ERROR_CHARS = 200


class RewardConfigError(ValueError):
    """A reward function is misconfigured (missing column, bad parameter): never masked."""


def register_reward(name: str, *, overwrite: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Returns a decorator that registers a reward function under ``name``.

    The function must take ``(prompts, completions, **columns)``; its parameters must be
    keyword-only with defaults. Pass ``overwrite=True`` to replace a registered function.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")

    def _register(fn: RewardFn) -> RewardFn:
        if name in _REWARDS and not overwrite:
            raise ValueError(
                f"reward {name!r} is already registered; pass overwrite=True to replace it"
            )
        if not callable(fn):
            raise ValueError(f"reward {name!r} must be callable, got {fn!r}")
        params = inspect.signature(fn).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            raise ValueError(
                f"reward {name!r} must accept the dataset columns as **columns "
                "(add `**_` to its signature to ignore them)"
            )
        _REWARDS[name] = fn
        return fn

    return _register


def available_rewards() -> list[str]:
    """Returns the registered reward names, sorted."""
    return sorted(_REWARDS)


def get_reward(name: str, **params: Any) -> RewardFn:
    """Returns the registered reward ``name`` with ``params`` bound (``functools.partial``).

    Raises ValueError for an unknown name (listing the valid ones) or for parameters the
    function does not accept (listing the accepted ones).
    """
    try:
        fn = _REWARDS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown reward {name!r}; valid names: {', '.join(available_rewards())}"
        ) from None
    if not params:
        return fn
    accepted = _keyword_params(fn)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for reward {name!r}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    return functools.partial(fn, **params)


def _keyword_params(fn: Callable[..., Any]) -> list[str]:
    """Returns the names of the keyword-only parameters of ``fn``."""
    sig = inspect.signature(fn)
    return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


# --- answer extraction and normalisation --------------------------------------------------------

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)
_BOXED = "\\boxed{"


def extract_answer(text: str) -> str:
    """Returns the final answer in ``text``, stripped.

    In order of preference: the content of the last ``<answer>...</answer>``; the content of the
    last complete ``\\boxed{...}`` (nested braces allowed); the first non-empty line after the
    last ``answer:`` marker (any case, e.g. ``Final Answer: 42``); the whole text.
    """
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return str(tags[-1]).strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        rest = text[markers[-1].end() :]
        lines = [line.strip() for line in rest.splitlines() if line.strip()]
        if lines:
            return lines[0]
    return text.strip()


def _last_boxed(text: str) -> str | None:
    """Returns the content of the last ``\\boxed{...}`` whose braces close, or None."""
    start = text.rfind(_BOXED)
    while start != -1:
        depth = 0
        begin = start + len(_BOXED)
        for i in range(begin, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                if depth == 0:
                    return text[begin:i]
                depth -= 1
        start = text.rfind(_BOXED, 0, start)  # unclosed (truncated): try the one before
    return None


def normalize_answer(text: str) -> str:
    """Returns ``text`` stripped, whitespace-collapsed, casefolded, without a trailing period."""
    s = " ".join(str(text).split()).casefold()
    return s.removesuffix(".").rstrip()


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_LATEX_FRAC = re.compile(r"^(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_LATEX_FRAC_DIGITS = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")


def _as_number(text: str) -> Fraction | None:
    """Returns ``text`` as an exact rational (int, decimal, a/b, \\frac{a}{b}), or None."""
    s = text.strip().replace("$", "").replace("\\!", "").replace("\\,", "")
    s = _THOUSANDS.sub("", s)
    s = "".join(s.split()).removesuffix(".")
    match = _LATEX_FRAC.match(s) or _LATEX_FRAC_DIGITS.match(s)
    if match:
        sign, num, den = match.groups()
        a, b = _as_number(num), _as_number(den)
        if a is None or b is None or b == 0:
            return None
        return -a / b if sign else a / b
    if "/" in s:
        num, _, den = s.partition("/")
        a, b = _as_number(num), _as_number(den)
        if a is None or b is None or b == 0:
            return None
        return a / b
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_equivalent(prediction: str, gold: str) -> bool:
    """Returns whether two answer strings are equal as numbers, or else as normalised strings.

    The fallback comparison of the ``math_verify`` reward: integers, decimals, ``a/b`` and
    ``\\frac{a}{b}`` compare exactly as rationals (``$`` signs and thousands commas dropped).
    """
    a, b = _as_number(prediction), _as_number(gold)
    if a is not None and b is not None:
        return a == b
    return normalize_answer(prediction) == normalize_answer(gold)


def _column(name: str, columns: Mapping[str, Any], column: str) -> list[Any]:
    """Returns ``columns[column]``, or raises RewardConfigError naming the reward."""
    if column not in columns:
        raise RewardConfigError(
            f"reward {name!r} needs a {column!r} column in the dataset; "
            f"columns present: {', '.join(sorted(columns)) or '(none)'}"
        )
    return list(columns[column])


# --- built-in rewards ---------------------------------------------------------------------------


@register_reward("exact_match")
def exact_match(
    prompts: list[str], completions: list[str], *, column: str = "answer", **columns: Any
) -> list[float | None]:
    """Returns 1.0 where the extracted answer equals the ``column`` value (normalised), else 0.0.

    Both sides go through ``normalize_answer``; the prediction is ``extract_answer(completion)``.
    A sample whose gold answer is None is not scored (None).
    """
    answers = _column("exact_match", columns, column)
    out: list[float | None] = []
    for completion, gold in zip(completions, answers, strict=True):
        if gold is None:
            out.append(None)
            continue
        same = normalize_answer(extract_answer(completion)) == normalize_answer(str(gold))
        out.append(1.0 if same else 0.0)
    return out


_FALLBACK_WARNED = False


@register_reward("math_verify")
def math_verify_reward(
    prompts: list[str],
    completions: list[str],
    *,
    column: str = "answer",
    timeout_seconds: int | None = 5,
    **columns: Any,
) -> list[float | None]:
    """Returns 1.0 where the completion's answer is mathematically equal to the gold, else 0.0.

    With the optional ``math-verify`` library (``pip install rl-trainer[math]``) the gold answer
    is parsed as LaTeX math (wrapped in ``$...$`` unless it has its own delimiters) and the
    prediction is the content of the last ``<answer>`` block if there is one (the library would
    otherwise pick numbers from the reasoning), else the whole completion; a sample also counts
    as correct when the normalised ``extract_answer`` strings are equal. ``timeout_seconds``
    bounds each parse and comparison; outside the main thread it is dropped (the library's
    timeout uses ``signal.alarm``). Without the library a numeric fallback
    (``answers_equivalent``) is used and a warning is given once per process.
    """
    answers = _column("math_verify", columns, column)
    try:
        import math_verify
    except ImportError:
        _warn_fallback()
        return [
            None if gold is None else float(answers_equivalent(extract_answer(c), str(gold)))
            for c, gold in zip(completions, answers, strict=True)
        ]
    if threading.current_thread() is not threading.main_thread():
        timeout_seconds = None
    out: list[float | None] = []
    for completion, gold in zip(completions, answers, strict=True):
        if gold is None:
            out.append(None)
            continue
        gold_text = str(gold)
        if normalize_answer(extract_answer(completion)) == normalize_answer(gold_text):
            out.append(1.0)
            continue
        gold_parsed = _mv_parse(math_verify, gold_text, timeout_seconds, wrap=True)
        tags = _ANSWER_TAG.findall(completion)
        if tags:
            pred_parsed = _mv_parse(math_verify, str(tags[-1]), timeout_seconds, wrap=True)
        else:
            pred_parsed = _mv_parse(math_verify, completion, timeout_seconds, wrap=False)
        same = bool(
            gold_parsed
            and pred_parsed
            and math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds)
        )
        out.append(1.0 if same else 0.0)
    return out


def _mv_parse(lib: Any, text: str, timeout_seconds: int | None, *, wrap: bool) -> list[Any]:
    """Returns ``lib.parse`` of ``text``; with ``wrap`` a bare answer is parsed as ``$text$``.

    Unwrapped, the library reads ``2\\sqrt{2}`` as 2 and ``3, 4`` as 4 and finds nothing in
    ``\\frac12``; wrapped, it reads them as LaTeX math. The raw text is the fallback.
    """
    stripped = text.strip()
    delimited = any(d in stripped for d in ("$", "\\(", "\\[", "\\boxed"))
    if wrap and stripped and not delimited:
        parsed = list(lib.parse(f"${stripped}$", parsing_timeout=timeout_seconds))
        if parsed:
            return parsed
    return list(lib.parse(stripped, parsing_timeout=timeout_seconds))


def _warn_fallback() -> None:
    global _FALLBACK_WARNED
    if not _FALLBACK_WARNED:
        _FALLBACK_WARNED = True
        warnings.warn(
            "math-verify is not installed: the 'math_verify' reward falls back to comparing "
            "numbers and normalised strings; pip install rl-trainer[math] for a real verifier",
            stacklevel=3,
        )


DEFAULT_FORMAT_PATTERN = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"


@register_reward("format")
def format_reward(
    prompts: list[str], completions: list[str], *, pattern: str = DEFAULT_FORMAT_PATTERN, **_: Any
) -> list[float | None]:
    """Returns 1.0 where the whole completion matches ``pattern`` (``re.DOTALL``), else 0.0."""
    try:
        regex = re.compile(pattern, re.DOTALL)
    except (re.error, TypeError) as exc:
        raise RewardConfigError(f"reward 'format' got a bad pattern {pattern!r}: {exc}") from exc
    return [1.0 if regex.fullmatch(c) else 0.0 for c in completions]


# --- combining rewards --------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSpec:
    """A registered reward ``name`` with its ``weight`` in the total and its bound ``params``."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"reward name must be a non-empty string, got {self.name!r}")
        _check_weight(self.name, self.weight)


@dataclass(frozen=True)
class RewardFailure:
    """One sample one reward function could not score: function key, sample index, error."""

    function: str
    index: int
    error: str


@dataclass
class RewardResult:
    """The scores of a batch of N samples.

    Attributes:
        total: (N,) float32 weighted sum over the functions; 0.0 where ``valid`` is False.
        per_function: key -> (N,) float32 raw scores, NaN where that function failed.
        valid: (N,) bool, False where any function failed.
        failures: every (function, sample) failure, in function then sample order.
    """

    total: torch.Tensor
    per_function: dict[str, torch.Tensor]
    valid: torch.Tensor
    failures: list[RewardFailure] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Returns ``reward/<key>`` and ``reward/total`` means and std over valid samples.

        Also ``reward/total_std`` (population std) and ``reward/failed_frac``. Means are NaN when
        no sample is valid.
        """
        n = self.valid.numel()
        n_valid = int(self.valid.sum())
        out: dict[str, float] = {}
        for key, values in self.per_function.items():
            out[f"reward/{key}"] = float(values[self.valid].mean()) if n_valid else math.nan
        total = self.total[self.valid]  # (n_valid,)
        out["reward/total"] = float(total.mean()) if n_valid else math.nan
        out["reward/total_std"] = float(total.std(correction=0)) if n_valid else math.nan
        out["reward/failed_frac"] = 1.0 - n_valid / n if n else 0.0
        return out


def _check_weight(name: str, weight: Any) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise ValueError(f"weight of reward {name!r} must be a finite number, got {weight!r}")


def _resolve(
    spec: RewardSpec | tuple[str, RewardFn, float] | str,
) -> tuple[str, RewardFn, float, dict[str, Any]]:
    """Returns (name, function, weight, bound params) for one spec."""
    if isinstance(spec, str):
        spec = RewardSpec(spec)
    if isinstance(spec, RewardSpec):
        return spec.name, get_reward(spec.name, **spec.params), float(spec.weight), spec.params
    if isinstance(spec, tuple) and len(spec) == 3:
        name, fn, weight = spec
        if not isinstance(name, str) or not name:
            raise ValueError(f"reward name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise ValueError(f"reward {name!r} must be callable, got {fn!r}")
        _check_weight(name, weight)
        return name, fn, float(weight), {}
    raise ValueError(
        "a reward spec must be a RewardSpec, a registered name or a (name, function, weight) "
        f"tuple, got {spec!r}"
    )


def _unique_keys(names: Sequence[str]) -> list[str]:
    """Returns ``names`` with repeats suffixed: ``a, a, a`` -> ``a, a_2, a_3``."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for name in names:
        key, count = name, seen.get(name, 0) + 1
        seen[name] = count
        if count > 1:
            key = f"{name}_{count}"
        while key in keys:
            count += 1
            key = f"{name}_{count}"
        keys.append(key)
    return keys


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def _as_list(key: str, result: Any, expected: int) -> list[Any]:
    """Returns a function's result as a list of length ``expected``, else raises ValueError."""
    if isinstance(result, torch.Tensor):
        result = result.tolist() if result.dim() > 0 else result
    if isinstance(result, str | bytes) or not hasattr(result, "__len__"):
        raise ValueError(
            f"reward {key!r} must return a list of numbers, got {type(result).__name__}"
        )
    values = list(result)
    if len(values) != expected:
        raise ValueError(f"reward {key!r} returned {len(values)} values for {expected} completions")
    return values


def _score(value: Any) -> tuple[float, str | None]:
    """Returns (value as float, None), or (NaN, reason) when it is not a finite number."""
    if value is None:
        return math.nan, "returned None"
    if isinstance(value, str | bytes):
        return math.nan, f"returned a {type(value).__name__}, not a number: {value!r:.50}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan, f"returned a {type(value).__name__}, not a number"
    if not math.isfinite(x):
        return math.nan, f"returned {x}"
    return x, None


def _run_one(
    key: str,
    fn: RewardFn,
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
) -> tuple[list[float], list[RewardFailure]]:
    """Returns (scores with NaN for failures, failures) of one function on the batch."""
    n = len(completions)
    try:
        result = fn(prompts, completions, **columns)
    except RewardConfigError:
        raise
    except Exception as exc:  # a user function may fail in any way: retry sample by sample
        batch_exc: Exception | None = exc
    else:
        batch_exc = None
    if batch_exc is None:
        outcomes: list[Any] = _as_list(key, result, n)
    elif n == 1:
        outcomes = [batch_exc]
    else:
        logger.debug("reward %r raised for the batch (%s); retrying per sample", key, batch_exc)
        outcomes = [_call_single(key, fn, prompts, completions, columns, i) for i in range(n)]
    scores: list[float] = []
    failures: list[RewardFailure] = []
    for i, outcome in enumerate(outcomes):
        reason: str | None
        if isinstance(outcome, Exception) and batch_exc is not None:
            x, reason = math.nan, _error_text(outcome)
        else:
            x, reason = _score(outcome)
        scores.append(x)
        if reason is not None:
            failures.append(RewardFailure(key, i, reason))
    return scores, failures


def _call_single(
    key: str,
    fn: RewardFn,
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
    i: int,
) -> Any:
    """Returns the score of sample ``i`` alone, or the exception the function raised."""
    try:
        result = fn([prompts[i]], [completions[i]], **{k: [v[i]] for k, v in columns.items()})
    except RewardConfigError:
        raise
    except Exception as exc:  # masked by the caller, which records it
        return exc
    return _as_list(key, result, 1)[0]


def compute_rewards(
    specs: Sequence[RewardSpec | tuple[str, RewardFn, float] | str],
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]] | None = None,
) -> RewardResult:
    """Returns the weighted rewards of N completions, with failed samples masked.

    Args:
        specs: ``RewardSpec`` (a registered name, weight and params), a registered name (weight
            1), or a ``(key, function, weight)`` tuple for an unregistered function. Repeated
            names get keys ``name``, ``name_2``, ... in ``per_function``.
        prompts: N prompt strings.
        completions: N completion strings.
        columns: the dataset's other columns, each a sequence of N values, passed to every
            function by name.

    A function that raises for the batch is retried sample by sample; a sample it raises for,
    or scores None, NaN, inf or a non-number, is a failure for that function: its
    ``per_function`` entry is NaN, ``valid`` is False and ``total`` is 0.0 there. Failures are
    recorded and logged once per call. ``RewardConfigError`` and a result of the wrong length
    are raised.
    """
    if len(specs) == 0:
        raise ValueError(f"need at least one reward spec; registered: {available_rewards()}")
    prompts, completions = list(prompts), list(completions)
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} completions")
    cols: dict[str, list[Any]] = {}
    for name, values in (columns or {}).items():
        if name in ("prompts", "completions"):
            raise ValueError(f"column name {name!r} is reserved; rename the column")
        if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
            raise ValueError(
                f"column {name!r} must be a sequence of {n} values, got {type(values).__name__}"
            )
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
        cols[name] = list(values)

    resolved = [_resolve(spec) for spec in specs]
    keys = _unique_keys([name for name, *_ in resolved])
    per_function: dict[str, torch.Tensor] = {}
    failures: list[RewardFailure] = []
    total = torch.zeros(n, dtype=torch.float64)  # (N,)
    valid = torch.ones(n, dtype=torch.bool)  # (N,)
    for key, (_, fn, weight, params) in zip(keys, resolved, strict=True):
        clash = sorted(set(params) & set(cols))
        if clash:
            raise ValueError(
                f"column(s) {clash} of the dataset clash with parameter(s) of reward {key!r}; "
                "rename the column(s)"
            )
        scores: list[float] = []
        if n > 0:
            scores, fn_failures = _run_one(key, fn, prompts, completions, cols)
            failures.extend(fn_failures)
        scored = torch.tensor(scores, dtype=torch.float64)  # (N,)
        per_function[key] = scored.float()
        valid &= torch.isfinite(scored)
        total += weight * scored

    if failures:
        counts: dict[str, int] = {}
        for f in failures:
            counts[f.function] = counts.get(f.function, 0) + 1
        first = failures[0]
        logger.warning(
            "reward failures masked %d of %d samples (%s); first: %s at sample %d: %s",
            n - int(valid.sum()),
            n,
            ", ".join(f"{k}: {c}" for k, c in counts.items()),
            first.function,
            first.index,
            first.error,
        )
    total = torch.where(valid, total, torch.zeros_like(total)).float()  # (N,)
    return RewardResult(total=total, per_function=per_function, valid=valid, failures=failures)
