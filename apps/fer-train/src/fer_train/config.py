"""The app's configuration: data, training (capsnet-model's ``TrainConfig``), export and run
settings, with the embedded default (synthetic faces, ``e2capsnet_small``) as the defaults.

Loaded with ``config_layers`` like every app's: these defaults <- a preset (``--preset NAME``
or ``preset=NAME``) <- ``--config FILE`` <- ``key=value`` overrides with dotted keys
(``train.lr=1e-4``, ``train.model_kwargs={width: 0.25}``). Values are read as YAML and checked
strictly against the field types (an int is accepted for a float, nothing else is converted:
``train.epochs='3'`` is refused). Every problem is a :class:`ConfigError` naming the file and
line, or the override, that set the bad value, its dotted key and the closest valid key or
choice.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import config_layers
from capsnet_model.augment import AugmentConfig
from capsnet_model.datasets import emotionet as _emotionet
from capsnet_model.training import TrainConfig
from config_layers import ConfigError, Presets, did_you_mean

__all__ = [
    "EMBEDDED_TRAIN",
    "PRESETS",
    "AppConfig",
    "ConfigError",
    "DataConfig",
    "EmotioNetOptions",
    "ExportConfig",
    "load_app_config",
]

OnError = Literal["raise", "skip"]
#: Where the int8 variant's calibration faces come from (besides a folder path).
CALIB_SOURCES = ("train", "synthetic")
ExportAttention = Literal["auto", "baked", "input"]

#: The shipped presets (``fer_train/presets/*.yaml``), selected with ``--preset NAME``.
PRESETS = Presets("fer_train.presets")

#: The embedded default's training settings (measured: ~0.99 test accuracy in ~80 s on 2
#: CPU cores): e2capsnet_small, 8 epochs, batch 32, Adam 1e-3, light augmentation.
EMBEDDED_TRAIN = TrainConfig(
    model="e2capsnet_small",
    epochs=8,
    batch_size=32,
    lr=1e-3,
    augment=AugmentConfig(colour=0.3, cutout=0.0, blur=0.0),
)


def _embedded_train() -> TrainConfig:
    """Returns a copy of :data:`EMBEDDED_TRAIN` (its ``model_kwargs`` dict not shared)."""
    return copy.deepcopy(EMBEDDED_TRAIN)


def _check_choice(value: str, valid: Sequence[str], key: str) -> None:
    """Raises ConfigError at ``key`` when ``value`` is not one of ``valid``."""
    if value not in valid:
        hint = did_you_mean(value, valid)
        choices = ", ".join(repr(choice) for choice in valid)
        raise ConfigError(f"expected one of {choices}, got {value!r}{hint}", (key,))


def _check_positive(obj: Any, *keys: str) -> None:
    """Raises ConfigError at the first of ``keys`` whose value on ``obj`` is not positive."""
    for key in keys:
        value = getattr(obj, key)
        if value <= 0:
            raise ConfigError(f"must be positive, got {value!r}", (key,))


@dataclass
class EmotioNetOptions:
    """The ``emotionet`` source's loader options (``data.emotionet.*``; ignored for other
    kinds). See capsnet-model's ``load_emotionet``."""

    #: Fraction of the images in the test split (chosen by a hash of each image's path).
    test_fraction: float = _emotionet.TEST_FRACTION
    #: Read an AU coded 999 (not coded) as absent instead of making its row an
    #: ``unknown label`` error.
    unknown_as_absent: bool = False
    #: 1-based column of the image URL or path.
    image_column: int = _emotionet.IMAGE_COLUMN
    #: 1-based column of AU1 (AU1..AU60 follow).
    first_au_column: int = _emotionet.FIRST_AU_COLUMN
    #: 1-based column holding an EmotioNet category name instead of reading it off the AUs.
    emotion_column: int | None = None
    #: File name pattern of the lists under ``data.root``.
    pattern: str = _emotionet.LIST_PATTERN

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(
                f"must be between 0 and 1 (exclusive), got {self.test_fraction!r}",
                ("test_fraction",),
            )
        for key in ("image_column", "first_au_column", "emotion_column"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"must be a 1-based column number, got {value!r}", (key,))
        if not self.pattern:
            raise ConfigError("must not be empty", ("pattern",))


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
    on_error: OnError = "raise"
    #: Decode every image file once before training, so a bad one is raised or skipped
    #: there; ``false`` saves that pass, but a bad image then stops training when it is read.
    verify_images: bool = True
    synthetic_train: int = 2100
    synthetic_test: int = 350
    synthetic_seed: int = 0
    synthetic_test_seed: int = 1
    #: Side of the synthetic faces in pixels (the model resizes them to its input size).
    synthetic_size: int = 64
    #: Options of the ``emotionet`` loader. A field named after a data source holds that
    #: source's own loader options (``fer_train.data`` passes them to it).
    emotionet: EmotioNetOptions = field(default_factory=EmotioNetOptions)

    def __post_init__(self) -> None:
        # data.kind is a registry lookup (sources may be registered at run time), so it is
        # checked here rather than typed; fer_train.data imports this module.
        from fer_train.data import data_kinds

        _check_choice(self.kind, data_kinds(), "kind")
        _check_choice(self.on_error, get_args(OnError), "on_error")
        _check_positive(self, "synthetic_train", "synthetic_test", "synthetic_size")


@dataclass
class ExportConfig:
    """The ONNX file and its optional variants."""

    #: ``model.fp16.onnx`` (float16 weights and most maths).
    fp16: bool = False
    #: ``model.int8.onnx`` (static QDQ int8, calibrated on ``calib``).
    int8: bool = False
    #: The int8 calibration faces: ``train`` (up to ``calib_count`` of the run's training
    #: images, never its validation or test images), ``synthetic`` (fer-export's synthetic
    #: faces) or a folder of face crops. The variants are always checked on the test split.
    calib: str = "train"
    calib_count: int = 256
    #: Fraction of the validation faces the abstention threshold must still answer, in
    #: (0, 1]: faces less confident than the threshold are labelled ``unknown`` at
    #: deployment; 1 never abstains.
    coverage: float = 0.9
    #: ``auto``: the AU map baked into the graph, unless training used landmarks (``input``).
    attention: ExportAttention = "auto"
    #: Tolerance of the PyTorch vs ONNX Runtime check on random inputs.
    atol: float = 1e-4
    #: ONNX Runtime providers for the test-set check (``cpu``, ``cuda``, ``auto``...).
    providers: str = "cpu"

    def __post_init__(self) -> None:
        _check_choice(self.attention, get_args(ExportAttention), "attention")
        _check_positive(self, "calib_count", "atol")
        if not 0.0 < self.coverage <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {self.coverage!r}", ("coverage",))
        if not self.calib:
            raise ConfigError(
                f"must not be empty: {', '.join(CALIB_SOURCES)} or a folder", ("calib",)
            )


@dataclass
class AppConfig:
    """Everything ``fer-train`` needs; the defaults are the embedded default run."""

    data: DataConfig = field(default_factory=DataConfig)
    #: capsnet-model's ``TrainConfig`` (``train.augment`` may be null: no augmentation).
    train: TrainConfig = field(default_factory=_embedded_train)
    export: ExportConfig = field(default_factory=ExportConfig)
    output_dir: str = "runs/fer-train"
    #: Continue an interrupted run in ``output_dir`` (a finished one is re-evaluated only).
    resume: bool = False
    #: PNG learning curves.
    plots: bool = True
    #: torch CPU threads per process; null: torch's default (split between local ranks).
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None:
            _check_positive(self, "threads")
        if not self.output_dir:
            raise ConfigError("must not be empty", ("output_dir",))

    def train_config(self) -> TrainConfig:
        """Returns the capsnet-model ``TrainConfig`` of ``train.*`` (``self.train``)."""
        return self.train

    def to_dict(self) -> dict[str, Any]:
        """Returns the configuration as plain YAML-ready data (tuples become lists)."""
        return config_layers.to_dict(self)

    def to_yaml(self) -> str:
        """Returns the configuration as YAML text that ``--config`` reads back equal."""
        return config_layers.to_yaml(self)


def load_app_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), preset: str | None = None
) -> AppConfig:
    """Returns the AppConfig from defaults <- preset <- file ``path`` <- ``key=value``
    overrides.

    A ``preset=NAME`` item among ``overrides`` selects the preset too (the command line's
    form). Raises ``FileNotFoundError`` for a missing file and :class:`ConfigError` (a
    ``ValueError``) for an unknown preset, a preset given twice, or a bad key or value (naming
    the file and line, or the override, that set it).
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a sequence of strings, not one string: {overrides!r}")
    rest: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not (sep and key.strip() == "preset"):
            rest.append(item)
            continue
        name = value.strip()
        if not name:
            raise ConfigError(f"override {item!r} needs a preset name; valid: {_preset_list()}")
        if preset is not None and preset != name:
            raise ConfigError(f"the preset is given twice ({preset!r} and {name!r}); give one")
        preset = name
    return config_layers.load_config(AppConfig, path, rest, base_files=PRESETS.files(preset))


def _preset_list() -> str:
    """Returns the preset names as one comma-separated string."""
    return ", ".join(PRESETS.names())
