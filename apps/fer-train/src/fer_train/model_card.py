"""The model card written next to ``model.onnx``: Markdown with a Hugging Face model-card header.

:func:`render_model_card` turns a run's ``metrics.json`` dict into the card: a YAML header the
Hub reads (licence, library, tags, data set, ``model-index`` with the measured accuracy), then
what the model is, the data it was trained on, how it measured (accuracy, mean class accuracy,
per class, calibration, abstention, the ONNX files), intended use and limits, and how to run
it. A model trained on the embedded synthetic faces says in its first lines, in its limits and
in its header tags that it is a pipeline check, not a real-face model. Uploaded to the Hub, the
card is the repository's ``README.md``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MODEL_CARD_FILE", "render_model_card"]

MODEL_CARD_FILE = "model_card.md"

_PAPER = "E2-Capsnet (capsule network with AU-aware attention for facial expression recognition)"


def _yaml(value: Any) -> str:
    """A YAML scalar: JSON's quoting is valid YAML for strings and numbers."""
    return json.dumps(value)


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def _header(m: dict[str, Any], synthetic: bool) -> list[str]:
    data_kind = str(m.get("data_kind") or (m.get("provenance") or {}).get("dataset") or "unknown")
    tags = ["facial-expression-recognition", "onnx", "e2-capsnet", "capsule-network", "fer-export"]
    if synthetic:
        tags.append("pipeline-check")
    metrics = [("accuracy", "Test accuracy", m.get("test_accuracy"))]
    metrics.append(("accuracy", "Mean class accuracy", m.get("mean_class_accuracy")))
    if isinstance(m.get("temperature"), (int, float)) and isinstance(m.get("ece_after"), float):
        metrics.append(("ece", "Expected calibration error (calibrated)", m["ece_after"]))
    # The weights derive from the training data: a real data set's terms (RAF-DB, AffectNet and
    # FER2013 are for non-commercial research) bind them, not the code's licence.
    licence = (
        ["license: apache-2.0"]
        if synthetic
        else [
            "license: other",
            f"license_name: {_yaml(data_kind + '-terms')}",
        ]
    )
    lines = [
        "---",
        *licence,
        "library_name: onnx",
        "pipeline_tag: image-classification",
        "tags:",
        *[f"- {t}" for t in tags],
        "datasets:",
        f"- {_yaml(data_kind)}",
        "metrics:",
        "- accuracy",
        "model-index:",
        f"- name: {_yaml(str(m.get('model', 'model')))}",
        "  results:",
        "  - task:",
        "      type: image-classification",
        "      name: Facial expression recognition",
        "    dataset:",
        f"      name: {_yaml(str(m.get('dataset', data_kind)))}",
        f"      type: {_yaml(data_kind)}",
        "      split: test",
        "    metrics:",
    ]
    for kind, name, value in metrics:
        if isinstance(value, (int, float)):
            lines += [
                f"    - type: {kind}",
                f"      name: {_yaml(name)}",
                f"      value: {value:.4f}",
            ]
    return [*lines, "---", ""]


def _calibration_lines(m: dict[str, Any]) -> list[str]:
    cal = m.get("calibration") or {}
    abst = m.get("abstention") or {}
    if not isinstance(m.get("temperature"), (int, float)):
        reason = cal.get("skipped") if isinstance(cal, dict) else None
        return [
            "- **Calibration:** none"
            + (f" ({reason})" if reason else " (no validation split)")
            + ": the probabilities are the normalised scores, and the model never answers "
            "`unknown` by itself."
        ]
    lines = [
        f"- **Calibration:** temperature scaling, T = {m['temperature']:.3g}, fitted on the "
        f"validation split ({cal.get('val_samples', 'n/a')} faces). Expected calibration error on "
        f"the test split: {_num(m.get('ece_before'), 3)} before, {_num(m.get('ece_after'), 3)} "
        "after."
    ]
    if isinstance(m.get("abstain_threshold"), (int, float)):
        lines.append(
            f"- **Abstention:** a face whose top probability is below "
            f"{m['abstain_threshold']:.3g} is answered `unknown` (threshold chosen to answer "
            f"{100 * float(abst.get('coverage_target', 0)):.0f} % of the validation faces). On the "
            f"test split it answers {100 * float(m.get('test_coverage', 0)):.1f} % of the faces, "
            f"with accuracy {_num(m.get('test_accuracy_covered'))} on those."
        )
    return lines


def render_model_card(m: dict[str, Any]) -> str:
    """The model card (Markdown with a Hugging Face YAML header) for a run's metrics."""
    prov = m.get("provenance") or {}
    synthetic = bool(prov.get("synthetic")) or m.get("data_kind") == "synthetic"
    sizes = m.get("sizes") or {}
    model = str(m.get("model", "model"))
    out = _header(m, synthetic)
    out += [f"# {model}: facial expression recognition (ONNX)", ""]
    if synthetic:
        out += [
            "> **A pipeline check, not a real-face model.** It was trained and tested on "
            "procedurally generated faces (fer-train's embedded default). Its accuracy says the "
            "training, export and deployment pipeline works; on real photos its answers mean "
            "nothing. Do not act on them.",
            "",
        ]
    out += [
        "## Model",
        "",
        f"`{model}`, an {_PAPER}, with {m.get('parameters', 'n/a'):,} parameters, taking "
        f"{m.get('image_size', 'n/a')} x {m.get('image_size', 'n/a')} px RGB face crops with the "
        f"AU attention map from the `{m.get('attention', 'n/a')}` source. It outputs "
        + ("logits" if m.get("onnx_score_kind") == "logit" else "capsule lengths")
        + ", turned into probabilities by the calibration stored in `model.onnx`.",
        "",
        "`model.onnx` carries its preprocessing contract, calibration, abstention threshold and "
        "provenance in its metadata (`fer-export info model.onnx` prints them).",
        "",
        "## Training data",
        "",
        f"- **Data set:** {m.get('dataset', 'n/a')}"
        + (" (procedurally generated faces)" if synthetic else ""),
        f"- **Split:** {prov.get('split') or m.get('val_source', 'n/a')}",
        f"- **Sizes:** {sizes.get('train', 'n/a')} training, {sizes.get('val', 'n/a')} validation, "
        f"{sizes.get('test', 'n/a')} test faces",
        f"- **Training:** {m.get('epochs_run', 'n/a')} epochs, best epoch "
        f"{m.get('best_epoch', 'n/a')} by validation; {prov.get('trained_with', 'fer-train')}",
        "",
        "## Evaluation (test split)",
        "",
        f"- **Accuracy:** {_num(m.get('test_accuracy'))}; **mean class accuracy:** "
        f"{_num(m.get('mean_class_accuracy'))} ({m.get('test_samples', 'n/a')} faces)",
    ]
    per_class = m.get("per_class_accuracy") or {}
    if per_class:
        out.append(
            "- **Per class:** "
            + ", ".join(f"{label} {_num(v, 3)}" for label, v in per_class.items())
        )
    out += _calibration_lines(m)
    out.append(
        f"- **ONNX Runtime** on the test split: accuracy {_num(m.get('onnx_test_accuracy'))}, "
        f"agreement with PyTorch {_num(m.get('onnx_agreement'))}"
    )
    for name, v in (m.get("variants") or {}).items():
        out.append(
            f"- **{name}** (`{v.get('file')}`, {v.get('size_ratio', 0):.2f}x the size): "
            f"agreement with fp32 {_num(v.get('agreement'))} on the held-out test faces"
        )
    env = m.get("environment") or {}
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
        out.append(
            f"- **Environment:** {env.get('torch_threads', 'n/a')} torch threads (CPU results "
            f"depend on it), {env.get('platform', 'n/a')}; {versions}"
        )
    out += [
        "",
        "## Intended use and limits",
        "",
    ]
    if not synthetic:
        out.append(
            f"- **Licence:** the weights derive from {m.get('dataset', 'the data set')}; its "
            "terms of use apply to them (several FER data sets allow non-commercial research "
            "only)."
        )
    if synthetic:
        out += [
            "- Intended for checking the pipeline end to end (training, calibration, export, "
            "serving) and for demos of that pipeline. Not for recognising expressions of real "
            "people.",
        ]
    else:
        out += [
            "- Intended for recognising the facial expressions of its labels in face crops like "
            "those of its data set (pose, lighting, age and ethnicity mix of "
            f"{m.get('dataset', 'the data set')}). Expect lower accuracy on faces unlike them.",
        ]
    out += [
        "- An expression is not an emotion: the model labels what a face shows, not what a person "
        "feels. Do not use it to make decisions about people (hiring, policing, health, "
        "education) on its own.",
        "- Probabilities are calibrated on the validation split of the training data; on other "
        "data they may be over- or under-confident. `unknown` answers mark the faces the model "
        "is least sure of, not faces it has never seen the like of.",
        "- Faces are found by a separate face detector (Haar cascade or MediaPipe BlazeFace in "
        "fer-edge); a missed or badly cropped face changes the answer.",
        "",
        "## How to use",
        "",
        "```bash",
        "pip install fer-edge",
        "fer-edge run --model model.onnx --source photo.jpg        # one JSON line per image",
        "fer-edge serve --model model.onnx                         # demo page at /, POST /predict",
        "```",
        "",
        "```python",
        "from fer_export.runtime import FERSession",
        "",
        'session = FERSession("model.onnx")',
        'for face in session.predict("photo.jpg"):',
        "    print(face.box, face.label, face.probabilities)  # label may be 'unknown'",
        "```",
        "",
        "Trained with [fer-train](https://github.com/bandpo-fer/bandpo-fer/tree/main/apps/"
        "fer-train); `report.md` and `metrics.json` next to this card hold every figure above.",
        "",
    ]
    return "\n".join(out)
