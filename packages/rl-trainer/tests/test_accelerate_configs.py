"""The shipped accelerate configs load with accelerate's own parser and say what they claim."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

from rl_trainer.cli import main
from rl_trainer.configs import accelerate_config, accelerate_configs

EXPECTED = {
    "single_gpu": (DistributedType.NO, 1, False),
    "ddp": (DistributedType.MULTI_GPU, 8, False),
    "fsdp": (DistributedType.FSDP, 8, False),
    "deepspeed_zero2": (DistributedType.DEEPSPEED, 8, False),
    "deepspeed_zero3": (DistributedType.DEEPSPEED, 8, False),
    "cpu_2proc": (DistributedType.MULTI_GPU, 2, True),
    "single_gpu_vllm": (DistributedType.NO, 1, False),
    "ddp_vllm": (DistributedType.MULTI_GPU, 7, False),
}


def test_every_expected_config_is_shipped() -> None:
    assert set(accelerate_configs()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses(name: str) -> None:
    config = ClusterConfig.from_yaml_file(str(accelerate_config(name)))
    assert (config.distributed_type, config.num_processes, config.use_cpu) == EXPECTED[name]
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name.endswith("_vllm"):  # GPU 0 is left to the vLLM server
        assert "0" not in str(config.gpu_ids).split(",")


def test_unknown_config_lists_shipped_ones() -> None:
    with pytest.raises(ValueError, match="ddp"):
        accelerate_config("dpp")


def test_cli_lists_configs(capsys) -> None:
    assert main(["accelerate-configs"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPECTED)
