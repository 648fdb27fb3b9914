"""The clipping study: statistics helpers against hand-computed values, failure handling, and
the --quick study end to end (tables, plots, resume)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from bandpo_train import study
from bandpo_train.study import (
    ARMS,
    STUDY_TASKS,
    auc_per_step,
    censored_summary,
    moving_average,
    per_rl_step,
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


def test_per_rl_step_takes_one_value_per_rollout() -> None:
    records = [
        {"step": 1, "rl_step": 1, "reward_mean": 0.25},
        {"step": 2, "rl_step": 1, "reward_mean": 0.25},
        {"step": 3, "rl_step": 2, "reward_mean": 0.5},
        {"step": 4, "rl_step": 3},
    ]
    values = per_rl_step(records, "reward_mean")
    assert values[:2] == [0.25, 0.5] and math.isnan(values[2])


# --- configuration ---------------------------------------------------------------------------


def test_stated_arms() -> None:
    assert ARMS["ppo"].params == {"eps": 0.2}
    assert ARMS["clip_higher"].params == {"eps_low": 0.2, "eps_high": 0.28}
    assert ARMS["band_kl"].params == {"divergence": "kl", "delta": 0.05, "max_ratio": 10.0}
    assert ARMS["band_tv"].params == {"divergence": "tv", "delta": 0.15, "max_ratio": 10.0}


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_build_config_sets_exactly_the_arms_rule(arm: str, tmp_path: Path) -> None:
    overrides = study.run_overrides(STUDY_TASKS["control"], 3, 7, tmp_path / "run")
    config = study.build_config(overrides, ARMS[arm])
    assert config.algorithm.rule == ARMS[arm].rule
    # Not merged with the app default's Band parameters (PPO would reject those).
    assert config.algorithm.rule_params == ARMS[arm].params
    assert (config.optim.seed, config.optim.steps, config.task.seed) == (3, 7, 0)
    assert (config.algorithm.ppo_epochs, config.algorithm.mini_batches) == (2, 4)
    assert [r.name for r in config.algorithm.rewards] == ["random_coin", "one_of"]
    assert [r.weight for r in config.algorithm.rewards] == [1.0, 0.0]
    assert config.eval.correct_reward == "one_of"
    assert config.logging.output_dir == str(tmp_path / "run")


def test_parse_args() -> None:
    quick = study.parse_args(["--quick"])
    assert (quick.seeds, quick.steps, quick.out) == (1, study.QUICK_STEPS, Path(study.QUICK_OUT))
    assert quick.extra == study.QUICK_OVERRIDES
    full = study.parse_args(["--seeds", "3", "--tasks", "rare,control", "--arms", "ppo,band_kl"])
    assert (full.seeds, full.steps, full.out) == (3, study.DEFAULT_STEPS, Path(study.DEFAULT_OUT))
    assert (full.tasks, full.arms, full.extra) == (["rare", "control"], ["ppo", "band_kl"], ())
    with pytest.raises(SystemExit):
        study.parse_args(["--arms", "ppo,nope"])
    with pytest.raises(SystemExit):
        study.parse_args(["--seeds", "0"])


# --- runs ------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_failed_runs_are_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bandpo_train.run

    warm = tmp_path / "fake_warm"
    warm.mkdir()
    monkeypatch.setattr(study, "ensure_warm_start", lambda *a, **k: warm)

    def boom(config: object) -> None:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(bandpo_train.run, "train", boom)
    out = tmp_path / "study"
    code = study.main(["--quick", "--out", str(out), "--tasks", "rare", "--arms", "ppo,band_kl"])
    assert code == 1
    rows = _rows(out / "results.csv")
    assert [(r["arm"], r["status"]) for r in rows] == [("ppo", "error"), ("band_kl", "error")]
    assert all("simulated failure" in r["error"] for r in rows)
    assert "0 (1 failed)" in (out / "summary.md").read_text(encoding="utf-8")
    assert (out / "reward_rare.png").stat().st_size > 0
    assert (out / "rare" / "ppo" / "seed0" / "error.txt").is_file()


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "study"
    assert study.main(["--quick", "--out", str(out)]) == 0
    expected = {(t, a) for t in STUDY_TASKS for a in ARMS}

    results = _rows(out / "results.csv")
    assert len(results) == len(expected)
    assert {(r["task"], r["arm"]) for r in results} == expected
    assert all(r["status"] == "ok" for r in results)
    for r in results:
        assert 0.0 <= float(r["final_reward"]) <= 1.0
        assert 0.0 <= float(r["eval_pass@1"]) <= float(r["eval_pass@4"]) <= 1.0
        assert float(r["entropy_auc"]) > 0
        assert int(r["steps_to_threshold"]) <= study.QUICK_STEPS
        assert int(r["optimizer_steps"]) == study.QUICK_STEPS * study.UPDATES_PER_ROLLOUT

    summary = _rows(out / "summary.csv")
    assert len(summary) == len(expected)
    assert {(r["task"], r["arm"]) for r in summary} == expected
    assert all(r["n_ok"] == "1" and r["n_failed"] == "0" for r in summary)

    md = (out / "summary.md").read_text(encoding="utf-8")
    for task in STUDY_TASKS:
        section = md.split(f"## {task}\n", 1)[1].split("\n## ", 1)[0]
        lines = [line for line in section.splitlines() if line.startswith("| ")]
        table = [line for line in lines[1:] if not line.startswith("| ---")]
        assert sorted(line.split(" | ")[0].strip("| ") for line in table) == sorted(ARMS)
    assert "delta" in md and '"delta": 0.15' in md and '"delta": 0.05' in md

    for task in STUDY_TASKS:
        for kind in ("reward", "entropy"):
            png = out / f"{kind}_{task}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    settings = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert settings["arms"]["band_tv"]["params"]["delta"] == 0.15
    assert settings["seeds"] == [0] and settings["rl_steps_per_run"] == study.QUICK_STEPS
    assert settings["runs"] == {"ran": 12, "skipped": 0, "error": 0}
    assert set(settings["thresholds"]) == set(STUDY_TASKS)
    # Every arm and seed of a task starts from the one warm start (same first rollout).
    first = {(r["task"], r["reward_first"]) for r in results}
    assert len({t for t, _ in first}) == len(first)

    # Resumable: a second call runs nothing and rewrites the same tables.
    assert study.main(["--quick", "--out", str(out)]) == 0
    again = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert again["runs"] == {"ran": 0, "skipped": 12, "error": 0}
    assert _rows(out / "results.csv") == results
