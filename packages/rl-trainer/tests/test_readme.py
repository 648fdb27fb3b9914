"""The README's configuration examples are valid configs (they are what users copy)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import band_ops
from rl_trainer import config_io
from rl_trainer.config import TrainerConfig, load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_yaml_example_loads_and_builds_its_rule(tmp_path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no yaml example"
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(block)
        config = load_config(path)
        band_ops.get_rule(config.algorithm.rule, **config.algorithm.rule_params)
        assert config.algorithm.rule == "band" and config.algorithm.dual_clip == 10


def test_cli_overrides_in_quickstart_parse() -> None:
    text = README.read_text()
    command = re.search(r"rl-trainer train (model\.path=.*?)\n\n", text, flags=re.S)
    assert command is not None
    args = shlex.split(command.group(1).replace("\\\n", " "))
    config = config_io.from_dict(
        TrainerConfig,
        config_io.merge(config_io.to_dict(TrainerConfig()), config_io.parse_overrides(args)),
    )
    assert config.algorithm.rule_params == {"divergence": "kl", "delta": 0.05, "max_ratio": 10}
    assert config.algorithm.rewards[0].name == "math_verify"
