"""Throughput benchmark: E2-Capsnet images/s against VGG16-BN of the same size (baseline).

Run::

    uv run python packages/capsnet-model/benchmarks/bench_throughput.py
    uv run python packages/capsnet-model/benchmarks/bench_throughput.py --models e2capsnet_small \\
        --train-batch 64 --infer-batch 128 --steps 30 --device cuda --json throughput.json

For each selected model -- by default the full ``create_model("e2capsnet")`` (224 px,
width 1) and ``create_model("e2capsnet_small")`` (64 px, width 1/8), both called with
``attention=None`` so that the built-in template attention map is used -- it measures images/s
in two modes:

* ``train``: ``model.train()``, forward, loss, backward, ``torch.optim.Adam`` step (gradients
  set to None before each step). Capsule models use ``capsnet_model.capsules.margin_loss`` on
  the capsule lengths (their ``forward`` output); VGG classifiers use cross-entropy on their
  logits.
* ``infer``: ``model.eval()`` under ``torch.inference_mode()``.

Each mode runs ``warmup`` untimed steps, then ``steps`` timed ones, the model and its baseline
alternating step by step (so that changes in machine load hit both alike); images/s is the
batch size over the median per-step time. Inputs are fixed random images and labels (7 classes).

Baseline: ``create_model("vgg16_bn")`` built at the same width and image size as each capsule
model and run with the same batch sizes in the same run, so the printed ratio
``<model> / vgg16_bn`` (images/s) measures the cost of the capsule + attention parts (< 1:
slower than the plain VGG; the baseline also has the large fully connected head, which the
capsule models replace with primary capsules and routing). ``torch.get_num_threads()`` is left
at its default and printed. Defaults keep the run to a few minutes on a 2-core CPU; on such a
CPU one full-size training step takes seconds, hence the few timed steps for it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from _common import cpu_snapshot, load_before, load_during, others_busy, pct, time_steps
from torch import nn

from capsnet_model import create_model
from capsnet_model.capsules import margin_loss

NUM_CLASSES = 7
BASELINE = "vgg16_bn"


@dataclass(frozen=True)
class Size:
    """Default configuration of one benchmarked capsule model."""

    width: float
    image_size: int
    train_batch: int
    infer_batch: int
    warmup: int
    steps: int


# Width and image size are the registered factories' defaults; the baseline gets the same.
SIZES: dict[str, Size] = {
    "e2capsnet": Size(1.0, 224, train_batch=8, infer_batch=16, warmup=1, steps=4),
    "e2capsnet_small": Size(1 / 8, 64, train_batch=32, infer_batch=64, warmup=3, steps=15),
    "rccnet": Size(1.0, 224, train_batch=8, infer_batch=16, warmup=1, steps=4),
    "avggnet": Size(1.0, 224, train_batch=8, infer_batch=16, warmup=1, steps=4),
}
DEFAULT_MODELS = ("e2capsnet", "e2capsnet_small")


@dataclass
class ModeResult:
    """Throughput of one model in one mode."""

    model: str
    mode: str
    batch: int
    image_size: int
    width: float
    warmup: int
    steps: int
    median_s: float
    step_s: list[float]
    images_per_s: float
    others_busy: float | None = None  # other processes' CPU share while timing


@dataclass
class Ratio:
    """Images/s of a capsule model over the baseline's, same size, mode and batch."""

    model: str
    mode: str
    image_size: int
    batch: int
    ratio: float


def build(name: str, size: Size, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return create_model(
        name, num_classes=NUM_CLASSES, width=size.width, image_size=size.image_size
    ).to(device)


def make_train_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    capsules = hasattr(model, "forward_capsules")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(images, None)
        loss = margin_loss(out, labels) if capsules else F.cross_entropy(out, labels)
        loss.backward()
        opt.step()

    return step


def make_infer_step(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(images, None)

    return step


def bench_pair(
    names: tuple[str, str],
    size: Size,
    device: torch.device,
    batches: dict[str, int],
    warmup: int,
    steps: int,
) -> list[ModeResult]:
    """Benchmark a model and its baseline, alternating their steps, in both modes."""
    models = {name: build(name, size, device) for name in names}
    results: list[ModeResult] = []
    for mode in ("train", "infer"):
        batch = batches[mode]
        gen = torch.Generator().manual_seed(1)
        images = torch.rand(batch, 3, size.image_size, size.image_size, generator=gen)
        labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
        images, labels = images.to(device), labels.to(device)
        if mode == "train":
            fns = {n: make_train_step(m, images, labels) for n, m in models.items()}
        else:
            fns = {n: make_infer_step(m, images) for n, m in models.items()}
        snap = cpu_snapshot()
        times = time_steps(fns, device, warmup, steps)
        busy = others_busy(snap, cpu_snapshot())
        for name in names:
            med = statistics.median(times[name])
            res = ModeResult(
                name,
                mode,
                batch,
                size.image_size,
                size.width,
                warmup,
                steps,
                med,
                times[name],
                batch / med,
                busy,
            )
            print(
                f"  {name:16s} {mode:5s} batch {batch:3d}: {res.images_per_s:8.2f} img/s "
                f"(median step {med * 1e3:8.1f} ms over {steps})",
                flush=True,
            )
            results.append(res)
    del models
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=sorted(SIZES), default=list(DEFAULT_MODELS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-batch", type=int, help="training batch, all models")
    ap.add_argument("--infer-batch", type=int, help="inference batch, all models")
    ap.add_argument("--warmup", type=int, help="untimed steps per mode (default: per model)")
    ap.add_argument("--steps", type=int, help="timed steps per mode (default: per model)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()} "
        f"(default), baseline {BASELINE} at the same width / image size / batch"
    )
    snap1, busy = load_before()
    results: list[ModeResult] = []
    ratios: list[Ratio] = []
    for name in args.models:
        size = SIZES[name]
        batches = {
            "train": args.train_batch or size.train_batch,
            "infer": args.infer_batch or size.infer_batch,
        }
        warmup = size.warmup if args.warmup is None else args.warmup
        steps = size.steps if args.steps is None else args.steps
        print(f"{name}: {size.image_size} px, width {size.width:g}")
        pair = bench_pair((name, BASELINE), size, device, batches, warmup, steps)
        results += pair
        for m, b in zip(pair[0::2], pair[1::2], strict=True):
            ratios.append(
                Ratio(name, m.mode, m.image_size, m.batch, m.images_per_s / b.images_per_s)
            )

    print("\nimages/s (median step); other CPU: other processes' share while timing the pair")
    head = (
        f"{'model':16s} {'px':>4} {'mode':5s} {'batch':>5} {'img/s':>9} {'step ms':>9} "
        f"{'other CPU':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.model:16s} {r.image_size:>4} {r.mode:5s} {r.batch:>5} "
            f"{r.images_per_s:9.2f} {r.median_s * 1e3:9.1f} {pct(r.others_busy):>9}"
        )
    print(f"\nratios <model> / {BASELINE} images/s (< 1: slower than the baseline)")
    for q in ratios:
        print(
            f"  {q.model:16s} / {BASELINE} {q.mode:5s} "
            f"({q.image_size} px, batch {q.batch}): {q.ratio:.3f}"
        )
    busy_during = load_during(snap1)
    if args.json:
        payload = {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "others_cpu_busy_before": busy,
            "others_cpu_busy_during": busy_during,
            "baseline": BASELINE,
            "results": [asdict(r) for r in results],
            "ratios": [asdict(q) for q in ratios],
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
