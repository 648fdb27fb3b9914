"""Clipping-rule parameters are typed: band-ops' rule dataclass checks them when the
configuration loads, and the error points at the file line or override that set them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import band_ops
import config_layers
from rl_trainer import config_io
from rl_trainer.config import TrainerConfig, load_config


def test_misspelt_rule_parameter_is_refused_at_load_with_a_suggestion() -> None:
    with pytest.raises(config_layers.ConfigError) as info:
        load_config(None, ["algorithm.rule_params.delt=0.1"])
    message = str(info.value)
    assert message.startswith(
        "override 'algorithm.rule_params.delt=0.1': algorithm.rule_params.delt: clipping rule "
        "'band': unknown key for Band (did you mean 'delta'?); valid keys: divergence, delta, "
        "max_ratio"
    )
    assert info.value.path == ("algorithm", "rule_params", "delt")


def test_negative_delta_is_refused_at_load_naming_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("algorithm:\n  rule: band\n  rule_params:\n    delta: -0.5\n")
    with pytest.raises(config_layers.ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}, line 4: algorithm.rule_params.delta: clipping rule 'band': delta must be a "
        "positive finite number, got -0.5"
    )


def test_rule_parameter_of_the_wrong_type() -> None:
    with pytest.raises(config_layers.ConfigError) as info:
        load_config(None, ["algorithm.rule=ppo", "algorithm.rule_params.eps=wide"])
    assert str(info.value) == (
        "override 'algorithm.rule_params.eps=wide': algorithm.rule_params.eps: clipping rule "
        "'ppo': expected float, got 'wide' (str)"
    )


def test_parameters_of_another_rule_are_refused() -> None:
    # PPO has one parameter; Clip-Higher's names are a likely slip when switching rules.
    with pytest.raises(config_layers.ConfigError, match="unknown key for PPO"):
        load_config(None, ["algorithm.rule=ppo", "algorithm.rule_params={eps_high: 0.28}"])


def test_unknown_rule_name_suggests_the_closest() -> None:
    with pytest.raises(config_layers.ConfigError) as info:
        load_config(None, ["algorithm.rule=bandd"])
    assert str(info.value).startswith("override 'algorithm.rule=bandd': algorithm.rule: unknown")
    assert str(info.value).endswith("did you mean 'band'?")


def test_the_rule_name_is_not_a_parameter() -> None:
    with pytest.raises(config_layers.ConfigError, match="chosen by algorithm.rule"):
        load_config(None, ["algorithm.rule_params.name=ppo"])


def test_valid_parameters_build_the_same_rule_as_band_ops() -> None:
    config = load_config(None, ["algorithm.rule=dcpo", "algorithm.rule_params={eps_high: 0.3}"])
    rule = band_ops.get_rule(config.algorithm.rule, **config.algorithm.rule_params)
    assert rule == band_ops.DCPO(eps_high=0.3)


class _Scaled:
    """A user rule that is not a dataclass: its parameters are checked by building it."""

    name = "scaled_test_rule"

    def __init__(self, width: float = 0.2) -> None:
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.width = width

    def bounds(self, old_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ones = torch.ones_like(old_logprobs)
        return ones * (1 - self.width), ones * (1 + self.width)


def test_user_rule_that_is_not_a_dataclass_is_built_once_at_load() -> None:
    if "scaled_test_rule" not in band_ops.available_rules():
        band_ops.register_rule("scaled_test_rule")(_Scaled)
    ok = load_config(None, ["algorithm.rule=scaled_test_rule", "algorithm.rule_params.width=0.5"])
    assert ok.algorithm.rule_params == {"width": 0.5}
    with pytest.raises(config_layers.ConfigError, match="width must be > 0, got -1"):
        load_config(None, ["algorithm.rule=scaled_test_rule", "algorithm.rule_params.width=-1"])
    with pytest.raises(config_layers.ConfigError, match="unexpected keyword argument 'wdth'"):
        load_config(None, ["algorithm.rule=scaled_test_rule", "algorithm.rule_params.wdth=1"])


def test_config_io_names_are_config_layers_own() -> None:
    for name in ("ConfigError", "from_dict", "load_config", "merge", "to_dict"):
        assert getattr(config_io, name) is getattr(config_layers, name)


def test_dump_yaml_replaces_atomically_and_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config_io.dump_yaml(TrainerConfig(), tmp_path / "sub" / "config.yaml")
    assert load_config(path) == TrainerConfig()
    before = path.read_text(encoding="utf-8")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    changed = load_config(None, ["optim.lr=3e-6"])
    with pytest.raises(OSError, match="disk on fire"):
        config_io.dump_yaml(changed, path)
    assert path.read_text(encoding="utf-8") == before
    assert os.listdir(path.parent) == ["config.yaml"]
