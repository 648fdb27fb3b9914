"""Add what is known only after training to an exported model's metadata (no torch).

:func:`annotate_model` sets ``fer.dataset``, ``fer.calibration``, ``fer.abstention`` and
``fer.provenance`` in an exported ``.onnx`` file: fer-train calls it after the export and
before it writes the fp16/int8 variants (which copy the metadata). The graph and every other
metadata entry (other ``fer.*`` keys, unknown ones included, and foreign keys) stay as they
are; the new values are checked with the same rules, and the same messages, as every reader
(:meth:`fer_export.contract.ModelContract.from_metadata`), and the file is replaced atomically
only when the whole contract is valid. Also importable as ``fer_export.export.annotate_model``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fer_export._io import atomic_write_bytes
from fer_export.contract import PREFIX, ContractError, ModelContract, read_model

__all__ = ["annotate_model"]


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists (``json.dumps``' ``default``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _stored(name: str, value: Any, where: str) -> str:
    """The metadata text of ``value`` for ``fer.<name>``: text as is for ``dataset``, JSON
    otherwise; ContractError naming the key for a value JSON cannot hold."""
    if name == "dataset":
        if not isinstance(value, str):
            raise ContractError(
                f"{where}: {PREFIX}dataset is {type(value).__name__} {value!r}, expected text"
            )
        return value
    try:
        return json.dumps(value, sort_keys=True, default=_plain)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{where}: {PREFIX}{name} cannot be stored as JSON ({exc})") from exc


def annotate_model(
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    calibration: dict[str, Any] | None = None,
    abstention: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Returns ``path`` after setting the given keys in its metadata, atomically.

    Each argument sets ``fer.<name>`` (see the README's metadata table for what it holds);
    None leaves that key as it is, ``""`` / ``{}`` removes it. Values may hold numpy scalars.

    Raises:
        FileNotFoundError, ModelLoadError: ``path`` is not a readable ONNX model.
        ContractError: the file's contract is invalid, or would be with the new values (the
            message names the file, the key, the value and what was expected); the file is
            then left untouched.
    """
    path = Path(path)
    where = str(path)
    loaded = read_model(path)
    given = {
        "dataset": dataset,
        "calibration": calibration,
        "abstention": abstention,
        "provenance": provenance,
    }
    changes: dict[str, str | None] = {}
    for name, value in given.items():
        if value is None:
            continue
        empty = value == "" or (isinstance(value, dict) and not value)
        changes[PREFIX + name] = None if empty else _stored(name, value, where)
    if not changes:
        return path
    metadata = {k: v for k, v in loaded.metadata.items() if changes.get(k, "") is not None}
    metadata.update({k: v for k, v in changes.items() if v is not None})
    contract = ModelContract.from_metadata(metadata, where)  # every rule, with the new values
    canonical = contract.to_metadata()

    # Edited in place: other entries keep their order and their exact bytes.
    props = loaded.proto.metadata_props
    seen: set[str] = set()
    for index in reversed(range(len(props))):
        key = props[index].key
        if key not in changes:
            continue
        if changes[key] is None:
            del props[index]
        else:
            props[index].value = canonical[key]
            seen.add(key)
    for key in sorted(changes):
        if changes[key] is not None and key not in seen:
            item = props.add()
            item.key, item.value = key, canonical[key]
    atomic_write_bytes(path, loaded.proto.SerializeToString())
    return path
