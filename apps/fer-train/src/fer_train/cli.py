"""``fer-train``: train, evaluate, export and verify a facial expression model in one run.

fer-train                                      # the embedded default: synthetic faces, minutes
fer-train output_dir=runs/x train.epochs=4     # any key=value override (dotted keys)
fer-train --preset rafdb data.root=/data/RAF-DB
fer-train presets                              # list the shipped presets
accelerate launch --multi_gpu --num_processes 2 -m fer_train output_dir=runs/ddp
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: fer-train [--config FILE] [--preset NAME] [key=value ...]
       fer-train presets

Trains (capsnet-model), evaluates on the test set, calibrates the probabilities and chooses
an abstention threshold on the validation split, exports model.onnx (fer-export) with them
and its provenance, checks it against PyTorch and writes metrics.json and report.md into
output_dir (runs/fer-train).
With no arguments: e2capsnet_small on synthetic faces, a few minutes on a CPU.
Keys: data.* (kind, root, image_root, emotionet.*, ...), train.* (capsnet-model TrainConfig:
model, epochs, lr, batch_size, model_kwargs, augment, patience, ...), export.* (fp16, int8,
calib, coverage, ...), output_dir, resume, plots, threads (results depend on it), preset.
Values are YAML: train.model_kwargs={width: 0.25}.
Values are strict (train.epochs='3' is refused); an error names the file line or override.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fer-train`` console script; returns the exit status.

    0: done; 1: the exported model failed the parity check; 2: a user error (bad key or
    value, missing data, a bad row or image under ``data.on_error=raise``, an output
    directory holding a run), reported in one line.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args and args[0] == "presets":
        from fer_train.config import PRESETS

        print("presets (--preset NAME, then set data.root):")
        for name in PRESETS.names():
            print(f"  {name:10s} {PRESETS.path(name)}")
        return 0

    from capsnet_model.datasets import DatasetError
    from config_layers import parse_command_line
    from fer_train.config import load_app_config
    from fer_train.run import VerificationFailed, run

    try:
        line = parse_command_line(args)
        config = load_app_config(line.config, line.overrides, preset=line.preset)
        run(config)
    except VerificationFailed as err:
        print(f"fer-train: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, DatasetError) as err:
        print(f"fer-train: {err}", file=sys.stderr)
        return 2
    return 0
