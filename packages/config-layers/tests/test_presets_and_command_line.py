"""Presets, the shared command line, base-file layers and the values YAML can hold but a
configuration cannot."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from config_layers import (
    CommandLine,
    ConfigError,
    Presets,
    from_dict,
    load_config,
    parse_command_line,
    to_yaml,
)


@dataclass
class Optim:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class App:
    name: str = "app"
    optim: Optim = field(default_factory=Optim)
    either: int | str = 0
    ratio: float | None = None


@pytest.fixture
def presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Presets:
    package = tmp_path / "my_presets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fast.yaml").write_text("optim:\n  steps: 2\n")
    (package / "slow.yaml").write_text("optim:\n  steps: 1000\n  lr: fast\n")
    (package / "notes.txt").write_text("not a preset")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_presets", None)
    return Presets("my_presets")


def test_presets_lists_yaml_files_and_resolves_names(presets: Presets) -> None:
    assert presets.names() == ["fast", "slow"]
    assert presets.path("fast").name == "fast.yaml"
    assert presets.files(None) == []
    assert load_config(App, None, ["name=x"], base_files=presets.files("fast")) == App(
        name="x", optim=Optim(steps=2)
    )


def test_unknown_preset_suggests_the_closest(presets: Presets) -> None:
    with pytest.raises(ConfigError) as info:
        presets.path("fats")
    assert str(info.value) == "unknown preset 'fats' (did you mean 'fast'?); valid: fast, slow"


def test_error_in_a_preset_names_the_preset_file_and_line(presets: Presets) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(App, None, [], base_files=presets.files("slow"))
    path = presets.path("slow")
    assert str(info.value) == f"{path}, line 3: optim.lr: expected float, got 'fast' (str)"


def test_the_later_file_is_blamed_for_a_key_it_sets(presets: Presets, tmp_path: Path) -> None:
    user = tmp_path / "run.yaml"
    user.write_text("name: mine\noptim:\n  lr: nope\n")
    with pytest.raises(ConfigError, match=re.escape(f"{user}, line 3: optim.lr: expected float")):
        load_config(App, user, [], base_files=presets.files("fast"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], CommandLine()),
        (["--preset", "fast", "a=1"], CommandLine(preset="fast", overrides=["a=1"])),
        (["a=1", "--preset=fast", "-c", "x.yaml"], CommandLine(Path("x.yaml"), "fast", ["a=1"])),
        (["preset=fast", "b.c=2"], CommandLine(preset="fast", overrides=["b.c=2"])),
    ],
)
def test_parse_command_line(argv: list[str], expected: CommandLine) -> None:
    assert parse_command_line(argv) == expected


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--preset"], "--preset needs a preset name"),
        (["--preset="], "--preset= needs a preset name"),
        (["preset="], "preset= needs a preset name"),
        (["--preset", "a", "preset=b"], "the preset is given twice ('a' and 'b')"),
        (["--epochs", "3"], "unrecognised argument '--epochs'"),
    ],
)
def test_parse_command_line_refuses(argv: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_command_line(argv)


def test_without_presets_the_preset_forms_are_refused_or_plain_overrides() -> None:
    with pytest.raises(ValueError, match="unrecognised argument '--preset'"):
        parse_command_line(["--preset", "x"], presets=False)
    assert parse_command_line(["preset=x"], presets=False).overrides == ["preset=x"]


def test_union_errors_name_the_whole_union() -> None:
    assert from_dict(App, {"either": "a"}).either == "a"
    assert from_dict(App, {"either": 3}).either == 3
    with pytest.raises(ConfigError) as info:
        from_dict(App, {"either": 1.5})
    assert str(info.value) == "either: expected int | str, got 1.5 (float)"


def test_nan_and_infinity_survive_and_optional_floats_take_null() -> None:
    assert math.isnan(from_dict(App, {"ratio": float("nan")}).ratio or 0.0)
    assert from_dict(App, {"ratio": float("inf")}).ratio == math.inf
    assert from_dict(App, {"ratio": None}).ratio is None


def test_yaml_values_a_config_cannot_hold_are_named(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: 2024-01-02\n")
    with pytest.raises(ConfigError) as info:
        load_config(App, path)
    assert str(info.value) == (
        f"{path}, line 1: name: unsupported value datetime.date(2024, 1, 2) (date) "
        "(quote it to pass it as text)"
    )


def test_to_yaml_round_trips_through_load_config(tmp_path: Path) -> None:
    app = App(name="1e-5", optim=Optim(lr=2e-6, steps=3), either="x", ratio=0.5)
    path = tmp_path / "out.yaml"
    path.write_text(to_yaml(app))
    assert load_config(App, path) == app


def test_unresolvable_annotation_is_a_type_error() -> None:
    @dataclass
    class Broken:
        thing: NotDefinedAnywhere = None  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match="cannot resolve the annotations of"):
        from_dict(Broken, {})


@dataclass
class WithMapping:
    kwargs: dict[str, int] = field(default_factory=lambda: {"a": 1})
    optim: Optim = field(default_factory=Optim)


def test_colon_equals_replaces_a_mapping_whole(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("kwargs: {a: 5, c: 3}\n")
    merged = load_config(WithMapping, None, ["kwargs={b: 2}"], base_files=[base])
    assert merged.kwargs == {"a": 5, "c": 3, "b": 2}
    replaced = load_config(WithMapping, None, ["kwargs:={b: 2}"], base_files=[base])
    assert replaced.kwargs == {"b": 2}
    # A replaced dataclass mapping starts from nothing: its fields take their defaults.
    assert load_config(WithMapping, None, ["optim.steps=3", "optim:={lr: 0.5}"]).optim == Optim(
        lr=0.5
    )
    assert load_config(WithMapping, None, ["optim.lr:=0.25"]).optim.lr == 0.25


def test_colon_equals_errors_name_the_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(WithMapping, None, ["kwargs:={b: x}"])
    assert str(info.value) == "override 'kwargs:={b: x}': kwargs.b: expected int, got 'x' (str)"
