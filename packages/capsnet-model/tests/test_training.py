"""The training entry point: files it writes, resume, early stopping, losses, a learning test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from capsnet_model.checkpoint import load_model, read_info
from capsnet_model.evaluation import read_confusion_csv
from capsnet_model.synthetic import SyntheticFaces
from capsnet_model.training import TrainConfig, train

TINY: dict[str, Any] = {"width": 1 / 16, "primary_channels": 4}


def tiny_config(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "model": "e2capsnet",
        "model_kwargs": dict(TINY),
        "image_size": 64,
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "max_batches_per_epoch": 3,
        "progress": False,
    }
    base.update(kw)
    return TrainConfig.from_dict(base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_run_directory_contents(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(
        tiny_config(), SyntheticFaces(70), test_set=SyntheticFaces(21, seed=5), output_dir=out
    )
    for name in (
        "config.json",
        "metrics.jsonl",
        "best.safetensors",
        "result.json",
        "split.json",
        "val_metrics.json",
        "test_metrics.json",
        "test_confusion.csv",
        "test_confusion.png",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints" / "last").iterdir()) == [
        "model.safetensors",
        "state.json",
        "training_state.pt",
    ]
    assert not list(out.rglob("*.tmp")) and not (out / "checkpoints" / "last.old").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "val_mean_class_accuracy",
            "lr",
            "train_images_per_s",
        } <= set(r)
        assert r["train_images"] == 3 * 8  # max_batches_per_epoch * batch_size
    split = json.loads((out / "split.json").read_text())
    assert split == {"val_from": "train", "train": 63, "val": 7}  # 10 % of 70, stratified
    assert result.test is not None and result.test.num_samples == 21
    conf, labels = read_confusion_csv(out / "test_confusion.csv")
    assert conf.sum() == 21 and labels[0] == "neutral"
    summary = json.loads((out / "result.json").read_text())
    assert summary["test_accuracy"] == pytest.approx(result.test.accuracy)
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "reached 2 epochs"
    info = read_info(out / "best.safetensors")
    assert info.name == "e2capsnet" and info.preprocess.image_size == 64
    # the attention placement is recorded although the config leaves it at its default
    assert info.kwargs == {**TINY, "image_size": 64, "attention_placement": "before_pool"}
    assert info.extra["dataset"] == "synthetic"  # the training set's name, for fer.dataset


def test_best_checkpoint_reproduces_the_reported_test_accuracy(tmp_path: Path) -> None:
    test_set = SyntheticFaces(28, seed=9)
    result = train(tiny_config(), SyntheticFaces(56), test_set=test_set, output_dir=tmp_path / "r")
    model, info = load_model(tmp_path / "r" / "best.safetensors")
    from capsnet_model.data import FaceTensors
    from capsnet_model.evaluation import evaluate

    again = evaluate(model, FaceTensors(test_set, info.preprocess), batch_size=5)
    assert result.test is not None
    np.testing.assert_array_equal(again.confusion, result.test.confusion)


class Crashing(Dataset[Any]):
    """Wraps a data set and raises after ``limit`` reads: a run killed mid-epoch."""

    def __init__(self, base: SyntheticFaces, limit: int) -> None:
        self.base, self.limit, self.reads = base, limit, 0
        self.labels = base.labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        if self.reads > self.limit:
            raise RuntimeError("simulated crash")
        return self.base[index]


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=4, max_batches_per_epoch=2, val_fraction=0.2)
    data = SyntheticFaces(40)
    straight = train(cfg, data, output_dir=tmp_path / "a")
    # Epoch = 16 training reads + 8 validation reads; crash during epoch 3.
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, Crashing(data, limit=2 * 24 + 5), output_dir=tmp_path / "b")
    state = json.loads((tmp_path / "b" / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 2
    resumed = train(cfg, data, output_dir=tmp_path / "b", resume=True)
    assert resumed.epochs_run == straight.epochs_run == 4
    wa, wb = (
        weights(tmp_path / "a" / "best.safetensors"),
        weights(tmp_path / "b" / "best.safetensors"),
    )
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)
    rows_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(rows_b) == 4
    for ra, rb in zip(rows_a, rows_b, strict=True):
        a, b = json.loads(ra), json.loads(rb)
        for k in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert a[k] == b[k], k


def test_resume_of_a_finished_run_trains_no_more(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1)
    train(cfg, SyntheticFaces(35), output_dir=tmp_path)
    before = (tmp_path / "best.safetensors").read_bytes()
    again = train(cfg, SyntheticFaces(35), output_dir=tmp_path, resume=True)
    assert again.epochs_run == 1
    assert (tmp_path / "best.safetensors").read_bytes() == before
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_existing_run_needs_resume_and_a_matching_config(tmp_path: Path) -> None:
    train(tiny_config(epochs=1), SyntheticFaces(35), output_dir=tmp_path)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(tiny_config(epochs=1), SyntheticFaces(35), output_dir=tmp_path)
    changed = tiny_config(epochs=2, model_kwargs={**TINY, "routing_iterations": 2})
    with pytest.raises(ValueError, match="model_kwargs"):
        train(changed, SyntheticFaces(35), output_dir=tmp_path, resume=True)


def test_early_stopping_and_model_selection(tmp_path: Path) -> None:
    # A learning rate this small cannot change the validation accuracy: epoch 1 stays best.
    cfg = tiny_config(epochs=10, lr=1e-12, patience=2, schedule="none")
    result = train(cfg, SyntheticFaces(35), output_dir=tmp_path)
    assert result.epochs_run == 3 and result.best_epoch == 1
    assert result.stop_reason.startswith("early stop")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["best"] for r in rows] == [True, False, False]


def test_without_validation_the_last_epoch_is_kept(tmp_path: Path) -> None:
    result = train(tiny_config(val_fraction=0.0), SyntheticFaces(35), output_dir=tmp_path)
    assert result.best_epoch == 2 and result.val is None
    assert not (tmp_path / "val_metrics.json").exists()
    last = weights(tmp_path / "checkpoints" / "last" / "model.safetensors")
    best = weights(tmp_path / "best.safetensors")
    for key in last:
        assert torch.equal(last[key], best[key])


def test_explicit_validation_set_is_used_whole(tmp_path: Path) -> None:
    result = train(
        tiny_config(epochs=1),
        SyntheticFaces(35),
        val_set=SyntheticFaces(14, seed=3),
        output_dir=tmp_path,
    )
    assert result.val is not None and result.val.num_samples == 14
    assert json.loads((tmp_path / "split.json").read_text())["val_from"] == "val_set"


@pytest.mark.parametrize(
    ("model", "kwargs", "size"),
    [
        ("vgg16_bn", {"width": 1 / 16, "hidden": 16}, 32),
        ("e2capsnet", {**TINY, "decoder": True, "decoder_hidden": [16]}, 64),
        ("capsnet", {"conv_channels": 16, "primary_caps": 4}, 28),
    ],
)
def test_other_models_and_losses_train(
    tmp_path: Path, model: str, kwargs: dict[str, Any], size: int
) -> None:
    cfg = tiny_config(model=model, model_kwargs=kwargs, image_size=size, epochs=1)
    result = train(cfg, SyntheticFaces(35, size=size), output_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(rows[0]["train_loss"]) and rows[0]["train_loss"] > 0
    assert result.val is not None
    assert read_info(tmp_path / "best.safetensors").attention == (
        "none" if model in ("vgg16_bn", "capsnet") else "template"
    )


def test_reconstruction_term_adds_to_the_loss(tmp_path: Path) -> None:
    base = {**TINY, "decoder": True, "decoder_hidden": [16]}
    losses = []
    for weight in (0.0, 0.05):
        cfg = tiny_config(
            model_kwargs=base,
            epochs=1,
            max_batches_per_epoch=1,
            reconstruction_weight=weight,
            augment=None,
        )
        train(cfg, SyntheticFaces(35), output_dir=tmp_path / str(weight))
        row = json.loads((tmp_path / str(weight) / "metrics.jsonl").read_text())
        losses.append(row["train_loss"])
    # Summed squared error over 3x64x64 pixels of a sigmoid output: far above 0.05 * 1.
    assert losses[1] > losses[0] + 0.05


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^schedule: expected one of 'cosine', 'step', 'none'"):
        tiny_config(schedule="linear")
    with pytest.raises(ValueError, match=r"^epoch: unknown key .*did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match=r"^val_fraction: must be in \[0, 1\), got 1\.0"):
        tiny_config(val_fraction=1.0)
    with pytest.raises(ValueError, match="^augment.mixup: unknown key for AugmentConfig"):
        tiny_config(augment={"flip": 0.5, "mixup": 0.2})

    class BadLabels(Dataset[Any]):
        labels = (0, 1, 9)

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> Any:
            return np.zeros((64, 64, 3), np.uint8), self.labels[i]

    with pytest.raises(ValueError, match="training label 9"):
        train(tiny_config(), BadLabels(), output_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_lr_schedule_warmup_and_cosine(tmp_path: Path) -> None:
    cfg = tiny_config(
        epochs=4, warmup_epochs=1, max_batches_per_epoch=2, min_lr_ratio=0.1, val_fraction=0.0
    )
    train(cfg, SyntheticFaces(35), output_dir=tmp_path)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # After each epoch (2 steps): end of warm-up = peak, then cosine down to 0.1 * lr.
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3]
    assert lrs[3] == pytest.approx(1e-4)


@pytest.mark.slow
def test_small_e2capsnet_learns_the_synthetic_faces(tmp_path: Path) -> None:
    """Learning test. Seed 0; budget: 2100 synthetic 64 px faces (10 % held out for
    validation), 8 epochs of batch 32 with Adam 1e-3 and light augmentation, about 80 s on
    2 CPU cores. Threshold: test accuracy >= 0.90 on 350 unseen faces (chance: 0.14; the
    reference run reached 0.994)."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    cfg = TrainConfig(
        model="e2capsnet_small",
        epochs=8,
        batch_size=32,
        lr=1e-3,
        patience=0,
        seed=0,
        augment=TrainConfig.from_dict(
            {"augment": {"colour": 0.3, "cutout": 0.0, "blur": 0.0}}
        ).augment,
        progress=False,
    )
    result = train(
        cfg, SyntheticFaces(2100, seed=0), test_set=SyntheticFaces(350, seed=1), output_dir=tmp_path
    )
    assert result.test is not None
    print(f"learning test: {result.test.summary()}, best epoch {result.best_epoch}")
    assert result.test.accuracy >= 0.90, result.test.summary()
    assert result.test.mean_class_accuracy >= 0.90


DDP_SCRIPT = """
import hashlib, json, sys, time
import torch.distributed as dist
from capsnet_model.synthetic import SyntheticFaces
from capsnet_model.training import TrainConfig, train
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
out = sys.argv[2]
result = train(cfg, SyntheticFaces(40), test_set=SyntheticFaces(21, seed=5), output_dir=out)
digest = hashlib.sha256()
for value in result.model.state_dict().values():
    digest.update(value.cpu().numpy().tobytes())
summary = {"test_samples": result.test.num_samples, "test_accuracy": result.test.accuracy,
           "val_accuracy": result.val.accuracy, "weights": digest.hexdigest()}
with open(f"{out}/rank{dist.get_rank()}.json", "w") as handle:
    json.dump(summary, handle)
dist.destroy_process_group()
# DDP keeps gloo's threads alive past the destroy; give them the GIL to release their last
# tensors before the interpreter shuts down, or a process can abort after a good run.
time.sleep(0.2)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_data_parallel_training(tmp_path: Path) -> None:
    """Two gloo ranks launched the way torchrun / accelerate launch do (environment variables):
    each trains on its shard, rank 0 writes, evaluation counts are summed over ranks."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    cfg = {**tiny_config().to_dict(), "epochs": 1, "max_batches_per_epoch": None}
    env_base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(cfg), str(out)],
            env={**env_base, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    # 33 training images (40 minus one per class held out), padded to 34 = 2 x 17; batches
    # of 8 per rank: 8, 8 and a batch of one, which is dropped (BatchNorm) -> 2 x 16.
    assert rows[0]["train_images"] == 32
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # same weights, same summed metrics on both ranks
    assert ranks[0]["test_samples"] == 21  # every test image counted once over the shards
    # The selected model, evaluated in one process, gives the accuracy the ranks reported.
    from capsnet_model.data import FaceTensors
    from capsnet_model.evaluation import evaluate

    model, info = load_model(out / "best.safetensors")
    single = evaluate(model, FaceTensors(SyntheticFaces(21, seed=5), info.preprocess))
    assert single.accuracy == pytest.approx(ranks[0]["test_accuracy"])
