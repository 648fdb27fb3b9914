"""TrainConfig from plain data (config_layers): strict types, unknown keys, augment, tuples, and
field-naming errors from ``__post_init__``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from capsnet_model.augment import AugmentConfig
from capsnet_model.training import TrainConfig
from config_layers import ConfigError


def test_plain_data_builds_typed_fields() -> None:
    cfg = TrainConfig.from_dict(
        {
            "epochs": 3,
            "lr": 1,  # an int is accepted for a float
            "mean": [0, 0.5, 1],
            "betas": [0.8, 0.99],
            "model_kwargs": {"width": 0.25, "decoder": True},
            "augment": {"flip": 0.2, "scale": [0.8, 1.2]},
        }
    )
    assert cfg.epochs == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.mean == (0.0, 0.5, 1.0) and cfg.betas == (0.8, 0.99)
    assert cfg.model_kwargs == {"width": 0.25, "decoder": True}
    assert cfg.augment == AugmentConfig(flip=0.2, scale=(0.8, 1.2))
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"epochs": "3"}, "epochs: expected int, got '3' (str)"),
        ({"epochs": True}, "epochs: expected int, got True (bool)"),
        ({"epochs": 3.0}, "epochs: expected int, got 3.0 (float)"),
        ({"lr": "1e-4"}, "lr: expected float, got '1e-4' (str)"),
        ({"progress": "yes"}, "progress: expected bool, got 'yes' (str)"),
        ({"model": 3}, "model: expected str, got 3 (int)"),
        ({"model_kwargs": 3}, "model_kwargs: expected dict[str, any value], got 3 (int)"),
    ],
)
def test_values_are_not_coerced(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    assert str(info.value).startswith(message), str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_keys_suggest_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"^epochz: unknown key for TrainConfig") as info:
        TrainConfig.from_dict({"epochz": 3})
    assert "(did you mean 'epochs'?)" in str(info.value) and "valid keys: model," in str(info.value)
    assert info.value.path == ("epochz",)
    with pytest.raises(ConfigError, match=r"^augment\.colour_: .*did you mean 'colour'") as info:
        TrainConfig.from_dict({"augment": {"colour_": 0.1}})
    assert info.value.path == ("augment", "colour_")


def test_literal_choices_suggest_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"^schedule: .*'cosin' \(str\); did you mean 'cosine'"):
        TrainConfig.from_dict({"schedule": "cosin"})
    with pytest.raises(ConfigError, match=r"^attention: .*did you mean 'landmarks'"):
        TrainConfig.from_dict({"attention": "landmark"})


def test_augment_is_null_or_a_mapping() -> None:
    assert TrainConfig.from_dict({"augment": None}).augment is None
    assert TrainConfig.from_dict({"augment": {}}).augment == AugmentConfig()
    with pytest.raises(ConfigError, match=r"^augment: expected a mapping for AugmentConfig"):
        TrainConfig.from_dict({"augment": 0.5})
    with pytest.raises(ConfigError, match=r"^augment\.flip: expected float, got 'high'"):
        TrainConfig.from_dict({"augment": {"flip": "high"}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mean": [0.5, 0.5]}, "mean: expected tuple[float, float, float] (3 items), got 2 items"),
        ({"std": [1, 1, 1, 1]}, "std: expected tuple[float, float, float] (3 items), got 4 items"),
        ({"betas": [0.9]}, "betas: expected tuple[float, float] (2 items), got 1 items"),
        ({"augment": {"scale": [0.9, 1.0, 1.1]}}, "augment.scale: expected tuple[float, float]"),
    ],
)
def test_tuple_lengths_are_checked(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        ({"epochs": 0}, ("epochs",), "must be positive, got 0"),
        ({"batch_size": -1}, ("batch_size",), "must be positive, got -1"),
        ({"lr": 0}, ("lr",), "must be positive, got 0.0"),
        ({"val_fraction": 1}, ("val_fraction",), "must be in [0, 1), got 1.0"),
        ({"patience": -2}, ("patience",), "must be >= 0, got -2"),
        ({"num_workers": -1}, ("num_workers",), "must be >= 0, got -1"),
    ],
)
def test_post_init_errors_name_the_field(
    data: dict[str, Any], path: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    assert info.value.path == path and info.value.problem == problem
    assert str(info.value) == f"{path[0]}: {problem}"


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(epochs=0)
    assert info.value.path == ("epochs",)
    with pytest.raises(ConfigError, match=r"^loss: .*got 'margins'; did you mean 'margin'"):
        TrainConfig(loss="margins")  # type: ignore[arg-type]


def test_to_dict_is_plain_json_and_reads_back_equal() -> None:
    cfg = TrainConfig(augment=AugmentConfig(flip=0.1), model_kwargs={"width": 0.5}, grad_clip=1.0)
    data = cfg.to_dict()
    assert data["mean"] == [0.485, 0.456, 0.406] and data["augment"]["scale"] == [0.9, 1.1]
    assert list(data) == [name for name in TrainConfig.__dataclass_fields__]
    assert TrainConfig.from_dict(json.loads(json.dumps(data))) == cfg
    no_augment = TrainConfig(augment=None)
    assert no_augment.to_dict()["augment"] is None
    assert TrainConfig.from_dict(no_augment.to_dict()) == no_augment
