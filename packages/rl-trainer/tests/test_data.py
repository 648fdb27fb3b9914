"""Tests for rl_trainer.data: loading prompt files, formatting/tokenising, resumable sampling."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from conftest import write_jsonl
from datasets import Dataset

from rl_trainer.data import PromptSampler, load_prompt_dataset, tokenize_prompts
from rl_trainer.tiny import build_char_tokenizer

ROWS = [
    {"prompt": "say 1", "answer": "1"},
    {"prompt": "say 007", "answer": "007"},
    {"prompt": "say 1.50", "answer": "1.50"},
]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _write(kind: str, root: Path, rows: list[dict]) -> Path:
    if kind == "jsonl":
        return write_jsonl(root / "p.jsonl", rows)
    if kind == "json":
        path = root / "p.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
        return path
    if kind == "parquet":
        path = root / "p.parquet"
        Dataset.from_list(rows).to_parquet(str(path))
        return path
    if kind == "csv":
        path = root / "p.csv"
        names = list(rows[0])
        lines = [",".join(names)] + [",".join(str(r[n]) for n in names) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    assert kind == "disk"
    path = root / "saved"
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "disk"])
def test_load_every_format(tmp_path, kind) -> None:
    dataset = load_prompt_dataset(_write(kind, tmp_path, ROWS), "prompt", "answer")
    assert dataset.column_names == ["prompt", "answer"]
    # Answers stay text in every format (a CSV is not type-inferred: "007" is not 7).
    assert dataset.to_list() == ROWS


def test_load_accepts_str_path_and_other_column_names(tmp_path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "say 2", "gold": "2", "id": 5}])
    dataset = load_prompt_dataset(str(path), "question", "gold")
    assert dataset.to_list() == [{"question": "say 2", "gold": "2", "id": 5}]


def test_csv_keeps_na_like_text_and_empty_cells_are_missing(tmp_path) -> None:
    path = tmp_path / "na.csv"
    path.write_text('prompt,answer\nsymbol of sodium,NA\n"say 1, 2",\n123,1e3\n', encoding="utf-8")
    rows = load_prompt_dataset(path, "prompt", "answer").to_list()
    assert rows == [
        {"prompt": "symbol of sodium", "answer": "NA"},
        {"prompt": "say 1, 2", "answer": None},
        {"prompt": "123", "answer": "1e3"},
    ]


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.parquet", "missing.csv"])
def test_missing_file_is_file_not_found_naming_it(tmp_path, name) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / name))):
        load_prompt_dataset(tmp_path / name, "prompt", "answer")


def test_unsupported_existing_file_is_an_error(tmp_path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("say 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"prompts\.txt.*\.jsonl"):
        load_prompt_dataset(path, "prompt", "answer")


def test_missing_column_is_named_and_present_ones_listed(tmp_path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "say 1", "label": "1"}])
    with pytest.raises(ValueError) as info:
        load_prompt_dataset(path, "prompt", "answer")
    message = str(info.value)
    assert "['answer']" in message and "['prompt', 'label']" in message and "p.jsonl" in message


def test_both_missing_columns_are_named(tmp_path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "say 1"}])
    with pytest.raises(ValueError, match=re.escape("['prompt', 'answer']")):
        load_prompt_dataset(path, "prompt", "answer")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n\n"),
        ("empty.json", "[]"),
        ("header.csv", "prompt,answer\n"),
    ],
)
def test_empty_file_is_an_error_naming_it(tmp_path, name, text) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(name)}.*empty"):
        load_prompt_dataset(path, "prompt", "answer")


def test_parquet_without_rows_is_an_error(tmp_path) -> None:
    path = tmp_path / "empty.parquet"
    Dataset.from_dict({"prompt": [], "answer": []}).to_parquet(str(path))
    with pytest.raises(ValueError, match=r"empty\.parquet: the dataset is empty"):
        load_prompt_dataset(path, "prompt", "answer")


# ----------------------------------------------------------------------------- tokenising


def test_chat_template_is_applied(tok) -> None:
    data = Dataset.from_list(ROWS[:2])
    prompts = tokenize_prompts(data, tok, prompt_column="prompt")
    assert prompts.prompts == ["<s>user: say 1\nassistant: ", "<s>user: say 007\nassistant: "]
    for text, ids in zip(prompts.prompts, prompts.prompt_ids, strict=True):
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert ids.count(tok.bos_token_id) == 1  # the template's BOS only, none added on top
    assert prompts.rows == [0, 1] and prompts.skipped == 0 and len(prompts) == 2
    assert prompts.columns == {"answer": ["1", "007"]}


def test_without_chat_template_the_prompt_follows_bos(tok) -> None:
    prompts = tokenize_prompts(
        Dataset.from_list(ROWS[:1]), tok, prompt_column="prompt", chat_template=False
    )
    assert prompts.prompts == ["<s>say 1"]
    assert prompts.prompt_ids == [tok.encode("<s>say 1")]


def test_tokenizer_without_template_uses_plain_prompt() -> None:
    tok = build_char_tokenizer(chat_template=None)
    prompts = tokenize_prompts(Dataset.from_list(ROWS[:1]), tok, prompt_column="prompt")
    assert prompts.prompts == ["<s>say 1"]


def test_system_prompt_is_prepended(tok) -> None:
    prompts = tokenize_prompts(
        Dataset.from_list(ROWS[:1]), tok, prompt_column="prompt", system_prompt="be brief"
    )
    assert prompts.prompts == ["<s>system: be brief\nuser: say 1\nassistant: "]


def test_conversational_prompts(tok) -> None:
    rows = [
        {"prompt": [{"role": "user", "content": "say 1"}], "answer": "1"},
        {
            "prompt": [
                {"role": "system", "content": "digits only"},
                {"role": "user", "content": "say 2"},
            ],
            "answer": "2",
        },
    ]
    prompts = tokenize_prompts(
        Dataset.from_list(rows), tok, prompt_column="prompt", system_prompt="be brief"
    )
    assert prompts.prompts == [
        "<s>system: be brief\nuser: say 1\nassistant: ",
        # The conversation's own system message wins over data.system_prompt.
        "<s>system: digits only\nuser: say 2\nassistant: ",
    ]


def test_conversational_prompt_without_template_names_the_row(tok) -> None:
    rows = [
        {"prompt": [{"role": "user", "content": "say 1"}], "answer": "1"},
        {
            "prompt": [
                {"role": "user", "content": "say 2"},
                {"role": "assistant", "content": "2"},
            ],
            "answer": "2",
        },
    ]
    with pytest.raises(ValueError, match=r"where\.jsonl: row 1: conversational prompts need"):
        tokenize_prompts(
            Dataset.from_list(rows),
            tok,
            prompt_column="prompt",
            chat_template=False,
            where="where.jsonl",
        )


def test_overlong_prompt_error_names_the_row(tok) -> None:
    rows = [{"prompt": "say 1", "answer": "1"}, {"prompt": "say " + "9" * 40, "answer": "9"}]
    with pytest.raises(ValueError) as info:
        tokenize_prompts(
            Dataset.from_list(rows),
            tok,
            prompt_column="prompt",
            max_prompt_length=30,
            where="d.jsonl",
        )
    message = str(info.value)
    assert "d.jsonl: row 1:" in message and "data.max_prompt_length=30" in message
    assert "overlong_prompts=skip" in message


def test_overlong_prompts_skipped_and_counted(tok, caplog) -> None:
    rows = [
        {"prompt": "say " + "9" * 40, "answer": "9"},
        {"prompt": "say 1", "answer": "1"},
        {"prompt": "say " + "8" * 40, "answer": "8"},
        {"prompt": "say 2", "answer": "2"},
    ]
    with caplog.at_level(logging.WARNING, logger="rl_trainer.data"):
        prompts = tokenize_prompts(
            Dataset.from_list(rows),
            tok,
            prompt_column="prompt",
            max_prompt_length=30,
            overlong="skip",
        )
    assert prompts.skipped == 2 and len(prompts) == 2
    assert prompts.rows == [1, 3]
    assert prompts.columns["answer"] == ["1", "2"]  # aligned with the kept rows
    assert "skipped 2 of 4" in caplog.text
    ids, texts, cols = prompts.select([1])
    assert texts == ["<s>user: say 2\nassistant: "] and cols == {"answer": ["2"]}
    assert ids == [prompts.prompt_ids[1]]


def test_all_prompts_overlong_is_an_error(tok) -> None:
    rows = [{"prompt": "say " + "9" * 40, "answer": "9"}]
    with pytest.raises(ValueError, match="no prompt fits"):
        tokenize_prompts(
            Dataset.from_list(rows),
            tok,
            prompt_column="prompt",
            max_prompt_length=30,
            overlong="skip",
        )


def test_prompt_exactly_at_the_limit_is_kept(tok) -> None:
    length = len("<s>user: say 1\nassistant: ") - 2  # "<s>" is one token
    prompts = tokenize_prompts(
        Dataset.from_list(ROWS[:1]), tok, prompt_column="prompt", max_prompt_length=length
    )
    assert len(prompts.prompt_ids[0]) == length
    with pytest.raises(ValueError, match="row 0"):
        tokenize_prompts(
            Dataset.from_list(ROWS[:1]), tok, prompt_column="prompt", max_prompt_length=length - 1
        )


@pytest.mark.parametrize("cell", ["", "   ", None])
def test_empty_prompt_cell_names_the_row(tok, cell) -> None:
    rows = [{"prompt": "say 1", "answer": "1"}, {"prompt": cell, "answer": "2"}]
    with pytest.raises(ValueError, match=r"d\.jsonl: row 1 has an empty 'prompt'"):
        tokenize_prompts(Dataset.from_list(rows), tok, prompt_column="prompt", where="d.jsonl")


def test_empty_conversation_names_the_row(tok) -> None:
    rows = [
        {"prompt": [{"role": "user", "content": "say 1"}], "answer": "1"},
        {"prompt": [], "answer": "2"},
    ]
    for chat_template in (True, False):
        with pytest.raises(ValueError, match=r"d\.jsonl: row 1 has an empty 'prompt'"):
            tokenize_prompts(
                Dataset.from_list(rows),
                tok,
                prompt_column="prompt",
                chat_template=chat_template,
                where="d.jsonl",
            )


def test_non_text_prompt_names_the_row(tok) -> None:
    rows = [{"prompt": 5, "answer": "1"}]
    with pytest.raises(ValueError, match=r"row 0: a prompt must be a string.*got int"):
        tokenize_prompts(Dataset.from_list(rows), tok, prompt_column="prompt")


# ----------------------------------------------------------------------------- sampling


def _draw(sampler: PromptSampler, sizes: list[int]) -> list[int]:
    return [i for n in sizes for i in sampler.next_batch(n)]


def test_sampler_is_deterministic_given_seed() -> None:
    a = _draw(PromptSampler(10, seed=3), [4] * 8)
    b = _draw(PromptSampler(10, seed=3), [4] * 8)
    c = _draw(PromptSampler(10, seed=4), [4] * 8)
    assert a == b
    assert a != c


def test_every_epoch_is_a_permutation() -> None:
    size = 7
    stream = _draw(PromptSampler(size, seed=0), [3] * 14)  # 42 = 6 epochs, batches cross epochs
    epochs = [stream[e * size : (e + 1) * size] for e in range(6)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(size))
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled between epochs
    # The batch size does not change the stream.
    assert _draw(PromptSampler(size, seed=0), [1] * 42) == stream


def test_sampler_without_shuffle_is_in_order() -> None:
    assert _draw(PromptSampler(4, seed=9, shuffle=False), [3, 3, 3]) == [0, 1, 2, 3, 0, 1, 2, 3, 0]


@pytest.mark.parametrize("before", [[3], [3, 3, 4], [10], [10, 10, 2]])
def test_state_dict_resume_continues_identically(before) -> None:
    original = PromptSampler(10, seed=5)
    _draw(original, before)
    state = json.loads(json.dumps(original.state_dict()))  # as stored in a checkpoint
    expected = _draw(original, [4] * 9)

    resumed = PromptSampler(10, seed=5)
    resumed.next_batch(7)  # its own position must not matter
    resumed.load_state_dict(state)
    assert _draw(resumed, [4] * 9) == expected


def test_state_dict_size_mismatch_is_an_error() -> None:
    state = PromptSampler(10, seed=0).state_dict()
    with pytest.raises(ValueError, match="10 prompts.*has 9"):
        PromptSampler(9, seed=0).load_state_dict(state)


def test_empty_sampler_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        PromptSampler(0, seed=0)
