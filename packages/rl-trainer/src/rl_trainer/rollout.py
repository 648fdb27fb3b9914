"""Rollout backends: sample G completions per prompt. ``hf`` (the training model itself) and
``vllm`` (a vLLM server, ``rl_trainer.vllm_client``) are built in; others plug in through
``register_rollout_backend``.

A backend receives token ids and returns token ids plus, for each completion, the position of
the prompt it answers: the trainer forms groups from that prompt identity, never from where a
completion happens to sit in the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from rl_trainer.sampling import sample

if TYPE_CHECKING:
    # Imported where used: listing the backends (configuration checks) must stay fast.
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: temperature 0 means greedy decoding."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass
class RolloutOutput:
    """Completions for a list of prompts.

    prompt_index[i]: position (in the prompt list given to ``generate``) of the prompt that
        completion i answers.
    completion_ids[i]: the sampled tokens, ending with EOS when the model stopped, without padding.
    """

    prompt_index: list[int]
    completion_ids: list[list[int]]
    # Optional: per completion token, its log-prob under the sampling weights and temperature
    # (before any top-k/top-p truncation). The trainer may use them as the old log-probs.
    logprobs: list[list[float]] | None = None

    def __post_init__(self) -> None:
        if len(self.prompt_index) != len(self.completion_ids):
            raise ValueError(
                f"prompt_index ({len(self.prompt_index)}) and completion_ids "
                f"({len(self.completion_ids)}) must have the same length"
            )
        if self.logprobs is not None and [len(x) for x in self.logprobs] != [
            len(c) for c in self.completion_ids
        ]:
            raise ValueError("logprobs must have one value per completion token")


class RolloutBackend(Protocol):
    """What the trainer needs from a sampler.

    ``generate`` returns ``num_samples`` completions for each prompt; ``sync_weights`` is called
    after every optimiser update so that a backend holding its own copy of the weights (vLLM)
    can refresh it (the ``hf`` backend samples from the training model itself: a no-op).
    """

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], num_samples: int, params: SamplingParams
    ) -> RolloutOutput: ...

    def sync_weights(self) -> None: ...


BackendFactory = Callable[..., RolloutBackend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_rollout_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: registers a factory ``(model, tokenizer, accelerator, **options) -> backend``."""

    def _register(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory

    return _register


def available_rollout_backends() -> list[str]:
    """Returns the registered rollout backend names, sorted."""
    return sorted(_BACKENDS)


def create_rollout_backend(
    name: str,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    **options: Any,
) -> RolloutBackend:
    """Returns the backend registered as ``name`` built for this model and tokenizer."""
    try:
        factory = _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown rollout backend {name!r}; valid names: "
            f"{', '.join(available_rollout_backends())}"
        ) from None
    return factory(model, tokenizer, accelerator, **options)


@contextlib.contextmanager
def generation_model(accelerator: Accelerator, model: nn.Module) -> Iterator[nn.Module]:
    """Yields a module whose ``generate`` can run, whatever wrapper training put around it.

    DDP and DeepSpeed: the unwrapped module (ZeRO-3 gathers each layer's weights in its
    forward hooks). FSDP1: full parameters summoned for the duration (no write-back). FSDP2
    (``fully_shard``) shards through per-module hooks, so the module itself works.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if isinstance(model, FSDP):
        with FSDP.summon_full_params(model, writeback=False, recurse=True):
            yield accelerator.unwrap_model(model)
    else:
        yield accelerator.unwrap_model(model)


@contextlib.contextmanager
def _bare_generation_config(model: nn.Module) -> Iterator[None]:
    """Within the block every generating module in ``model`` (the causal LM itself, also inside a
    PEFT wrapper) has a default ``GenerationConfig``, so none of the checkpoint's
    ``generation_config.json`` options (top_k, min_p, no_repeat_ngram_size, ...) reach sampling."""
    from transformers import GenerationConfig, GenerationMixin

    owners = [
        m
        for m in model.modules()
        if isinstance(m, GenerationMixin)
        and isinstance(getattr(m, "generation_config", None), GenerationConfig)
    ]
    shipped = [m.generation_config for m in owners]
    try:
        for m in owners:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in zip(owners, shipped, strict=True):
            m.generation_config = config


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (ids, attention_mask), both (N, L): sequences right-aligned, padded on the left."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            ids[i, length - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[i, length - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def strip_completion(row: Sequence[int], eos_ids: set[int], pad_id: int) -> list[int]:
    """Returns the tokens of one generated row up to and including its first EOS.

    Without an EOS the row was truncated at max_new_tokens; trailing pads are removed only when
    the pad id is not also an EOS id (then the EOS rule already ended the row).
    """
    out: list[int] = []
    for token in row:
        out.append(int(token))
        if token in eos_ids:
            return out
    if pad_id not in eos_ids:
        while out and out[-1] == pad_id:
            out.pop()
    return out


class HFRolloutBackend:
    """Samples from the training model itself: KV cache on, whole groups batched.

    Each prompt is repeated ``num_samples`` times in one batch, in chunks of
    ``generation_batch_size`` sequences when set. ``sampler="loop"`` (default) uses
    ``rl_trainer.sampling.sample``, a lean KV-cache loop that also returns each token's log-prob;
    ``sampler="generate"`` uses ``transformers``' ``generate`` (for architectures whose decoding
    needs its special handling) and returns no log-probs.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        accelerator: Accelerator,
        *,
        generation_batch_size: int | None = None,
        sampler: str = "loop",
    ) -> None:
        if sampler not in ("loop", "generate"):
            raise ValueError(f"unknown sampler {sampler!r}; valid: loop, generate")
        self.sampler = sampler
        self.model = model
        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.generation_batch_size = generation_batch_size
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: set one (e.g. pad_token = eos_token)")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token: generation could never stop")
        self.eos_ids = {int(eos)}
        gen_eos = getattr(
            getattr(accelerator.unwrap_model(model), "generation_config", None),
            "eos_token_id",
            None,
        )
        if isinstance(gen_eos, int):
            self.eos_ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            self.eos_ids.update(int(e) for e in gen_eos)

    def sync_weights(self) -> None:
        """Nothing to do: this backend samples from the weights being trained."""

    @torch.no_grad()
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], num_samples: int, params: SamplingParams
    ) -> RolloutOutput:
        """Returns ``num_samples`` completions per prompt, prompt-major."""
        index = [p for p in range(len(prompt_ids)) for _ in range(num_samples)]
        rows = [prompt_ids[p] for p in index]
        chunk = self.generation_batch_size or len(rows)
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        pad_id = int(self.tokenizer.pad_token_id)
        # A config built from scratch: model-shipped defaults (repetition penalty, top-k 50, ...)
        # would make the sampling distribution differ from the one the loss assumes. generate()
        # fills every option left unset here from model.generation_config, then from
        # transformers' defaults (top_k=50): top_k is always given (0 = off) and the model's
        # config is hidden during the call (``_bare_generation_config``).
        sampling: dict[str, Any] = {"do_sample": False}
        if params.temperature > 0:
            sampling = {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
            }
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            repetition_penalty=1.0,
            pad_token_id=pad_id,
            eos_token_id=sorted(self.eos_ids),
            use_cache=True,
            **sampling,
        )
        with (
            generation_model(self.accelerator, self.model) as model,
            _bare_generation_config(model),
        ):
            was_training = model.training
            model.eval()
            try:
                if self.sampler == "loop":
                    # Whole prompts per chunk: each is encoded once, its cache repeated G times.
                    per_chunk = max(1, chunk // num_samples)
                    for start in range(0, len(prompt_ids), per_chunk):
                        ids, mask = left_pad(
                            prompt_ids[start : start + per_chunk], pad_id, self.accelerator.device
                        )
                        sampled = sample(
                            model,
                            ids,
                            mask,
                            num_samples=num_samples,
                            max_new_tokens=params.max_new_tokens,
                            eos_ids=torch.tensor(sorted(self.eos_ids)),
                            pad_id=pad_id,
                            temperature=params.temperature,
                            top_k=params.top_k,
                            top_p=params.top_p,
                        )
                        for row, lps, n in zip(
                            sampled.tokens.tolist(),
                            sampled.logprobs.tolist(),
                            sampled.lengths.tolist(),
                            strict=True,
                        ):
                            completions.append(row[:n])
                            logprobs.append(lps[:n])
                else:
                    for start in range(0, len(rows), chunk):
                        ids, mask = left_pad(
                            rows[start : start + chunk], pad_id, self.accelerator.device
                        )
                        out = model.generate(  # type: ignore[operator]
                            input_ids=ids,
                            attention_mask=mask,
                            generation_config=config,
                        )
                        new = out[:, ids.shape[1] :].tolist()
                        completions.extend(strip_completion(r, self.eos_ids, pad_id) for r in new)
            finally:
                model.train(was_training)
        return RolloutOutput(
            prompt_index=index,
            completion_ids=completions,
            logprobs=logprobs if self.sampler == "loop" else None,
        )


@register_rollout_backend("hf")
def _hf_backend(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator, **options: Any
) -> RolloutBackend:
    options.pop("config", None)
    return HFRolloutBackend(model, tokenizer, accelerator, **options)


@register_rollout_backend("vllm")
def _vllm_backend(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator, **options: Any
) -> RolloutBackend:
    """A vLLM server (``rl_trainer.vllm_client``); needs ``config=`` (the TrainerConfig)."""
    from rl_trainer.vllm_client import VllmRolloutBackend

    config = options.get("config")
    if config is None:
        raise ValueError("the vllm rollout backend needs config= (the TrainerConfig)")
    return VllmRolloutBackend(model, tokenizer, accelerator, config=config)
