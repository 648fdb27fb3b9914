"""Model inputs: preprocessing, FaceTensors items (attention maps, seeded augmentation), labels,
stratified splits, augmentation configs and landmark attention maps."""

from __future__ import annotations

import json
import sys
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from capsnet_model.attention import (
    au_centres_from_landmarks,
    landmark_attention_map,
    mean_face_template,
    template_attention_map,
)
from capsnet_model.augment import AugmentConfig
from capsnet_model.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FaceTensors,
    Preprocess,
    augment_config_from_dict,
    dataset_labels,
    stratified_split,
)
from capsnet_model.synthetic import SyntheticFaces

FLIP_ONLY = AugmentConfig(flip=1.0, affine=0.0, colour=0.0, blur=0.0, cutout=0.0)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


class _Images(Dataset[tuple[np.ndarray, int]]):
    """Fixed random images of any (H, W), labels 0, 1, 2, ..."""

    def __init__(self, n: int, h: int = 64, w: int = 64) -> None:
        self.images = [_image(h, w, seed=i) for i in range(n)]
        self.labels = [i % 7 for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], self.labels[index]


class _NoDecode(Dataset[Any]):
    """Exposes labels but refuses to decode images."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Any:
        raise AssertionError("images must not be decoded to read labels")


# --- Preprocess ---------------------------------------------------------------------------


def test_normalise_matches_hand_computation_in_chw() -> None:
    image = _image(8, 8)
    pre = Preprocess(image_size=8)
    x = pre(image)
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8)
    for c in range(3):
        expected = (image[:, :, c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(x[c].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_resize_to_image_size_shrinking_averages_blocks() -> None:
    # 4x4 -> 2x2 by area: each output pixel is the mean of a 2x2 block.
    block = np.array([[10, 20], [30, 40]], np.uint8)
    image = np.stack([np.kron(block + 10 * k, np.ones((2, 2), np.uint8)) for k in range(3)], -1)
    image[0, 0], image[1, 1] = image[0, 0] - 4, image[1, 1] + 4  # same block mean
    pre = Preprocess(image_size=2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = pre(image)
    expected = np.stack([block + 10 * k for k in range(3)]) / 255.0
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(("h", "w"), [(50, 30), (10, 12)])
def test_resize_any_input_to_square(h: int, w: int) -> None:
    image = np.full((h, w, 3), (200, 100, 50), np.uint8)
    x = Preprocess(image_size=16)(image)
    assert x.shape == (3, 16, 16)
    for c, v in enumerate((200, 100, 50)):
        expected = (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(x[c].numpy(), expected, atol=1e-5)


def test_denormalise_inverts_and_clamps() -> None:
    image = _image(16, 16)
    pre = Preprocess(image_size=16)
    back = pre.denormalise(pre(image))
    np.testing.assert_allclose(back.numpy(), image.transpose(2, 0, 1) / 255.0, atol=1e-6)
    batch = pre.denormalise(torch.stack([pre(image), 100 * torch.ones(3, 16, 16)]))
    assert batch.shape == (2, 3, 16, 16)
    assert batch.max() == 1.0 and batch.min() >= 0.0
    assert pre.denormalise(-100 * torch.ones(3, 4, 4)).max() == 0.0


def test_to_dict_from_dict_roundtrip() -> None:
    pre = Preprocess(image_size=48, mean=(0.5, 0.25, 0.125), std=(0.2, 0.3, 0.4))
    data = json.loads(json.dumps(pre.to_dict()))
    assert Preprocess.from_dict(data) == pre
    assert Preprocess.from_dict({}) == Preprocess()
    assert Preprocess.from_dict({"image_size": 32}) == Preprocess(image_size=32)


def test_preprocess_rejects_bad_specs() -> None:
    with pytest.raises(ValueError, match=r"unknown preprocess keys \['scale'\]"):
        Preprocess.from_dict({"image_size": 32, "scale": 2})
    with pytest.raises(ValueError, match="std must be positive"):
        Preprocess(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="3 values"):
        Preprocess(mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="image_size must be positive"):
        Preprocess(image_size=0)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8), np.uint8), r"\(H, W, 3\) uint8 RGB array, got \(8, 8\)"),
        (np.zeros((8, 8, 4), np.uint8), r"got \(8, 8, 4\)"),
        (np.zeros((8, 8, 3), np.float32), "uint8 image, got float32"),
        ([[1, 2, 3]], "got list"),
    ],
)
def test_preprocess_rejects_bad_images(image: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Preprocess(image_size=8)(image)


# --- FaceTensors --------------------------------------------------------------------------


def test_item_shapes_dtypes_and_values() -> None:
    base = SyntheticFaces(3, seed=0, size=64)
    pre = Preprocess(image_size=32)
    data = FaceTensors(base, pre)
    assert len(data) == 3
    for i in range(3):
        x, m, label = data[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert m.shape == (1, 32, 32) and m.dtype == torch.float32
        assert 0.0 <= float(m.min()) and float(m.max()) <= 1.0
        assert type(label) is int and label == base.labels[i]
        torch.testing.assert_close(x, pre(base[i][0]))


def test_template_and_none_attention() -> None:
    base = SyntheticFaces(2, seed=0, size=64)
    _, m, _ = FaceTensors(base, Preprocess(image_size=32))[1]
    np.testing.assert_array_equal(m[0].numpy(), template_attention_map(32))
    _, zeros, _ = FaceTensors(base, Preprocess(image_size=32), attention="none")[1]
    assert zeros.shape == (1, 32, 32) and not zeros.any()


def test_bad_attention_arguments_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("face_alignment", "dlib"):  # no landmark detector installed
        monkeypatch.setitem(sys.modules, module, None)
    base = SyntheticFaces(2, seed=0, size=64)
    with pytest.raises(ValueError, match="landmarks="):
        FaceTensors(base, Preprocess(image_size=32), attention="landmarks")
    with pytest.raises(ValueError, match="'heatmap'"):
        FaceTensors(base, Preprocess(image_size=32), attention="heatmap")


def test_non_uint8_base_image_names_the_item() -> None:
    class Floats(Dataset[Any]):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> Any:
            return np.zeros((8, 8, 3), np.float32), 0

    with pytest.raises(ValueError, match="item 0: expected an uint8 image"):
        FaceTensors(Floats(), Preprocess(image_size=8))[0]


def _centre_x(m: np.ndarray) -> float:
    return float((m.sum(0) * np.arange(m.shape[1])).sum() / m.sum())


def test_landmark_attention_and_template_fallback() -> None:
    size = 64
    base = _Images(4, size, size)
    face = mean_face_template() * np.array([size, size], np.float32)
    landmarks = [face, None, face, None]
    data = FaceTensors(base, Preprocess(image_size=32), attention="landmarks", landmarks=landmarks)
    template = template_attention_map(32)
    maps = [data[i][1][0].numpy() for i in range(4)]
    assert data.fallbacks == 2
    for i in (1, 3):
        np.testing.assert_array_equal(maps[i], template)
    for i in (0, 2):  # the mean face's own landmarks paint (almost) the template map
        assert np.abs(maps[i] - template).max() < 0.1
        assert np.abs(maps[i] - template).mean() < 0.01
        assert not np.array_equal(maps[i], template)  # but it was painted from the landmarks
    # Moved landmarks move the map: 10 px right in the 64 px image is 5 px in the 32 px map.
    moved_face = face + np.array([10.0, 0.0], np.float32)
    shifted = FaceTensors(
        base, Preprocess(image_size=32), attention="landmarks", landmarks=[moved_face] * 4
    )
    moved = shifted[0][1][0].numpy()
    assert data.fallbacks == 2 and shifted.fallbacks == 0
    assert _centre_x(moved) - _centre_x(maps[0]) == pytest.approx(5.0, abs=1.0)


def test_landmark_callable_gets_the_base_image() -> None:
    base = _Images(2, 48, 40)
    seen: list[tuple[int, tuple[int, ...]]] = []

    def detect(index: int, image: np.ndarray) -> np.ndarray | None:
        seen.append((index, image.shape))
        return None if index == 1 else mean_face_template() * np.array([40, 48], np.float32)

    data = FaceTensors(base, Preprocess(image_size=24), attention="landmarks", landmarks=detect)
    assert data[0][1].shape == (1, 24, 24)
    np.testing.assert_array_equal(data[1][1][0].numpy(), template_attention_map(24))
    assert seen == [(0, (48, 40, 3)), (1, (48, 40, 3))]
    assert data.fallbacks == 1


def _read(data: FaceTensors, order: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for i in order:
        x, m, _ = data[i]
        out[i] = (x, m)
        np.random.seed(1000 + i)  # noqa: NPY002  (global state must not matter)
        torch.manual_seed(1000 + i)
    return out


def test_augmentation_is_seeded_by_seed_epoch_index() -> None:
    base = SyntheticFaces(4, seed=0, size=64)
    config = AugmentConfig(flip=0.5, affine=1.0, colour=1.0, blur=0.5, cutout=0.5)

    def make(seed: int = 0) -> FaceTensors:
        return FaceTensors(base, Preprocess(image_size=32), augment=config, seed=seed)

    forward = _read(make(), [0, 1, 2, 3])
    backward = _read(make(), [3, 2, 1, 0, 2])
    for i in range(4):
        torch.testing.assert_close(forward[i], backward[i], rtol=0, atol=0)

    later = make()
    later.set_epoch(1)
    epoch1 = _read(later, [0, 1, 2, 3])
    other_seed = _read(make(seed=1), [0, 1, 2, 3])
    plain = FaceTensors(base, Preprocess(image_size=32))
    for i in range(4):
        assert not torch.equal(forward[i][0], epoch1[i][0])
        assert not torch.equal(forward[i][0], other_seed[i][0])
        assert not torch.equal(forward[i][0], plain[i][0])
    later.set_epoch(0)
    torch.testing.assert_close(_read(later, [2])[2], forward[2], rtol=0, atol=0)


@pytest.mark.parametrize("joint", [True, False])
def test_flip_moves_the_map_only_with_joint_attention(joint: bool) -> None:
    size = 32
    base = _Images(2, size, size)
    face = mean_face_template() * size + np.array([-6.0, 0.0], np.float32)  # off-centre face
    kwargs: dict[str, Any] = {"attention": "landmarks", "landmarks": [face, face]}
    plain = FaceTensors(base, Preprocess(image_size=size), **kwargs)
    flipped = FaceTensors(
        base, Preprocess(image_size=size), augment=FLIP_ONLY, joint_attention=joint, **kwargs
    )
    x0, m0, y0 = plain[0]
    x1, m1, y1 = flipped[0]
    assert y0 == y1
    assert not np.allclose(m0.numpy(), np.flip(m0.numpy(), -1), atol=0.05)  # asymmetric map
    np.testing.assert_allclose(x1.numpy(), np.flip(x0.numpy(), -1), atol=1e-6)
    expected = np.flip(m0.numpy(), -1) if joint else m0.numpy()
    np.testing.assert_allclose(m1.numpy(), expected, atol=1e-6)


def test_flip_without_joint_attention_keeps_the_template() -> None:
    base = _Images(1, 32, 32)
    data = FaceTensors(base, Preprocess(image_size=32), augment=FLIP_ONLY, joint_attention=False)
    x, m, _ = data[0]
    np.testing.assert_array_equal(m[0].numpy(), template_attention_map(32))
    expected = Preprocess(image_size=32)(np.ascontiguousarray(base.images[0][:, ::-1]))
    torch.testing.assert_close(x, expected)


def test_returned_attention_does_not_alias_the_template() -> None:
    data = FaceTensors(_Images(2, 32, 32), Preprocess(image_size=32))
    data[0][1].fill_(0.5)  # a caller editing its item in place ...
    np.testing.assert_array_equal(data[1][1][0].numpy(), template_attention_map(32))


# --- dataset_labels -----------------------------------------------------------------------


def test_dataset_labels_without_decoding() -> None:
    faces = SyntheticFaces(9, seed=3, size=32)
    assert dataset_labels(faces) == list(faces.labels)
    labels = [3, 1, 4, 1, 5, 2, 6]
    opaque = _NoDecode(labels)
    assert dataset_labels(opaque) == labels
    assert dataset_labels(Subset(opaque, [4, 0, 2])) == [5, 3, 4]
    assert dataset_labels(Subset(Subset(opaque, [6, 5, 4]), [2, 0])) == [5, 6]
    assert dataset_labels(FaceTensors(opaque, Preprocess(image_size=8))) == labels
    wrapped = FaceTensors(Subset(opaque, [1, 6]), Preprocess(image_size=8))
    assert dataset_labels(wrapped) == [1, 6]
    assert dataset_labels(Subset(wrapped, [1])) == [6]


def test_dataset_labels_falls_back_to_reading_items() -> None:
    items = [(np.zeros((4, 4, 3), np.uint8), k) for k in (2, 0, 5)]
    assert dataset_labels(items) == [2, 0, 5]


# --- stratified_split ---------------------------------------------------------------------


def test_stratified_split_properties() -> None:
    labels = [0] * 20 + [1] * 10 + [2] * 3 + [3] * 2 + [4] * 1
    rng = np.random.default_rng(5)
    labels = [int(v) for v in rng.permutation(labels)]
    train, val = stratified_split(labels, 0.3, seed=0)
    assert train == sorted(train) and val == sorted(val)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(labels)))
    val_counts = {k: sum(labels[i] == k for i in val) for k in range(5)}
    # round(n * 0.3) per class, at least one on each side for classes with >= 2 samples
    assert val_counts == {0: 6, 1: 3, 2: 1, 3: 1, 4: 0}
    for k in range(4):
        assert any(labels[i] == k for i in train)


def test_stratified_split_tiny_classes_keep_both_sides() -> None:
    labels = [0, 0, 1, 1, 1]
    for fraction in (0.01, 0.99):
        train, val = stratified_split(labels, fraction, seed=0)
        for k in (0, 1):
            assert any(labels[i] == k for i in train) and any(labels[i] == k for i in val)


def test_stratified_split_seeding() -> None:
    labels = [k % 3 for k in range(60)]
    a = stratified_split(labels, 0.25, seed=7)
    assert a == stratified_split(labels, 0.25, seed=7)
    assert a != stratified_split(labels, 0.25, seed=8)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_stratified_split_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        stratified_split([0, 0, 1, 1], fraction)


def test_stratified_split_without_validation_samples_raises() -> None:
    with pytest.raises(ValueError, match="leaves no validation set"):
        stratified_split([0, 1, 2], 0.5)


# --- augment_config_from_dict -------------------------------------------------------------


def test_augment_config_from_dict() -> None:
    assert augment_config_from_dict(None) is None
    assert augment_config_from_dict({}) == AugmentConfig()
    config = augment_config_from_dict({"flip": 0.2, "scale": [0.8, 1.2]})
    assert config == AugmentConfig(flip=0.2, scale=(0.8, 1.2))
    assert config is not None and isinstance(config.scale, tuple)
    with pytest.raises(ValueError, match=r"^flipp: unknown key .*did you mean 'flip'.*valid keys"):
        augment_config_from_dict({"flipp": 0.5})
    with pytest.raises(ValueError, match=r"^flip: expected float, got '0\.5' \(str\)"):
        augment_config_from_dict({"flip": "0.5"})


# --- landmark_attention_map ---------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(48, 80), (90, 60), (64, 64)])
def test_landmark_map_shape_range_and_peaks(h: int, w: int) -> None:
    landmarks = mean_face_template() * np.array([w, h], np.float32)
    m = landmark_attention_map(landmarks, (h, w))
    assert m.shape == (h, w) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    for x, y in au_centres_from_landmarks(landmarks):
        assert m[round(float(y)), round(float(x))] > 0.7
    assert m[0, 0] == 0.0 and m[0, -1] == 0.0  # image corners are far from every AU centre


def test_landmark_map_int_size_and_peak_moves_with_the_face() -> None:
    landmarks = mean_face_template() * 64
    # A single-centre check: the brightest pixel is an AU centre.
    m = landmark_attention_map(landmarks, 64)
    assert m.shape == (64, 64)
    peak = np.unravel_index(np.argmax(m), m.shape)
    centres = au_centres_from_landmarks(landmarks)
    dist = np.abs(centres[:, 1] - peak[0]) + np.abs(centres[:, 0] - peak[1])
    assert dist.min() <= 1.5
    moved = landmark_attention_map(landmarks + np.array([0.0, 8.0], np.float32), 64)
    np.testing.assert_allclose(moved[20:56], m[12:48], atol=0.1)


def test_landmark_map_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        landmark_attention_map(np.zeros((67, 2), np.float32), 64)
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        landmark_attention_map(np.zeros((68, 3), np.float32), 64)
    with pytest.raises(ValueError, match="image_size must be positive"):
        landmark_attention_map(mean_face_template(), (0, 10))


def test_landmark_map_is_resized_like_the_image() -> None:
    # FaceTensors paints the map at the W x H image's resolution, then squashes it to S x S.
    base = _Images(1, 40, 56)
    face = mean_face_template() * np.array([56, 40], np.float32)
    data = FaceTensors(base, Preprocess(image_size=20), attention="landmarks", landmarks=[face])
    painted = landmark_attention_map(face, (40, 56))
    expected = cv2.resize(painted, (20, 20), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(data[0][1][0].numpy(), expected, atol=1e-6)
