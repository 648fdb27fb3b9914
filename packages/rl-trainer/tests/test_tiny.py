"""Tests for rl_trainer.tiny: the character tokenizer, the tiny models and saving/loading them."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    Qwen2ForCausalLM,
)

from rl_trainer.tiny import (
    CHAT_TEMPLATE,
    DEFAULT_CHARACTERS,
    build_char_tokenizer,
    build_tiny_model,
    load_tokenizer,
    save_tiny_model,
)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", ["say 3", "  a b  c ", "12+34=46", "(x*y)/z?", " "])
def test_round_trip_one_token_per_character(tok, text) -> None:
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert ids == [tok.convert_tokens_to_ids(ch) for ch in text]
    assert tok.decode(ids) == text


def test_special_ids_and_vocabulary_layout(tok) -> None:
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<s>", "</s>", "<unk>"]
    assert len(tok) == 4 + len(DEFAULT_CHARACTERS)
    assert tok.convert_ids_to_tokens(list(range(4, len(tok)))) == list(DEFAULT_CHARACTERS)
    assert tok.padding_side == "left"


def test_encode_adds_no_bos_or_eos(tok) -> None:
    assert tok.encode("ab") == [tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")]
    assert tok("ab")["input_ids"] == tok.encode("ab")


def test_special_tokens_in_text_are_single_tokens(tok) -> None:
    ids = tok.encode("<s>ab</s>")
    assert ids == [1, tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b"), 2]
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_unknown_characters_encode_to_unk_one_each(tok) -> None:
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    assert tok.encode("aA!b") == [a, 3, 3, b]
    assert tok.encode("é") == [3]
    # Newlines (the chat template's separator) are in the default vocabulary, one token each.
    newline = tok.convert_tokens_to_ids("\n")
    assert newline != 3
    assert tok.encode("a\n\nb") == [a, newline, newline, b]
    assert tok.encode("a\t") == [a, 3]


def test_custom_characters_drop_duplicates() -> None:
    tok = build_char_tokenizer("abba")
    assert len(tok) == 6
    assert tok.encode("ab") == [4, 5]
    assert tok.encode("c") == [3]


@pytest.mark.parametrize(
    "characters",
    [["ab"], ["a", "<pad>"], ["</s>"], ["a", ""], "", []],
    ids=["multi-char", "pad", "eos", "empty-char", "empty-str", "empty-list"],
)
def test_bad_characters_raise(characters) -> None:
    with pytest.raises(ValueError, match="characters"):
        build_char_tokenizer(characters)


def test_chat_template_output(tok) -> None:
    user = [{"role": "user", "content": "say 3"}]
    text = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert text == "<s>user: say 3\nassistant: "
    no_prompt = tok.apply_chat_template(user, add_generation_prompt=False, tokenize=False)
    assert no_prompt == "<s>user: say 3\n"
    both = [{"role": "system", "content": "be brief"}, *user]
    text = tok.apply_chat_template(both, add_generation_prompt=True, tokenize=False)
    assert text == "<s>system: be brief\nuser: say 3\nassistant: "
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_no_chat_template_when_disabled() -> None:
    tok = build_char_tokenizer(chat_template=None)
    assert not getattr(tok, "chat_template", None)
    assert build_char_tokenizer().chat_template == CHAT_TEMPLATE


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("architecture", "cls"), [("llama", LlamaForCausalLM), ("qwen2", Qwen2ForCausalLM)]
)
def test_architectures_build_and_run(tok, architecture, cls) -> None:
    model = build_tiny_model(tok, architecture=architecture, hidden_size=32, num_layers=2)
    assert isinstance(model, cls)
    assert model.config.vocab_size == len(tok)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.intermediate_size == 64
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.bos_token_id == tok.bos_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok.encode("say 3")])).logits
    assert logits.shape == (1, 5, len(tok))
    assert torch.isfinite(logits).all()


def test_unknown_architecture_lists_valid_ones(tok) -> None:
    with pytest.raises(ValueError, match=r"'gpt9'.*qwen2, llama"):
        build_tiny_model(tok, architecture="gpt9")


def test_seed_fixes_weights_without_touching_global_rng(tok) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model(tok, hidden_size=32, seed=0)
    assert torch.equal(torch.rand(3), expected)  # the global RNG stream is untouched
    b = build_tiny_model(tok, hidden_size=32, seed=0)
    c = build_tiny_model(tok, hidden_size=32, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# ----------------------------------------------------------------------------- save / load


def test_save_then_auto_load_gives_identical_model_and_tokenizer(tmp_path, tok) -> None:
    model = build_tiny_model(tok, hidden_size=32, seed=3).eval()
    path = save_tiny_model(tmp_path / "m", model=model, tokenizer=tok)
    assert path == tmp_path / "m"
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()

    loaded_tok = AutoTokenizer.from_pretrained(str(path))
    text = "<s>user: say 3 + 4\nassistant: 7 "
    assert (
        loaded_tok(text, add_special_tokens=False)["input_ids"]
        == tok(text, add_special_tokens=False)["input_ids"]
    )
    assert loaded_tok.decode(loaded_tok.encode("say 3 + 4")) == "say 3 + 4"
    assert (loaded_tok.pad_token_id, loaded_tok.bos_token_id, loaded_tok.eos_token_id) == (0, 1, 2)
    assert loaded_tok.padding_side == "left"
    assert loaded_tok.chat_template == CHAT_TEMPLATE

    loaded = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    assert isinstance(loaded, LlamaForCausalLM)
    ids = torch.tensor([tok.encode("say 3 + 4 = 7"), tok.encode("(1*2)/3 = 0.66")[:13]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_default_saved_model_round_trips_through_auto_tokenizer(tiny_model_dir) -> None:
    """The default (llama) directory loads a tokenizer that keeps spaces (a qwen2 directory maps
    to Qwen2Tokenizer, which would not)."""
    loaded = load_tokenizer(tiny_model_dir)
    text = "say 3 + 4 = 7 "
    ids = loaded.encode(text)
    assert ids == build_char_tokenizer().encode(text)
    assert loaded.decode(ids) == text
    assert AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).config.model_type == "llama"


def test_save_with_custom_characters(tmp_path) -> None:
    path = save_tiny_model(tmp_path / "abc", characters="abc", hidden_size=16, num_heads=2)
    loaded = load_tokenizer(path)
    assert len(loaded) == 7
    assert loaded.encode("cab") == [6, 4, 5]
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert model.config.vocab_size == 7 and model.config.hidden_size == 16
