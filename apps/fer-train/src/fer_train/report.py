"""``report.md``: the run's numbers in a short Markdown page (all taken from ``metrics.json``)."""

from __future__ import annotations

import math
from typing import Any

PHASES = ("data", "training", "evaluating", "exporting", "verifying", "variants", "report")


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the report writes it (``n/a`` for missing or NaN)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"


def render_report(m: dict[str, Any]) -> str:
    """The Markdown text of ``report.md`` for the metrics ``m`` (see ``run._metrics``)."""
    lines = [f"# fer-train report: {m['model']} on {m['dataset']}", ""]
    sizes = m["sizes"]
    lines += [
        "## Data and model",
        "",
        f"- data set: {m['dataset']}; train {fmt(sizes['train'])}, validation "
        f"{fmt(sizes['val'])} ({m['val_source']}), test {fmt(sizes['test'])} images",
        f"- model: `{m['model']}`, {fmt(m['parameters'])} parameters, {m['image_size']} px, "
        f"AU attention: {m['attention']}",
        f"- processes: {m['num_processes']} ({m['device']})",
        "",
        "## Training",
        "",
        f"- epochs run: {m['epochs_run']}, best epoch: {m['best_epoch']}, stop reason: "
        f"{m['stop_reason']}",
        f"- validation accuracy {fmt(m['val_accuracy'])}, mean class accuracy "
        f"{fmt(m['val_mean_class_accuracy'])} (selected model)",
        "",
        "## Test set",
        "",
        f"- **test accuracy {fmt(m['test_accuracy'])}**, mean class accuracy "
        f"**{fmt(m['mean_class_accuracy'])}** on {fmt(m['test_samples'])} images "
        f"(chance {fmt(1 / max(1, len(m['per_class_accuracy'])))})",
        "",
        "| class | test images | accuracy |",
        "| --- | --- | --- |",
    ]
    for name, acc in m["per_class_accuracy"].items():
        lines.append(f"| {name} | {fmt(m['class_counts'].get(name, 0))} | {fmt(acc)} |")
    lines += [
        "",
        "![confusion matrix](test_confusion.png) (counts in `test_confusion.csv`, rows: true)",
        "",
        "## ONNX",
        "",
        f"- `model.onnx`: {_size(m['onnx_size_bytes'])}, opset 18, dynamic batch, "
        f"attention {m['onnx_attention']}",
        f"- parity check (random inputs, batch 1 and 4): max abs diff "
        f"{m['onnx_verify_max_abs_diff']:.3g}, "
        f"{'passed' if m['onnx_verify_passed'] else 'FAILED'} (atol {m['onnx_atol']:g})",
        f"- ONNX Runtime on the test set ({m['onnx_provider']}): accuracy "
        f"{fmt(m['onnx_test_accuracy'])}, top-1 agreement with PyTorch "
        f"{fmt(m['onnx_agreement'])} ({100 * m['onnx_agreement']:.2f} %), max abs score diff "
        f"{m['onnx_max_abs_diff']:.3g}",
    ]
    if m["variants"]:
        lines += [
            "",
            "| file | size | size vs fp32 | test accuracy | top-1 agreement with fp32 | max abs "
            "diff |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, v in m["variants"].items():
            lines.append(
                f"| `{v['file']}` ({name}) | {_size(v['size_bytes'])} | {v['size_ratio']:.2f}x "
                f"| {fmt(v['test_accuracy'])} | {fmt(v['agreement'])} | "
                f"{v['max_abs_diff']:.3g} |"
            )
        if "int8" in m["variants"]:
            lines.append(f"\nint8 calibration: {m['variants']['int8'].get('calib', 'n/a')}")
    t = m["timings"]
    lines += ["", "## Timings (seconds)", "", "| phase | s |", "| --- | --- |"]
    for phase in PHASES:
        if phase in t:
            lines.append(f"| {phase} | {t[phase]:.1f} |")
    lines.append(f"| total | {m['wall_s']:.1f} |")
    lines += ["", "## Learning curves", ""]
    if m.get("learning_curves"):
        lines.append(f"![learning curves]({m['learning_curves']})")
    else:
        lines.append("(plots disabled)")
    lines += [
        "",
        "Files: `best.safetensors` (selected model), `metrics.jsonl` (one line per epoch), "
        "`metrics.json` (these numbers), `config.yaml` (rerun with `--config`).",
        "",
    ]
    return "\n".join(lines)
