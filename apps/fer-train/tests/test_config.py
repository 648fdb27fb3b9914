"""Configuration: defaults, layering, strict values, unknown keys, presets, where an error
came from, and the written configuration read back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import fer_train.config
from capsnet_model.augment import AugmentConfig
from config_layers import Presets
from fer_train.config import EMBEDDED_TRAIN, PRESETS, AppConfig, ConfigError, load_app_config


def test_defaults_are_the_embedded_default() -> None:
    cfg = load_app_config()
    assert cfg.data.kind == "synthetic"
    assert (cfg.data.synthetic_train, cfg.data.synthetic_test) == (2100, 350)
    assert (cfg.data.synthetic_seed, cfg.data.synthetic_test_seed) == (0, 1)
    t = cfg.train_config()
    assert t is cfg.train
    assert (t.model, t.epochs, t.batch_size, t.lr) == ("e2capsnet_small", 8, 32, 1e-3)
    assert t.augment is not None
    assert (t.augment.colour, t.augment.cutout, t.augment.blur) == (0.3, 0.0, 0.0)
    assert cfg.output_dir == "runs/fer-train"
    assert not cfg.resume and not cfg.export.fp16 and not cfg.export.int8
    # int8 calibrated on training images (disjoint from the test split), 90 % coverage
    assert (cfg.export.calib, cfg.export.coverage) == ("train", 0.9)
    assert cfg.data.emotionet.test_fraction == 0.1 and cfg.data.emotionet.emotion_column is None
    assert cfg == AppConfig()


def test_default_train_is_a_copy_of_the_embedded_one() -> None:
    first, second = AppConfig(), AppConfig()
    first.train.model_kwargs["width"] = 0.5
    assert second.train.model_kwargs == {} and EMBEDDED_TRAIN.model_kwargs == {}
    assert second.train == EMBEDDED_TRAIN and second.train is not EMBEDDED_TRAIN


def test_dotted_overrides_are_parsed_as_yaml_and_typed() -> None:
    cfg = load_app_config(
        None,
        [
            "train.lr=1e-4",  # a float: config_layers reads exponent numbers without a dot
            "train.epochs=3",
            "train.model_kwargs={width: 0.25, primary_channels: 8}",
            "train.augment.colour=0.5",
            "train.image_size=96",
            "train.mean=[0, 0.5, 1]",
            "export.int8=true",
            "export.calib=synthetic",
            "output_dir=/tmp/x",
        ],
    )
    t = cfg.train_config()
    assert t.lr == pytest.approx(1e-4) and t.epochs == 3 and t.image_size == 96
    assert t.model_kwargs == {"width": 0.25, "primary_channels": 8}
    assert t.mean == (0.0, 0.5, 1.0)
    assert t.augment is not None and t.augment.colour == 0.5 and t.augment.cutout == 0.0
    assert cfg.export.int8 and cfg.output_dir == "/tmp/x"


def test_augment_null_turns_augmentation_off() -> None:
    assert load_app_config(None, ["train.augment=null"]).train.augment is None
    # a later mapping brings it back, with AugmentConfig's defaults for the keys not given
    cfg = load_app_config(None, ["train.augment=null", "train.augment={flip: 0.1}"])
    assert cfg.train.augment == AugmentConfig(flip=0.1)


def test_model_kwargs_take_a_yaml_mapping() -> None:
    cfg = load_app_config(None, ["train.model_kwargs={width: 0.25}"])
    assert cfg.train.model_kwargs == {"width": 0.25}
    # mappings merge key by key: a preset's model_kwargs keep their other keys
    cfg = load_app_config(None, ["train.model_kwargs={width: 0.25}"], preset="rafdb")
    assert cfg.train.model_kwargs == {"routing_iterations": 3, "width": 0.25}
    with pytest.raises(ConfigError, match=r"train\.model_kwargs: expected dict"):
        load_app_config(None, ["train.model_kwargs=3"])


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 5, "lr": 0.01}, "plots": False}))
    cfg = load_app_config(path, ["train.epochs=2"])
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.01 and cfg.plots is False


def test_values_are_strict() -> None:
    """A quoted number is text, not a number (the old loader turned '3' into 3)."""
    with pytest.raises(ConfigError) as info:
        load_app_config(None, ["train.epochs='3'"])
    assert str(info.value) == (
        "override \"train.epochs='3'\": train.epochs: expected int, got '3' (str)"
    )
    for override, message in (
        ("train.epochs=2.5", "train.epochs: expected int, got 2.5 (float)"),
        ("data.synthetic_train=true", "data.synthetic_train: expected int, got True (bool)"),
        ("export.atol='0.1'", "export.atol: expected float, got '0.1' (str)"),
        ("plots=1", "plots: expected bool, got 1 (int)"),
        ("threads=null", ""),
    ):
        if not message:
            assert load_app_config(None, [override]).threads is None
            continue
        with pytest.raises(ConfigError) as info:
            load_app_config(None, [override])
        assert str(info.value) == f"override {override!r}: {message}"


@pytest.mark.parametrize(
    ("override", "path", "suggestion"),
    [
        ("train.epochz=3", "train.epochz", "'epochs'"),
        ("train.epoch=3", "train.epoch", "'epochs'"),
        ("data.synthetic_trian=10", "data.synthetic_trian", "'synthetic_train'"),
        ("outputdir=x", "outputdir", "'output_dir'"),
        ("export.f16=true", "export.f16", "'fp16'"),
        ("train.augment.color=0.2", "train.augment.color", "'colour'"),
    ],
)
def test_unknown_keys_suggest(override: str, path: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_app_config(None, [override])
    text = str(info.value)
    assert text.startswith(f"override {override!r}: {path}: unknown key for "), text
    assert f"(did you mean {suggestion}?)" in text and "; valid keys: " in text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=many", "train.epochs: expected int, got 'many' (str)"),
        ("train.epochs=0", "train.epochs: must be positive, got 0"),
        ("train.lr=fast", "train.lr: expected float, got 'fast' (str)"),
        ("train.lr=0", "train.lr: must be positive, got 0.0"),
        ("train.schedule=linear", "train.schedule: expected one of 'cosine', 'step', 'none'"),
        ("train.mean=[0.5, 0.5]", "train.mean: expected tuple[float, float, float] (3 items)"),
        ("data.kind=imagenet", "data.kind: expected one of 'rafdb', "),
        ("data.kind=rafbd", "data.kind: expected one of 'rafdb', "),
        ("data.on_error=skp", "data.on_error: expected one of 'raise', 'skip', got 'skp'"),
        ("data.synthetic_test=-1", "data.synthetic_test: must be positive, got -1"),
        ("export.fp16=maybe", "export.fp16: expected bool, got 'maybe' (str)"),
        ("export.attention=bake", "export.attention: expected one of 'auto', 'baked', 'input'"),
        ("export.calib_count=0", "export.calib_count: must be positive, got 0"),
        ("export.atol=0", "export.atol: must be positive, got 0.0"),
        ("export.coverage=0", "export.coverage: must be in (0, 1], got 0"),
        ("export.coverage=1.5", "export.coverage: must be in (0, 1], got 1.5"),
        ("export.coverage=most", "export.coverage: expected float, got 'most' (str)"),
        ("export.calib=''", "export.calib: must not be empty"),
        ("threads=0", "threads: must be positive, got 0"),
        ("output_dir=", "output_dir: must not be empty"),
    ],
)
def test_bad_values_name_the_override_and_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_app_config(None, [override])
    assert str(info.value).startswith(f"override {override!r}: {message}"), str(info.value)


def test_a_data_kind_typo_suggests_the_registered_kind() -> None:
    with pytest.raises(ConfigError, match=r"got 'rafbd'; did you mean 'rafdb'\?$"):
        load_app_config(None, ["data.kind=rafbd"])
    with pytest.raises(ConfigError, match=r"got 'affectnett'; did you mean 'affectnet'\?$"):
        load_app_config(None, ["data.kind=affectnett"])


def test_an_error_in_a_config_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: runs/x\ntrain:\n  epochs: 4\n  lr: '1e-3'\n")
    with pytest.raises(ConfigError) as info:
        load_app_config(path)
    assert str(info.value) == f"{path}, line 4: train.lr: expected float, got '1e-3' (str)"
    # a check in __post_init__ (not a type) is placed on its line too
    path.write_text("data:\n  kind: synthetic\n  synthetic_size: 0\n")
    with pytest.raises(ConfigError) as info:
        load_app_config(path)
    assert str(info.value) == f"{path}, line 3: data.synthetic_size: must be positive, got 0"
    path.write_text("train:\n  augment:\n    flip: 0.5\n    flipp: 0.5\n")
    with pytest.raises(ConfigError, match=r"line 4: train\.augment\.flipp: .*'flip'"):
        load_app_config(path)


def test_an_override_of_a_file_value_is_blamed_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"^override 'train\.epochs=-4': train\.epochs: "):
        load_app_config(path, ["train.epochs=-4"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_app_config(tmp_path / "none.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line \d: invalid YAML"):
        load_app_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of config keys at the top level"):
        load_app_config(path)


def test_improved_presets_carry_the_improved_recipe() -> None:
    """Every preset but the ``*-paper`` ones is fer-train's improved recipe (the paper's one
    is checked in test_presets.py)."""
    improved = [name for name in PRESETS.names() if not name.endswith("-paper")]
    assert {"affectnet", "fer2013", "rafdb"} <= set(improved)
    for name in improved:
        cfg = load_app_config(preset=name)
        t = cfg.train_config()
        assert cfg.data.kind == name
        assert cfg.data.root.startswith("/path/to/")
        assert t.model == "e2capsnet" and t.image_size == 224
        assert t.lr == pytest.approx(1e-4) and t.batch_size == 16
        assert t.loss == "margin" and t.model_kwargs == {"routing_iterations": 3}
        assert t.schedule == "cosine" and t.epochs == 40 and t.patience > 0
        assert t.augment is not None and t.augment.cutout == 0.3  # the full augmentation
        assert cfg.output_dir == f"runs/fer-train/{name}"
    assert load_app_config(None, ["preset=fer2013"]).data.kind == "fer2013"
    assert load_app_config(preset="rafdb", overrides=["train.epochs=2"]).train.epochs == 2


def test_preset_selection_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'rafd' \(did you mean 'rafdb'\?\)") as e:
        load_app_config(preset="rafd")
    assert f"valid: {', '.join(PRESETS.names())}" in str(e.value)
    assert "rafdb-paper" in PRESETS.names()
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_app_config(None, ["preset=nope"])
    with pytest.raises(ConfigError, match=r"preset is given twice \('rafdb' and 'fer2013'\)"):
        load_app_config(None, ["preset=fer2013"], preset="rafdb")
    with pytest.raises(ConfigError, match="needs a preset name"):
        load_app_config(None, ["preset="])


def test_an_error_in_a_preset_names_the_preset_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "bad_fer_presets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.yaml").write_text("data:\n  kind: rafdb\ntrain:\n  batch_size: 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fer_train.config, "PRESETS", Presets("bad_fer_presets"))
    preset_file = package / "broken.yaml"
    with pytest.raises(ConfigError) as info:
        load_app_config(preset="broken")
    assert str(info.value) == f"{preset_file}, line 4: train.batch_size: must be positive, got 0"
    # an override of the bad value repairs it, and the override is what a new error names
    assert load_app_config(preset="broken", overrides=["train.batch_size=4"]).data.kind == "rafdb"


def test_the_written_configuration_reads_back_equal(tmp_path: Path) -> None:
    cfg = load_app_config(
        None,
        [
            "train.epochs=2",
            "train.lr=1e-6",
            "train.augment=null",
            "train.model_kwargs={width: 0.25, decoder: true}",
            "export.fp16=true",
            "output_dir='1e5'",  # text that the loader would read as a float unquoted
            "data.root='yes'",  # text that YAML would read as a boolean unquoted
            "threads=2",
        ],
        preset="fer2013",
    )
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_app_config(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.output_dir == "1e5" and again.data.root == "yes"
    assert yaml.safe_load(path.read_text())["train"]["mean"] == list(cfg.train.mean)
