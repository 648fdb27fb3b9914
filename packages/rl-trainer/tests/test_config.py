"""Tests for rl_trainer.config: the TrainerConfig tree, its defaults, checks and YAML round trip."""

from __future__ import annotations

import re

import pytest

from rl_trainer import config_io
from rl_trainer.config import TrainerConfig, load_config
from rl_trainer.rewards import RewardSpec


def test_defaults_load() -> None:
    config = load_config()
    assert isinstance(config, TrainerConfig)
    assert config == TrainerConfig()
    assert config.model.path == "" and config.model.dtype == "auto"
    assert config.model.lora.enabled is False
    assert config.model.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config.rollout.backend == "hf" and config.rollout.group_size == 8
    assert config.algorithm.rule == "band" and config.algorithm.advantage == "grpo"
    assert config.algorithm.rewards == [RewardSpec(name="exact_match")]
    assert config.optim.lr == 1e-6 and config.optim.max_grad_norm == 1.0
    assert config.data.overlong_prompts == "error"
    assert config.checkpoint.resume is None and config.eval.k == 4


def test_default_factories_are_not_shared() -> None:
    a, b = TrainerConfig(), TrainerConfig()
    a.algorithm.rewards.append(RewardSpec(name="format"))
    a.model.lora.target_modules.append("up_proj")
    assert b.algorithm.rewards == [RewardSpec(name="exact_match")]
    assert b.model.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_check_required() -> None:
    with pytest.raises(ValueError, match="model.path is required"):
        load_config().check_required()
    with pytest.raises(ValueError, match="data.path is required"):
        load_config(None, ["model.path=m"]).check_required()
    load_config(None, ["model.path=m", "data.path=d.jsonl"]).check_required()


def test_yaml_round_trip(tmp_path) -> None:
    config = load_config(
        None,
        [
            "model.path=/models/tiny",
            "model.dtype=bfloat16",
            "model.lora.enabled=true",
            "model.lora.target_modules=[all-linear]",
            "data.path=data/p.jsonl",
            "data.system_prompt='Answer: with digits.'",  # quoted: unquoted it is a YAML map
            "data.overlong_prompts=skip",
            "rollout.top_p=0.9",
            "rollout.generation_batch_size=16",
            "algorithm.rule=clip_higher",
            "algorithm.rule_params={eps_low: 0.2, eps_high: 0.28}",
            "algorithm.rewards=[{name: exact_match, weight: 2}, {name: format, params: {x: 1}}]",
            "optim.lr=3e-6",
            "optim.max_grad_norm=null",
            "checkpoint.resume=latest",
            "eval.max_prompts=10",
        ],
    )
    path = config_io.dump_yaml(config, tmp_path / "sub" / "config.yaml")
    assert path.is_file()
    loaded = load_config(path)
    assert loaded == config
    assert loaded.algorithm.rewards[1] == RewardSpec("format", 1.0, {"x": 1})
    assert loaded.optim.lr == 3e-6 and loaded.optim.max_grad_norm is None
    assert loaded.data.system_prompt == "Answer: with digits."
    # Overrides on top of the file win.
    assert load_config(path, ["optim.lr=1e-5"]).optim.lr == 1e-5


def test_file_values_and_line_numbers(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-5\n  steps: 0\n", encoding="utf-8")
    # A __post_init__ check is reported at its dataclass's key (line 1, "optim:").
    with pytest.raises(ValueError, match=r"run\.yaml, line 1: optim: optim\.steps must be > 0"):
        load_config(path)
    path.write_text("optim:\n  lr: 1e-5\n", encoding="utf-8")
    assert load_config(path).optim.lr == 1e-5  # "1e-5" is a float, not a YAML 1.1 string


CHECKS = [
    ("model.lora.r=0", "model.lora.r"),
    ("model.lora.alpha=0", "model.lora.alpha"),
    ("model.lora.dropout=1", "model.lora.dropout"),
    ("model.lora.dropout=-0.1", "model.lora.dropout"),
    ("model.lora.target_modules=[]", "model.lora.target_modules"),
    ("data.max_prompt_length=0", "data.max_prompt_length"),
    ("rollout.group_size=1", "rollout.group_size"),
    ("rollout.prompts_per_step=0", "rollout.prompts_per_step"),
    ("rollout.temperature=0", "rollout.temperature"),
    ("rollout.top_p=0", "rollout.top_p"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("rollout.top_k=-1", "rollout.top_k"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens"),
    ("rollout.generation_batch_size=0", "rollout.generation_batch_size"),
    ("algorithm.ppo_epochs=0", "algorithm.ppo_epochs"),
    ("algorithm.mini_batches=0", "algorithm.mini_batches"),
    ("algorithm.kl_coef=-0.1", "algorithm.kl_coef"),
    ("algorithm.entropy_coef=.inf", "algorithm.entropy_coef"),
    ("algorithm.loss_horizon=0", "algorithm.loss_horizon"),
    ("algorithm.rewards=[]", "algorithm.rewards"),
    ("optim.lr=0", "optim.lr"),
    ("optim.weight_decay=-1", "optim.weight_decay"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("optim.max_grad_norm=0", "optim.max_grad_norm"),
    ("optim.micro_batch_size=0", "optim.micro_batch_size"),
    ("optim.steps=0", "optim.steps"),
    ("optim.max_nonfinite_steps=0", "optim.max_nonfinite_steps"),
    ("logging.log_every=0", "logging.log_every"),
    ("logging.print_samples=-1", "logging.print_samples"),
    ("checkpoint.save_every=-1", "checkpoint.save_every"),
    ("checkpoint.keep_last=-1", "checkpoint.keep_last"),
    ("eval.every=-1", "eval.every"),
    ("eval.k=0", "eval.k"),
    ("eval.temperature=0", "eval.temperature"),
    ("eval.max_prompts=0", "eval.max_prompts"),
]


@pytest.mark.parametrize(("override", "key"), CHECKS, ids=[c[0] for c in CHECKS])
def test_post_init_checks_name_the_dotted_key(override, key) -> None:
    with pytest.raises(ValueError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert re.search(rf"(^|\s){re.escape(key)}\b", message), message
    assert f"override {override!r}" in message


@pytest.mark.parametrize(
    "override",
    [
        "rollout.group_size=2",
        "rollout.top_p=1",
        "rollout.top_k=0",
        "algorithm.kl_coef=0",
        "optim.max_grad_norm=null",
        "model.lora.dropout=0",
    ],
)
def test_boundary_values_are_accepted(override) -> None:
    load_config(None, [override])


def test_literal_fields_reject_other_values() -> None:
    with pytest.raises(ValueError, match=r"model\.dtype: expected one of .*'bfloat16'"):
        load_config(None, ["model.dtype=fp8"])
    with pytest.raises(ValueError, match=r"data\.overlong_prompts.*did you mean 'skip'"):
        load_config(None, ["data.overlong_prompts=skp"])
    with pytest.raises(ValueError, match=r"algorithm\.kl_estimator"):
        load_config(None, ["algorithm.kl_estimator=k4"])


def test_wrong_type_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"optim\.lr: expected float, got 'abc'"):
        load_config(None, ["optim.lr=abc"])
    with pytest.raises(ValueError, match=r"rollout\.group_size: expected int"):
        load_config(None, ["rollout.group_size=4.5"])


def test_reward_list_item_override() -> None:
    config = load_config(None, ["algorithm.rewards.0.weight=2"])
    assert config.algorithm.rewards == [RewardSpec(name="exact_match", weight=2.0)]
    config = load_config(
        None,
        [
            "algorithm.rewards=[{name: exact_match}, {name: format}]",
            "algorithm.rewards.1.weight=0.5",
            "algorithm.rewards.0.params.column=gold",
        ],
    )
    assert config.algorithm.rewards == [
        RewardSpec("exact_match", 1.0, {"column": "gold"}),
        RewardSpec("format", 0.5),
    ]
    with pytest.raises(ValueError, match=r"list index 1 is out of range"):
        load_config(None, ["algorithm.rewards.1.weight=2"])


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("rollout.grop_size=4", "group_size"),
        ("optim.lrr=1e-5", "lr"),
        ("optm.lr=1e-5", "optim"),
        ("model.lora.rank=8", "r"),
        ("algorithm.rewards.0.wieght=2", "weight"),
    ],
)
def test_unknown_key_suggests_the_closest(override, suggestion) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ValueError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert key in message and "unknown key" in message
    if suggestion != "r":  # "rank" is not close enough to "r" for a suggestion
        assert f"did you mean {suggestion!r}?" in message
    assert "valid keys:" in message
