"""band_ops.trl against TRL's own GRPOTrainer, on a tiny Llama and tokenizer built here (no hub)."""

from __future__ import annotations

import math
import string
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("trl", reason="band-ops[trl] is not installed")

from datasets import Dataset  # brought by trl
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from trl import GRPOConfig, GRPOTrainer

import band_ops
from band_ops.trl import (
    BandGRPOTrainer,
    UnsupportedGRPOOptionError,
    rule_from_config,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = string.digits + string.ascii_lowercase + " "
PROMPTS = ["ab", "cd", "ef", "gh"]
MAX_COMPLETION = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A directory holding a 1-layer Llama (hidden 16) and a character tokenizer, saved here."""
    path = tmp_path_factory.mktemp("tiny-llama")
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # The model and tokenizer are loaded by path; nothing may reach for the hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _reward(completions, **kwargs):
    return [float(c.count("a") + c.count("e")) - 0.3 * len(c) for c in completions]


def _config(tmp_path, **overrides):
    params = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=MAX_COMPLETION,
        max_steps=1,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        optim="sgd",  # plain SGD: the step is -lr * grad, so equal gradients give equal weights
        learning_rate=0.5,
        beta=0.0,
        disable_tqdm=True,
    )
    params.update(overrides)
    return GRPOConfig(**params)


def _trainer(cls, model_dir, config, **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return cls(
        model=str(model_dir),
        reward_funcs=_reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        **kwargs,
    )


def _batch(trainer, *, shift=None, seed=0):
    """Returns a fixed GRPO micro-batch for ``trainer._compute_loss``: 4 completions of up to 5
    tokens (one padded, one empty), mixed-sign advantages, and old / reference log-probs that put
    the ratios on both sides of PPO's 0.8 / 1.2 (or at exp(shift) exactly)."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(4, 41, (4, 3), generator=g)
    completion_ids = torch.randint(4, 41, (4, 5), generator=g)
    prompt_mask = torch.ones(4, 3, dtype=torch.long)
    completion_mask = torch.ones(4, 5, dtype=torch.long)
    completion_mask[1, 3:] = 0
    completion_mask[3, :] = 0  # an empty completion: counts for grpo / dr_grpo divisors only
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            5,
        )
    if shift is None:
        old = logps + 0.5 * torch.randn(logps.shape, generator=g)
    else:
        old = logps - shift
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.7]),
        "old_per_token_logps": old,
        "ref_per_token_logps": logps + 0.1 * torch.randn(logps.shape, generator=g),
        "num_items_in_batch": completion_mask.sum().float() * 2,
    }


def _loss_and_grads(trainer, inputs, accumulation=2):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


# Each config exercises one aggregation and a different set of TRL's options around the clip.
EQUIVALENCE_CONFIGS = {
    "grpo+kl": dict(loss_type="grpo", beta=0.1),
    "bnpo+tool_mask+vllm_weights": dict(loss_type="bnpo", epsilon=0.1, vllm_weights=True),
    "dr_grpo+kl+dual_clip": dict(loss_type="dr_grpo", beta=0.05, delta=2.0),
    "dapo+masks+entropy": dict(
        loss_type="dapo",
        beta=0.1,
        epsilon_high=0.2,
        top_entropy_quantile=0.5,
        off_policy_mask_threshold=0.05,
        entropy_coef=0.01,
    ),
}


@pytest.mark.parametrize("overrides", EQUIVALENCE_CONFIGS.values(), ids=EQUIVALENCE_CONFIGS)
def test_ppo_rule_matches_trl_loss_gradients_and_metrics(tmp_path, model_dir, overrides):
    overrides = dict(overrides)
    vllm_weights = overrides.pop("vllm_weights", False)
    config = _config(tmp_path, **overrides)
    theirs = _trainer(GRPOTrainer, model_dir, config)
    ours = _trainer(BandGRPOTrainer, model_dir, config, rule="ppo")
    assert ours.rule == band_ops.PPO(eps=config.epsilon)
    inputs = _batch(theirs)
    if vllm_weights:
        # What a vLLM run adds: truncated importance weights (0 where masked) and a tool mask.
        # vLLM itself is not needed: the loss only reads these two flags and the weights.
        for trainer in (theirs, ours):
            trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
        g = torch.Generator().manual_seed(1)
        weights = 0.5 + torch.rand(4, 5, generator=g)
        weights[0, 1] = 0.0
        inputs["importance_sampling_ratio"] = weights
        inputs["tool_mask"] = torch.ones(4, 5, dtype=torch.long)
        inputs["tool_mask"][2, 2:4] = 0

    want_loss, want_grads, want_metrics = _loss_and_grads(theirs, inputs)
    got_loss, got_grads, got_metrics = _loss_and_grads(ours, inputs)

    assert 0 < want_metrics["clip_ratio/region_mean"] < 1  # the clip binds on some tokens only
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-7)
    assert got_grads.keys() == want_grads.keys() and want_grads
    for name, want in want_grads.items():
        torch.testing.assert_close(got_grads[name], want, rtol=1e-4, atol=1e-7, msg=name)
    for name, want in want_metrics.items():
        assert got_metrics[name] == pytest.approx(want, rel=1e-5, abs=1e-7, nan_ok=True), name
    assert got_metrics["band_ops/clip_frac"] > 0
    assert got_metrics["band_ops/bound_high_mean"] == pytest.approx(1 + config.epsilon)


def test_band_rule_differs_from_ppo_where_its_bounds_bind(tmp_path, model_dir):
    # Every token's ratio is 1.5 with a positive advantage: PPO clips all of them at 1.2, while
    # Band (KL, delta 0.05) allows rare tokens (p ~ 1/40 in an untrained model) to reach ~5.
    config = _config(tmp_path, loss_type="bnpo")
    theirs = _trainer(GRPOTrainer, model_dir, config)
    ours = _trainer(BandGRPOTrainer, model_dir, config, rule="band", rule_kwargs={"delta": 0.05})
    inputs = _batch(theirs, shift=math.log(1.5))
    inputs["advantages"] = torch.tensor([1.0, 2.0, 0.5, 1.0])
    mask = inputs["completion_mask"].float()
    mean_adv = (inputs["advantages"][:, None] * mask).sum() / mask.sum()
    _, upper = ours.rule.bounds(inputs["old_per_token_logps"])
    assert bool((upper[mask.bool()] > 1.5).all())

    ppo_loss, ppo_grads, ppo_metrics = _loss_and_grads(theirs, inputs, accumulation=1)
    band_loss, band_grads, band_metrics = _loss_and_grads(ours, inputs, accumulation=1)

    assert ppo_loss.item() == pytest.approx(-1.2 * mean_adv.item(), rel=1e-5)
    assert band_loss.item() == pytest.approx(-1.5 * mean_adv.item(), rel=1e-5)
    assert ppo_metrics["clip_ratio/high_mean"] == 1.0
    assert band_metrics["clip_ratio/high_mean"] == 0.0
    assert band_metrics["band_ops/clip_frac"] == 0.0
    assert band_metrics["band_ops/token_frac/p0.01-0.1"] == 1.0
    # Signed counts are logged as counts: 13 completion tokens, all A > 0, none above Band's bound.
    assert band_metrics["band_ops/count/pos/p0.01-0.1"] == mask.sum().item() == 13
    assert band_metrics["band_ops/clipped_upper/pos/p0.01-0.1"] == 0.0
    assert band_metrics["band_ops/clip_frac_upper/pos/p0.01-0.1"] == 0.0
    assert max(g.abs().max().item() for g in ppo_grads.values()) == 0.0  # all clipped
    assert max(g.abs().max().item() for g in band_grads.values()) > 0.0


def _train_two_steps(cls, model_dir, tmp_path, **kwargs):
    # Two optimizer steps on one generation batch (num_iterations=2): the second step is
    # off-policy, so the old log-probs are TRL's and the clip can bind.
    config = _config(tmp_path, loss_type="dapo", beta=0.1, num_iterations=2, max_steps=2)
    trainer = _trainer(cls, model_dir, config, **kwargs)
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return trainer.state.log_history, params


def test_training_steps_match_trl_with_the_ppo_rule(tmp_path, model_dir):
    want_logs, want_params = _train_two_steps(GRPOTrainer, model_dir, tmp_path / "trl")
    got_logs, got_params = _train_two_steps(
        BandGRPOTrainer, model_dir, tmp_path / "band", rule="ppo"
    )

    with torch.no_grad():
        original = LlamaForCausalLM.from_pretrained(str(model_dir))
    moved = max((p - original.state_dict()[n]).abs().max().item() for n, p in want_params.items())
    assert moved > 1e-3  # the steps did something
    for name, want in want_params.items():
        torch.testing.assert_close(got_params[name], want, rtol=1e-4, atol=1e-6, msg=name)
    steps = [(w, g) for w, g in zip(want_logs, got_logs, strict=True) if "loss" in w]
    assert len(steps) == 2
    assert steps[0][0]["reward"] == steps[0][1]["reward"]  # the same generations were scored
    assert steps[1][0]["clip_ratio/region_mean"] > 0  # the off-policy step clipped
    for want, got in steps:
        for key in ("loss", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/region_mean"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
        assert got["band_ops/clip_frac"] == pytest.approx(want["clip_ratio/region_mean"])


def test_one_band_training_step_logs_band_metrics(tmp_path, model_dir):
    config = _config(tmp_path, loss_type="grpo")
    trainer = _trainer(BandGRPOTrainer, model_dir, config, rule="band", rule_kwargs={"delta": 0.1})
    assert trainer.rule == band_ops.Band(delta=0.1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = trainer.state.log_history[0]
    assert math.isfinite(logs["loss"])
    for bucket in ("p<0.01", "p0.01-0.1", "p0.1-0.5", "p>0.5"):
        assert 0 <= logs[f"band_ops/token_frac/{bucket}"] <= 1
    assert logs["band_ops/bound_high_mean"] > 1.2  # Band's bounds, not PPO's
    after = list(trainer.model.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


# --- options and errors: raised before any model is loaded --------------------------------


def test_unknown_rule_lists_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="unknown clipping rule 'bandd'.*band, band_lower, band_"):
        BandGRPOTrainer(model="unused", args=_config(tmp_path), rule="bandd")


def test_bad_rule_parameters_name_the_rule(tmp_path):
    with pytest.raises(ValueError, match="bad parameters for clipping rule 'band'"):
        BandGRPOTrainer(model="unused", args=_config(tmp_path), rule_kwargs={"eps": 0.2})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(loss_type="cispo"), "loss_type='cispo' is not supported.*clips the importance"),
        (dict(loss_type="sapo"), "loss_type='sapo'.*supported: grpo, bnpo, dr_grpo, dapo"),
        (dict(importance_sampling_level="sequence"), "importance_sampling_level='sequence'"),
        (dict(use_adaptive_entropy=True), "use_adaptive_entropy=True"),
        (
            dict(loss_type="dr_grpo", max_completion_length=None),
            "loss_type='dr_grpo' divides by max_completion_length, which is None",
        ),
    ],
)
def test_unsupported_trl_options_are_refused(tmp_path, overrides, match):
    with pytest.raises(UnsupportedGRPOOptionError, match=match):
        BandGRPOTrainer(model="unused", args=_config(tmp_path, **overrides), rule="band")


def test_trl_epsilons_are_the_defaults_of_the_constant_rules(tmp_path):
    config = _config(tmp_path, epsilon=0.1, epsilon_high=0.3)
    assert rule_from_config("clip_higher", None, config) == band_ops.ClipHigher(0.1, 0.3)
    high = rule_from_config("clip_higher", {"eps_high": 0.5}, config)
    assert high == band_ops.ClipHigher(0.1, 0.5)
    assert rule_from_config("ppo", {"eps": 0.25}, config) == band_ops.PPO(0.25)
    assert rule_from_config("dcpo", None, config) == band_ops.DCPO()
    with pytest.raises(UnsupportedGRPOOptionError, match="epsilon=0.1 and epsilon_high=0.3"):
        rule_from_config("ppo", None, config)
    with pytest.raises(ValueError, match="rule_kwargs=.*needs a rule name"):
        rule_from_config(band_ops.Band(), {"delta": 0.1}, config)


# --- the extra is optional ------------------------------------------------------------------

_BLOCK_TRL = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockTRL(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "trl" or name.startswith("trl."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockTRL())
    import band_ops

    assert band_ops.policy_loss is not None
    try:
        import band_ops.trl
    except ImportError as exc:
        print("IMPORT-ERROR:", exc)
    else:
        print("IMPORTED")
    """
)


def test_band_ops_imports_without_trl_and_the_adapter_names_the_extra():
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_TRL], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORT-ERROR:" in result.stdout, result.stdout
    assert "pip install band-ops[trl]" in result.stdout
