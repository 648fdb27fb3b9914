"""The run directory and the resume state (no training: the files are written by hand), and
the pure selection / early-stopping steps of ``train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsnet_model.run_dir import ResumeStateError, RunDirectory, TrainState
from capsnet_model.training import TrainConfig, _select, _stop_reason

# state.json as the string-keyed dict of earlier versions wrote it
OLD_STATE = {
    "epoch": 3,
    "best_epoch": 2,
    "best_metric": 0.875,
    "bad_epochs": 1,
    "stop_reason": "",
    "config": {"model": "e2capsnet_small", "seed": 0},
}


def test_an_old_state_file_reads_and_writes_back_unchanged(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.last.mkdir(parents=True)
    text = json.dumps(OLD_STATE, indent=2) + "\n"
    (run.last / "state.json").write_text(text)
    state = run.read_state()
    assert state == TrainState(3, 2, 0.875, 1, "", {"model": "e2capsnet_small", "seed": 0})
    assert json.dumps(state.to_dict(), indent=2) + "\n" == text
    assert run.can_resume()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epoch": None}, "missing 'epoch'"),
        ({"best_metric": "high"}, "best_metric must be int or float or null, got 'high'"),
        ({"bad_epochs": True}, "bad_epochs must be int, got True"),
    ],
)
def test_a_bad_state_file_names_the_file_and_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    data = {**OLD_STATE, **change}
    data = {k: v for k, v in data.items() if v is not None}
    run = RunDirectory(tmp_path)
    run.last.mkdir(parents=True)
    (run.last / "state.json").write_text(json.dumps(data))
    with pytest.raises(ResumeStateError, match=f"state.json: {message}"):
        run.read_state()


def test_a_kill_between_the_checkpoint_renames_is_recovered(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    old = run.checkpoints / "last.old"
    old.mkdir(parents=True)
    (old / "state.json").write_text(json.dumps(OLD_STATE))
    assert not run.can_resume()
    run.recover()
    assert run.can_resume() and not old.exists()
    assert run.read_state().epoch == 3
    # with a last checkpoint present, a stray last.old is left alone
    old.mkdir()
    (old / "state.json").write_text(json.dumps({**OLD_STATE, "epoch": 1}))
    run.recover()
    assert run.read_state().epoch == 3


def test_metrics_history_is_cut_at_the_checkpoint_epoch(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.start({"model": "x"}, [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}], None)
    assert not run.split.exists()
    assert [r["epoch"] for r in run.read_history(2)] == [1, 2]
    assert json.loads(run.config.read_text()) == {"model": "x"}


def test_selection_and_early_stopping() -> None:
    state = TrainState()
    assert _select(state, 1, 0.5) and state.best_metric == 0.5
    assert not _select(state, 2, 0.5) and state.bad_epochs == 1  # equal is no improvement
    assert _select(state, 3, 0.6) and (state.best_epoch, state.bad_epochs) == (3, 0)
    assert _select(TrainState(), 1, None)  # no validation: every epoch is the latest best
    cfg = TrainConfig(epochs=5, patience=2)
    assert _stop_reason(cfg, TrainState(epoch=3, bad_epochs=1), True) == ""
    reason = _stop_reason(cfg, TrainState(epoch=3, bad_epochs=2), True)
    assert reason == "early stop: no improvement for 2 epochs"
    assert _stop_reason(cfg, TrainState(epoch=3, bad_epochs=2), False) == ""  # needs validation
    assert _stop_reason(cfg, TrainState(epoch=5), True) == "reached 5 epochs"


def test_metrics_write_non_finite_values_as_null(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.write_metrics([{"epoch": 1, "train_loss": float("nan"), "val": {"acc": float("inf")}}])
    line = (tmp_path / "run" / "metrics.jsonl").read_text().strip()
    assert line == '{"epoch": 1, "train_loss": null, "val": {"acc": null}}'
    assert json.loads(line)["train_loss"] is None
