"""Configuration: defaults, layering, overrides, unknown keys, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fer_train.config import (
    ConfigError,
    available_presets,
    load_app_config,
    parse_override,
    preset_path,
)


def test_defaults_are_the_embedded_default() -> None:
    cfg = load_app_config()
    assert cfg.data.kind == "synthetic"
    assert (cfg.data.synthetic_train, cfg.data.synthetic_test) == (2100, 350)
    assert (cfg.data.synthetic_seed, cfg.data.synthetic_test_seed) == (0, 1)
    t = cfg.train_config()
    assert (t.model, t.epochs, t.batch_size, t.lr) == ("e2capsnet_small", 8, 32, 1e-3)
    assert t.augment is not None
    assert (t.augment.colour, t.augment.cutout, t.augment.blur) == (0.3, 0.0, 0.0)
    assert cfg.output_dir == "runs/fer-train"
    assert not cfg.resume and not cfg.export.fp16 and not cfg.export.int8


def test_dotted_overrides_are_parsed_as_yaml_and_typed() -> None:
    cfg = load_app_config(
        None,
        [
            "train.lr=1e-4",  # YAML reads this as a string; the float default converts it
            "train.epochs=3",
            "train.model_kwargs={width: 0.25, primary_channels: 8}",
            "train.augment.colour=0.5",
            "train.image_size=96",
            "export.int8=true",
            "export.calib=synthetic",
            "output_dir=/tmp/x",
        ],
    )
    t = cfg.train_config()
    assert t.lr == pytest.approx(1e-4) and t.epochs == 3 and t.image_size == 96
    assert t.model_kwargs == {"width": 0.25, "primary_channels": 8}
    assert t.augment is not None and t.augment.colour == 0.5 and t.augment.cutout == 0.0
    assert cfg.export.int8 and cfg.output_dir == "/tmp/x"
    assert load_app_config(None, ["train.augment=null"]).train_config().augment is None


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 5, "lr": 0.01}, "plots": False}))
    cfg = load_app_config(path, ["train.epochs=2"])
    assert cfg.train["epochs"] == 2 and cfg.train["lr"] == 0.01 and cfg.plots is False


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_app_config(None, ["train.epochs=2", "export.fp16=true"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_app_config(path).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.epoch=3", "train.epochs"),
        ("data.synthetic_trian=10", "data.synthetic_train"),
        ("outputdir=x", "output_dir"),
        ("export.f16=true", "export.fp16"),
        ("train.augment.color=0.2", "train.augment.colour"),
    ],
)
def test_unknown_keys_suggest(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match="unknown key") as info:
        load_app_config(None, [override])
    assert suggestion in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=many", "train.epochs"),
        ("train.epochs=0", "epochs"),
        ("train.lr=fast", "train.lr"),
        ("data.kind=imagenet", "data.kind"),
        ("export.fp16=maybe", "export.fp16"),
        ("train.schedule=linear", "schedule"),
        ("train.model_kwargs=3", "train.model_kwargs"),
        ("data.synthetic_test=-1", "data.synthetic_test"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_app_config(None, [override])


def test_parse_override() -> None:
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("x=") == ("x", "")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_presets_carry_the_papers_settings() -> None:
    assert available_presets() == ["affectnet", "fer2013", "rafdb"]
    for name in available_presets():
        cfg = load_app_config(preset=name)
        t = cfg.train_config()
        assert cfg.data.kind == name
        assert cfg.data.root.startswith("/path/to/")
        assert t.model == "e2capsnet" and t.image_size == 224
        assert t.lr == pytest.approx(1e-4) and t.batch_size == 16
        assert t.loss == "margin" and t.model_kwargs == {"routing_iterations": 3}
        assert t.epochs == 40 and t.patience > 0
        assert t.augment is not None and t.augment.cutout == 0.3  # the full augmentation
        assert cfg.output_dir == f"runs/fer-train/{name}"
    assert load_app_config(None, ["preset=fer2013"]).data.kind == "fer2013"
    assert load_app_config(preset="rafdb", overrides=["train.epochs=2"]).train["epochs"] == 2


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="did you mean 'rafdb'") as info:
        preset_path("rafd")
    assert "affectnet, fer2013, rafdb" in str(info.value)


def test_command_line_split() -> None:
    from fer_train.cli import _split

    assert _split(["--preset", "rafdb", "-c", "a.yaml", "train.lr=1e-4"]) == (
        "a.yaml",
        "rafdb",
        ["train.lr=1e-4"],
    )
    assert _split(["--config=b.yaml", "x.y=-1"]) == ("b.yaml", None, ["x.y=-1"])
    for bad, message in (
        (["--preset"], "expected one argument"),
        (["epochs"], "key=value"),
        (["--verbose"], "unexpected argument"),
    ):
        with pytest.raises(ValueError, match=message):
            _split(bad)
