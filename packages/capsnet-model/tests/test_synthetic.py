"""The procedural synthetic face set: shapes, determinism, balance, and that the expressions
are learnable from pixels (so it can stand in for a real data set in tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capsnet_model.synthetic import EXPRESSION_NAMES, SyntheticFaces, render_face


def test_faces_are_rgb_uint8_of_the_requested_size() -> None:
    image = render_face(3, np.random.default_rng(0), 48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert image.std() > 10  # not a flat image


def test_same_seed_same_faces_and_order_independent() -> None:
    a, b = SyntheticFaces(14, seed=5), SyntheticFaces(14, seed=5)
    assert np.array_equal(a[7][0], b[7][0]) and a[7][1] == b[7][1]
    _ = b[3]  # reading another item first changes nothing
    assert np.array_equal(a[7][0], b[7][0])
    assert not np.array_equal(a[7][0], SyntheticFaces(14, seed=6)[7][0])


def test_labels_are_balanced_over_the_seven_expressions() -> None:
    counts = np.bincount(SyntheticFaces(70, seed=0).labels, minlength=7)
    assert counts.tolist() == [10] * 7
    assert len(EXPRESSION_NAMES) == 7


def test_bad_label_and_index_are_errors() -> None:
    with pytest.raises(ValueError, match=r"0\.\.6"):
        render_face(7, np.random.default_rng(0))
    with pytest.raises(IndexError):
        SyntheticFaces(3)[3]
    with pytest.raises(ValueError, match="n must be > 0"):
        SyntheticFaces(0)


def test_tensors_match_items() -> None:
    faces = SyntheticFaces(7, seed=1, size=32)
    x, y = faces.tensors()
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(y, torch.tensor(faces.labels))
    assert torch.allclose(x[2], torch.from_numpy(faces[2][0]).permute(2, 0, 1).float() / 255)


def test_expressions_are_learnable_by_a_nearest_centroid_classifier() -> None:
    """Seed 0: 280 training and 140 test faces at 32 px, grayscale, each image standardised.
    A nearest-centroid classifier (no learning of pose or colour invariance) must beat chance
    (1/7 = 0.14): it reaches 0.27 here; the test asks for 0.2. A CNN is expected to do far
    better; that is the models' learning test."""

    def features(ds: SyntheticFaces) -> tuple[np.ndarray, np.ndarray]:
        x, y = ds.tensors()
        g = x.mean(dim=1).flatten(1).numpy()
        g = (g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + 1e-6)
        return g, y.numpy()

    xtr, ytr = features(SyntheticFaces(280, seed=0, size=32))
    xte, yte = features(SyntheticFaces(140, seed=1, size=32))
    centroids = np.stack([xtr[ytr == k].mean(0) for k in range(7)])
    predicted = ((xte[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = float((predicted == yte).mean())
    assert accuracy > 0.2, accuracy
