"""The clipping study: statistics helpers against hand-computed values, the design, the
regime precondition and paired comparisons on made-up runs, failure handling, and the --quick
study end to end (tables, plots, resume)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from bandpo_train.study import analysis, design, parse_args, report, runner
from bandpo_train.study import main as study_main
from bandpo_train.study.design import ARMS, LEARNING_RATES, Settings
from bandpo_train.study_stats import (
    auc_per_step,
    censored_summary,
    moving_average,
    steps_to_threshold,
    t_interval,
    t_quantile,
    tail_mean,
    weighted_bucket_clip,
)

# --- statistics helpers ----------------------------------------------------------------------


def test_t_quantiles() -> None:
    assert t_quantile(1) == 12.706
    assert t_quantile(4) == 2.776
    assert t_quantile(30) == 2.042
    assert t_quantile(35) == 2.042  # next smaller tabulated df: wider, conservative
    assert t_quantile(1000) == 1.980
    with pytest.raises(ValueError):
        t_quantile(0)


def test_t_interval_hand_computed() -> None:
    # mean 3, s = sqrt(2.5), se = s / sqrt(5) = 0.70711, half = 2.776 * 0.70711 = 1.96293
    iv = t_interval([1, 2, 3, 4, 5])
    assert iv.n == 5
    assert iv.mean == pytest.approx(3.0)
    assert iv.lo == pytest.approx(3 - 1.962932, abs=1e-5)
    assert iv.hi == pytest.approx(3 + 1.962932, abs=1e-5)
    assert iv.text(2) == "3.00 [1.04, 4.96]"
    assert iv.excludes_zero()
    assert not t_interval([-1.0, 1.0, 0.5]).excludes_zero()
    assert not t_interval([1.0]).excludes_zero()  # no interval from one value


def test_t_interval_drops_missing_values_and_small_n() -> None:
    # [1, 3]: mean 2, s = sqrt(2), se = 1, half = 12.706
    iv = t_interval([1.0, math.nan, None, 3.0])
    assert (iv.n, iv.mean) == (2, 2.0)
    assert iv.lo == pytest.approx(2 - 12.706)
    assert iv.hi == pytest.approx(2 + 12.706)
    one = t_interval([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.lo) and math.isnan(one.hi)
    assert one.text() == "0.500"
    assert t_interval([]).n == 0 and t_interval([]).text() == "n/a"


def test_moving_average_is_trailing() -> None:
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert moving_average([1, 2, 3, 4], 1) == [1, 2, 3, 4]
    assert moving_average([2, 4, 6], 10) == [2, 3, 4]
    with pytest.raises(ValueError):
        moving_average([1.0], 0)


def test_steps_to_threshold_and_censoring() -> None:
    # trailing means (width 2): 0, 0, 0.5, 1, 1 -> first >= 0.5 at RL step 3
    assert steps_to_threshold([0, 0, 1, 1, 1], 0.5, width=2) == (3, False)
    # a single spike is smoothed away: means 0, 0.5, 0.5, 0 never reach 0.6
    assert steps_to_threshold([0, 1, 0, 0], 0.6, width=2) == (4, True)
    assert steps_to_threshold([0.9], 0.5, width=10) == (1, False)


def test_censored_summary_all_reached() -> None:
    s = censored_summary([10, 20, 30], [False, False, False], limit=50)
    # mean 20, s = 10, half = 4.303 * 10 / sqrt(3) = 24.8434
    assert s.reached == 3 and s.interval.mean == pytest.approx(20)
    assert s.interval.hi == pytest.approx(20 + 24.8434, abs=1e-3)
    assert s.median_text == "20"
    assert s.text() == "20.0 [-4.8, 44.8]"


def test_censored_summary_some_and_all_censored() -> None:
    s = censored_summary([10, 50, 50], [False, True, True], limit=50)
    assert (s.reached, s.n) == (1, 3)
    assert s.lower_bound_mean == pytest.approx(110 / 3)
    assert s.median_text == "> 50"
    assert s.text() == ">= 36.7 (1/3 reached, median > 50)"
    assert math.isnan(s.interval.mean)
    even = censored_summary([10, 20, 50, 50], [False, False, True, True], limit=50)
    assert even.median_text == ">= 35"  # (20 + 50) / 2, the upper middle run is censored
    none = censored_summary([40, 40], [True, True], limit=40)
    assert none.text() == "> 40 (0/2 reached)"
    with pytest.raises(ValueError):
        censored_summary([1], [], limit=1)


def test_auc_tail_mean_and_bucket_clip() -> None:
    assert auc_per_step([1, 2, 3, 4]) == 2.5
    assert auc_per_step([1, None, math.nan, 3]) == 2.0
    assert math.isnan(auc_per_step([]))
    assert tail_mean([float(i) for i in range(1, 21)], 0.1) == 19.5  # last 2 of 20
    assert tail_mean([float(i) for i in range(1, 12)], 0.1) == 10.5  # ceil(1.1) = 2
    assert tail_mean([5.0], 0.1) == 5.0
    records = [
        {"clip_frac/p<0.01": 0.5, "token_frac/p<0.01": 0.2},
        {"clip_frac/p<0.01": 0.0, "token_frac/p<0.01": 0.0},
        {"clip_frac/p<0.01": 1.0, "token_frac/p<0.01": 0.6},
    ]
    assert weighted_bucket_clip(records) == pytest.approx((0.1 + 0.6) / 0.8)
    assert math.isnan(weighted_bucket_clip([{"clip_frac/p<0.01": 0.0, "token_frac/p<0.01": 0.0}]))


# --- design ----------------------------------------------------------------------------------


def test_stated_arms_and_learning_rates() -> None:
    band = {"divergence": "kl", "delta": 0.05, "max_ratio": 10.0}
    assert ARMS["ppo"].params == {"eps": 0.2}
    assert ARMS["band"].params == band
    assert ARMS["band_upper"].params == ARMS["band_lower"].params == {**band, "eps": 0.2}
    assert design.DEFAULT_ARMS == ("ppo", "band", "band_upper", "band_lower")
    assert LEARNING_RATES["binding"].lr > LEARNING_RATES["low"].lr


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_run_overrides_give_exactly_the_arms_rule(arm: str, tmp_path: Path) -> None:
    from bandpo_train.config import load_app_config

    overrides = runner.run_overrides("low", ARMS[arm], 3, 7, tmp_path / "run")
    config = load_app_config(None, overrides)
    assert config.algorithm.rule == ARMS[arm].rule
    # Replaced, not merged with the app default's Band parameters.
    assert config.algorithm.rule_params == ARMS[arm].params
    assert (config.optim.seed, config.optim.steps, config.task.seed) == (3, 7, 0)
    assert config.optim.lr == LEARNING_RATES["low"].lr
    assert config.task.name == "trap"
    assert (config.rollout.group_size, config.rollout.prompts_per_step) == (16, 32)
    assert (config.algorithm.ppo_epochs, config.algorithm.mini_batches) == (2, 4)
    assert config.logging.output_dir == str(tmp_path / "run")


def test_parse_args() -> None:
    quick = parse_args(["--quick"])
    assert (quick.seeds, quick.steps, quick.out) == (1, design.QUICK_STEPS, Path(design.QUICK_OUT))
    assert quick.extra == design.QUICK_OVERRIDES and quick.arms == list(design.QUICK_ARMS)
    full = parse_args(["--seeds", "3", "--lrs", "binding", "--arms", "ppo,band", "--jobs", "1"])
    assert (full.seeds, full.steps, full.out) == (3, design.DEFAULT_STEPS, Path(design.DEFAULT_OUT))
    assert (full.lrs, full.arms, full.extra, full.jobs) == (["binding"], ["ppo", "band"], (), 1)
    assert parse_args([]).arms == list(design.DEFAULT_ARMS)
    for bad in (["--arms", "ppo,nope"], ["--seeds", "0"], ["--lrs", "fast"], ["--jobs", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_plan_keeps_whole_seeds_first() -> None:
    settings = Settings(Path("x"), ["ppo", "band"], ["binding", "low"], seeds=2, steps=1)
    plan = settings.plan()
    assert len(plan) == 8 and {seed for _, _, seed in plan[:4]} == {0}


# --- analysis on made-up runs ----------------------------------------------------------------


def _row(lr: str, arm: str, seed: int, p_final: float, **extra: float) -> dict:
    return {
        "lr": lr,
        "arm": arm,
        "seed": seed,
        "status": "ok",
        "p_correct_final": p_final,
        "success": float(p_final > design.SUCCESS_P),
        "pass@16_final": 1 - (1 - p_final) ** 16,
        "answer_entropy_auc": 0.1,
        "p_correct_first": 0.003,
        "pos_low_tokens": extra.get("tokens", 10.0),
        "pos_low_clipped_upper": extra.get("clipped", 0.0),
    }


def test_regime_share_pools_ppo_runs_only() -> None:
    rows = [
        _row("binding", "ppo", 0, 0.1, tokens=10, clipped=1),
        _row("binding", "ppo", 1, 0.1, tokens=30, clipped=9),
        _row("binding", "band", 0, 0.9, tokens=100, clipped=0),
    ]
    found = analysis.regime(rows, "binding")
    assert (found.tokens, found.clipped, found.runs) == (40, 10, 2)
    assert found.share == pytest.approx(0.25) and found.reached
    low = analysis.regime([_row("low", "ppo", 0, 0.1, tokens=50, clipped=5)], "low")
    assert low.share == pytest.approx(0.1) and not low.reached
    nothing = analysis.regime([_row("low", "ppo", 0, 0.1, tokens=0, clipped=0)], "low")
    assert math.isnan(nothing.share) and not nothing.reached


def test_comparisons_are_paired_and_holm_adjusted() -> None:
    settings = Settings(Path("x"), ["ppo", "band"], ["binding"], seeds=8, steps=1)
    rows = [_row("binding", "ppo", s, 0.1) for s in range(8)]
    rows += [_row("binding", "band", s, 0.1 + 0.5) for s in range(8)]
    found = {c.outcome: c for c in analysis.compare(settings, rows)}
    better = found["p_correct_final"]
    assert better.difference.mean == pytest.approx(0.5) and better.difference.n == 8
    assert better.p_value == pytest.approx(2 / 256)  # all 8 pairs one way, exact
    # Primary family: P(correct) and success, both at p = 2/256: Holm gives 2 x 2/256 to both.
    assert better.p_holm == pytest.approx(2 * 2 / 256) and better.family == "primary"
    assert better.direction() == "higher"
    assert found["answer_entropy_auc"].direction() == "no significant difference"
    assert found["success"].p_value == pytest.approx(2 / 256)  # McNemar: 8 discordant pairs


def test_summary_draws_no_conclusion_without_the_regime(tmp_path: Path) -> None:
    settings = Settings(tmp_path, ["ppo", "band"], ["binding", "low"], seeds=8, steps=1)
    rows = [_row(lr, "ppo", s, 0.1, tokens=10, clipped=1) for lr in settings.lrs for s in range(8)]
    rows += [_row(lr, "band", s, 0.9) for lr in settings.lrs for s in range(8)]
    regimes = {lr: analysis.regime(rows, lr) for lr in settings.lrs}
    summaries = analysis.summarise(settings, rows)
    comparisons = analysis.compare(settings, rows)
    report.write_summary(tmp_path / "summary.md", settings, regimes, summaries, comparisons, 1.0)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "**regime not reached**" in text and "no conclusion" in text
    assert "**regime reached**" not in text
    assert "| binding | band | 8 | 1.00 [0.63, 1.00] (n=8) |" in text  # Clopper-Pearson
    rows = [dict(r, pos_low_clipped_upper=5.0) if r["arm"] == "ppo" else r for r in rows]
    regimes = {lr: analysis.regime(rows, lr) for lr in settings.lrs}
    report.write_summary(tmp_path / "summary.md", settings, regimes, summaries, comparisons, 1.0)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "- **binding**: regime reached; `band` higher final P(correct)" in text
    assert "PPO's clip binds here too, so this is no control" in text


# --- runs ------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_failed_runs_are_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bandpo_train.run

    warm = tmp_path / "study" / "warm_start" / "embedded"
    warm.mkdir(parents=True)
    (warm / "eval.jsonl").write_text('{"prompt": "a?", "answer": "3", "decoy": "8"}\n')
    monkeypatch.setattr(runner, "ensure_warm_start", lambda *a, **k: warm)

    def boom(config: object, callbacks: object = ()) -> None:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(bandpo_train.run, "train", boom)
    out = tmp_path / "study"
    argv = ["--quick", "--out", str(out), "--lrs", "low", "--arms", "ppo,band", "--jobs", "1"]
    assert study_main(argv) == 1
    rows = _rows(out / "results.csv")
    assert [(r["arm"], r["status"]) for r in rows] == [("band", "error"), ("ppo", "error")]
    assert all("simulated failure" in r["error"] for r in rows)
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "| low | ppo | 0 (1 failed) |" in text and "regime not reached" in text
    assert (out / "p_correct.png").stat().st_size > 0
    assert (out / "low" / "ppo" / "seed0" / "error.txt").is_file()


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path: Path) -> None:
    """The contract: ``bandpo-train study --quick --out DIR`` writes DIR/summary.md saying
    "regime reached" or "regime not reached" (here through the default worker processes)."""
    out = tmp_path / "study"
    assert study_main(["--quick", "--out", str(out)]) == 0
    expected = {(lr, a) for lr in LEARNING_RATES for a in design.QUICK_ARMS}
    results = _rows(out / "results.csv")
    assert {(r["lr"], r["arm"]) for r in results} == expected
    assert all(r["status"] == "ok" for r in results)
    for r in results:
        assert 0.0 <= float(r["p_correct_first"]) <= 1.0
        assert 0.0 <= float(r["p_correct_final"]) <= float(r["pass@16_final"]) <= 1.0
        assert float(r["answer_entropy_auc"]) > 0
        assert float(r["pos_low_clipped_upper"]) <= float(r["pos_low_tokens"])
    # Every run starts from the one warm start.
    assert len({r["p_correct_first"] for r in results}) == 1

    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "regime reached" in md or "regime not reached" in md
    assert "Prediction (stated before running)" in md
    for name in ("p_correct.png", "answer_entropy.png", "clip_cells.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert settings["seeds"] == [0] and settings["rl_steps_per_run"] == design.QUICK_STEPS
    assert settings["runs"] == {"ran": 4, "skipped": 0, "error": 0}
    assert set(settings["regime"]) == set(LEARNING_RATES)

    # Resumable: a second call runs nothing and rewrites the same tables.
    assert study_main(["--quick", "--out", str(out)]) == 0
    again = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert again["runs"] == {"ran": 0, "skipped": 4, "error": 0}
    assert _rows(out / "results.csv") == results
