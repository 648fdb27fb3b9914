"""Typed run configurations from plain dataclasses, in layers.

A configuration is a tree of ``dataclasses``. :func:`load_config` builds one from its
defaults, then preset and YAML files, then ``key.sub=value`` overrides, and validates the
result once with pydantic in strict mode (ints widen to floats, nothing else is coerced; unknown
keys are refused). Every problem is a :class:`ConfigError` (a ``ValueError``) that names the
file and line, or the override, that set the bad value, its dotted path, what was expected and
the closest valid key or choice::

    run.yaml, line 7: optim.lr: expected float, got 'abc' (str)
    override 'optim.lrr=1': optim.lrr: unknown key for OptimConfig (did you mean 'lr'?); ...

:func:`parse_command_line` reads the command line every app shares
(``[--config FILE] [--preset NAME] key=value ...``) and :class:`Presets` finds named
configuration files shipped in a package.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from config_layers.cli import CommandLine, parse_command_line, split_cli_args
from config_layers.errors import ConfigError, did_you_mean
from config_layers.presets import Presets
from config_layers.sources import load_config, merge, parse_overrides, read_yaml, to_yaml
from config_layers.validate import from_dict, to_dict

__version__ = _metadata.version("config-layers")

__all__ = [
    "CommandLine",
    "ConfigError",
    "Presets",
    "__version__",
    "did_you_mean",
    "from_dict",
    "load_config",
    "merge",
    "parse_command_line",
    "parse_overrides",
    "read_yaml",
    "split_cli_args",
    "to_dict",
    "to_yaml",
]
