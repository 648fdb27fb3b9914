from __future__ import annotations

import pytest

from band_ops import demo


def test_demo_prints_every_divergence_at_the_default_probabilities(capsys):
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert "delta=0.05" in out
    for name in ("kl", "reverse_kl", "tv", "chi2", "neyman_chi2", "hellinger", "js"):
        assert f"| {name} |" in out
    assert "| tv | [0.000, 51.000] | [0.000, 6.000] | [0.375, 1.625]" in out
    assert "p=0.001 | p=0.01 | p=0.08 | p=0.2 | p=0.5 | p=0.9 | p=0.99" in out


def test_demo_options_change_the_table(capsys):
    assert (
        demo.main(["--delta", "0.1", "--max-ratio", "2", "--p", "0.5", "--divergence", "tv"]) == 0
    )
    out = capsys.readouterr().out
    assert "| tv | [0.800, 1.200] |" in out and "max_ratio=2" in out


def test_demo_reports_bad_input(capsys):
    assert demo.main(["--divergence", "nope"]) == 2
    assert "unknown divergence 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--p", "1.5"])
