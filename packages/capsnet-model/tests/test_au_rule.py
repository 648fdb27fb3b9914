"""AU_RULE: the AU-centre table as data, and the centres computed from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from capsnet_model.attention import (
    AU_RULE,
    NUM_AU_CENTRES,
    AUCentre,
    au_centres_from_landmarks,
    mean_face_template,
)


def _by_hand(lm: np.ndarray) -> np.ndarray:
    """The documented table, written out independently of AU_RULE."""
    right, left = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    down = np.array([0.0, 0.5 * np.linalg.norm(left - right)])
    m = lambda *i: lm[list(i)].mean(axis=0)  # noqa: E731
    rows = [lm[21], lm[22], lm[17], lm[26], lm[19], lm[24], m(37, 38), m(43, 44),
            right + down, left + down, m(40, 41), m(46, 47), m(29, 31), m(29, 35),
            lm[50], lm[52], lm[48], lm[54], m(62, 66), m(57, 8)]  # fmt: skip
    return np.stack(rows)


def test_rule_is_plain_json_data() -> None:
    assert len(AU_RULE) == NUM_AU_CENTRES
    rows = json.loads(json.dumps([row._asdict() for row in AU_RULE]))
    assert rows[8] == {"landmarks": [36, 37, 38, 39, 40, 41], "down": 0.5}
    for row in rows:
        assert row["landmarks"] and all(0 <= i < 68 for i in row["landmarks"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_centres_follow_the_table(seed: int) -> None:
    lm = np.random.default_rng(seed).uniform(0, 224, (68, 2))
    np.testing.assert_allclose(au_centres_from_landmarks(lm), _by_hand(lm), rtol=1e-6, atol=1e-4)
    t = mean_face_template() * 100
    np.testing.assert_allclose(au_centres_from_landmarks(t), _by_hand(t), atol=1e-4)


def test_another_rule_is_applied() -> None:
    lm = np.random.default_rng(3).uniform(0, 100, (68, 2))
    eye = np.linalg.norm(lm[42:48].mean(axis=0) - lm[36:42].mean(axis=0))
    rule = (AUCentre((0, 16), 0.0), AUCentre((30,), -1.0))
    got = au_centres_from_landmarks(lm, rule)
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got[0], (lm[0] + lm[16]) / 2, rtol=1e-6)
    np.testing.assert_allclose(got[1], lm[30] - [0.0, eye], rtol=1e-5)
    assert au_centres_from_landmarks(lm, ()).shape == (0, 2)
