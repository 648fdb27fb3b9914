"""``bandpo-train``: train (the default command), run the clipping study, list presets.

bandpo-train                                   # the embedded default, a few minutes on CPU
bandpo-train output_dir=runs/x max_steps=40    # any key=value override
bandpo-train --preset bandpo-kl model.path=/models/Qwen2.5-1.5B data.path=dapo.parquet
accelerate launch --multi_gpu --num_processes 2 -m bandpo_train output_dir=runs/ddp
accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST0 ... -m bandpo_train
bandpo-train study                             # ppo vs band on the trap task, ~30 min
bandpo-train presets                           # list presets and accelerate configs
bandpo-train report runs/bandpo-train          # the README's figures of a finished run
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

USAGE = """usage: bandpo-train [--config FILE] [--preset NAME] [key=value ...]
       bandpo-train study [--seeds N] [--steps N] [--out DIR] [--lrs binding,low]
                          [--arms ppo,clip_higher,band_kl,band_tv] [--threads N] [--quick]
       bandpo-train presets
       bandpo-train report DIR [--json]

With no arguments: the embedded default (tiny model, 2-digit addition, supervised warm start,
then BandPO) in runs/bandpo-train. Keys are rl-trainer's (model.*, data.*, rollout.*,
algorithm.*, optim.*, logging.*, checkpoint.*, eval.*) plus task.*, warm_start.*, output_dir and
max_steps (optimiser steps).
"""


def end_process_group() -> None:
    """Returns after ending torch.distributed's process group, if one was started.

    Under ``accelerate launch`` a process that exits with its gloo group alive can abort
    ("terminate called without an active exception") and fail the launch after a good run;
    ``rl_trainer.collectives.end_process_group`` says why and prevents it. Nothing is imported
    when no group was started (a config error stops before the training stack is loaded).
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        from rl_trainer.collectives import end_process_group as end_group

        end_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bandpo-train`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args and args[0] == "presets":
        from bandpo_train.config import available_presets, preset_path
        from rl_trainer.configs import accelerate_configs

        print("presets (--preset NAME):")
        for name in available_presets():
            print(f"  {name:18s} {preset_path(name)}")
        print("accelerate configs (accelerate launch --config_file PATH -m bandpo_train ...):")
        for name, path in accelerate_configs().items():
            print(f"  {name:18s} {path}")
        return 0
    if args and args[0] == "report":
        from bandpo_train.summary import main as report_main

        return report_main(args[1:])
    if args and args[0] == "study":
        from bandpo_train.study import main as study_main

        return study_main(args[1:])
    from bandpo_train.config import load_app_config
    from config_layers import parse_command_line

    try:
        line = parse_command_line(args)
        # Checked as a whole here, on every process of a launch, before the training stack is
        # imported and before anything is written.
        config = load_app_config(line.config, line.overrides, preset=line.preset)
        from bandpo_train.run import train

        summary = train(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"bandpo-train: {err}", file=sys.stderr)
        return 2
    finally:
        end_process_group()
    if summary.get("num_processes") is not None:
        print(
            json.dumps(
                {
                    k: summary[k]
                    for k in ("num_processes", "optimizer_steps", "wall_s", "final", "eval")
                },
                indent=2,
                default=str,
            )
        )
    return 0
