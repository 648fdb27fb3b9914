"""Prompt data: loading a jsonl/parquet file, chat formatting, tokenising, resumable sampling."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Features, Value, load_dataset
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _builder_options(builder: str, file: Path) -> dict[str, Any]:
    """Returns extra ``load_dataset`` options for ``file``: a CSV is read as text (pandas would
    make the answer "007" 7 and "1.50" 1.5), only empty cells being missing (not "NA", "null")."""
    if builder != "csv":
        return {}
    with file.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return {
        "features": Features({name: Value("string") for name in header}),
        "keep_default_na": False,
        "na_values": [""],
    }


def load_prompt_dataset(path: str | Path, prompt_column: str, answer_column: str) -> Dataset:
    """Returns the dataset at ``path`` after checking it has the prompt and answer columns.

    ``path`` is a .jsonl/.json/.parquet/.csv file, a directory written by
    ``Dataset.save_to_disk``, or (when the hub is reachable) a hub dataset id; the ``train``
    split is used.
    """
    where = str(path)
    local = Path(path)
    if local.suffix.lower() in _FILE_BUILDERS:
        if not local.is_file():
            raise FileNotFoundError(f"prompt dataset not found: {local}")
        if local.stat().st_size == 0:
            raise ValueError(f"{where}: the dataset is empty")
        builder = _FILE_BUILDERS[local.suffix.lower()]
        try:
            dataset = load_dataset(
                builder, data_files=str(local), split="train", **_builder_options(builder, local)
            )
        except StopIteration:  # raised by the json builder on a file of blank lines
            raise ValueError(f"{where}: the dataset is empty") from None
        except ValueError as err:  # "[]" or a CSV header only: 'Instruction "train" ... no data'
            if "no data" not in str(err):
                raise
            raise ValueError(f"{where}: the dataset is empty") from None
    elif local.is_dir() and (local / "dataset_info.json").is_file():
        dataset = Dataset.load_from_disk(str(local))
    elif local.exists():
        raise ValueError(
            f"cannot read prompts from {local}: expected a .jsonl, .json, .parquet or .csv file, "
            f"or a directory written by Dataset.save_to_disk"
        )
    else:
        dataset = load_dataset(where, split="train")
    if not isinstance(dataset, Dataset):
        raise ValueError(f"{where}: expected a map-style dataset, got {type(dataset).__name__}")
    missing = [c for c in (prompt_column, answer_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing}; it has {dataset.column_names} "
            f"(set data.prompt_column / data.answer_column)"
        )
    if len(dataset) == 0:
        raise ValueError(f"{where}: the dataset is empty")
    return dataset


@dataclass
class PromptSet:
    """Tokenised prompts plus their raw text and the other columns (answers, metadata).

    ``rows[i]`` is the dataset row that ``prompt_ids[i]`` came from (rows skipped for being too
    long are absent), so group ids and errors always name the row of the user's file.
    """

    prompt_ids: list[list[int]]
    prompts: list[str]
    columns: dict[str, list[Any]]
    rows: list[int]
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, indices: Sequence[int]) -> tuple[list[list[int]], list[str], dict[str, list]]:
        """Returns (token ids, prompt texts, columns) for the given positions."""
        ids = [self.prompt_ids[i] for i in indices]
        texts = [self.prompts[i] for i in indices]
        cols = {name: [values[i] for i in indices] for name, values in self.columns.items()}
        return ids, texts, cols


def format_prompt(
    prompt: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    chat_template: bool,
    system_prompt: str | None,
) -> str:
    """Returns the text fed to the model for one prompt cell (a string or a list of messages)."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise ValueError(
            f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}"
        )
    if system_prompt and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return str(text)
    if len(messages) > 1 or messages[0].get("role") != "user":
        raise ValueError(
            "conversational prompts need a tokenizer with a chat template "
            "(or set data.chat_template=true with one)"
        )
    bos = tokenizer.bos_token or ""
    return bos + str(messages[0]["content"])


def tokenize_prompts(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    prompt_column: str,
    chat_template: bool = True,
    system_prompt: str | None = None,
    max_prompt_length: int = 512,
    overlong: str = "error",
    where: str = "dataset",
) -> PromptSet:
    """Returns the PromptSet of ``dataset``: formatted, tokenised, length-checked prompts."""
    prompts: list[str] = []
    prompt_ids: list[list[int]] = []
    rows: list[int] = []
    skipped = 0
    for row, cell in enumerate(dataset[prompt_column]):
        if cell is None or (isinstance(cell, str) and not cell.strip()) or cell == []:
            raise ValueError(f"{where}: row {row} has an empty {prompt_column!r}")
        try:
            text = format_prompt(
                cell, tokenizer, chat_template=chat_template, system_prompt=system_prompt
            )
        except ValueError as err:
            raise ValueError(f"{where}: row {row}: {err}") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            if overlong == "error":
                raise ValueError(
                    f"{where}: row {row}: prompt is {len(ids)} tokens, longer than "
                    f"data.max_prompt_length={max_prompt_length} (raise it, or set "
                    f"data.overlong_prompts=skip)"
                )
            skipped += 1
            continue
        prompts.append(text)
        prompt_ids.append(list(ids))
        rows.append(row)
    if skipped:
        logger.warning(
            "%s: skipped %d of %d prompts longer than %d tokens",
            where,
            skipped,
            len(dataset),
            max_prompt_length,
        )
    if not prompt_ids:
        raise ValueError(f"{where}: no prompt fits data.max_prompt_length={max_prompt_length}")
    others = [c for c in dataset.column_names if c != prompt_column]
    columns = {c: [dataset[c][r] for r in rows] for c in others}
    return PromptSet(prompt_ids, prompts, columns, rows, skipped)


class PromptSampler:
    """Yields prompt positions in seeded per-epoch permutations; its state makes resume exact.

    Every process holds the same sampler and draws the same global batch, then takes its own
    contiguous slice, so no two processes ever work on the same prompt in one step.
    """

    def __init__(self, size: int, *, seed: int, shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError(f"cannot sample from an empty prompt set (size={size})")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + 7919 * epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def next_batch(self, n: int) -> list[int]:
        """Returns the next ``n`` positions, crossing into a fresh permutation when needed."""
        out: list[int] = []
        while len(out) < n:
            if self.position >= self.size:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(n - len(out), self.size - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "size": self.size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state.get("size") != self.size:
            raise ValueError(
                f"checkpoint sampler was for {state.get('size')} prompts, this run has "
                f"{self.size}: resume with the same data"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)
