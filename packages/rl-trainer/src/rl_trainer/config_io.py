"""rl-trainer's names for the configuration mechanism every app shares: ``config_layers``.

Kept so that code written against ``rl_trainer.config_io`` goes on working; new code imports
``config_layers`` directly. The one thing added here is :func:`dump_yaml`, which writes a
configuration through rl-trainer's atomic writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from config_layers import (
    ConfigError,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    split_cli_args,
    to_dict,
    to_yaml,
)
from rl_trainer._io import atomic_write_text

__all__ = [
    "ConfigError",
    "dump_yaml",
    "from_dict",
    "load_config",
    "merge",
    "parse_overrides",
    "split_cli_args",
    "to_dict",
]


def dump_yaml(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Returns ``path`` as a ``Path`` after writing ``to_yaml(obj)`` to it, atomically.

    Written through :func:`rl_trainer._io.atomic_write_text` (a temporary file in the same
    folder, created if missing, fsynced, then ``os.replace``), so readers never see half a
    file; the file gets the mode a plain ``open()`` gives a new file (0o644 under umask 022).
    """
    return atomic_write_text(path, to_yaml(obj))
