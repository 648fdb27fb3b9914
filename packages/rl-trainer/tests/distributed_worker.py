"""Run by test_distributed.py under ``accelerate launch --multi_gpu --num_processes 2`` (CPU).

Each rank samples its own share of one rollout, then one optimiser step is taken (one
mini-batch, several micro-batches). Rank 0 writes what the test checks to ``<out>/result.pt``:
the ranks that took part, each rank's gradient and final weights, and every rank's samples so
that the test can replay the same update in a single process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from conftest import DIGITS_REWARD, tiny_config

from rl_trainer.collectives import end_process_group, reduce_scalars
from rl_trainer.trainer import GRPOTrainer


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten().float() for t in tensors])


def main() -> None:
    model_dir, data, out = (Path(a) for a in sys.argv[1:4])
    overrides = json.loads(sys.argv[4])
    trainer = GRPOTrainer(
        tiny_config(model_dir, data, out, **overrides), reward_functions=DIGITS_REWARD
    )
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    grads: list[torch.Tensor] = []
    real_step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads.append(flat(p.grad for p in model.parameters() if p.grad is not None))
        return real_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    batch, _, _ = trainer.rollout()
    assert batch is not None
    prompt_len = batch.input_ids.shape[1] - batch.completion_ids.shape[1]
    samples = [
        (
            batch.input_ids[i, :prompt_len][batch.attention_mask[i, :prompt_len] == 1].tolist(),
            batch.completion_ids[i][batch.completion_mask[i] == 1].tolist(),
            float(batch.advantages[i]),
        )
        for i in range(len(batch))
    ]
    update = trainer.update(batch)
    record = {
        "rank": acc.process_index,
        "world": acc.num_processes,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "samples": samples,
        "grad": grads[0],
        "weights": flat(model.state_dict().values()),
        "loss": update["loss"],
        "accumulation_steps": trainer.accumulation_steps,
        "reduced": {
            op: reduce_scalars({"rank": float(acc.process_index), "one": 1.0}, acc, op=op)
            for op in ("sum", "mean", "max", "min")
        },
    }
    gathered = [None] * acc.num_processes
    dist.all_gather_object(gathered, record)
    if acc.is_main_process:
        torch.save(gathered, out / "result.pt")
    acc.wait_for_everyone()
    end_process_group()


if __name__ == "__main__":
    main()
