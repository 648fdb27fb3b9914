"""AU attention maps."""

from __future__ import annotations

import numpy as np
import pytest

from capsnet_model.attention import (
    NUM_AU_CENTRES,
    au_attention_map,
    au_centres_from_landmarks,
    mean_face_template,
    template_attention_map,
)


def test_single_centre_peak_and_diamond_falloff() -> None:
    m = au_attention_map(np.array([[40.0, 30.0]]), size=100)
    assert m.shape == (100, 100)
    assert m.dtype == np.float32
    assert m[30, 40] == pytest.approx(1.0)
    # dx = 3, dy = 4 -> 1 - 0.07 * 7 = 0.51
    assert m[34, 43] == pytest.approx(0.51, abs=1e-6)
    assert m[26, 37] == pytest.approx(0.51, abs=1e-6)
    # 14 px away (|dx| + |dy|): 0.02; 15 px and beyond: zero.
    assert m[30, 54] == pytest.approx(0.02, abs=1e-6)
    assert m[30, 55] == 0.0
    assert m[45, 40] == 0.0
    assert m[0, 0] == 0.0
    assert m.max() == pytest.approx(1.0)


def test_overlapping_centres_combined_by_max() -> None:
    m = au_attention_map(np.array([[10.0, 10.0], [14.0, 10.0]]), size=30)
    assert m[10, 12] == pytest.approx(1 - 0.07 * 2)
    assert m.max() <= 1.0


def test_map_range_and_peaks_at_centres() -> None:
    centres = au_centres_from_landmarks(mean_face_template() * 100)
    assert centres.shape == (NUM_AU_CENTRES, 2)
    m = au_attention_map(np.round(centres), size=100)
    assert m.min() >= 0.0 and m.max() <= 1.0
    for x, y in np.round(centres).astype(int):
        assert m[y, x] == pytest.approx(1.0)


def test_centres_follow_landmarks() -> None:
    lm = mean_face_template() * 100
    c = au_centres_from_landmarks(lm)
    np.testing.assert_allclose(c[0], lm[21])
    np.testing.assert_allclose(c[16], lm[48])
    shifted = au_centres_from_landmarks(lm + np.array([5.0, -3.0]))
    np.testing.assert_allclose(shifted, c + np.array([5.0, -3.0]), atol=1e-4)
    with pytest.raises(ValueError):
        au_centres_from_landmarks(np.zeros((5, 2)))


def test_centres_inside_template_face() -> None:
    c = au_centres_from_landmarks(mean_face_template())
    assert ((c > 0.05) & (c < 0.95)).all()
    # Left/right pairs are mirror images about x = 0.5 in the symmetric template.
    for a, b in [(0, 1), (2, 3), (4, 5), (16, 17)]:
        assert c[a, 0] + c[b, 0] == pytest.approx(1.0, abs=1e-5)
        assert c[a, 1] == pytest.approx(c[b, 1], abs=1e-5)


def test_template_map_shape_and_resize() -> None:
    m100 = template_attention_map(100)
    assert m100.shape == (100, 100)
    m224 = template_attention_map(224)
    assert m224.shape == (224, 224)
    assert m224.min() >= 0.0 and m224.max() <= 1.0
    assert m224.max() > 0.9
    assert template_attention_map((64, 48)).shape == (64, 48)
    # Resizing keeps the layout: compare block-downsampled 200 px map with the 100 px one.
    m200 = template_attention_map(200)
    np.testing.assert_allclose(m200.reshape(100, 2, 100, 2).mean(axis=(1, 3)), m100, atol=0.05)


def test_out_size_argument() -> None:
    m = au_attention_map(np.array([[50.0, 50.0]]), size=100, out_size=32)
    assert m.shape == (32, 32)
    assert 0.0 <= m.min() and m.max() <= 1.0


def test_mean_face_template_shape() -> None:
    t = mean_face_template()
    assert t.shape == (68, 2)
    assert ((t >= 0) & (t <= 1)).all()
