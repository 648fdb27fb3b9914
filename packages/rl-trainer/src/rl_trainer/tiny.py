"""Tiny causal LMs and character tokenizers built locally, for tests, demos and toy tasks.

Nothing here touches a model hub: ``build_char_tokenizer`` makes a character-level tokenizer with
the ``tokenizers`` library (a dependency of transformers) and ``build_tiny_model`` makes a
randomly initialised Qwen2 or Llama model from a config. ``save_tiny_model`` writes both to a
directory that ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load like any other checkpoint.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
DEFAULT_CHARACTERS = string.digits + string.ascii_lowercase + " +-=*/?:.,()<>\n"

# A minimal chat template: "<s>user: ...\nassistant: " (roles spelt out, no extra tokens).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: "
    "{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_char_tokenizer(
    characters: Iterable[str] = DEFAULT_CHARACTERS, *, chat_template: str | None = CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """Returns a fast tokenizer with one token per character plus <pad>, <s>, </s>, <unk>.

    Ids: 0 <pad>, 1 <s>, 2 </s>, 3 <unk>, then the characters in the given order (duplicates
    dropped). Characters outside the vocabulary encode to <unk>; no BOS/EOS is added by
    ``encode`` (the chat template adds BOS; EOS ends generation).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = list(dict.fromkeys(characters))
    if not chars:
        raise ValueError("characters must not be empty")
    clash = [c for c in chars if c in SPECIAL_TOKENS or len(c) != 1]
    if clash:
        raise ValueError(f"characters must be single, non-special characters; got {clash!r}")
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token, so the word-level model sees single characters
    # ("." would not match a newline: a run of newlines would become one <unk>).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    *,
    architecture: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """Returns a randomly initialised causal LM (``qwen2`` or ``llama``) sized for CPU tests."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    classes = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }
    if architecture not in classes:
        raise ValueError(f"unknown architecture {architecture!r}; valid: {', '.join(classes)}")
    config_cls, model_cls = classes[architecture]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config_cls(**common))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_tiny_model(
    path: str | Path,
    *,
    characters: Iterable[str] = DEFAULT_CHARACTERS,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **model_kwargs: object,
) -> Path:
    """Writes a tiny model and its character tokenizer to ``path`` (safetensors); returns it."""
    path = Path(path)
    tokenizer = tokenizer or build_char_tokenizer(characters)
    model = model or build_tiny_model(tokenizer, **model_kwargs)  # type: ignore[arg-type]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Returns the tokenizer saved at ``path`` (a thin wrapper kept for symmetry in tests)."""
    return AutoTokenizer.from_pretrained(str(path))
