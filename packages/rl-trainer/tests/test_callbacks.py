"""The one training loop and its callbacks: hook order and arguments, early stop (between and
inside RL steps), control flags, trackers through accelerate, and the evaluation module's
independence from the trainer."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DIGITS_REWARD, tiny_config

import rl_trainer.evaluation as evaluation_module
from rl_trainer.callbacks import (
    MetricsFileCallback,
    ProgressCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from rl_trainer.collectives import reduce_scalars
from rl_trainer.trainer import GRPOTrainer


class Recorder(TrainerCallback):
    """Records every hook call as (event, step, update, metric keys or value)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_begin(self, trainer, state, control) -> None:
        self.events.append(("train_begin", state.step))

    def on_rollout_end(self, trainer, state, control, metrics) -> None:
        self.events.append(("rollout_end", state.step, "reward/total" in metrics))

    def on_step_end(self, trainer, state, control, metrics) -> None:
        self.events.append(("step_end", state.step, state.update, "loss" in metrics))

    def on_rl_step_end(self, trainer, state, control, metrics, updates) -> None:
        self.events.append(("rl_step_end", state.step, len(updates), "tokens_per_s" in metrics))

    def on_evaluate(self, trainer, state, control, metrics) -> None:
        self.events.append(("evaluate", state.step, "eval/pass@1" in metrics))

    def on_log(self, trainer, state, control, metrics) -> None:
        self.events.append(("log", state.step, "final" in metrics))

    def on_save(self, trainer, state, control, checkpoint) -> None:
        self.events.append(("save", state.step, Path(checkpoint).name))

    def on_train_end(self, trainer, state, control, metrics) -> None:
        self.events.append(("train_end", state.step))


def make(tmp_path, model, data, callbacks=(), **overrides) -> GRPOTrainer:
    config = tiny_config(model, data, tmp_path / "out", **overrides)
    return GRPOTrainer(config, reward_functions=DIGITS_REWARD, callbacks=callbacks)


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_hooks_run_in_order_with_their_metrics(tmp_path, tiny_model_dir, digit_data) -> None:
    recorder = Recorder()
    trainer = make(
        tmp_path,
        tiny_model_dir,
        digit_data,
        callbacks=[recorder],
        **{
            "optim.steps": 2,
            "algorithm.mini_batches": 2,
            "checkpoint.save_every": 2,
            "data.eval_path": str(digit_data),
            "eval.max_prompts": 2,
            "eval.k": 2,
        },
    )
    trainer.train()
    assert recorder.events == [
        ("train_begin", 0),
        ("rollout_end", 0, True),
        ("step_end", 0, 1, True),
        ("step_end", 0, 2, True),
        ("rl_step_end", 1, 2, True),
        ("log", 1, False),
        ("rollout_end", 1, True),
        ("step_end", 1, 1, True),
        ("step_end", 1, 2, True),
        ("rl_step_end", 2, 2, True),
        ("log", 2, False),
        ("save", 2, "step-000002"),
        ("evaluate", 2, True),  # the final evaluation, logged with "final"
        ("log", 2, True),
        ("train_end", 2),
    ]
    assert [type(c) for c in trainer.callbacks] == [MetricsFileCallback, ProgressCallback, Recorder]


class StopAboveReward(TrainerCallback):
    """The README's example: stop once the rollout reward exceeds a threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def on_rl_step_end(self, trainer, state, control, metrics, updates) -> None:
        if metrics["reward/total"] > self.threshold:
            control.should_training_stop = True


def test_a_callback_stops_training_early(tmp_path, tiny_model_dir, digit_data) -> None:
    trainer = make(tmp_path, tiny_model_dir, digit_data, **{"optim.steps": 5})
    trainer.add_callback(StopAboveReward(-1.0))  # any reward exceeds it: stop after step 1
    metrics = trainer.train()
    out = tmp_path / "out"
    assert trainer.step == 1 and "reward/total" in metrics
    assert [r["step"] for r in records(out)] == [1]  # the stopping step is still logged
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000001"]
    assert (out / "final" / "model.safetensors").is_file()


def test_a_stop_inside_an_rl_step_ends_its_updates(tmp_path, tiny_model_dir, digit_data) -> None:
    class StopAfterFirstUpdate(TrainerCallback):
        def on_step_end(self, trainer, state, control, metrics) -> None:
            control.should_training_stop = True

    trainer = make(
        tmp_path,
        tiny_model_dir,
        digit_data,
        callbacks=[StopAfterFirstUpdate],  # a class is instantiated
        **{"optim.steps": 3, "algorithm.mini_batches": 2, "algorithm.ppo_epochs": 2},
    )
    before = trainer.scheduler.last_epoch
    trainer.train()
    assert trainer.step == 1 and len(trainer.last_updates) == 1
    assert trainer.scheduler.last_epoch == before + 1


def test_control_flags_from_a_callback_save_and_evaluate(
    tmp_path, tiny_model_dir, digit_data
) -> None:
    class EveryStep(TrainerCallback):
        def on_rl_step_end(self, trainer, state, control, metrics, updates) -> None:
            control.should_save = control.should_evaluate = True

    recorder = Recorder()
    trainer = make(
        tmp_path,
        tiny_model_dir,
        digit_data,
        callbacks=[EveryStep(), recorder],
        **{
            "optim.steps": 2,
            "checkpoint.keep_last": 0,
            "data.eval_path": str(digit_data),
            "eval.max_prompts": 2,
            "eval.k": 2,
        },
    )
    trainer.remove_callback(MetricsFileCallback)
    trainer.train()
    saves = [e for e in recorder.events if e[0] == "save"]
    evaluations = [e for e in recorder.events if e[0] == "evaluate"]
    assert saves == [("save", 1, "step-000001"), ("save", 2, "step-000002")]
    assert [e[1] for e in evaluations] == [1, 2]  # no second evaluation at the end
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # its writer was removed


def test_callbacks_are_checked_and_popped(tmp_path, tiny_model_dir, digit_data) -> None:
    trainer = make(tmp_path, tiny_model_dir, digit_data)
    with pytest.raises(TypeError, match="must be a TrainerCallback"):
        trainer.add_callback(object())  # type: ignore[arg-type]
    popped = trainer.pop_callback(ProgressCallback)
    assert isinstance(popped, ProgressCallback)
    assert trainer.pop_callback(ProgressCallback) is None
    assert isinstance(trainer.state, TrainerState) and isinstance(trainer.control, TrainerControl)


def test_reduce_scalars_keeps_names_on_one_process() -> None:
    assert reduce_scalars({"b": 2, "a": 1.5}) == {"b": 2.0, "a": 1.5}
    assert list(reduce_scalars({"b": 2, "a": 1.5}, op="max")) == ["b", "a"]
    with pytest.raises(ValueError, match="unknown op 'median'; valid: sum, mean, max, min"):
        reduce_scalars({"a": 1.0}, op="median")  # type: ignore[arg-type]


def test_trackers_from_the_config_reach_the_accelerator(
    tmp_path, tiny_model_dir, digit_data, monkeypatch
) -> None:
    import rl_trainer.components as components

    seen = {}
    real = components.Accelerator

    def capture(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(components, "Accelerator", capture)
    make(tmp_path, tiny_model_dir, digit_data, **{"logging.log_with": ["tensorboard", "wandb"]})
    assert seen["log_with"] == ["tensorboard", "wandb"]
    assert seen["project_dir"] == str(tmp_path / "out")
    make(tmp_path, tiny_model_dir, digit_data)  # conftest: logging.tensorboard=false
    assert seen["log_with"] is None


def test_metrics_go_to_an_accelerate_tracker(tmp_path, tiny_model_dir, digit_data) -> None:
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class ListTracker(GeneralTracker):
        name = "list"
        requires_logging_directory = False

        def __init__(self) -> None:
            super().__init__()
            self.logged: list[tuple[int | None, dict]] = []
            self.config: dict = {}
            self.finished = False

        @property
        def tracker(self):
            return self.logged

        def store_init_configuration(self, values: dict) -> None:
            self.config = values

        def log(self, values: dict, step: int | None = None, **kwargs) -> None:
            self.logged.append((step, values))

        def finish(self) -> None:
            self.finished = True

    tracker = ListTracker()
    config = tiny_config(tiny_model_dir, digit_data, tmp_path / "out", **{"optim.steps": 2})
    # 2 prompts x 4 samples, 2 mini-batches of 4, micro-batches of 4: 1 accumulation step.
    acc = Accelerator(cpu=True, log_with=[tracker], gradient_accumulation_steps=1)
    trainer = GRPOTrainer(config, reward_functions=DIGITS_REWARD, accelerator=acc)
    trainer.train()
    assert [step for step, _ in tracker.logged] == [1, 2]
    assert "reward/total" in tracker.logged[0][1] and "loss" in tracker.logged[1][1]
    assert tracker.config["optim.steps"] == 2 and tracker.config["model.path"]
    assert tracker.finished and acc.trackers == []


def test_evaluation_does_not_import_the_trainer() -> None:
    code = "import sys\nimport rl_trainer.evaluation\nprint('rl_trainer.trainer' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "False", out.stdout + out.stderr
    # Nor lazily, inside a function: the module's text never names it.
    assert "rl_trainer.trainer" not in inspect.getsource(evaluation_module)
