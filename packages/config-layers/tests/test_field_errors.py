"""A ``__post_init__`` that checks several fields together can name the one at fault by raising
``ConfigError`` with a path; the error then points at the override or file line that set it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from config_layers import ConfigError, load_config


@dataclass
class Clip:
    low: float = 0.2
    high: float = 0.3


@dataclass
class Root:
    clip: Clip = field(default_factory=Clip)
    name: str = "x"

    def __post_init__(self) -> None:
        if self.clip.high < self.clip.low:
            raise ConfigError(
                f"must be >= clip.low ({self.clip.low}), got {self.clip.high}", ("clip", "high")
            )


@dataclass
class Outer:
    root: Root = field(default_factory=Root)


def test_field_error_from_post_init_names_the_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Root, None, ["name=y", "clip.high=0.1"])
    assert (
        str(info.value) == "override 'clip.high=0.1': clip.high: must be >= clip.low (0.2), got 0.1"
    )
    assert info.value.path == ("clip", "high")


def test_field_error_path_is_relative_to_the_nested_dataclass(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("root:\n  name: z\n  clip:\n    low: 0.5\n    high: 0.4\n")
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path)
    assert str(info.value) == f"{path}, line 5: root.clip.high: must be >= clip.low (0.5), got 0.4"


def test_plain_value_error_from_post_init_keeps_the_dataclass_path() -> None:
    @dataclass
    class Plain:
        size: int = 1

        def __post_init__(self) -> None:
            if self.size < 1:
                raise ValueError(f"size must be >= 1, got {self.size}")

    with pytest.raises(ConfigError) as info:
        load_config(Plain, None, ["size=0"])
    assert str(info.value) == "override 'size=0': size must be >= 1, got 0"
