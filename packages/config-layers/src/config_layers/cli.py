"""The command line every app and trainer shares: ``[--config FILE] [--preset NAME] key=value``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CommandLine:
    """What a command line asks for: a config file, a preset and ``key.sub=value`` overrides."""

    config: Path | None = None
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)


def parse_command_line(argv: Sequence[str], *, presets: bool = True) -> CommandLine:
    """Returns the config file, preset and overrides found in ``argv``.

    Accepted: ``--config FILE``, ``--config=FILE``, ``-c FILE`` (at most once);
    with ``presets``, ``--preset NAME``, ``--preset=NAME`` or ``preset=NAME`` (at most once);
    ``key.sub=value`` items, kept in order. Anything else, such as an unknown ``--flag`` or a
    word without ``=``, raises ``ValueError`` listing the accepted forms.
    """
    if isinstance(argv, str):
        raise TypeError(f"argv must be a sequence of strings, not one string: {argv!r}")
    forms = "--config FILE, --config=FILE, -c FILE, "
    forms += "--preset NAME, --preset=NAME, key.sub=value" if presets else "key.sub=value"
    found: dict[str, str] = {}
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag = _flag(arg, presets)
        if flag is None:
            if arg.startswith("-") or "=" not in arg:
                raise ValueError(f"unrecognised argument {arg!r}; accepted forms: {forms}")
            if presets and arg.partition("=")[0].strip() == "preset":
                flag, value = "--preset", arg.partition("=")[2].strip()
                if not value:
                    raise ValueError(f"preset= needs a preset name; accepted forms: {forms}")
            else:
                overrides.append(arg)
                i += 1
                continue
            i += 1
        elif arg in ("--config", "-c", "--preset"):
            if i + 1 >= len(args) or not args[i + 1] or args[i + 1].startswith("-"):
                what = "a preset name" if flag == "--preset" else "a file path"
                raise ValueError(f"{arg} needs {what} after it; accepted forms: {forms}")
            value = args[i + 1]
            i += 2
        else:
            value = arg.partition("=")[2]
            if not value:
                what = "a preset name" if flag == "--preset" else "a file path"
                raise ValueError(f"{flag}= needs {what}; accepted forms: {forms}")
            i += 1
        key = "preset" if flag == "--preset" else "config file"
        if key in found:
            raise ValueError(f"the {key} is given twice ({found[key]!r} and {value!r}); give one")
        found[key] = value
    config = found.get("config file")
    return CommandLine(
        config=None if config is None else Path(config),
        preset=found.get("preset"),
        overrides=overrides,
    )


def split_cli_args(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """Returns the config file (or None) and the ``key=value`` overrides found in ``argv``.

    The form of :func:`parse_command_line` without presets: ``--config FILE``,
    ``--config=FILE``, ``-c FILE`` (at most once) and ``key.sub=value`` items.
    """
    line = parse_command_line(argv, presets=False)
    return line.config, line.overrides


def _flag(arg: str, presets: bool) -> str | None:
    """Returns ``--config`` or ``--preset`` when ``arg`` is that option (either form)."""
    if arg in ("--config", "-c") or arg.startswith("--config="):
        return "--config"
    if presets and (arg == "--preset" or arg.startswith("--preset=")):
        return "--preset"
    return None
