"""``report.md``: the run's numbers in a short Markdown page (all taken from ``metrics.json``)."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fer_train.data import Skipped

PHASES = (
    "data",
    "training",
    "evaluating",
    "exporting",
    "calibrating",
    "verifying",
    "variants",
    "report",
)
#: The skipped rows that ``metrics.json`` and ``report.md`` list (all are in ``skipped.csv``).
SKIPPED_LISTED = 50
SKIPPED_FILE = "skipped.csv"


def plain(text: str) -> str:
    """``text`` safe to write as UTF-8: bytes a file name held that are not UTF-8 (decoded by
    Python as lone surrogates) become ``\\udcXX`` escapes instead of failing the write."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def skipped_csv(rows: Sequence[Skipped]) -> str:
    """The text of ``skipped.csv``: a ``split,where,reason`` header and one line per row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("split", "where", "reason"))
    for row in rows:
        writer.writerow((row.splits, plain(row.where), plain(row.reason)))
    return buffer.getvalue()


def skipped_summary(rows: Sequence[Skipped], on_error: str) -> dict[str, Any]:
    """The ``skipped`` entry of ``metrics.json``: count, count per category, the first rows."""
    return {
        "on_error": on_error,
        "count": len(rows),
        "by_category": dict(Counter(row.category for row in rows)),
        "file": SKIPPED_FILE,
        "first": [
            {"split": row.splits, "where": plain(row.where), "reason": plain(row.reason)}
            for row in rows[:SKIPPED_LISTED]
        ],
    }


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
        *_calibration_section(m),
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
        first = next(iter(m["variants"].values()))
        lines.append(
            f"\nAgreement, accuracy and differences are measured on "
            f"{first.get('checked_on', 'the test set')}, the same images for every file."
        )
        if "int8" in m["variants"]:
            lines.append(f"int8 calibration: {m['variants']['int8'].get('calib', 'n/a')}.")
    lines += ["", *_provenance_section(m.get("provenance"))]
    lines += ["", *_skipped_section(m.get("skipped"))]
    lines += ["", *_environment_section(m.get("environment"))]
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
    if m.get("reliability_diagram"):
        lines += ["", "## Reliability diagram", "", f"![reliability]({m['reliability_diagram']})"]
    lines += [
        "",
        "Files: `best.safetensors` (selected model), `metrics.jsonl` (one line per epoch), "
        "`metrics.json` (these numbers), `config.yaml` (rerun with `--config`), `skipped.csv` "
        "(rows and images left out).",
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _skipped_section(skipped: dict[str, Any] | None) -> list[str]:
    lines = ["## Skipped data", ""]
    if not skipped or not skipped["count"]:
        on_error = skipped["on_error"] if skipped else "raise"
        return [*lines, f"- none (data.on_error={on_error})"]
    categories = ", ".join(f"{name} {n:,}" for name, n in skipped["by_category"].items())
    lines += [
        f"- **{skipped['count']:,} left out** (data.on_error={skipped['on_error']}): "
        f"{categories}; every one is listed in `{skipped['file']}`",
        "",
        "| split | where | reason |",
        "| --- | --- | --- |",
    ]
    for row in skipped["first"]:
        lines.append(f"| {row['split']} | {_cell(row['where'])} | {_cell(row['reason'])} |")
    if skipped["count"] > len(skipped["first"]):
        lines.append(f"\n(the first {len(skipped['first'])} of {skipped['count']:,})")
    return lines


def _calibration_section(m: dict[str, Any]) -> list[str]:
    """The "Calibration and abstention" lines: T, ECE and NLL before/after on the test set,
    the threshold and what it does on the validation and test sets."""
    lines = ["## Calibration and abstention", ""]
    cal = m.get("calibration") or {}
    if "skipped" in cal:
        return [
            *lines,
            f"- **skipped**: {cal['skipped']}. `model.onnx` is uncalibrated (probabilities are "
            f"the softmax of the scores at T = 1) and never abstains.",
            f"- test ECE at T = 1: {fmt(cal['test']['ece_before'])} ({cal['bins']} bins)",
        ]
    test, val = cal["test"], cal["val"]
    lines += [
        f"- temperature scaling (`{cal['transform']}` of the scores): **T = "
        f"{cal['temperature']:.4g}**, fitted on the {fmt(cal['val_samples'])} validation faces "
        "(the split that selected the model)",
        f"- test ECE ({cal['bins']} bins): **{fmt(test['ece_before'])} before, "
        f"{fmt(test['ece_after'])} after**; test NLL {fmt(test['nll_before'])} -> "
        f"{fmt(test['nll_after'])} (validation ECE {fmt(val['ece_before'])} -> "
        f"{fmt(val['ece_after'])})",
    ]
    if cal.get("at_bound") == "lower":
        lines.append(
            "- note: T is the search's lower bound: the validation faces are (almost) all "
            "classified right with a wide margin, so the fit pushes the probabilities towards 0 "
            "and 1 and says little; a larger or harder validation split gives a meaningful T"
        )
    elif cal.get("at_bound") == "upper":
        lines.append(
            "- note: T is the search's upper bound: the model barely tells the classes apart on "
            "the validation faces, so the probabilities are flattened towards uniform"
        )
    if "runtime_formula_max_abs_diff" in cal:
        lines.append(
            "- fer-export's probabilities from `model.onnx` (its metadata, ONNX Runtime's "
            f"scores) differ from PyTorch's calibrated ones by at most "
            f"{cal['onnx_probability_max_abs_diff']:.2g} (the formulas alone: "
            f"{cal['runtime_formula_max_abs_diff']:.2g})"
        )
    a = m.get("abstention") or {}
    if "skipped" in a:
        lines.append(f"- abstention: none ({a['skipped']})")
        return lines
    lines += [
        f"- abstention: a face whose top probability is below **{a['threshold']:.4f}** is "
        f"labelled `unknown`; chosen to answer {a['coverage_target']:.0%} of the validation "
        f"faces (answered {a['val_coverage']:.1%}, accuracy {fmt(a['val_accuracy_covered'])})",
        f"- on the test set: **coverage {a['test_coverage']:.1%}, accuracy "
        f"{fmt(a['test_accuracy_covered'])} on the answered faces** ({a['test_abstained']} "
        f"abstained; accuracy on all faces {fmt(m['test_accuracy'])})",
    ]
    return lines


def _provenance_section(p: dict[str, Any] | None) -> list[str]:
    """The provenance written into ``model.onnx`` (``fer.provenance``)."""
    lines = ["## Provenance (in model.onnx)", ""]
    if not p:
        return [*lines, "- none recorded"]
    sizes = p["sizes"]
    lines += [
        f"- data set `{p['dataset']}`{' (synthetic)' if p['synthetic'] else ''}: "
        f"{fmt(sizes['train'])} train / {fmt(sizes['val'])} validation / "
        f"{fmt(sizes['test'])} test; {p['split']}",
        f"- test accuracy {fmt(p['test_accuracy'])}, mean class accuracy "
        f"{fmt(p['mean_class_accuracy'])}; AU maps: {p['au_source']}; {p['trained_with']}",
        f"- note: {p['note']}",
    ]
    return lines


def _environment_section(e: dict[str, Any] | None) -> list[str]:
    """Thread counts, platform and versions: what the training numbers depend on."""
    lines = ["## Environment", ""]
    if not e:
        return [*lines, "- not recorded"]
    versions = ", ".join(f"{name} {v}" for name, v in e["versions"].items())
    setting = "torch's default" if e["threads_setting"] is None else "threads setting"
    lines += [
        f"- torch threads {e['torch_threads']} ({setting}), inter-op threads "
        f"{e['torch_interop_threads']}, {e['cpu_count']} CPUs ({e['cpu_capability']}); "
        f"deterministic algorithms: {fmt(e['deterministic'])}; seed {e['seed']}",
        f"- {e['platform']}; {versions}",
        "- training on CPU repeats exactly only with the same thread count and CPU features: "
        "rerun with `threads=" + str(e["torch_threads"]) + "` to compare",
    ]
    return lines
