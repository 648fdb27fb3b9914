"""``rl-trainer`` command line: ``train``, ``evaluate`` and ``config`` on a YAML + overrides.

rl-trainer train --config run.yaml optim.lr=1e-6 algorithm.rule=band
accelerate launch --config_file configs/accelerate/ddp.yaml -m rl_trainer train -c run.yaml
rl-trainer config -c run.yaml rollout.group_size=16      # print the resolved config
rl-trainer train --help; rl-trainer --version
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

import config_layers
from rl_trainer.config import TrainerConfig, load_config

USAGE = """usage: rl-trainer {train,evaluate,config} [--config FILE] [key=value ...]
       rl-trainer vllm-serve --model DIR [--port P] [--gpus IDS] [--python PATH] [-- VLLM ARGS]
       rl-trainer accelerate-configs
       rl-trainer --version

  train      run RL training (use `accelerate launch -m rl_trainer train ...` for several processes)
  evaluate   greedy accuracy, mean@k and pass@k of model.path on data.eval_path
  config     print the resolved configuration (defaults <- FILE <- overrides) and exit
  vllm-serve start a vLLM server for rollout.backend=vllm (in vLLM's own environment)
  accelerate-configs
             list the shipped accelerate configs (1 GPU, DDP, FSDP, DeepSpeed ZeRO-2/3, 2 CPUs)

`rl-trainer COMMAND --help` describes one command.
"""

_KEYS = """Keys (key=value, later wins over earlier and over the file): model.*, data.*, rollout.*,
algorithm.*, optim.*, logging.*, checkpoint.*, eval.*; `rl-trainer config` prints them all with
their defaults. An unknown key or a bad value is one line on stderr and exit code 2.
"""

COMMAND_USAGE = {
    "train": f"""usage: rl-trainer train [--config FILE] [key=value ...]

Run RL training on model.path and data.path (required). One process here; for several, run
`accelerate launch [--config_file CFG] -m rl_trainer train ...`. Prints the final metrics as
JSON; output (config.yaml, metrics.jsonl, checkpoints) goes to logging.output_dir.

{_KEYS}""",
    "evaluate": f"""usage: rl-trainer evaluate [--config FILE] [key=value ...]

Greedy accuracy, mean@k and pass@k of model.path on data.eval_path (required), printed as JSON.

{_KEYS}""",
    "config": f"""usage: rl-trainer config [--config FILE] [key=value ...]

Print the resolved configuration (defaults <- FILE <- overrides) as YAML and exit.

{_KEYS}""",
    "accelerate-configs": """usage: rl-trainer accelerate-configs

List the shipped accelerate configs (name and path), for `accelerate launch --config_file`.
""",
}

HELP_FLAGS = ("-h", "--help")


def _load(argv: Sequence[str]) -> TrainerConfig:
    path, overrides = config_layers.split_cli_args(argv)
    return load_config(path, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rl-trainer`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in HELP_FLAGS:
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from rl_trainer import __version__

        print(f"rl-trainer {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command in COMMAND_USAGE and any(arg in HELP_FLAGS for arg in rest):
        print(COMMAND_USAGE[command], end="")
        return 0
    if command == "vllm-serve":
        from rl_trainer.vllm_serve import main as serve

        return serve(rest)
    if command == "accelerate-configs":
        from rl_trainer.configs import accelerate_configs

        for name, path in accelerate_configs().items():
            print(f"{name:18s} {path}")
        return 0
    if command not in ("train", "evaluate", "config"):
        print(f"rl-trainer: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = _load(rest)
    except (ValueError, FileNotFoundError) as err:
        print(f"rl-trainer: {err}", file=sys.stderr)
        return 2
    if command == "config":
        print(config_layers.to_yaml(config), end="")
        return 0

    from rl_trainer.collectives import end_process_group
    from rl_trainer.trainer import GRPOTrainer
    from rl_trainer.vllm_client import VllmServerError

    try:
        if command == "evaluate":
            if not config.data.eval_path:
                raise ValueError("evaluate needs data.eval_path")
            config.data.path = config.data.path or config.data.eval_path
            trainer = GRPOTrainer(config)
            metrics = trainer.evaluate()
        else:
            trainer = GRPOTrainer(config)
            metrics = trainer.train()
    except (ValueError, FileNotFoundError) as err:
        print(f"rl-trainer: {err}", file=sys.stderr)
        return 2
    except VllmServerError as err:
        print(f"rl-trainer: {err}", file=sys.stderr)
        return 1
    finally:
        end_process_group()
    if trainer.accelerator.is_main_process:
        print(json.dumps({k: v for k, v in metrics.items()}, indent=2, default=str))
    return 0
