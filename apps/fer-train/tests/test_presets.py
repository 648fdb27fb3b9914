"""The ``rafdb-paper`` preset is the E2-Capsnet paper's recipe (the official code's training
settings with its defects fixed), and the model it builds is the paper's."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from capsnet_model.augment import AugmentConfig, JointAugment
from capsnet_model.models import E2Capsnet
from capsnet_model.registry import create_model
from fer_train.config import PRESETS, load_app_config

#: The probability of each augmentation in AugmentConfig; the other fields are ranges.
PROBABILITIES = ("flip", "affine", "colour", "blur", "cutout")
RANGES = ("scale", "shift", "rotate")


def test_paper_preset_is_the_papers_recipe() -> None:
    assert "rafdb-paper" in PRESETS.names()
    cfg = load_app_config(None, [], preset="rafdb-paper")
    t = cfg.train_config()
    assert cfg.data.kind == "rafdb" and cfg.data.root.startswith("/path/to/")
    assert t.model == "e2capsnet" and t.image_size == 224
    assert t.model_kwargs == {
        "routing_iterations": 3,
        "attention_placement": "before_pool",  # the official code's placement
        "softmax_over": "output",  # fixed (official: over the primary capsules)
        "length_softmax": False,  # fixed (official: softmax over the lengths)
        "decoder": True,
    }
    # Adam 1e-4, constant: no schedule, no warm-up, no weight decay, PyTorch's betas
    assert t.lr == pytest.approx(1e-4) and t.schedule == "none" and t.warmup_epochs == 0
    assert t.weight_decay == 0 and t.betas == (0.9, 0.999) and t.grad_clip is None
    assert t.batch_size == 16 and t.epochs == 300 and t.patience == 0
    # the margin loss with Sabour's constants, plus 0.0005 x the reconstruction MSE: training
    # sums the squared error over the 3 x 224 x 224 pixels, so the weight carries the 1/N
    assert t.loss == "margin" and (t.m_plus, t.m_minus, t.margin_lambda) == (0.9, 0.1, 0.5)
    assert t.reconstruction_weight * 3 * 224 * 224 == pytest.approx(0.0005, rel=1e-6)
    # fixed: the AU map follows the flip; the model is selected on held-out training images
    assert t.attention == "template" and t.joint_attention
    assert t.val_fraction == pytest.approx(0.1) and t.select_metric == "accuracy"
    assert cfg.output_dir == "runs/fer-train/rafdb-paper"


def test_paper_preset_augments_with_a_horizontal_flip_only() -> None:
    # a new augmentation in AugmentConfig must be looked at here (its default may be on)
    assert {f.name for f in fields(AugmentConfig)} == set(PROBABILITIES + RANGES)
    aug = load_app_config(preset="rafdb-paper").train.augment
    assert aug is not None
    assert aug.flip == 0.5
    assert all(getattr(aug, name) == 0 for name in PROBABILITIES if name != "flip")
    # and the pipeline built from it only ever returns the face or its mirror image
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    attention = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    pipeline = JointAugment(32, aug)
    seen = set()
    for seed in range(24):
        pipeline.pipeline.set_random_seed(seed)
        out, moved = pipeline(image, attention)
        assert moved is not None
        flipped = np.array_equal(out, image[:, ::-1])
        assert flipped or np.array_equal(out, image)
        assert np.array_equal(moved, attention[:, ::-1] if flipped else attention)
        seen.add(flipped)
    assert seen == {True, False}


def test_paper_preset_builds_the_papers_model() -> None:
    t = load_app_config(preset="rafdb-paper").train
    with torch.device("meta"):  # shapes only: nothing of the 172 M parameters is allocated
        model = create_model(t.model, image_size=t.image_size, **t.model_kwargs)
    assert isinstance(model, E2Capsnet)
    assert model.attention_placement == "before_pool" and not model.length_softmax
    assert model.routing.softmax_over == "output" and model.routing.iterations == 3
    assert model.decoder is not None and model.routing.in_caps == 1152
    # the official E2-Capsnet's parameter count with its decoder
    assert sum(p.numel() for p in model.parameters()) == 172_629_568
