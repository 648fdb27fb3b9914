"""Export a FER model (E2-Capsnet and baselines) to one self-contained ONNX file.

The graph is the inference ``forward`` only (eval mode; no reconstruction decoder, no
training branches), traced with torch's dynamo exporter with a symbolic batch axis:

* input ``image``: float32 ``(N, 3, S, S)``, normalised as the metadata says;
* input ``attention`` (``attention="input"`` only): float32 ``(N, 1, S, S)`` in [0, 1];
* output ``scores``: float32 ``(N, num_classes)``.

The preprocessing contract (:class:`~fer_export.contract.ModelContract`) is written into the
file's ``metadata_props``, with the AU map the checkpoint was trained with (``fer.au_source``:
``template``, ``landmarks`` or ``none``) and the rule that places AU centres on landmarks
(``fer.au_rule``, capsnet-model's ``AU_RULE``). A model trained without AU maps (zeros) gets
zeros baked in, not the template. The file is written to a temporary name in the destination
folder, verified (:func:`verify_onnx`, PyTorch vs ONNX Runtime on CPU) and only then renamed,
so a failed export never leaves a half-written or unverified file behind.
:func:`annotate_model` (from :mod:`fer_export.annotate`, torch-free) adds what is known only
after training -- data set, calibration, abstention, provenance -- to an exported file.

Needs the ``export`` extra (torch, onnxscript, capsnet-model).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from fer_export._io import atomic_write_bytes
from fer_export.annotate import annotate_model
from fer_export.contract import (
    ATTENTION_INPUT,
    ATTENTION_MODES,
    AU_SOURCES,
    IMAGE_INPUT,
    SCORES_OUTPUT,
    ContractError,
    ModelContract,
    ModelLoadError,
    read_model,
)
from fer_export.progress import ProgressCallback, ProgressEvent, Reporter

__all__ = [
    "SCORE_FLOOR",
    "BatchCheck",
    "VerificationError",
    "VerifyReport",
    "annotate_model",
    "au_source_of",
    "build_contract",
    "export_onnx",
    "exporter_versions",
    "inference_module",
    "load_checkpoint",
    "relative_difference",
    "verify_onnx",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MIN_OPSET = 18
#: Upper bound given to the exporter for the symbolic batch axis (the ONNX graph keeps a
#: named dimension; the bound only constrains tracing).
MAX_BATCH = 4096
#: :func:`verify_onnx`'s noise floor: its relative criterion measures differences against
#: ``max(largest |reference score|, SCORE_FLOOR)``, so differences up to ``rtol x 1e-5``
#: (1e-7 at the default 1 %) always pass. PyTorch and ONNX Runtime differ by about 5e-9 on
#: untrained capsule models whose lengths are 3e-8 to 2e-7 (measured on e2capsnet and
#: e2capsnet_small at 64 px: the same absolute rounding whatever the score size), which is 2 to
#: 15 % of such scores; on trained models (scores near 1) the floor changes nothing.
SCORE_FLOOR = 1e-5


class VerificationError(RuntimeError):
    """An exported file failed the ONNX checker or does not match the PyTorch model."""

    def __init__(self, message: str, report: VerifyReport | None = None) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# The inference graph


class _ImageOnly(nn.Module):
    """``image (N, 3, S, S) -> scores (N, C)``; attention models use their template map, or
    with ``zero_attention`` an all-zero map (models trained without AU maps)."""

    def __init__(self, model: nn.Module, zero_attention: bool = False) -> None:
        super().__init__()
        self.model = model
        self.zero_attention = zero_attention

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        attention = torch.zeros_like(image[:, :1]) if self.zero_attention else None
        out: torch.Tensor = self.model(image, attention)
        return out


class _ImageAndAttention(nn.Module):
    """``image (N, 3, S, S), attention (N, 1, S, S) -> scores (N, C)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(image, attention)
        return out


def _uses_attention(model: nn.Module) -> bool:
    return bool(getattr(model, "use_attention", False))


def resolve_attention(model: nn.Module, attention: str) -> str:
    """The attention mode to export ``model`` with.

    ``"baked"`` on a model without attention becomes ``"none"`` (there is no map to bake);
    ``"input"`` on such a model and ``"none"`` on an attention model are errors.
    """
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    uses = _uses_attention(model)
    name = type(model).__name__
    if not uses:
        if attention == "input":
            raise ValueError(f"attention='input' but {name} has no attention (use_attention=False)")
        return "none"
    if attention == "none":
        raise ValueError(
            f"attention='none' but {name} uses an attention map: export it 'baked' or 'input'"
        )
    return attention


def inference_module(model: nn.Module, attention: str, au_source: str = "template") -> nn.Module:
    """Wrap ``model`` so its only graph is the inference forward for ``attention`` mode.

    The decoder of capsule models is never called by ``forward``, so it is not traced; the
    wrapper is put in eval mode (batch norm uses running statistics). ``au_source="none"``
    (trained with zero AU maps) bakes zeros instead of the template map into ``"baked"``
    graphs.
    """
    mode = resolve_attention(model, attention)
    if mode == "input":
        wrapper: nn.Module = _ImageAndAttention(model)
    else:
        wrapper = _ImageOnly(model, zero_attention=mode == "baked" and au_source == "none")
    return wrapper.eval()


def au_source_of(model: nn.Module, attention: str, info: Any = None) -> str:
    """The AU-map source (``fer.au_source``) of ``model`` exported in ``attention`` mode:
    ``"none"`` without attention, else the checkpoint's (``info.attention``: ``template``,
    ``landmarks`` or ``none``; ``template`` without ``info``).

    Raises ValueError for an unknown source, and for a landmarks checkpoint exported
    ``"baked"`` (the template would be baked in where the model expects each face's map).
    """
    mode = resolve_attention(model, attention)
    if mode == "none":
        return "none"
    source = str(getattr(info, "attention", "") or "template")
    if source not in AU_SOURCES:
        raise ValueError(
            f"the checkpoint's attention source is {source!r}, expected one of "
            f"{', '.join(AU_SOURCES)}"
        )
    if source == "landmarks" and mode != "input":
        raise ValueError(
            "the checkpoint was trained with landmark AU maps: export it with attention="
            "'input' (the runtime then paints each face's map from its landmarks); 'baked' "
            "would put the mean-face template map inside the graph"
        )
    return source


def _image_size(model: nn.Module) -> int:
    size = getattr(model, "image_size", None)
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"{type(model).__name__} has no positive integer image_size attribute")
    return size


def default_example_inputs(
    model: nn.Module, attention: str, batch: int = 2, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random example inputs at the model's size: ``image (batch, 3, S, S)`` and, for
    ``attention="input"``, ``attention (batch, 1, S, S)`` in [0, 1]."""
    size = _image_size(model)
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=gen)
    if resolve_attention(model, attention) == "input":
        return image, torch.rand(batch, 1, size, size, generator=gen)
    return (image,)


# --------------------------------------------------------------------------------------------
# Metadata


def exporter_versions() -> dict[str, str]:
    """Versions of the tools that produce the file (torch, onnx, onnxscript, ...)."""
    import fer_export

    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    for module in ("onnxscript", "onnxruntime", "capsnet_model"):
        try:
            versions[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            versions[module] = "unknown"
    versions["fer_export"] = fer_export.__version__
    return versions


def _score_kind(model: nn.Module) -> str:
    if hasattr(model, "forward_capsules") and not getattr(model, "length_softmax", False):
        return "capsule_length"
    return "logit"


def template_au_centres() -> tuple[tuple[float, float], ...]:
    """The mean-face template's 20 AU centres (x, y) on the ``MAP_SIZE`` grid."""
    from capsnet_model.attention import MAP_SIZE, au_centres_from_landmarks, mean_face_template

    centres = np.asarray(au_centres_from_landmarks(mean_face_template() * MAP_SIZE), np.float64)
    return tuple((float(x), float(y)) for x, y in centres.reshape(-1, 2))


def build_contract(
    model: nn.Module,
    attention: str,
    *,
    info: Any = None,
    labels: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    face_margin: float = 0.15,
) -> ModelContract:
    """The :class:`ModelContract` for ``model`` exported in ``attention`` mode.

    Explicit ``labels``/``mean``/``std`` win over the checkpoint ``info``
    (:class:`capsnet_model.checkpoint.ModelInfo`), which wins over the defaults
    (``capsnet_model.datasets.EXPRESSIONS``, ImageNet statistics). ``au_source`` comes from
    :func:`au_source_of`, ``au_rule`` from ``capsnet_model.attention.AU_RULE`` (attention
    models only), ``dataset`` from the checkpoint's ``extra["dataset"]`` (the training set's
    name, which capsnet-model's training records) when it has one.
    """
    import capsnet_model
    from capsnet_model.attention import AU_RULE, FALLOFF, MAP_SIZE
    from capsnet_model.datasets import EXPRESSIONS

    mode = resolve_attention(model, attention)
    au_source = au_source_of(model, mode, info)
    size = _image_size(model)
    pre = getattr(info, "preprocess", None)
    if pre is not None and int(pre.image_size) != size:
        raise ValueError(
            f"checkpoint preprocessing is {pre.image_size} px but the model takes {size} px"
        )
    chosen_labels = tuple(labels or (getattr(info, "labels", None) or EXPRESSIONS))
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int) and num_classes != len(chosen_labels):
        raise ValueError(
            f"{len(chosen_labels)} labels {list(chosen_labels)} for a model with "
            f"{num_classes} classes"
        )
    m = tuple(mean) if mean is not None else (tuple(pre.mean) if pre else IMAGENET_MEAN)
    s = tuple(std) if std is not None else (tuple(pre.std) if pre else IMAGENET_STD)
    if len(m) != 3 or len(s) != 3:
        raise ValueError(f"mean and std need 3 values, got {m}, {s}")
    extra: dict[str, Any] = {"model_class": type(model).__name__}
    recorded = (getattr(info, "extra", None) or {}).get("dataset")
    dataset = recorded.strip() if isinstance(recorded, str) and recorded.isprintable() else ""
    if info is not None:
        extra["model_kwargs"] = dict(getattr(info, "kwargs", {}) or {})
        extra["attention_source"] = str(getattr(info, "attention", ""))
        if getattr(info, "extra", None):
            extra["checkpoint"] = dict(info.extra)
    return ModelContract(
        labels=tuple(str(v) for v in chosen_labels),
        input_size=size,
        mean=(float(m[0]), float(m[1]), float(m[2])),
        std=(float(s[0]), float(s[1]), float(s[2])),
        attention=mode,
        score_kind=_score_kind(model),
        model_name=str(getattr(info, "name", "") or type(model).__name__),
        model_version=str(capsnet_model.__version__),
        precision="fp32",
        face_margin=face_margin,
        au_centres=template_au_centres() if mode != "none" else (),
        au_grid=int(MAP_SIZE),
        au_falloff=float(FALLOFF),
        exporter=exporter_versions(),
        extra=extra,
        dataset=dataset,
        au_source=au_source,
        au_rule=tuple((tuple(row.landmarks), float(row.down)) for row in AU_RULE)
        if mode != "none"
        else (),
    )


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace every ``fer.*`` entry of ``proto.metadata_props`` with ``metadata``."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("fer.")]
    del proto.metadata_props[:]
    for key, value in [*keep, *sorted(metadata.items())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata (FX node text, module paths, stack
    traces): about 0.1 MB on a small model, and it names local source files."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        del value.metadata_props[:]


def read_contract(path: str | Path) -> ModelContract:
    """The contract stored in an ONNX file (weights not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return ModelContract.from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


# --------------------------------------------------------------------------------------------
# Files


def atomic_write_model(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Serialise ``proto`` to one file (no external data) via a temporary file + rename."""
    return atomic_write_bytes(path, proto.SerializeToString())  # ValueError past 2 GB


def load_checkpoint(path: str | Path) -> tuple[nn.Module, Any]:
    """``capsnet_model.checkpoint.load_model`` with errors naming the file.

    Raises :class:`FileNotFoundError` for a missing file and :class:`ValueError` for a file
    that is not a capsnet-model checkpoint.
    """
    from capsnet_model.checkpoint import load_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model, info = load_model(path)
    return model, info


def _check_graph(proto: onnx.ModelProto, inputs: Sequence[str], where: str) -> None:
    graph = proto.graph
    got_in = [i.name for i in graph.input]
    got_out = [o.name for o in graph.output]
    if got_in != list(inputs) or got_out != [SCORES_OUTPUT]:
        raise VerificationError(
            f"{where}: graph inputs {got_in} / outputs {got_out}, expected {list(inputs)} / "
            f"{[SCORES_OUTPUT]}"
        )
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value") or not dims[0].dim_param:
            raise VerificationError(f"{where}: batch axis of {value.name!r} is not symbolic")


def export_onnx(
    model: nn.Module | str | Path,
    path: str | Path,
    example_inputs: Sequence[torch.Tensor] | None = None,
    *,
    info: Any = None,
    attention: str = "baked",
    opset: int = MIN_OPSET,
    labels: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    face_margin: float = 0.15,
    verify: bool = True,
    batch_sizes: Sequence[int] = (1, 4),
    atol: float = 1e-4,
    progress: ProgressCallback | None = None,
) -> Path:
    """Export ``model`` (a module or a checkpoint path) to one ONNX file at ``path``.

    Args:
        model: an ``nn.Module`` (``num_classes``, ``image_size``, ``use_attention``
            attributes) or a ``.safetensors`` checkpoint written by capsnet-model (its
            :class:`ModelInfo` then supplies labels and preprocessing).
        path: destination ``.onnx``; written atomically, replaced only after verification.
        example_inputs: tracing inputs with batch >= 2 (``image (B, 3, S, S)`` and for
            ``attention="input"`` ``attention (B, 1, S, S)``); default random, batch 2.
        info: a ``ModelInfo`` for a module (labels, preprocessing, kwargs in the metadata).
        attention: ``"baked"`` (template map inside the graph, input ``image``; zeros for a
            checkpoint trained without AU maps), ``"input"`` (inputs ``image``, ``attention``;
            required for checkpoints trained with landmark maps) or ``"none"``; ``"baked"`` on
            a model without attention exports ``"none"``.
        opset: ONNX opset (>= 18).
        labels, mean, std, face_margin: override the contract's values.
        verify: run :func:`verify_onnx` (batch sizes ``batch_sizes``, tolerance ``atol``)
            before the file is moved into place.
        progress: called with a :class:`~fer_export.progress.ProgressEvent` (task
            ``"export"``) as each phase starts and ends: ``tracing`` (``torch.export``),
            ``exporting`` (the ONNX graph, optimised, with its metadata), then with ``verify``
            ``checking`` (the ONNX checker) and ``verifying`` (PyTorch vs ONNX Runtime).
            None (default): silent.

    Returns the written path. Raises :class:`VerificationError` (nothing written) when the
    graph fails the checker or does not match PyTorch, ``ValueError`` for bad arguments.
    """
    path = Path(path)
    if isinstance(model, (str, Path)):
        model, loaded = load_checkpoint(model)
        info = info if info is not None else loaded
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a checkpoint path, got {type(model)}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (dynamo exporter), got {opset}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    mode = resolve_attention(model, attention)
    au_source = au_source_of(model, mode, info)
    reporter = Reporter(progress, "export")
    was_training = model.training
    model.eval()
    try:
        wrapper = inference_module(model, mode, au_source)
        args = (
            tuple(example_inputs)
            if example_inputs is not None
            else default_example_inputs(model, mode)
        )
        names = [IMAGE_INPUT, ATTENTION_INPUT] if mode == "input" else [IMAGE_INPUT]
        if len(args) != len(names):
            raise ValueError(f"attention={mode!r} takes {len(names)} example inputs ({names})")
        if args[0].ndim != 4 or args[0].shape[0] < 2:
            raise ValueError(
                f"example image must be (B, 3, S, S) with B >= 2 (a batch of 1 would be "
                f"specialised), got {tuple(args[0].shape)}"
            )
        contract = build_contract(
            model, mode, info=info, labels=labels, mean=mean, std=std, face_margin=face_margin
        )
        shapes = tuple({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)} for _ in names)
        with torch.no_grad():
            # Quiet: no progress lines, no "torchvision is not installed" warnings.
            logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
            with reporter.phase("tracing"):
                traced = _trace(wrapper, args, shapes)
            with reporter.phase("exporting"):
                program = torch.onnx.export(
                    wrapper if traced is None else traced,
                    args,
                    dynamo=True,
                    verbose=False,
                    input_names=names,
                    output_names=[SCORES_OUTPUT],
                    dynamic_shapes=shapes,
                    opset_version=opset,
                    external_data=False,
                    optimize=True,
                )
                if program is None:  # only the legacy exporter returns None
                    raise RuntimeError("torch.onnx.export returned no ONNXProgram")
                proto = program.model_proto
                _check_graph(proto, names, str(path))
                strip_debug_info(proto)
                set_metadata(proto, contract.to_metadata())
                data = proto.SerializeToString()
                del program, proto

        def as_export(event: ProgressEvent) -> None:
            if progress is not None:
                progress(replace(event, task="export"))

        def check(tmp: Path) -> None:
            verify_onnx(tmp, model, batch_sizes=batch_sizes, atol=atol, progress=as_export)

        # Verified as the temporary file, so a model that fails never replaces ``path``.
        atomic_write_bytes(path, data, check=check if verify else None)
    finally:
        model.train(was_training)
    return path


def _trace(
    wrapper: nn.Module, args: tuple[torch.Tensor, ...], shapes: tuple[dict[int, Any], ...]
) -> Any:
    """``wrapper``'s ExportedProgram from ``torch.export.export`` (non-strict: the first way
    ``torch.onnx.export`` tries, giving the same graph), or None when that fails -- the
    exporter then tries its other ways itself, as it did before tracing was a phase of its
    own."""
    try:
        return torch.export.export(wrapper, args, dynamic_shapes=shapes, strict=False)
    except Exception:  # torch.export raises many types; the exporter reports its own error
        return None


# --------------------------------------------------------------------------------------------
# Verification


@dataclass
class BatchCheck:
    """PyTorch vs ONNX Runtime at one batch size."""

    batch: int
    max_abs_diff: float
    #: Fraction of rows with the same top-1 class.
    argmax_agreement: float
    #: Rows whose top-1 differs although the reference's top-1/top-2 margin exceeds atol.
    argmax_mismatches: int
    finite: bool


@dataclass
class VerifyReport:
    """What :func:`verify_onnx` measured; ``passed`` when every check held."""

    path: str
    atol: float
    checker_ok: bool = False
    batches: list[BatchCheck] = field(default_factory=list)
    zero_input_finite: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.checker_ok and self.zero_input_finite and not self.problems

    @property
    def max_abs_diff(self) -> float:
        return max((b.max_abs_diff for b in self.batches), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["max_abs_diff"] = self.max_abs_diff
        return out

    def summary(self) -> str:
        lines = [f"{self.path}: {'PASSED' if self.passed else 'FAILED'} (atol {self.atol:g})"]
        lines.append(f"  onnx checker (full): {'ok' if self.checker_ok else 'failed'}")
        for b in self.batches:
            lines.append(
                f"  batch {b.batch:>4}: max |diff| {b.max_abs_diff:.3g}, "
                f"top-1 agreement {b.argmax_agreement:.1%}, finite {b.finite}"
            )
        lines.append(f"  all-zero input finite: {self.zero_input_finite}")
        lines.extend(f"  problem: {p}" for p in self.problems)
        return "\n".join(lines)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types (Fail, InvalidGraph...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(
            f"onnxruntime cannot load {path}: {type(exc).__name__}: {first}"
        ) from exc


def _check_comparable(path: Path, model: nn.Module) -> ModelContract:
    """``path``'s contract; ContractError when it cannot describe ``model``: another input
    size, or an attention input the model does not take."""
    contract = read_model(path).contract
    size = _image_size(model)
    if contract.input_size != size:
        raise ContractError(
            f"{path}: fer.input_size is {contract.input_size} but {type(model).__name__} takes "
            f"{size} x {size} images: the file was not exported from this model"
        )
    if contract.attention == "input" and not _uses_attention(model):
        raise ContractError(
            f"{path}: fer.attention is 'input' but {type(model).__name__} has no attention "
            "map input: the file was not exported from this model"
        )
    return contract


def _torch_scores(
    model: nn.Module, feeds: dict[str, np.ndarray], mode: str, zero_attention: bool = False
) -> np.ndarray:
    image = torch.from_numpy(feeds[IMAGE_INPUT])
    with torch.no_grad():
        if mode == "input":
            out = model(image, torch.from_numpy(feeds[ATTENTION_INPUT]))
        elif zero_attention:
            out = model(image, torch.zeros_like(image[:, :1]))
        else:
            out = model(image)
    return np.asarray(out.detach().float().cpu().numpy())


def relative_difference(got: np.ndarray, want: np.ndarray, floor: float = SCORE_FLOOR) -> float:
    """The largest ``|got - want|`` over ``max(largest |want|, floor)``: the difference
    relative to the scores' size, with differences at float32 rounding level on tiny scores
    (below ``floor``) measured against ``floor`` instead."""
    diff = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
    return diff / max(float(np.abs(want).max()), floor)


def verify_onnx(
    path: str | Path,
    model: nn.Module | str | Path,
    *,
    batch_sizes: Sequence[int] = (1, 4),
    atol: float = 1e-4,
    rtol: float = 1e-2,
    seed: int = 0,
    score_floor: float = SCORE_FLOOR,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Check ``path`` against ``model`` (a module or a checkpoint path); raise on failure.

    Runs ``onnx.checker.check_model(full_check=True)``, then for each batch size ``N`` feeds
    the same random ``image (N, 3, S, S)`` (standard normal; and ``attention (N, 1, S, S)``
    uniform in [0, 1] for ``"input"`` files) to PyTorch and ONNX Runtime (CPU): the largest
    absolute score difference must be <= ``atol`` and <= ``rtol`` times ``max(largest
    |reference score|, score_floor)`` (untrained capsule models give lengths ~1e-7, where atol
    alone proves nothing; below ``score_floor`` float32 rounding, about 5e-9 there, would trip
    a purely relative test: see :data:`SCORE_FLOOR`) and the top-1 class must agree on every
    row whose reference top-1/top-2 margin exceeds ``atol`` (exact ties are ambiguous). An
    all-zero input must give finite scores. A file whose contract says the model was trained
    with zero AU maps (``fer.au_source`` ``none``) is compared with PyTorch fed zero maps.
    Returns the :class:`VerifyReport`; raises :class:`VerificationError` (with ``.report``)
    when any check fails.

    Before comparing anything, ``path`` is read with :func:`fer_export.contract.read_model`:
    :class:`FileNotFoundError`, :class:`~fer_export.contract.ModelLoadError` or
    :class:`~fer_export.contract.ContractError` for a bad file, no or invalid ``fer.*``
    metadata, or a contract that does not fit ``model`` (another input size, an attention
    input the model lacks); ``ModelLoadError`` also when ONNX Runtime cannot load the file.
    ONNX Runtime failing on a batch is a failed check (``VerificationError``).

    ``progress``: called with a :class:`~fer_export.progress.ProgressEvent` (task
    ``"verify"``) as the phases ``checking`` (the ONNX checker) and ``verifying`` (PyTorch
    vs ONNX Runtime) start and end; None (default): silent.
    """
    return _verify(
        path, model, Reporter(progress, "verify"), batch_sizes=batch_sizes, atol=atol,
        rtol=rtol, seed=seed, score_floor=score_floor,
    )  # fmt: skip


def _verify(
    path: str | Path,
    model: nn.Module | str | Path,
    reporter: Reporter,
    *,
    batch_sizes: Sequence[int] = (1, 4),
    atol: float = 1e-4,
    rtol: float = 1e-2,
    seed: int = 0,
    score_floor: float = SCORE_FLOOR,
) -> VerifyReport:
    """:func:`verify_onnx`, its phases reported to ``reporter``."""
    path = Path(path)
    start = time.perf_counter()
    if isinstance(model, (str, Path)):
        model = load_checkpoint(model)[0]
    model.eval()
    contract = _check_comparable(path, model)
    zero_attention = contract.au_map_source == "none" and _uses_attention(model)
    report = VerifyReport(path=str(path), atol=atol)
    with reporter.phase("checking"):
        try:
            onnx.checker.check_model(str(path), full_check=True)
            report.checker_ok = True
        except Exception as exc:  # onnx raises ValidationError / InferenceError / others
            report.problems.append(f"onnx checker: {str(exc).strip().splitlines()[0]}")
            raise VerificationError(f"{path} fails the ONNX checker: {exc}", report) from exc
    with reporter.phase("verifying"):
        return _compare(
            path, model, report, start, zero_attention, batch_sizes, atol, rtol, seed, score_floor
        )


def _compare(
    path: Path,
    model: nn.Module,
    report: VerifyReport,
    start: float,
    zero_attention: bool,
    batch_sizes: Sequence[int],
    atol: float,
    rtol: float,
    seed: int,
    score_floor: float,
) -> VerifyReport:
    """The PyTorch vs ONNX Runtime part of :func:`verify_onnx` (the checker passed)."""
    sess = _session(path)
    inputs = [i.name for i in sess.get_inputs()]
    mode = "input" if ATTENTION_INPUT in inputs else "baked"
    size = _image_size(model)
    rng = np.random.default_rng(seed)

    def feeds_for(n: int, zero: bool = False) -> dict[str, np.ndarray]:
        shape = (n, 3, size, size)
        img = np.zeros(shape, np.float32) if zero else rng.standard_normal(shape, np.float32)
        feeds = {IMAGE_INPUT: img}
        if mode == "input":
            att_shape = (n, 1, size, size)
            feeds[ATTENTION_INPUT] = (
                np.zeros(att_shape, np.float32) if zero else rng.random(att_shape, np.float32)
            )
        return feeds

    def ort_scores(feeds: dict[str, np.ndarray], what: str) -> np.ndarray:
        try:
            return np.asarray(sess.run([SCORES_OUTPUT], feeds)[0])
        except Exception as exc:  # ORT's own types: a graph that fails on valid inputs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            report.problems.append(f"{what}: onnxruntime failed: {type(exc).__name__}: {first}")
            report.seconds = time.perf_counter() - start
            raise VerificationError(
                f"{path}: onnxruntime fails on {what}: {type(exc).__name__}: {first}", report
            ) from exc

    for n in batch_sizes:
        feeds = feeds_for(int(n))
        want = _torch_scores(model, feeds, mode, zero_attention)
        got = ort_scores(feeds, f"batch {n}")
        if got.shape != want.shape:
            report.problems.append(f"batch {n}: ONNX shape {got.shape} vs torch {want.shape}")
            continue
        finite = bool(np.isfinite(got).all())
        diff = float(np.abs(got - want).max()) if finite else float("inf")
        same = want.argmax(1) == got.argmax(1)
        ordered = np.sort(want, axis=1)
        margin = ordered[:, -1] - ordered[:, -2] if want.shape[1] > 1 else np.full(n, np.inf)
        mismatches = int(((~same) & (margin > atol)).sum())
        report.batches.append(BatchCheck(int(n), diff, float(same.mean()), mismatches, finite))
        if not finite:
            report.problems.append(f"batch {n}: non-finite ONNX scores")
        elif diff > atol:
            report.problems.append(f"batch {n}: max |torch - onnx| {diff:.3g} > atol {atol:g}")
        elif relative_difference(got, want, score_floor) > rtol:
            scale = float(np.abs(want).max())
            report.problems.append(
                f"batch {n}: max |torch - onnx| {diff:.3g} > {rtol:g} x max(max |score| "
                f"{scale:.3g}, floor {score_floor:g})"
            )
        if mismatches:
            report.problems.append(f"batch {n}: top-1 differs on {mismatches} of {n} rows")

    zeros = ort_scores(feeds_for(2, zero=True), "the all-zero input")
    report.zero_input_finite = bool(np.isfinite(zeros).all())
    if not report.zero_input_finite:
        report.problems.append("all-zero input gives NaN/inf scores")
    report.seconds = time.perf_counter() - start
    if not report.passed:
        raise VerificationError(
            f"{path} does not match the PyTorch model: " + "; ".join(report.problems), report
        )
    return report
