"""``rl-trainer vllm-serve``: start a vLLM server the ``vllm`` rollout backend can keep in sync.

vLLM lives in its own environment (it pins its own torch): ``--python`` (or the environment
variable ``RL_TRAINER_VLLM_PYTHON``) names that environment's interpreter. The command:

- serves an *untied* copy of a model whose input embedding and LM head are tied (vLLM's
  in-place weight reload loads the embedding but keeps the head it had, so a tied head would go
  stale after the first sync); other models are served from where they are;
- switches on what the weight sync needs: ``VLLM_SERVER_DEV_MODE=1`` (``/collective_rpc``
  ``reload_weights``), ``--enable-lora`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
  (adapters hot-loaded in place), and ``--logprobs-mode processed_logprobs`` (log-probs after
  temperature, as the trainer computes them);
- on a machine without CUDA adds ``--enforce-eager`` and a 1 GiB KV cache
  (``VLLM_CPU_KVCACHE_SPACE``) unless set.

``--print-command`` prints the command instead of running it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

HEAD = "lm_head.weight"
EMBEDDING_KEYS = ("model.embed_tokens.weight", "transformer.wte.weight", "embed_tokens.weight")


def untied_copy(model_dir: Path, cache_dir: Path) -> Path:
    """Returns a folder serving ``model_dir``'s weights with an LM head of its own: the model
    itself when its embeddings are not tied, else a copy (made once per source and kept in
    ``cache_dir``) whose config says ``tie_word_embeddings: false`` and whose checkpoint
    holds ``lm_head.weight`` (a copy of the input embedding, in a shard of its own)."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: --model must be a local model folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if not config.get("tie_word_embeddings", False):
        return model_dir
    from safetensors import safe_open
    from safetensors.torch import save_file

    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}: save the model with safetensors")
    key = hashlib.sha256(
        "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in shards).encode()
        + str(model_dir.resolve()).encode()
    ).hexdigest()[:16]
    target = cache_dir / f"{model_dir.name}-untied-{key}"
    if (target / "config.json").is_file():
        return target
    embedding = None
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            names = set(fh.keys())
            if HEAD in names:
                break  # the checkpoint already has a head of its own
            found = next((k for k in EMBEDDING_KEYS if k in names), None)
            if found is not None:
                embedding = fh.get_tensor(found)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(model_dir, partial)
    if embedding is not None:
        save_file({HEAD: embedding.clone().contiguous()}, str(partial / "lm_head.safetensors"))
        index_path = partial / "model.safetensors.index.json"
        if index_path.is_file():
            index = json.loads(index_path.read_text(encoding="utf-8"))
            index.setdefault("weight_map", {})[HEAD] = "lm_head.safetensors"
            index_path.write_text(json.dumps(index, indent=2), encoding="utf-8")
    config["tie_word_embeddings"] = False
    (partial / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    partial.rename(target)
    return target


def build_command(args: argparse.Namespace, model_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Returns the server's command line and the environment variables it adds."""
    import torch

    command = [
        args.python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        args.served_model_name or str(args.model),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--dtype",
        args.dtype,
        "--logprobs-mode",
        "processed_logprobs",
    ]
    if args.max_model_len:
        command += ["--max-model-len", str(args.max_model_len)]
    if args.lora_rank > 0:
        command += ["--enable-lora", "--max-lora-rank", str(args.lora_rank)]
    env = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    if args.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = args.gpus
    elif not torch.cuda.is_available():
        command.append("--enforce-eager")
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
    return command + list(args.vllm_args), env


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rl-trainer vllm-serve",
        description="Start a vLLM OpenAI-compatible server for the vllm rollout backend "
        "(arguments after -- go to vLLM).",
    )
    parser.add_argument("--model", required=True, type=Path, help="local model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--python",
        default=os.environ.get("RL_TRAINER_VLLM_PYTHON", "python"),
        help="the interpreter of the environment vLLM is installed in (default: "
        "$RL_TRAINER_VLLM_PYTHON, else python)",
    )
    parser.add_argument("--gpus", help="CUDA_VISIBLE_DEVICES for the server, e.g. 0")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--max-model-len", type=int, help="longest prompt + completion")
    parser.add_argument(
        "--lora-rank",
        type=int,
        default=64,
        help="largest LoRA rank to hot-load (0: no LoRA; default 64)",
    )
    parser.add_argument(
        "--served-model-name", help="the name requests use (default: the --model path as given)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rl-trainer",
        help="where the untied copy of a tied model is kept",
    )
    parser.add_argument("--print-command", action="store_true", help="print, do not run")
    parser.add_argument("vllm_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    """``rl-trainer vllm-serve``: replaces this process with the vLLM server."""
    args = parse_args(argv)
    model_dir = untied_copy(args.model.resolve(), args.cache_dir)
    command, env = build_command(args, model_dir)
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    shown += " " + " ".join(shlex.quote(c) for c in command)
    if args.print_command:
        print(shown)
        return 0
    if shutil.which(args.python) is None and not Path(args.python).is_file():
        print(
            f"rl-trainer vllm-serve: {args.python!r} not found: pass --python PATH (the "
            "interpreter of the environment vLLM is installed in) or set RL_TRAINER_VLLM_PYTHON",
            file=sys.stderr,
        )
        return 2
    print(f"rl-trainer vllm-serve: {shown}", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, {**os.environ, **env})
    return 0  # not reached
