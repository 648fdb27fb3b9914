from __future__ import annotations

import logging
import math
import sys
import threading
import warnings

import pytest
import torch

from rl_trainer import rewards
from rl_trainer.rewards import (
    RewardConfigError,
    RewardFailure,
    RewardSpec,
    answers_equivalent,
    available_rewards,
    compute_rewards,
    extract_answer,
    get_reward,
    register_reward,
)

BUILTINS = ["exact_match", "format", "math_verify"]
PROMPTS = ["q0", "q1", "q2"]
COMPLETIONS = [
    "<think>2 + 2</think> <answer>4</answer>",
    "The result is \\boxed{5}.",
    "<think>hmm</think><answer>seven</answer>",
]
ANSWERS = ["4", "6", "Seven."]


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that tests may register functions freely."""
    monkeypatch.setattr(rewards, "_REWARDS", dict(rewards._REWARDS))
    return rewards._REWARDS


@pytest.fixture
def no_math_verify(monkeypatch):
    """Makes ``import math_verify`` fail and re-arms the once-per-process fallback warning."""
    monkeypatch.setitem(sys.modules, "math_verify", None)
    monkeypatch.setattr(rewards, "_FALLBACK_WARNED", False)


def fake_metric(prompts, completions, *, bad=(), nan=(), **_):
    """len(completion), raising for completions in ``bad`` and NaN for those in ``nan``."""
    if any(c in bad for c in completions):
        raise RuntimeError("cannot score " + ", ".join(c for c in completions if c in bad))
    return [math.nan if c in nan else float(len(c)) for c in completions]


# --- registry -----------------------------------------------------------------------------------


def test_registry_holds_the_builtins():
    assert set(BUILTINS) <= set(available_rewards())
    assert available_rewards() == sorted(available_rewards())


@pytest.mark.parametrize("name", available_rewards())
def test_every_registered_reward_scores_a_batch(name):
    fn = get_reward(name)
    out = fn(PROMPTS, COMPLETIONS, answer=ANSWERS, unused_column=[1, 2, 3])
    assert len(out) == len(COMPLETIONS)
    assert all(isinstance(x, float) and x in (0.0, 1.0) for x in out)
    result = compute_rewards([RewardSpec(name)], PROMPTS, COMPLETIONS, {"answer": ANSWERS})
    assert result.per_function[name].tolist() == out


def test_unknown_reward_lists_valid_names():
    with pytest.raises(ValueError, match="unknown reward 'nope'; valid names: exact_match"):
        get_reward("nope")


def test_get_reward_binds_params_and_rejects_unknown_ones():
    fn = get_reward("format", pattern=r"\d+")
    assert fn(["p", "p"], ["123", "12a"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown parameter.*'patern'.*accepted: pattern"):
        get_reward("format", patern="x")
    with pytest.raises(ValueError, match="accepted: column, timeout_seconds"):
        get_reward("math_verify", answer_column="gold")


def test_register_reward_checks_name_signature_and_duplicates(registry):
    @register_reward("mine")
    def mine(prompts, completions, **_):
        return [1.0] * len(completions)

    assert "mine" in available_rewards()
    with pytest.raises(ValueError, match="already registered"):
        register_reward("mine")(mine)
    register_reward("mine", overwrite=True)(mine)
    with pytest.raises(ValueError, match=r"must accept the dataset columns as \*\*columns"):
        register_reward("strict")(lambda prompts, completions: [])
    with pytest.raises(ValueError, match="non-empty string"):
        register_reward("")


# --- extraction and the built-in rewards --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("<answer>1</answer> then <answer> 2 </answer>", "2"),
        ("<think>\\boxed{9}</think><answer>3</answer>", "3"),
        ("so \\boxed{\\frac{1}{2}} hence", "\\frac{1}{2}"),
        ("\\boxed{1} and finally \\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("\\boxed{4} then a truncated \\boxed{\\frac{1", "4"),
        ("work...\nFinal Answer: 42\nHope this helps", "42"),
        ("answer: 1\nanswer:\n\n  x = 2  \n", "x = 2"),
        ("  just text \n", "just text"),
        ("", ""),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_exact_match_normalises_and_uses_the_chosen_column():
    assert get_reward("exact_match")(PROMPTS, COMPLETIONS, answer=ANSWERS) == [1.0, 0.0, 1.0]
    gold = ["4", "5", "x"]
    assert get_reward("exact_match", column="gold")(PROMPTS, COMPLETIONS, gold=gold) == [
        1.0,
        1.0,
        0.0,
    ]
    assert rewards.exact_match(["p"], ["<answer>A  b</answer>"], answer=["a b."]) == [1.0]
    assert rewards.exact_match(["p"], ["<answer>1</answer>"], answer=[None]) == [None]


def test_exact_match_needs_an_answer_column():
    with pytest.raises(ValueError, match="needs a 'answer' column in the dataset"):
        rewards.exact_match(PROMPTS, COMPLETIONS, solution=ANSWERS)
    with pytest.raises(RewardConfigError, match="columns present: solution"):
        compute_rewards(["exact_match"], PROMPTS, COMPLETIONS, {"solution": ANSWERS})


def test_format_reward():
    fn = get_reward("format")
    good = "<think>\nsteps\n</think>\n<answer>4</answer>\n"
    assert fn(["p"] * 4, [good, "<answer>4</answer>", good + "extra", " " + good]) == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]
    with pytest.raises(RewardConfigError, match="bad pattern"):
        get_reward("format", pattern="(")(["p"], ["x"])


MATH_CASES = [
    ("<think>so 1/2</think><answer>\\frac{1}{2}</answer>", "0.5", 1.0),
    ("The answer is \\boxed{\\frac{3}{4}}.", "3/4", 1.0),
    ("Total: \\boxed{1,000}", "1000", 1.0),
    ("<answer>$12$</answer>", "12", 1.0),
    ("<answer>-3</answer>", "3", 0.0),
    ("\\boxed{7}", "8", 0.0),
    ("<answer>Paris</answer>", "paris", 1.0),
]


@pytest.mark.parametrize(("completion", "gold", "want"), MATH_CASES)
def test_math_verify_with_the_library(completion, gold, want):
    pytest.importorskip("math_verify")
    assert get_reward("math_verify")(["p"], [completion], answer=[gold]) == [want]


@pytest.mark.parametrize(
    ("completion", "gold", "want"),
    [
        ("\\boxed{2\\sqrt 2}", "2\\sqrt{2}", 1.0),  # the raw parse would read the gold as 2
        ("\\boxed{2}", "2\\sqrt{2}", 0.0),
        ("\\boxed{3, 4}", "3, 4", 1.0),  # the raw parse would read the gold as 4
        ("<think>I guess 5</think><answer>7</answer>", "7", 1.0),  # not the 5 in <think>
        ("<think>I guess 5</think><answer>7</answer>", "5", 0.0),
        ("<answer>\\pi</answer>", "3.14159265358979", 1.0),
    ],
)
@pytest.mark.filterwarnings("ignore:bitcount function is deprecated:DeprecationWarning")  # sympy
def test_math_verify_library_pitfalls(completion, gold, want):
    pytest.importorskip("math_verify")
    assert get_reward("math_verify")(["p"], [completion], answer=[gold]) == [want]


def test_math_verify_library_works_outside_the_main_thread():
    pytest.importorskip("math_verify")
    out: list = []
    thread = threading.Thread(
        target=lambda: out.append(get_reward("math_verify")(["p"], ["\\boxed{6/2}"], answer=["3"]))
    )
    thread.start()
    thread.join()
    assert out == [[1.0]]


@pytest.mark.parametrize(("completion", "gold", "want"), MATH_CASES)
def test_math_verify_fallback(no_math_verify, completion, gold, want):
    with pytest.warns(UserWarning, match=r"pip install rl-trainer\[math\]"):
        assert get_reward("math_verify")(["p"], [completion], answer=[gold]) == [want]


def test_math_verify_fallback_warns_once(no_math_verify):
    with pytest.warns(UserWarning):
        get_reward("math_verify")(["p"], ["1"], answer=["1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_reward("math_verify")(["p"], ["\\boxed{2}"], answer=["1"]) == [0.0]


@pytest.mark.parametrize(
    ("prediction", "gold", "want"),
    [
        ("0.75", "3/4", True),
        ("\\frac{3}{4}", "0.75", True),
        ("-\\dfrac{6}{8}", "-3/4", True),
        ("\\frac34", "0.75", True),
        ("$1,234.50$", "1234.5", True),
        ("1e3", "1000", True),
        ("1/0", "1/0", True),  # not a number: compared as strings
        ("3, 4", "34", False),  # a list, not a thousands separator
        ("0.33", "1/3", False),
        ("x + 1", "X+1", False),
        ("Yes.", "yes", True),
    ],
)
def test_answers_equivalent(prediction, gold, want):
    assert answers_equivalent(prediction, gold) is want


# --- compute_rewards ----------------------------------------------------------------------------


def test_weighted_total_and_metrics():
    result = compute_rewards(
        [RewardSpec("exact_match", weight=2.0), RewardSpec("format", weight=0.5)],
        PROMPTS,
        COMPLETIONS,
        {"answer": ANSWERS},
    )
    assert result.per_function["exact_match"].tolist() == [1.0, 0.0, 1.0]
    assert result.per_function["format"].tolist() == [1.0, 0.0, 1.0]
    assert result.total.tolist() == [2.5, 0.0, 2.5]
    assert result.total.dtype == torch.float32 and result.valid.dtype == torch.bool
    assert result.valid.all() and result.failures == []
    metrics = result.metrics()
    assert metrics["reward/exact_match"] == pytest.approx(2 / 3)
    assert metrics["reward/total"] == pytest.approx(5 / 3)
    want_std = torch.tensor([2.5, 0.0, 2.5]).std(correction=0).item()
    assert metrics["reward/total_std"] == pytest.approx(want_std)
    assert metrics["reward/failed_frac"] == 0.0


def test_a_sample_that_raises_is_masked_alone_and_recorded(caplog):
    completions = ["aa", "boom", "cccc"]
    spec = ("len", lambda p, c, **cols: fake_metric(p, c, bad={"boom"}), 1.0)
    with caplog.at_level(logging.WARNING, logger="rl_trainer.rewards"):
        result = compute_rewards([spec, "format"], PROMPTS, completions, {})
    values = result.per_function["len"]
    assert values[0] == 2.0 and math.isnan(values[1]) and values[2] == 4.0
    assert result.per_function["format"].tolist() == [0.0, 0.0, 0.0]
    assert result.valid.tolist() == [True, False, True]
    assert result.total.tolist() == [2.0, 0.0, 4.0]
    assert result.failures == [RewardFailure("len", 1, "RuntimeError: cannot score boom")]
    assert len(caplog.records) == 1 and "1 of 3 samples" in caplog.records[0].getMessage()
    metrics = result.metrics()
    assert metrics["reward/len"] == 3.0 and metrics["reward/failed_frac"] == pytest.approx(1 / 3)


def test_a_function_failing_everywhere_masks_every_sample():
    def broken(prompts, completions, **_):
        raise KeyError("missing")

    result = compute_rewards([("broken", broken, 1.0)], PROMPTS, COMPLETIONS)
    assert not result.valid.any() and result.total.tolist() == [0.0, 0.0, 0.0]
    assert [f.index for f in result.failures] == [0, 1, 2]
    assert result.failures[0].error == "KeyError: 'missing'"
    assert math.isnan(result.metrics()["reward/total"])


@pytest.mark.parametrize(
    ("bad_value", "reason"),
    [
        (None, "returned None"),
        (math.nan, "returned nan"),
        (-math.inf, "returned -inf"),
        ("1.0", "not a number"),
        ([1.0], "not a number"),
    ],
)
def test_values_that_are_not_finite_numbers_fail_the_sample(bad_value, reason):
    def fn(prompts, completions, **_):
        return [1, True, bad_value]

    result = compute_rewards([("fn", fn, 1.0)], PROMPTS, COMPLETIONS)
    assert result.valid.tolist() == [True, True, False]
    assert result.total.tolist() == [1.0, 1.0, 0.0]
    (failure,) = result.failures
    assert failure.function == "fn" and failure.index == 2 and reason in failure.error


def test_tensor_results_are_accepted():
    def fn(prompts, completions, **_):
        return torch.tensor([0.5, float("nan"), 2.0])

    result = compute_rewards([("t", fn, 2.0)], PROMPTS, COMPLETIONS)
    assert result.total.tolist() == [1.0, 0.0, 4.0]


def test_wrong_length_is_a_programming_error():
    def short(prompts, completions, **_):
        return [1.0]

    with pytest.raises(ValueError, match="reward 'short' returned 1 values for 3 completions"):
        compute_rewards([("short", short, 1.0)], PROMPTS, COMPLETIONS)

    def raises_then_short(prompts, completions, **_):
        if len(completions) > 1:
            raise RuntimeError("batch failure")
        return []

    with pytest.raises(ValueError, match="returned 0 values for 1 completions"):
        compute_rewards([("r", raises_then_short, 1.0)], PROMPTS, COMPLETIONS)


def test_column_checks():
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 3 completions"):
        compute_rewards(["exact_match"], PROMPTS, COMPLETIONS, {"answer": ["1", "2"]})
    with pytest.raises(ValueError, match="column 'answer' must be a sequence"):
        compute_rewards(["exact_match"], PROMPTS, COMPLETIONS, {"answer": "123"})
    with pytest.raises(ValueError, match="2 prompts for 3 completions"):
        compute_rewards(["format"], PROMPTS[:2], COMPLETIONS)
    with pytest.raises(ValueError, match=r"column\(s\) \['pattern'\].*clash"):
        compute_rewards(
            [RewardSpec("format", params={"pattern": "x"})],
            PROMPTS,
            COMPLETIONS,
            {"pattern": ["a", "b", "c"]},
        )


def test_columns_are_passed_by_name_and_aligned():
    seen = {}

    def spy(prompts, completions, *, scale=1.0, **columns):
        seen.update(columns)
        return [scale * x for x in columns["difficulty"]]

    result = compute_rewards(
        [("spy", spy, 1.0)], PROMPTS, COMPLETIONS, {"difficulty": (1, 2, 3), "id": ["a", "b", "c"]}
    )
    assert seen == {"difficulty": [1, 2, 3], "id": ["a", "b", "c"]}
    assert result.total.tolist() == [1.0, 2.0, 3.0]


def test_weights_must_be_finite():
    with pytest.raises(ValueError, match="weight of reward 'format' must be a finite number"):
        RewardSpec("format", weight=math.inf)
    with pytest.raises(ValueError, match="weight of reward 'x' must be a finite number, got nan"):
        compute_rewards([("x", fake_metric, math.nan)], PROMPTS, COMPLETIONS)


def test_duplicate_names_get_suffixes():
    specs = [
        RewardSpec("format"),
        RewardSpec("format", weight=2.0, params={"pattern": ".*4.*"}),
        RewardSpec("format", weight=0.0),
    ]
    result = compute_rewards(specs, PROMPTS, COMPLETIONS)
    assert list(result.per_function) == ["format", "format_2", "format_3"]
    assert result.per_function["format_2"].tolist() == [1.0, 0.0, 0.0]
    assert result.total.tolist() == [3.0, 0.0, 1.0]


def test_custom_registered_reward_by_name(registry):
    @register_reward("length")
    def length(prompts, completions, *, bad=(), **_):
        return fake_metric(prompts, completions, bad=bad)

    result = compute_rewards(
        [RewardSpec("length", params={"bad": {"x"}}), "format"], ["p", "p"], ["x", "yy"]
    )
    assert result.valid.tolist() == [False, True]
    assert result.total.tolist() == [0.0, 2.0]


def test_bad_specs():
    with pytest.raises(ValueError, match="need at least one reward spec"):
        compute_rewards([], PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        compute_rewards([RewardSpec("nope")], PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="a reward spec must be"):
        compute_rewards([("format", 1.0)], PROMPTS, COMPLETIONS)


def test_empty_batch():
    result = compute_rewards(["format", "exact_match"], [], [], {"answer": []})
    assert result.total.shape == (0,) and result.valid.shape == (0,)
    assert result.metrics()["reward/failed_frac"] == 0.0
