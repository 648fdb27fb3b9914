"""The app's configuration: data, training (capsnet-model's ``TrainConfig``), export and run
settings, with the embedded default (synthetic faces, ``e2capsnet_small``) as the defaults.

Precedence: these defaults <- a preset (``--preset NAME`` or ``preset=NAME``) <- ``--config
FILE`` <- ``key=value`` overrides with dotted keys (``train.lr=1e-4``,
``train.model_kwargs={width: 0.25}``). Values are parsed as YAML and checked against the type
of the default; an unknown key is an error with did-you-mean suggestions.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from capsnet_model.augment import AugmentConfig
from capsnet_model.training import TrainConfig


class ConfigError(ValueError):
    """A bad key or value in the configuration (reported in one line, exit status 2)."""


ON_ERROR = ("raise", "skip")
EXPORT_ATTENTION = ("auto", "baked", "input")

#: The embedded default's training settings (measured: ~0.99 test accuracy in ~80 s on 2
#: CPU cores): e2capsnet_small, 8 epochs, batch 32, Adam 1e-3, light augmentation.
EMBEDDED_TRAIN = TrainConfig(
    model="e2capsnet_small",
    epochs=8,
    batch_size=32,
    lr=1e-3,
    augment=AugmentConfig(colour=0.3, cutout=0.0, blur=0.0),
)

# Keys whose default is None, with the type a non-null value must have.
_NULLABLE: dict[str, type] = {
    "train.image_size": int,
    "train.grad_clip": float,
    "train.max_batches_per_epoch": int,
    "threads": int,
}
# Keys holding free-form mappings (no key checking below them).
_FREE_MAPPINGS = ("train.model_kwargs",)
# Keys that may be set to null although their default is a mapping.
_NULLABLE_MAPPINGS = ("train.augment",)


@dataclass
class DataConfig:
    """Which faces to train and test on."""

    #: A registered data source (``fer_train.data.data_kinds()``): ``synthetic`` (embedded,
    #: nothing to download), ``rafdb``, ``fer2013``, ``affectnet`` or ``folder``
    #: (``root/<split>/<class>/*.jpg``).
    kind: str = "synthetic"
    #: RAF-DB folder, FER2013 folder (or ``fer2013.csv``), AffectNet folder holding
    #: ``training.csv`` / ``validation.csv``, or the class-per-folder root.
    root: str = ""
    #: AffectNet image folder (``Manually_Annotated_Images``); default ``root``'s.
    image_root: str = ""
    #: ``raise``: a bad row or image stops the run before training (exit status 2);
    #: ``skip``: it is left out and listed (console, ``skipped.csv``, ``report.md``).
    on_error: str = "raise"
    #: Decode every image file once before training, so a bad one is raised or skipped
    #: there; ``false`` saves that pass, but a bad image then stops training when it is read.
    verify_images: bool = True
    synthetic_train: int = 2100
    synthetic_test: int = 350
    synthetic_seed: int = 0
    synthetic_test_seed: int = 1
    #: Side of the synthetic faces in pixels (the model resizes them to its input size).
    synthetic_size: int = 64


@dataclass
class ExportConfig:
    """The ONNX file and its optional variants."""

    #: ``model.fp16.onnx`` (float16 weights and most maths).
    fp16: bool = False
    #: ``model.int8.onnx`` (static QDQ int8, calibrated on ``calib``).
    int8: bool = False
    #: ``synthetic`` or a folder of face crops for the int8 calibration.
    calib: str = "synthetic"
    calib_count: int = 256
    #: ``auto``: the AU map baked into the graph, unless training used landmarks (``input``).
    attention: str = "auto"
    #: Tolerance of the PyTorch vs ONNX Runtime check on random inputs.
    atol: float = 1e-4
    #: ONNX Runtime providers for the test-set check (``cpu``, ``cuda``, ``auto``...).
    providers: str = "cpu"


@dataclass
class AppConfig:
    """Everything ``fer-train`` needs; the defaults are the embedded default run."""

    data: DataConfig = field(default_factory=DataConfig)
    #: capsnet-model ``TrainConfig`` fields (``train.augment`` may be null: no augmentation).
    train: dict[str, Any] = field(default_factory=EMBEDDED_TRAIN.to_dict)
    export: ExportConfig = field(default_factory=ExportConfig)
    output_dir: str = "runs/fer-train"
    #: Continue an interrupted run in ``output_dir`` (a finished one is re-evaluated only).
    resume: bool = False
    #: PNG learning curves.
    plots: bool = True
    #: torch CPU threads per process; null: torch's default (split between local ranks).
    threads: int | None = None

    def train_config(self) -> TrainConfig:
        """The capsnet-model ``TrainConfig`` of ``train.*``."""
        try:
            return TrainConfig.from_dict(self.train)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"train: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """Plain values (YAML-ready: tuples become lists)."""
        tree = {
            "data": vars(self.data).copy(),
            "train": copy.deepcopy(self.train),
            "export": vars(self.export).copy(),
            "output_dir": self.output_dir,
            "resume": self.resume,
            "plots": self.plots,
            "threads": self.threads,
        }
        plain: dict[str, Any] = json.loads(json.dumps(tree))
        return plain


def default_tree() -> dict[str, Any]:
    """The defaults as a nested dict of plain values."""
    return AppConfig().to_dict()


# --------------------------------------------------------------------------- presets

PRESETS_PACKAGE = "fer_train.presets"


def available_presets() -> list[str]:
    """Names of the shipped presets (YAML files in ``fer_train/presets``)."""
    root = resources.files(PRESETS_PACKAGE)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The file of preset ``name``; ConfigError for an unknown name."""
    names = available_presets()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; valid: {', '.join(names)}")
    return Path(str(resources.files(PRESETS_PACKAGE) / f"{name}.yaml"))


# --------------------------------------------------------------------------- merging


def _all_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping) and dotted not in _FREE_MAPPINGS:
            keys.extend(_all_keys(value, dotted + "."))
    return keys


def _unknown(dotted: str) -> ConfigError:
    keys = _all_keys(default_tree())
    close = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.6)
    if not close:
        leaf = dotted.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    parent = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
    siblings = [k for k in keys if k.startswith(parent) and "." not in k[len(parent) :]]
    return ConfigError(f"unknown key {dotted!r}{hint} (valid here: {', '.join(siblings)})")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _coerce(dotted: str, value: Any, default: Any) -> Any:
    """``value`` checked (and converted where unambiguous) against ``default``'s type."""
    if dotted in _NULLABLE:
        if value is None:
            return None
        default = _NULLABLE[dotted]()
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{dotted} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{dotted} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{dotted} must be a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{dotted} must be a string, got {_kind(value)} {value!r}")
    if isinstance(default, list | tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ConfigError(f"{dotted} must be a list of {len(default)} values, got {value!r}")
        return [
            _coerce(f"{dotted}[{i}]", v, d)
            for i, (v, d) in enumerate(zip(value, default, strict=True))
        ]
    return value


def _merge(
    target: dict[str, Any], defaults: Mapping[str, Any], data: Mapping[str, Any], prefix: str
) -> None:
    """Merge ``data`` into ``target`` (checked against ``defaults``), in place."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'the configuration'} must be a mapping")
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in defaults:
            raise _unknown(dotted)
        default = defaults[key]
        if dotted in _FREE_MAPPINGS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} must be a mapping, got {value!r}")
            target[key] = dict(value)
        elif isinstance(default, Mapping):
            if value is None and dotted in _NULLABLE_MAPPINGS:
                target[key] = None
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} must be a mapping, got {value!r}")
            if target.get(key) is None:
                target[key] = copy.deepcopy(dict(default))
            _merge(target[key], default, value, dotted + ".")
        else:
            target[key] = _coerce(dotted, value, default)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"bad key {dotted!r}")
    out: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"expected key=value, got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{key}: cannot parse {text!r} ({first})") from err
    return key, value


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys")
    return data


def load_app_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), preset: str | None = None
) -> AppConfig:
    """The AppConfig from defaults <- preset <- file <- ``key=value`` overrides."""
    defaults = default_tree()
    tree = copy.deepcopy(defaults)
    pairs = [parse_override(o) for o in overrides]
    for key, value in pairs:
        if key == "preset":
            preset = str(value)
    layers: list[dict[str, Any]] = []
    if preset:
        layers.append(_read_yaml(preset_path(preset), f"preset {preset!r}"))
    if path is not None:
        layers.append(_read_yaml(Path(path), "config file"))
    layers.extend(_nest(k, v) for k, v in pairs if k != "preset")
    for layer in layers:
        _merge(tree, defaults, layer, "")
    cfg = AppConfig(
        data=DataConfig(**tree["data"]),
        train=tree["train"],
        export=ExportConfig(**tree["export"]),
        output_dir=tree["output_dir"],
        resume=tree["resume"],
        plots=tree["plots"],
        threads=tree["threads"],
    )
    validate(cfg)
    return cfg


def validate(cfg: AppConfig) -> None:
    """Raises ConfigError naming the key of the first bad value."""
    from fer_train.data import data_kinds  # the data source registry (that module imports this)

    d, e = cfg.data, cfg.export
    choices: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        ("data.kind", d.kind, data_kinds()),
        ("data.on_error", d.on_error, ON_ERROR),
        ("export.attention", e.attention, EXPORT_ATTENTION),
    )
    for key, value, valid in choices:
        if value not in valid:
            close = difflib.get_close_matches(value, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key} must be one of {', '.join(valid)}; got {value!r}{hint}")
    for key, number in (
        ("data.synthetic_train", d.synthetic_train),
        ("data.synthetic_test", d.synthetic_test),
        ("data.synthetic_size", d.synthetic_size),
        ("export.calib_count", e.calib_count),
    ):
        if number <= 0:
            raise ConfigError(f"{key} must be positive, got {number}")
    if e.atol <= 0:
        raise ConfigError(f"export.atol must be positive, got {e.atol}")
    if cfg.threads is not None and cfg.threads <= 0:
        raise ConfigError(f"threads must be positive, got {cfg.threads}")
    if not cfg.output_dir:
        raise ConfigError("output_dir must not be empty")
    cfg.train_config()  # TrainConfig's own checks (choices, positive numbers, ...)
