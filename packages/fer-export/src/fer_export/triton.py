"""Triton Inference Server: a model repository from an exported FER model, and a client for it.

:func:`write_repository` turns an exported ``.onnx`` file (with its ``fer.*`` contract) into one
model of a Triton model repository::

    OUT/NAME/config.pbtxt           onnxruntime backend, inputs/outputs from the model, dynamic
                                    batching, instance groups, optional TensorRT (fp16)
    OUT/NAME/labels.txt             one label a line (the scores output's label_filename)
    OUT/NAME/1/model.onnx           the model, byte for byte
    OUT/NAME/1/fer_contract.json    how to prepare crops exactly as FERSession does

``config.pbtxt`` also carries the ``fer.*`` metadata as model parameters, so a client can read
the preprocessing contract from the server itself (Triton's model-config endpoint); the
onnxruntime backend ignores parameters it does not know. ``backend="python"`` writes a
python-backend twin instead (``1/model.py`` runs the same ``model.onnx`` with onnxruntime): for
servers without the onnxruntime backend, such as the ``tritonserver`` bundled with
``nvidia-pytriton``.

:class:`TritonFERClient` detects and crops faces locally (the same code as
:class:`~fer_export.session.FERSession`) and classifies them on the server, returning the same
:class:`~fer_export.predict.Prediction` objects. It needs ``tritonclient`` (not a dependency of
fer-export): ``pip install "tritonclient[http]"`` or ``"tritonclient[grpc]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_export._io import _umask, new_file_mode
from fer_export.contract import (
    ATTENTION_INPUT,
    IMAGE_INPUT,
    LAYOUT,
    PREFIX,
    SCORES_OUTPUT,
    ContractError,
    ModelContract,
    ModelFile,
    ModelLoadError,
    read_model,
)
from fer_export.predict import FacePredictor

if TYPE_CHECKING:
    from fer_export.faces import Detector
    from fer_export.predict import LandmarkFinder

__all__ = [
    "CONFIG_FILE",
    "CONTRACT_FILE",
    "LABELS_FILE",
    "MODEL_FILE",
    "RepositoryExistsError",
    "TritonClientMissingError",
    "TritonConfigError",
    "TritonFERClient",
    "TritonModelMismatchError",
    "TritonOptions",
    "TritonServerError",
    "TritonUnavailableError",
    "contract_document",
    "default_model_name",
    "load_contract",
    "python_backend_model",
    "render_config",
    "write_repository",
]

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
CONTRACT_FILE = "fer_contract.json"
VERSION = "1"
BACKENDS = ("onnxruntime", "python")
KINDS = ("gpu", "cpu")
DEFAULT_MAX_BATCH = 32
#: Filtered to those <= max_batch (``max_batch`` itself when none is).
DEFAULT_PREFERRED_BATCH = (8, 32)
DEFAULT_QUEUE_DELAY_US = 500
#: Triton keeps batch sizes and counts in int32.
_INT32_MAX = 2**31 - 1
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
#: ONNX element types of FER graphs -> Triton data types (IO stays float32; the others are
#: listed so a future file gets a config instead of an error).
_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64"}
#: Triton data type -> the datatype string of its inference protocol.
_WIRE_TYPES = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_FP64": "FP64"}


class TritonConfigError(ValueError):
    """A repository that cannot be written as asked: a bad option (named, with its value and
    what it should be) or a model Triton cannot batch."""


class RepositoryExistsError(TritonConfigError):
    """The model folder ``OUT/NAME`` exists and is not empty (pass ``force=True`` /
    ``--force`` to replace it)."""


class TritonClientMissingError(ModuleNotFoundError):
    """``tritonclient`` (or the part of it a protocol needs) is not installed."""


class TritonUnavailableError(ConnectionError):
    """The Triton server cannot be reached, or the model is not loaded there."""


class TritonServerError(RuntimeError):
    """The server answered a request with an error (the message is the server's)."""


class TritonModelMismatchError(ContractError):
    """The model on the server does not match the FER contract the client uses."""


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class TritonOptions:
    """How Triton should serve the model (``config.pbtxt``); every value is checked.

    ``max_batch``: Triton's ``max_batch_size``; ``preferred_batch``: the dynamic batcher's
    preferred sizes (default :data:`DEFAULT_PREFERRED_BATCH` up to ``max_batch``);
    ``queue_delay_us``: how long the batcher may hold a request to fill a batch; ``kind``:
    ``"gpu"`` (``KIND_GPU``) or ``"cpu"``; ``instances``: model instances (per GPU for
    ``"gpu"``); ``gpus``: the GPUs to use (default all); ``tensorrt``: ONNX Runtime's TensorRT
    execution provider (GPU, onnxruntime backend); ``fp16``: TensorRT may use fp16 kernels
    (implies ``tensorrt``); ``trt_workspace_mb``: TensorRT's workspace; ``trt_cache_dir``:
    engine cache folder *on the server* (engines are rebuilt at every load without one);
    ``backend``: ``"onnxruntime"`` or its ``"python"`` twin; ``warmup``: a zero batch of 1 at
    load time (TensorRT builds its engine then, not on the first request).
    """

    max_batch: int = DEFAULT_MAX_BATCH
    preferred_batch: tuple[int, ...] | None = None
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    kind: str = "gpu"
    instances: int = 1
    gpus: tuple[int, ...] | None = None
    tensorrt: bool = False
    fp16: bool = False
    trt_workspace_mb: int = 1024
    trt_cache_dir: str | None = None
    backend: str = "onnxruntime"
    warmup: bool = True

    def __post_init__(self) -> None:
        def bad(what: str, value: Any, expected: str) -> TritonConfigError:
            return TritonConfigError(f"{what} is {value!r}, expected {expected}")

        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not integer(self.max_batch) or not 1 <= self.max_batch <= _INT32_MAX:
            raise bad("max_batch", self.max_batch, f"an integer from 1 to {_INT32_MAX}")
        if self.preferred_batch is not None:
            sizes = tuple(self.preferred_batch)
            if not sizes:
                raise bad("preferred_batch", sizes, "at least one batch size")
            for size in sizes:
                if not integer(size) or not 1 <= size <= self.max_batch:
                    raise bad(
                        "preferred_batch", sizes,
                        f"batch sizes from 1 to max_batch ({self.max_batch})",
                    )  # fmt: skip
            object.__setattr__(self, "preferred_batch", tuple(sorted(set(sizes))))
        if not integer(self.queue_delay_us) or not 0 <= self.queue_delay_us <= _INT32_MAX:
            raise bad("queue_delay_us", self.queue_delay_us, "an integer >= 0 (microseconds)")
        if self.kind not in KINDS:
            raise bad("kind", self.kind, f"one of {', '.join(KINDS)}")
        if not integer(self.instances) or not 1 <= self.instances <= 1024:
            raise bad("instances", self.instances, "an integer from 1 to 1024")
        if self.gpus is not None:
            gpus = tuple(self.gpus)
            if not gpus or any(not integer(g) or g < 0 for g in gpus):
                raise bad("gpus", gpus, "one or more GPU numbers >= 0")
            if self.kind != "gpu":
                raise bad("gpus", gpus, "no GPUs with kind 'cpu'")
            object.__setattr__(self, "gpus", tuple(sorted(set(gpus))))
        if self.backend not in BACKENDS:
            raise bad("backend", self.backend, f"one of {', '.join(BACKENDS)}")
        if self.fp16:
            object.__setattr__(self, "tensorrt", True)
        if self.tensorrt and self.kind != "gpu":
            raise bad("kind", self.kind, "'gpu' with TensorRT (tensorrt/fp16)")
        if self.tensorrt and self.backend != "onnxruntime":
            raise bad("backend", self.backend, "'onnxruntime' with TensorRT (tensorrt/fp16)")
        if not integer(self.trt_workspace_mb) or not 1 <= self.trt_workspace_mb <= 2**20:
            raise bad("trt_workspace_mb", self.trt_workspace_mb, "an integer from 1 to 1048576")
        if self.trt_cache_dir is not None and (
            not isinstance(self.trt_cache_dir, str) or not self.trt_cache_dir.strip()
        ):
            raise bad("trt_cache_dir", self.trt_cache_dir, "a folder path on the server")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The preferred batch sizes in effect (the default ones up to ``max_batch``)."""
        if self.preferred_batch is not None:
            return self.preferred_batch
        sizes = tuple(s for s in DEFAULT_PREFERRED_BATCH if s <= self.max_batch)
        return sizes or (self.max_batch,)


# ---------------------------------------------------------------------------------------------
# config.pbtxt


def _quote(text: str) -> str:
    """``text`` as a protobuf text-format string literal (ASCII only: anything else escaped
    as the octal bytes of its UTF-8 encoding, which Triton's C++ parser and Python's
    ``text_format`` both read)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def default_model_name(model: ModelFile) -> str:
    """The Triton model name for ``model``: its ``fer.model_name`` (or else the file's stem)
    with every character outside ``A-Z a-z 0-9 _ . -`` replaced by ``_`` (``"fer"`` when
    nothing usable is left)."""
    raw = model.contract.model_name.strip() or model.path.stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", raw).lstrip(".")
    return name if name.strip("_.-") else "fer"


def _check_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not _NAME_CHARS.fullmatch(name)
        or name.startswith(".")
        or len(name) > 200
    ):
        raise TritonConfigError(
            f"model name {name!r} is not usable, expected 1 to 200 characters from "
            "A-Z a-z 0-9 _ . - not starting with '.' (it names the model's folder)"
        )
    return name


def _io_types(model: ModelFile) -> dict[str, str]:
    """Triton data type of each graph input/output the contract names, from the graph."""
    graph = model.proto.graph
    values = {vi.name: vi for vi in (*graph.input, *graph.output)}
    out: dict[str, str] = {}
    for name in (*model.contract.inputs, SCORES_OUTPUT):
        elem = int(values[name].type.tensor_type.elem_type) or 1  # 0: undeclared -> float32
        if elem not in _TRITON_TYPES:
            raise TritonConfigError(
                f"{model.path}: {name!r} has ONNX element type {elem}, expected one of "
                f"{sorted(_TRITON_TYPES)} (float32, float16, float64)"
            )
        out[name] = _TRITON_TYPES[elem]
    return out


def _check_batchable(model: ModelFile) -> None:
    if model.static_batch is not None:
        raise TritonConfigError(
            f"{model.path} has a static batch size of {model.static_batch}; Triton's dynamic "
            "batching needs a dynamic batch axis (fer-export export writes one)"
        )
    for init in model.proto.graph.initializer:
        if init.data_location == 1:  # onnx.TensorProto.EXTERNAL
            raise TritonConfigError(
                f"{model.path} keeps weights in external files ({init.name!r}); expected one "
                "self-contained .onnx file (fer-export export writes one)"
            )


def _shapes(model: ModelFile) -> dict[str, tuple[int, ...]]:
    """Per-sample dims (no batch axis) of each input and the output."""
    s, contract = model.contract.input_size, model.contract
    shapes: dict[str, tuple[int, ...]] = {IMAGE_INPUT: (3, s, s)}
    if contract.attention == "input":
        shapes[ATTENTION_INPUT] = (1, s, s)
    shapes[SCORES_OUTPUT] = (contract.num_classes,)
    return shapes


def render_config(model: ModelFile, name: str, options: TritonOptions | None = None) -> str:
    """The text of ``config.pbtxt`` for ``model`` served as ``name`` (protobuf text format of
    Triton's ``ModelConfig``).

    Raises :class:`TritonConfigError` for a bad name, a model with a static batch size or
    external weights.
    """
    options = TritonOptions() if options is None else options
    _check_name(name)
    _check_batchable(model)
    contract = model.contract
    types = _io_types(model)
    shapes = _shapes(model)
    # Quoted: a file name may hold a line break, which would end the comment.
    lines = [
        f"# Written by fer-export from {_quote(model.path.name)}: "
        f"{_quote(contract.model_name)} {_quote(contract.model_version)}",
        f"# Preprocessing: {VERSION}/{CONTRACT_FILE}, or the fer.* parameters below.",
        f"name: {_quote(name)}",
    ]
    if options.backend == "onnxruntime":
        lines += ['platform: "onnxruntime_onnx"', 'backend: "onnxruntime"']
    else:
        lines += ['backend: "python"']
    lines += [f"max_batch_size: {options.max_batch}", "input ["]
    inputs = list(contract.inputs)
    for index, io in enumerate(inputs):
        lines += [
            "  {",
            f"    name: {_quote(io)}",
            f"    data_type: {types[io]}",
            *(["    format: FORMAT_NCHW"] if io == IMAGE_INPUT else []),
            f"    dims: {_dims(shapes[io])}",
            "  }" + ("," if index < len(inputs) - 1 else ""),
        ]
    lines += [
        "]",
        "output [",
        "  {",
        f"    name: {_quote(SCORES_OUTPUT)}",
        f"    data_type: {types[SCORES_OUTPUT]}",
        f"    dims: {_dims(shapes[SCORES_OUTPUT])}",
        f"    label_filename: {_quote(LABELS_FILE)}",
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: {_dims(options.batch_sizes)}",
        f"  max_queue_delay_microseconds: {options.queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {options.instances}",
        f"    kind: {'KIND_GPU' if options.kind == 'gpu' else 'KIND_CPU'}",
        *([f"    gpus: {_dims(options.gpus)}"] if options.gpus else []),
        "  }",
        "]",
    ]
    if options.tensorrt:
        lines += _tensorrt_lines(model, options)
    if options.warmup:
        lines += _warmup_lines(model, types, shapes)
    lines += ["parameters ["]
    metadata = sorted((k, v) for k, v in model.metadata.items() if k.startswith(PREFIX))
    for index, (key, value) in enumerate(metadata):
        comma = "," if index < len(metadata) - 1 else ""
        lines.append(f"  {{ key: {_quote(key)} value {{ string_value: {_quote(value)} }} }}{comma}")
    lines.append("]")
    return "\n".join(lines) + "\n"


def _tensorrt_lines(model: ModelFile, options: TritonOptions) -> list[str]:
    contract = model.contract
    s = contract.input_size
    precision = "FP16" if options.fp16 else ("INT8" if contract.precision == "int8" else "FP32")

    def profile(batch: int) -> str:
        shapes = [f"{IMAGE_INPUT}:{batch}x3x{s}x{s}"]
        if contract.attention == "input":
            shapes.append(f"{ATTENTION_INPUT}:{batch}x1x{s}x{s}")
        return ",".join(shapes)

    # One optimisation profile from 1 to max_batch, tuned for the largest preferred size:
    # without it TensorRT builds a new engine for each new batch size it meets.
    parameters = [
        ("precision_mode", precision),
        ("max_workspace_size_bytes", str(options.trt_workspace_mb * 2**20)),
        ("trt_profile_min_shapes", profile(1)),
        ("trt_profile_opt_shapes", profile(options.batch_sizes[-1])),
        ("trt_profile_max_shapes", profile(options.max_batch)),
    ]
    if options.trt_cache_dir is not None:
        parameters += [
            ("trt_engine_cache_enable", "true"),
            ("trt_engine_cache_path", options.trt_cache_dir),
            ("trt_timing_cache_enable", "true"),
            ("trt_timing_cache_path", options.trt_cache_dir),
        ]
    return [
        "optimization {",
        "  execution_accelerators {",
        "    gpu_execution_accelerator [",
        "      {",
        '        name: "tensorrt"',
        *(f"        parameters {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in parameters),
        "      }",
        "    ]",
        "  }",
        "}",
    ]


def _warmup_lines(
    model: ModelFile, types: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]]
) -> list[str]:
    lines = ["model_warmup [", "  {", '    name: "zeros_batch_1"', "    batch_size: 1"]
    for io in model.contract.inputs:
        lines += [
            "    inputs {",
            f"      key: {_quote(io)}",
            "      value {",
            f"        data_type: {types[io]}",
            f"        dims: {_dims(shapes[io])}",
            "        zero_data: true",
            "      }",
            "    }",
        ]
    return [*lines, "  }", "]"]


# ---------------------------------------------------------------------------------------------
# The preprocessing contract as JSON


def contract_document(model: ModelFile, name: str) -> dict[str, Any]:
    """The JSON next to ``model.onnx``: everything a client needs to prepare crops exactly as
    :class:`~fer_export.session.FERSession` does, the Triton tensors, and the ``fer.*``
    metadata as stored in the model (:func:`load_contract` reads the contract back from it).
    """
    contract = model.contract
    s = contract.input_size
    types = _io_types(model)
    shapes = _shapes(model)

    def tensor(io: str) -> dict[str, Any]:
        return {"name": io, "datatype": _WIRE_TYPES[types[io]], "shape": [-1, *shapes[io]]}

    return {
        "triton_model": name,
        "inputs": [tensor(io) for io in contract.inputs],
        "outputs": [tensor(SCORES_OUTPUT)],
        "labels": list(contract.labels),
        "score_kind": contract.score_kind,
        "input_size": s,
        "layout": LAYOUT,
        "channel_order": contract.channel_order,
        "pixel_scale": contract.pixel_scale,
        "mean": list(contract.mean),
        "std": list(contract.std),
        "face_margin": contract.face_margin,
        "attention": contract.attention,
        "au_template": {
            "centres": [list(c) for c in contract.au_centres],
            "grid": contract.au_grid,
            "falloff": contract.au_falloff,
            "note": (
                f"for attention 'input': input {ATTENTION_INPUT!r} is max(0, 1 - falloff * "
                "(|x - cx| + |y - cy|)) over the centres on a grid x grid map, resized "
                f"(bilinear) to {s} x {s}; 'baked' models carry it inside the graph"
            ),
        },
        "steps": [
            "detect faces: (x, y, w, h) boxes in the RGB image",
            "grow each box by face_margin x its width/height on every side, clip to the image",
            f"resize the crop to {s} x {s}: area interpolation when shrinking, bilinear otherwise",
            "reorder channels to channel_order (the image is RGB)",
            "x = pixel * pixel_scale; x = (x - mean) / std per channel (float32)",
            f"transpose to {LAYOUT}: ({IMAGE_INPUT!r} is N x 3 x {s} x {s})",
        ],
        "metadata": {k: v for k, v in model.metadata.items() if k.startswith(PREFIX)},
    }


def load_contract(path: str | os.PathLike[str]) -> ModelContract:
    """The contract in ``path``: a ``fer_contract.json`` (:func:`contract_document`) or an
    exported ``.onnx`` file.

    Raises FileNotFoundError, :class:`~fer_export.contract.ModelLoadError` (not JSON or not
    ONNX) or :class:`~fer_export.contract.ContractError` (no or invalid ``fer.*`` metadata).
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return read_model(path).contract
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"contract file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} cannot be read as UTF-8 text ({exc})") from exc
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{path} is not JSON ({exc})") from exc
    metadata = document.get("metadata") if isinstance(document, dict) else None
    if not isinstance(metadata, dict):
        raise ContractError(
            f"{path} has no 'metadata' object, expected the {CONTRACT_FILE} that "
            "fer-export triton writes"
        )
    return ModelContract.from_metadata(metadata, str(path))


# ---------------------------------------------------------------------------------------------
# The python-backend twin

_PYTHON_MODEL = '''\
"""Triton python-backend twin of an onnxruntime-backend FER model (written by fer-export).

Runs this version folder's model.onnx with onnxruntime. The requests Triton's dynamic batcher
hands over together run as one batch, as the onnxruntime backend runs them; a request that
cannot run gets an error response of its own and the model keeps serving.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.inputs = [item["name"] for item in config["input"]]
        self.outputs = [item["name"] for item in config["output"]]
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and (
            "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            device = int(args.get("model_instance_device_id", 0))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            os.path.join(folder, "model.onnx"), options, providers=providers
        )

    def _feeds(self, request):
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            feeds[name] = np.ascontiguousarray(tensor.as_numpy(), dtype=np.float32)
        sizes = {value.shape[0] for value in feeds.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs {self.inputs} have different batch sizes {sorted(sizes)}")
        return feeds

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []
        for index, request in enumerate(requests):
            try:
                good.append((index, self._feeds(request)))
            except Exception as exc:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if good:
            try:
                batch = {
                    name: np.concatenate([feeds[name] for _, feeds in good])
                    for name in self.inputs
                }
                results = self.session.run(self.outputs, batch)
            except Exception as exc:
                for index, _ in good:
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"onnxruntime failed: {exc}")
                    )
            else:
                start = 0
                for index, feeds in good:
                    count = feeds[self.inputs[0]].shape[0]
                    tensors = [
                        pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + count]))
                        for name, value in zip(self.outputs, results)
                    ]
                    responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start += count
        return responses
'''


def python_backend_model() -> str:
    """The ``model.py`` of the python-backend twin (runs ``model.onnx`` with onnxruntime)."""
    return _PYTHON_MODEL


# ---------------------------------------------------------------------------------------------
# Writing the repository


def _folder_mode() -> int:
    """Mode of a folder made by a plain ``mkdir`` (0o755 under umask 022): mkdtemp's 0o700
    would hide the model from a server running as another user."""
    return 0o777 & ~_umask()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, new_file_mode())


def _check_target(target: Path, force: bool) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise RepositoryExistsError(
            f"{target} exists and is not a folder, expected a new or empty model folder"
        )
    if target.is_dir() and any(target.iterdir()) and not force:
        raise RepositoryExistsError(
            f"{target} exists and is not empty, expected a new or empty model folder "
            "(--force / force=True replaces it)"
        )


def write_repository(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    options: TritonOptions | None = None,
    force: bool = False,
) -> Path:
    """The model folder ``out/NAME`` after writing it (see the module docstring for its files).

    ``name``: the Triton model name (default :func:`default_model_name`); ``options``: see
    :class:`TritonOptions`; ``force``: replace an existing non-empty ``out/NAME``. The folder
    is assembled under a temporary name and renamed into place, so ``out/NAME`` is either
    absent, the old folder or the complete new one, never half written; nothing else is left
    behind on error.

    Raises FileNotFoundError, :class:`~fer_export.contract.ModelLoadError` or
    :class:`~fer_export.contract.ContractError` for the model file;
    :class:`RepositoryExistsError` for an existing non-empty ``out/NAME`` without ``force``;
    :class:`TritonConfigError` for a bad option or name, or an ``out`` that cannot be created.
    """
    options = TritonOptions() if options is None else options
    model = read_model(model_path)
    name = _check_name(default_model_name(model) if name is None else name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TritonConfigError(f"{out} is a file, expected a folder for the repository")
    target = out / name
    _check_target(target, force)
    config = render_config(model, name, options).encode()
    document = json.dumps(contract_document(model, name), indent=2, ensure_ascii=False) + "\n"
    labels = "".join(f"{label}\n" for label in model.contract.labels)
    onnx_bytes = model.path.read_bytes()
    del model  # the protobuf: the bytes are what goes out

    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TritonConfigError(f"cannot create the repository folder {out}: {exc}") from exc
    area = _staging_area(out)
    prefix = f".{out.name}.{name}." if area != out else f".{name}."
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=area))
    try:
        os.chmod(staging, _folder_mode())
        version = staging / VERSION
        version.mkdir(mode=_folder_mode())
        _write(staging / CONFIG_FILE, config)
        _write(staging / LABELS_FILE, labels.encode())
        _write(version / MODEL_FILE, onnx_bytes)
        _write(version / CONTRACT_FILE, document.encode())
        if options.backend == "python":
            _write(version / PYTHON_MODEL_FILE, python_backend_model().encode())
        _publish(staging, target, force, area)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: another writer may have filled it
        raise
    return target


def _staging_area(out: Path) -> Path:
    """The folder to assemble a model folder in: ``out``'s parent when it is writable and on
    the same file system (so the final rename is atomic), else ``out`` itself.

    Outside the repository when possible: Triton takes every folder in a repository for a
    model, hidden ones included, so a server starting (or polling) while a temporary folder
    sits there would fail to load it ("failed to load all models" at startup).
    """
    with contextlib.suppress(OSError):
        real = out.resolve()
        parent = real.parent
        if (
            parent != real
            and os.access(parent, os.W_OK | os.X_OK)
            and parent.stat().st_dev == real.stat().st_dev
        ):
            return parent
    return out


def _publish(staging: Path, target: Path, force: bool, area: Path) -> None:
    """Renames ``staging`` to ``target``; an old ``target`` is moved into ``area`` first and
    removed only once the new one is in place (put back if the rename fails)."""
    _check_target(target, force)  # again: something may have appeared since
    old: Path | None = None
    if target.is_dir():
        if any(target.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=area))
            os.replace(target, old / target.name)
        else:
            target.rmdir()
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the renames durable where folders can sync
        fd = os.open(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# Command line: fer-export triton


def add_parser(sub: Any) -> None:
    """Registers ``fer-export triton`` on the CLI's subparsers ``sub``."""
    tri = sub.add_parser(
        "triton",
        help="write a Triton Inference Server model repository (onnxruntime backend)",
        description=(
            "Write OUT/NAME/config.pbtxt, OUT/NAME/labels.txt, OUT/NAME/1/model.onnx and "
            f"OUT/NAME/1/{CONTRACT_FILE} (the preprocessing contract) for Triton's onnxruntime "
            "backend, with dynamic batching."
        ),
    )
    tri.add_argument("onnx", type=Path, help="an exported .onnx file (with fer.* metadata)")
    tri.add_argument("--out", type=Path, required=True, help="the model repository folder")
    tri.add_argument("--name", default=None, help="model name (default: from the model)")
    tri.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="max_batch_size")
    tri.add_argument(
        "--preferred-batch", type=int, nargs="+", default=None, metavar="N",
        help="dynamic batching's preferred sizes (default 8 32, those <= --max-batch)",
    )  # fmt: skip
    tri.add_argument(
        "--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
        help="how long a request may wait for a batch to fill (microseconds, default 500)",
    )  # fmt: skip
    tri.add_argument("--kind", choices=KINDS, default="gpu", help="instance kind (default gpu)")
    tri.add_argument("--instances", type=int, default=1, help="instances (per GPU), default 1")
    tri.add_argument("--gpus", type=int, nargs="+", default=None, help="GPUs (default all)")
    tri.add_argument("--tensorrt", action="store_true", help="ONNX Runtime's TensorRT provider")
    tri.add_argument("--fp16", action="store_true", help="TensorRT with fp16 (implies --tensorrt)")
    tri.add_argument("--trt-workspace-mb", type=int, default=1024, help="TensorRT workspace")
    tri.add_argument(
        "--trt-cache", default=None, metavar="DIR",
        help="TensorRT engine cache folder on the server (default: rebuilt at each load)",
    )  # fmt: skip
    tri.add_argument(
        "--backend", choices=BACKENDS, default="onnxruntime",
        help="python: a python-backend twin running the same model.onnx with onnxruntime",
    )  # fmt: skip
    tri.add_argument("--no-warmup", action="store_true", help="no warm-up request at load")
    tri.add_argument("--force", action="store_true", help="replace an existing OUT/NAME")


def command(args: argparse.Namespace) -> int:
    """Runs ``fer-export triton``; returns the exit code (0 written, 2 bad input, reported in
    one line on stderr like the CLI's other errors)."""
    try:
        options = TritonOptions(
            max_batch=args.max_batch,
            preferred_batch=None if args.preferred_batch is None else tuple(args.preferred_batch),
            queue_delay_us=args.queue_delay_us,
            kind=args.kind,
            instances=args.instances,
            gpus=None if args.gpus is None else tuple(args.gpus),
            tensorrt=args.tensorrt,
            fp16=args.fp16,
            trt_workspace_mb=args.trt_workspace_mb,
            trt_cache_dir=args.trt_cache,
            backend=args.backend,
            warmup=not args.no_warmup,
        )
        target = write_repository(
            args.onnx, args.out, name=args.name, options=options, force=args.force
        )
    except (FileNotFoundError, ValueError, OSError) as exc:  # ValueError: the errors above
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        # TritonOptions names its fields; the command line knows them as options.
        flags = {
            "max_batch": "--max-batch",
            "preferred_batch": "--preferred-batch",
            "queue_delay_us": "--queue-delay-us",
            "kind": "--kind",
            "instances": "--instances",
            "gpus": "--gpus",
            "trt_workspace_mb": "--trt-workspace-mb",
            "trt_cache_dir": "--trt-cache",
            "backend": "--backend",
        }
        message = re.sub(
            r"^(\w+) is ", lambda m: f"{flags.get(m.group(1), m.group(1))} is ", message
        )
        print(f"fer-export: error: {message}", file=sys.stderr)
        return 2
    accel = ", TensorRT fp16" if options.fp16 else (", TensorRT" if options.tensorrt else "")
    print(
        f"wrote {target}: {CONFIG_FILE} ({options.backend} backend, max batch "
        f"{options.max_batch}, preferred {list(options.batch_sizes)}, KIND_"
        f"{options.kind.upper()}{accel}), {LABELS_FILE}, {VERSION}/{MODEL_FILE}, "
        f"{VERSION}/{CONTRACT_FILE}"
        + (f", {VERSION}/{PYTHON_MODEL_FILE}" if options.backend == "python" else "")
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Client


def _import_client(protocol: str) -> Any:
    """``tritonclient.http`` or ``tritonclient.grpc``; TritonClientMissingError naming what to
    install when it cannot be imported."""
    # A plug-in the user installs, imported by name: tritonclient[grpc] pins protobuf 6, which
    # this workspace's lock cannot take, so it is never a declared dependency.
    try:
        module = importlib.import_module(f"tritonclient.{protocol}")
    except ImportError as exc:
        error = TritonClientMissingError(
            f"TritonFERClient over {protocol} needs tritonclient ({exc}): "
            f'pip install "tritonclient[{protocol}]"'
        )
        error.name = "tritonclient"
        raise error from exc
    return module


def _split_url(url: str, protocol: str) -> tuple[str, bool]:
    """``(host:port, ssl)`` from ``url``, which may start with ``http://``, ``https://`` or
    ``grpc://``."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"url is {url!r}, expected host:port (e.g. localhost:8000)")
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text.rstrip("/"), False
    if scheme.lower() not in ("http", "https", "grpc", "grpcs"):
        raise ValueError(f"url {url!r} has scheme {scheme!r}, expected http, https or grpc")
    return rest.rstrip("/"), scheme.lower() in ("https", "grpcs")


def _dims_of(value: Any) -> list[int]:
    return [int(v) for v in value]


class TritonFERClient(FacePredictor):
    """Faces detected and preprocessed here, classified by a model on a Triton server.

    Args:
        url: the server, ``host:port`` (``localhost:8000`` for HTTP, ``localhost:8001`` for
            gRPC); an ``http://``/``https://``/``grpc://`` prefix is accepted.
        model_name: the model's name in the repository.
        protocol: ``"http"`` or ``"grpc"``.
        model_version: a version number as text; ``""`` for the server's choice (the latest).
        contract: the preprocessing contract -- a :class:`~fer_export.contract.ModelContract`,
            the path of a ``fer_contract.json`` or ``.onnx`` file, or None (default) to read it
            from the ``fer.*`` parameters of the model's config on the server.
        detector: face detector for ``faces="detect"`` (default: a
            :class:`~fer_export.faces.ThreadLocalDetector`).
        timeout_s: network timeout per request.
        abstain: the top probability below which ``predict*`` label a face ``"unknown"``:
            ``"model"`` (default) the contract's ``fer.abstention`` threshold (none if it has
            none), a number in [0, 1] instead of it, or None for never -- as
            :class:`~fer_export.session.FERSession`.
        landmarks: for models trained with landmark AU maps (``fer.au_source``
            ``landmarks``): a callable ``rgb face crop (H, W, 3) uint8 -> (68, 2) landmarks or
            None``; default: an installed finder (:func:`fer_export.landmarks.find_landmarks`).
            Each face's map is made here and sent as the ``attention`` input. Ignored by other
            models.
        au_source: None (default) feeds every face the AU map the model was trained with;
            ``"template"`` knowingly gives a landmarks model the mean-face template map.

    Predictions equal :class:`~fer_export.session.FERSession`'s for the same model, image and
    arguments, field for field (boxes, probabilities, raw scores, label or ``"unknown"``,
    ``abstained``, AU map): the detection, cropping, preprocessing, calibration and abstention
    code is the same, and only the batch of crops (and AU maps) travels. A client can be
    shared by threads (each thread gets its own connection).

    Raises:
        TritonClientMissingError: tritonclient is not installed (the message says what to
            install).
        TritonUnavailableError: the server cannot be reached, or the model is not ready.
        TritonModelMismatchError: the server's model does not take the contract's inputs.
        ContractError: the model's config on the server carries no valid ``fer.*`` contract
            (and none was given).
        LandmarksUnavailableError: the model was trained with landmark AU maps, no
            ``landmarks=`` was given and no landmark finder is installed (a ValueError naming
            the model, what to install and ``au_source="template"``).
        ValueError: a bad ``abstain``, ``au_source``, ``landmarks``, ``protocol`` or
            ``timeout_s``.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        protocol: str = "http",
        *,
        model_version: str = "",
        contract: ModelContract | str | os.PathLike[str] | None = None,
        detector: Detector | None = None,
        timeout_s: float = 30.0,
        abstain: str | float | None = "model",
        landmarks: LandmarkFinder | None = None,
        au_source: str | None = None,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol is {protocol!r}, expected 'http' or 'grpc'")
        if not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
            raise ValueError(f"timeout_s is {timeout_s!r}, expected a number of seconds > 0")
        if landmarks is not None and not callable(landmarks):
            raise ValueError(
                f"landmarks must be a callable face crop -> (68, 2) points, got "
                f"{type(landmarks).__name__}"
            )
        from fer_export.predict import check_abstain, resolve_abstain, resolve_au_source

        check_abstain(abstain)  # bad arguments fail before the server is asked anything
        self.protocol = protocol
        self.url, self._ssl = _split_url(url, protocol)
        self.model_name = model_name
        self.model_version = str(model_version)
        self.timeout_s = float(timeout_s)
        self._module = _import_client(protocol)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        from fer_export.faces import ThreadLocalDetector

        self._detector: Detector = detector if detector is not None else ThreadLocalDetector()
        self._attention_map: np.ndarray | None = None

        config = self._model_config()
        if contract is None:
            self._contract = self._contract_from_config(config)
        elif isinstance(contract, ModelContract):
            self._contract = contract
        else:
            self._contract = load_contract(contract)
        max_batch = int(config.get("max_batch_size", 0) or 0)
        self._check_config(config, max_batch)
        #: Largest batch sent in one request (the model's max_batch_size).
        self.max_batch = max_batch
        self._abstain = resolve_abstain(self._contract, abstain)
        self._au_source, self._landmarks = resolve_au_source(
            self._contract, au_source, landmarks, self._where()
        )

    # -- connection ---------------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            kwargs: dict[str, Any] = {"url": self.url, "ssl": self._ssl}
            if self.protocol == "http":
                kwargs.update(connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            client = self._module.InferenceServerClient(**kwargs)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _where(self) -> str:
        version = f" version {self.model_version}" if self.model_version else ""
        return f"model {self.model_name!r}{version} on {self.protocol} {self.url}"

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        InferenceServerException = importlib.import_module(
            "tritonclient.utils"
        ).InferenceServerException

        try:
            return function(*args, **kwargs)
        except InferenceServerException as exc:
            text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            status = str(exc.status() or "") if callable(getattr(exc, "status", None)) else ""
            unreachable = any(
                s in f"{status} {text}".lower()
                for s in ("unavailable", "connection refused", "failed to connect", "not ready")
            )
            raise (TritonUnavailableError if unreachable else TritonServerError)(
                f"{what} for {self._where()} failed: {text or exc}"
            ) from exc
        except (OSError, ConnectionError) as exc:  # geventhttpclient's socket errors
            raise TritonUnavailableError(
                f"{what} for {self._where()} failed: cannot reach the server ({exc})"
            ) from exc

    def _model_config(self) -> dict[str, Any]:
        client = self._client()
        ready = self._call(
            "checking the model", client.is_model_ready, self.model_name, self.model_version
        )
        if not ready:
            raise TritonUnavailableError(
                f"{self._where()} is not ready (not in the repository, failed to load, or "
                "still loading: see the server's log)"
            )
        if self.protocol == "grpc":
            response = self._call(
                "reading the model config", client.get_model_config,
                self.model_name, self.model_version, as_json=True,
            )  # fmt: skip
            config = response.get("config", {})
        else:
            config = self._call(
                "reading the model config", client.get_model_config,
                self.model_name, self.model_version,
            )  # fmt: skip
        if not isinstance(config, dict):
            raise TritonServerError(f"{self._where()} answered a config that is not an object")
        return config

    def _contract_from_config(self, config: Mapping[str, Any]) -> ModelContract:
        parameters = config.get("parameters") or {}
        metadata = {
            key: value.get("string_value", "") if isinstance(value, dict) else value
            for key, value in parameters.items()
            if isinstance(key, str) and key.startswith(PREFIX)
        }
        return ModelContract.from_metadata(metadata, f"the config of {self._where()}")

    def _check_config(self, config: Mapping[str, Any], max_batch: int) -> None:
        contract = self._contract
        s = contract.input_size
        want = {IMAGE_INPUT: [3, s, s]}
        if contract.attention == "input":
            want[ATTENTION_INPUT] = [1, s, s]
        got = {item.get("name"): item for item in config.get("input", [])}
        if sorted(got) != sorted(want):
            raise TritonModelMismatchError(
                f"{self._where()} takes inputs {sorted(map(str, got))}, but the contract "
                f"(attention {contract.attention!r}) needs {sorted(want)}"
            )
        if max_batch < 1:
            raise TritonModelMismatchError(
                f"{self._where()} has max_batch_size {max_batch}, expected >= 1 (a batching "
                "model, as fer-export triton writes)"
            )
        for io, dims in want.items():
            have = _dims_of(got[io].get("dims", []))
            if have != dims:
                raise TritonModelMismatchError(
                    f"{self._where()}: input {io!r} has dims {have}, expected {dims} "
                    f"(fer.input_size {s})"
                )
        outputs = {item.get("name"): item for item in config.get("output", [])}
        if SCORES_OUTPUT not in outputs:
            raise TritonModelMismatchError(
                f"{self._where()} has no {SCORES_OUTPUT!r} output (outputs: "
                f"{sorted(map(str, outputs))})"
            )
        have = _dims_of(outputs[SCORES_OUTPUT].get("dims", []))
        if have != [contract.num_classes]:
            raise TritonModelMismatchError(
                f"{self._where()}: output {SCORES_OUTPUT!r} has dims {have}, expected "
                f"[{contract.num_classes}] (one score per label)"
            )

    def close(self) -> None:
        """Closes every thread's connection."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        self._local = threading.local()

    def __enter__(self) -> TritonFERClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TritonFERClient(url={self.url!r}, model_name={self.model_name!r}, "
            f"protocol={self.protocol!r}, labels={len(self.labels)})"
        )

    # -- properties ---------------------------------------------------------------------------

    # -- inference ----------------------------------------------------------------------------

    def _check(self, name: str, x: Any, channels: int, n: int | None) -> np.ndarray:
        s = self.input_size
        want = f"({'N' if n is None else n}, {channels}, {s}, {s}) float32"
        if (
            not isinstance(x, np.ndarray)
            or x.dtype != np.float32
            or x.ndim != 4
            or x.shape[1:] != (channels, s, s)
            or (n is not None and x.shape[0] != n)
        ):
            shown = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"{name} must be a numpy array {want}, got {shown}")
        return np.ascontiguousarray(x)

    def run(self, batch: np.ndarray, attention: np.ndarray | None = None) -> np.ndarray:
        """Scores ``(N, C)`` float32 from the server for a preprocessed batch ``(N, 3, S, S)``
        float32 (:meth:`ModelContract.preprocess`), sent in requests of at most
        :attr:`max_batch`.

        ``attention`` ``(N, 1, S, S)`` is only for ``attention == "input"`` models and defaults
        to the contract's template map, as in :meth:`FERSession.run`.
        """
        x = self._check("batch", batch, 3, None)
        n = x.shape[0]
        takes_attention = self._contract.attention == "input"
        if attention is not None and not takes_attention:
            raise ValueError(
                f"{self._where()} takes no attention input "
                f"(contract attention={self._contract.attention!r})"
            )
        att = None
        if takes_attention:
            att = (
                self._default_attention(n)
                if attention is None
                else self._check("attention", attention, 1, n)
            )
        if n == 0:
            return np.zeros((0, self._contract.num_classes), np.float32)
        parts = []
        for start in range(0, n, self.max_batch):
            feeds = {IMAGE_INPUT: x[start : start + self.max_batch]}
            if att is not None:
                feeds[ATTENTION_INPUT] = np.ascontiguousarray(att[start : start + self.max_batch])
            parts.append(self._infer(feeds))
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if out.shape != (n, self._contract.num_classes):
            raise TritonModelMismatchError(
                f"{self._where()} answered scores of shape {out.shape}, expected "
                f"({n}, {self._contract.num_classes})"
            )
        return np.ascontiguousarray(out, dtype=np.float32)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        module = self._module
        inputs = []
        for name, value in feeds.items():
            tensor = module.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(SCORES_OUTPUT)]
        kwargs: dict[str, Any] = {"model_version": self.model_version, "outputs": outputs}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        result = self._call("inference", self._client().infer, self.model_name, inputs, **kwargs)
        scores = result.as_numpy(SCORES_OUTPUT)
        if scores is None:
            raise TritonServerError(f"{self._where()} answered without {SCORES_OUTPUT!r}")
        return np.asarray(scores)
