"""``bandpo-train study``: does Band change what PPO's clip does to rare correct answers?

Read top-down: :mod:`~bandpo_train.study.design` (what is compared, the prediction),
:mod:`~bandpo_train.study.runner` (the runs), :mod:`~bandpo_train.study.analysis` (the
numbers, the regime precondition, the paired tests) and :mod:`~bandpo_train.study.report`
(summary.md, CSVs, plots); :mod:`~bandpo_train.study.cli` ties them together.
"""

from __future__ import annotations

from bandpo_train.study.cli import main, parse_args, run_study

__all__ = ["main", "parse_args", "run_study"]
