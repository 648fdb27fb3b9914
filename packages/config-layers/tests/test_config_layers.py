"""config_layers: dataclass trees <-> dicts, YAML files, overrides, command lines."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

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


@dataclass
class Optim:
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Reward:
    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


def _default_rewards() -> list[Reward]:
    return [Reward("format"), Reward("accuracy", weight=2.0)]


@dataclass
class Config:
    model: str = "tiny"
    algo: Literal["grpo", "bandpo", "dcpo"] = "bandpo"
    seed: int = 0
    use_lora: bool = True
    max_steps: int | None = None
    output_dir: Path = Path("runs/out")
    init_from: Path | None = None
    stop: tuple[str, ...] = ("</s>",)
    layers: list[int] = field(default_factory=lambda: [0, 1])
    optim: Optim = field(default_factory=Optim)
    rewards: list[Reward] = field(default_factory=_default_rewards)
    extra: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    tag: str = "base"


@dataclass
class NeedsName:
    name: str
    size: int
    optim: Optim = field(default_factory=Optim)


def _custom() -> Config:
    """Returns a Config with every field away from its default."""
    return Config(
        model="qwen-0.5b",
        algo="grpo",
        seed=7,
        use_lora=False,
        max_steps=100,
        output_dir=Path("/tmp/run 1"),
        init_from=Path("ckpt/step_10"),
        stop=("\n\n", "</s>"),
        layers=[3],
        optim=Optim(lr=3e-6, betas=(0.8, 0.95), weight_decay=0.1),
        rewards=[Reward("len", weight=-0.5, kwargs={"target": 200, "unit": ["tok"]})],
        extra={"notes": "x", "nested": {"a": [1, 2]}},
        scales={"a": 0.5},
        tag="1e-6",  # a string that the YAML rule for exponents would read as a float
    )


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def dump_yaml(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(obj), encoding="utf-8")
    return path


def _error(cls: type, data: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as info:
        from_dict(cls, data)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# round trips


def test_to_dict_gives_plain_yaml_types() -> None:
    data = to_dict(_custom())
    assert data["output_dir"] == "/tmp/run 1"
    assert data["init_from"] == "ckpt/step_10"
    assert data["stop"] == ["\n\n", "</s>"]
    assert data["optim"] == {"lr": 3e-6, "betas": [0.8, 0.95], "weight_decay": 0.1}
    assert data["rewards"] == [
        {"name": "len", "weight": -0.5, "kwargs": {"target": 200, "unit": ["tok"]}}
    ]
    assert list(data) == list(Config.__dataclass_fields__)  # declaration order
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_from_dict_inverts_to_dict() -> None:
    for config in (Config(), _custom()):
        rebuilt = from_dict(Config, to_dict(config))
        assert rebuilt == config
        assert isinstance(rebuilt.output_dir, Path)
        assert isinstance(rebuilt.stop, tuple)
        assert isinstance(rebuilt.optim.betas, tuple)
        assert all(isinstance(r, Reward) for r in rebuilt.rewards)


def test_dump_yaml_then_load_config_round_trip(tmp_path: Path) -> None:
    path = dump_yaml(_custom(), tmp_path / "sub" / "config.yaml")
    assert path == tmp_path / "sub" / "config.yaml"
    assert load_config(Config, path) == _custom()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("model: qwen-0.5b\nalgo: grpo\n")  # field order, not sorted
    assert "tag: '1e-6'" in text  # quoted, so it reads back as a string


def test_load_config_without_file_gives_defaults() -> None:
    assert load_config(Config) == Config()


def test_empty_file_sets_nothing(tmp_path: Path) -> None:
    assert load_config(Config, _write(tmp_path, "# all commented out\n")) == Config()


def test_file_values_merge_over_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed: 3\noptim:\n  lr: 1e-6\nrewards:\n  - name: only\n")
    config = load_config(Config, str(path))
    assert config.seed == 3
    assert config.optim == Optim(lr=1e-6)  # YAML 1.1 alone would give the string '1e-6'
    assert config.rewards == [Reward("only")]  # lists are replaced, not merged
    assert config.model == "tiny"


# --------------------------------------------------------------------------------------------
# unknown keys, types, required fields


def test_unknown_top_level_key_suggests_closest() -> None:
    message = _error(Config, {"sed": 1})
    assert message.startswith("sed: unknown key for Config (did you mean 'seed'?)")
    assert "valid keys: model, algo, seed," in message


def test_unknown_nested_key_has_dotted_path_and_suggestion() -> None:
    message = _error(Config, {"optim": {"lrr": 0.1}})
    assert message.startswith("optim.lrr: unknown key for Optim (did you mean 'lr'?)")
    assert "valid keys: lr, betas, weight_decay" in message


def test_unknown_key_inside_list_item() -> None:
    message = _error(Config, {"rewards": [{"name": "a"}, {"name": "b", "wieght": 2}]})
    assert message.startswith("rewards.1.wieght: unknown key for Reward (did you mean 'weight'?)")


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    message = _error(Optim, {"zzzzzz": 1})
    assert message == "zzzzzz: unknown key for Optim; valid keys: lr, betas, weight_decay"


def test_wrong_type_names_dotted_path() -> None:
    assert _error(Config, {"optim": {"lr": "abc"}}) == "optim.lr: expected float, got 'abc' (str)"
    assert _error(Config, {"layers": [1, "x"]}) == "layers.1: expected int, got 'x' (str)"
    assert _error(Config, {"stop": "</s>"}).startswith("stop: expected tuple[str, ...], got")
    assert _error(Config, {"optim": 3}) == "optim: expected a mapping for Optim, got 3 (int)"
    assert _error(Config, {"rewards": [{"name": "a"}, "b"]}).startswith(
        "rewards.1: expected a mapping for Reward, got 'b' (str)"
    )
    assert _error(Config, {"scales": {"a": "big"}}).startswith("scales.a: expected float")
    assert _error(Config, {"extra": {1: "x"}}).startswith("extra.1: expected a string key")


@pytest.mark.parametrize(
    ("data", "start"),
    [
        ({"seed": True}, "seed: expected int, got True (bool)"),
        ({"optim": {"lr": False}}, "optim.lr: expected float, got False (bool)"),
        ({"use_lora": 1}, "use_lora: expected bool, got 1 (int)"),
        ({"max_steps": True}, "max_steps: expected int or null, got True (bool)"),
    ],
)
def test_bool_is_not_a_number_and_number_is_not_a_bool(data: dict[str, Any], start: str) -> None:
    assert _error(Config, data).startswith(start)


def test_int_widens_to_float_but_strings_are_not_numbers() -> None:
    config = from_dict(Config, {"optim": {"lr": 1, "betas": [1, 0]}})
    assert config.optim.lr == 1.0 and type(config.optim.lr) is float
    assert config.optim.betas == (1.0, 0.0) and all(type(b) is float for b in config.optim.betas)
    assert _error(Config, {"seed": "3"}) == "seed: expected int, got '3' (str)"
    assert _error(Config, {"seed": 2.0}).startswith("seed: expected int, got 2.0 (float)")
    assert _error(Config, {"tag": 5}).startswith("tag: expected str, got 5 (int)")


def test_none_only_for_optional_fields() -> None:
    config = from_dict(Config, {"max_steps": None, "init_from": None})
    assert config.max_steps is None and config.init_from is None
    assert from_dict(Config, {"max_steps": 5}).max_steps == 5
    assert _error(Config, {"seed": None}) == "seed: expected int, got null"
    assert _error(Config, {"output_dir": None}) == "output_dir: expected Path, got null"
    assert _error(Config, {"max_steps": "none"}).startswith("max_steps: expected int or null")


def test_literal_checks_membership_and_lists_choices() -> None:
    assert from_dict(Config, {"algo": "dcpo"}).algo == "dcpo"
    message = _error(Config, {"algo": "bandp"})
    assert message == (
        "algo: expected one of 'grpo', 'bandpo', 'dcpo', got 'bandp' (str); did you mean 'bandpo'?"
    )


def test_path_fields() -> None:
    config = from_dict(Config, {"output_dir": "a/b", "init_from": "c"})
    assert config.output_dir == Path("a/b") and config.init_from == Path("c")
    assert _error(Config, {"output_dir": 3}) == "output_dir: expected Path, got 3 (int)"


def test_fixed_length_tuple_checks_length() -> None:
    message = _error(Config, {"optim": {"betas": [0.9, 0.99, 0.999]}})
    assert message.startswith("optim.betas: expected tuple[float, float] (2 items), got 3 items")


def test_missing_required_fields() -> None:
    assert _error(NeedsName, {"size": 1}) == (
        "name: missing required field of NeedsName (expected str)"
    )
    assert _error(NeedsName, {}) == "missing required fields of NeedsName: name, size"
    assert _error(Config, {"rewards": [{"weight": 2.0}]}) == (
        "rewards.0.name: missing required field of Reward (expected str)"
    )


def test_post_init_runs_and_its_error_gets_the_path() -> None:
    assert _error(Config, {"optim": {"lr": -1}}) == "optim: lr must be > 0, got -1.0"


def test_from_dict_where_prefixes_messages() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Config, {"seed": "x"}, where="cfg.yaml")
    assert str(info.value) == "cfg.yaml: seed: expected int, got 'x' (str)"
    assert info.value.path == ("seed",)


def test_config_error_survives_pickling() -> None:
    error = ConfigError("expected int", ("rewards", 0, "weight"), where="a.yaml")
    copied = pickle.loads(pickle.dumps(error))
    assert str(copied) == str(error) == "a.yaml: rewards.0.weight: expected int"
    assert copied.path == error.path


def test_non_dataclass_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError):
        from_dict(dict, {})
    with pytest.raises(TypeError):
        to_dict(Config)
    with pytest.raises(TypeError, match="has no plain YAML form"):
        to_dict(Config(extra={"s": {1, 2}}))


# --------------------------------------------------------------------------------------------
# overrides and merge


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-6", 1e-6),
        ("5E3", 5000.0),
        ("-2e+2", -200.0),
        ("1.0e5", 100000.0),
        (".5e-3", 0.0005),
        ("1.5e-3", 0.0015),
        ("3", 3),
        ("0.25", 0.25),
        ("null", None),
        ("[1,2]", [1, 2]),
        ("band", "band"),
        ("true", True),
        ("'5'", "5"),
        ("1e-6x", "1e-6x"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_override_values_are_yaml(text: str, value: Any) -> None:
    parsed = parse_overrides([f"x={text}"])["x"]
    assert parsed == value and type(parsed) is type(value)


def test_overrides_nest_and_index() -> None:
    assert parse_overrides(["optim.lr=1e-6", "optim.betas=[0.9, 0.95]", "rewards.0.weight=2"]) == {
        "optim": {"lr": 1e-6, "betas": [0.9, 0.95]},
        "rewards": {0: {"weight": 2}},
    }


def test_later_override_wins() -> None:
    assert parse_overrides(["seed=1", "seed=2"]) == {"seed": 2}
    assert parse_overrides(["optim.lr=1", "optim=null"]) == {"optim": None}
    assert parse_overrides(["optim=3", "optim.lr=1"]) == {"optim": {"lr": 1}}
    assert parse_overrides(["layers=[1,2]", "layers.0=9"]) == {"layers": [9, 2]}


@pytest.mark.parametrize("bad", ["seed", "optim.lr", "--seed"])
def test_override_without_equals_shows_expected_form(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape("key.sub=value")) as info:
        parse_overrides([bad])
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["=1", "a..b=1", "a.=1"])
def test_override_with_empty_key_segment(bad: str) -> None:
    with pytest.raises(ValueError, match="empty key segment"):
        parse_overrides([bad])


def test_override_with_invalid_yaml_value() -> None:
    with pytest.raises(ValueError, match=re.escape("override 'x=[1,' as YAML")):
        parse_overrides(["x=[1,"])


def test_merge_is_deep_and_leaves_inputs_alone() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    update = {"a": {"c": [3]}, "e": {"f": 1}}
    merged = merge(base, update)
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged["e"]["f"] = 2
    assert update == {"a": {"c": [3]}, "e": {"f": 1}}


def test_merge_indexes_lists() -> None:
    base = {"rewards": [{"name": "a", "weight": 1.0}, {"name": "b", "weight": 1.0}]}
    merged = merge(base, parse_overrides(["rewards.1.weight=2"]))
    assert merged["rewards"] == [{"name": "a", "weight": 1.0}, {"name": "b", "weight": 2}]
    assert base["rewards"][1]["weight"] == 1.0


def test_merge_index_out_of_range_and_non_index() -> None:
    base = {"rewards": [{"name": "a"}]}
    with pytest.raises(ValueError) as info:
        merge(base, {"rewards": {3: {"weight": 2}}})
    assert str(info.value) == (
        "rewards.3: list index 3 is out of range (the list has 1 items; valid indices: 0..0)"
    )
    with pytest.raises(ValueError, match="address an item by its index"):
        merge(base, {"rewards": {"weight": 2}})


def test_load_config_applies_overrides_after_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed: 3\nalgo: grpo\noptim:\n  lr: 0.1\n")
    config = load_config(
        Config,
        path,
        [
            "optim.lr=1e-6",
            "rewards.1.weight=5E3",
            "max_steps=null",
            "init_from=ckpt/a",
            "algo=dcpo",
            "extra.run.id=[1, 2]",
            "seed=4",
            "seed=5",
        ],
    )
    assert config.optim.lr == 1e-6
    assert config.rewards == [Reward("format"), Reward("accuracy", weight=5000.0)]
    assert config.max_steps is None
    assert config.init_from == Path("ckpt/a")
    assert config.algo == "dcpo"
    assert config.extra == {"run": {"id": [1, 2]}}
    assert config.seed == 5  # the later override wins


def test_override_indexes_list_given_in_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "rewards:\n  - name: a\n  - name: b\n  - name: c\n")
    config = load_config(Config, path, ["rewards.2.weight=0.5"])
    assert config.rewards == [Reward("a"), Reward("b"), Reward("c", weight=0.5)]


def test_override_index_out_of_range_names_the_override() -> None:
    with pytest.raises(ValueError) as info:
        load_config(Config, None, ["rewards.5.weight=1"])
    assert str(info.value).startswith("override 'rewards.5.weight=1': rewards.5: list index 5")


def test_bad_override_value_names_the_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed: 3\n")
    with pytest.raises(ValueError) as info:
        load_config(Config, path, ["optim.lr=abc"])
    assert str(info.value) == "override 'optim.lr=abc': optim.lr: expected float, got 'abc' (str)"
    with pytest.raises(ValueError, match=r"^override 'seed=true': seed: expected int, got True"):
        load_config(Config, path, ["seed=true"])
    with pytest.raises(ValueError, match=r"^override 'optim.lrr=1': optim.lrr: unknown key"):
        load_config(Config, path, ["optim.lrr=1"])


def test_error_blames_the_override_that_set_the_value() -> None:
    with pytest.raises(ValueError, match=r"^override 'optim=\{lr: abc\}': optim.lr: expected"):
        load_config(Config, None, ["optim={lr: abc}", "optim.weight_decay=0.1"])
    # A mapping value merges, so it blames only for the keys it holds.
    with pytest.raises(ValueError, match=r"^override 'optim.lr=abc': optim.lr: expected"):
        load_config(Config, None, ["optim.lr=abc", "optim={weight_decay: 0.1}"])
    with pytest.raises(ValueError, match=r"^override 'seed=x': seed: expected"):
        load_config(Config, None, ["seed=1", "seed=x"])


# --------------------------------------------------------------------------------------------
# files


def test_file_errors_name_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed: 3\noptim:\n  weight_decay: 0.1\n  lr: abc\n")
    with pytest.raises(ValueError) as info:
        load_config(Config, path)
    assert str(info.value) == f"{path}, line 4: optim.lr: expected float, got 'abc' (str)"


def test_file_unknown_key_in_list_item_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "rewards:\n  - name: a\n  - name: b\n    wieght: 3\n")
    with pytest.raises(ValueError) as info:
        load_config(Config, path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 4: rewards.1.wieght: unknown key for Reward")
    assert "did you mean 'weight'?" in message


def test_file_post_init_error_names_line_and_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "optim:\n  lr: -0.5\n")
    with pytest.raises(ValueError) as info:
        load_config(Config, path)
    assert str(info.value) == f"{path}, line 1: optim: lr must be > 0, got -0.5"
    with pytest.raises(ValueError) as info:
        load_config(Config, path, ["optim.weight_decay=0.1"])
    assert str(info.value) == (
        f"{path}, line 1 (with override 'optim.weight_decay=0.1'): optim: lr must be > 0, got -0.5"
    )


def test_required_field_missing_from_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "size: 2\n")
    with pytest.raises(ValueError) as info:
        load_config(NeedsName, path)
    assert str(info.value) == f"{path}: name: missing required field of NeedsName (expected str)"
    assert load_config(NeedsName, path, ["name=x"]) == NeedsName(name="x", size=2)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed: 3\noptim:\n  lr: 0.1\n bad: [1\n")
    with pytest.raises(ValueError) as info:
        load_config(Config, path)
    assert str(info.value).startswith(f"{path}, line 4: invalid YAML: ")


def test_yaml_with_two_documents_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed: 1\n---\nseed: 2\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: invalid YAML")):
        load_config(Config, path)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just text\n", "3\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(f"{path}: expected a mapping of config keys")):
        load_config(Config, path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_config(Config, path)


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = "base: &base {name: a, weight: 2}\nrewards:\n  - *base\n  - <<: *base\n    weight: 3\n"
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=r"line 1: base: unknown key for Config"):
        load_config(Config, path)
    path = _write(tmp_path, text.replace("base: &base", "extra: &base"))
    config = load_config(Config, path)
    assert config.rewards == [Reward("a", weight=2.0), Reward("a", weight=3.0)]


# --------------------------------------------------------------------------------------------
# command line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (None, [])),
        (["a=1"], (None, ["a=1"])),
        (["--config", "c.yaml", "a=1", "b.c=x=y"], (Path("c.yaml"), ["a=1", "b.c=x=y"])),
        (["a=1", "--config=c.yaml"], (Path("c.yaml"), ["a=1"])),
        (["-c", "dir/c.yaml", "rewards.0.weight=2"], (Path("dir/c.yaml"), ["rewards.0.weight=2"])),
    ],
)
def test_split_cli_args(argv: list[str], expected: tuple[Path | None, list[str]]) -> None:
    assert split_cli_args(argv) == expected


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--lr=1"], "unrecognised argument '--lr=1'"),
        (["--verbose"], "unrecognised argument '--verbose'"),
        (["seed"], "unrecognised argument 'seed'"),
        (["--config"], "--config needs a file path"),
        (["-c", "--config=x.yaml"], "-c needs a file path"),
        (["--config="], "--config= needs a file path"),
        (["-c", "a.yaml", "--config=b.yaml"], "the config file is given twice"),
    ],
)
def test_split_cli_args_rejects_other_forms(argv: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        split_cli_args(argv)
    if "unrecognised" in problem:
        assert "--config FILE, --config=FILE, -c FILE, key.sub=value" in str(info.value)


def test_cli_to_config_end_to_end(tmp_path: Path) -> None:
    path = dump_yaml(Config(seed=9), tmp_path / "c.yaml")
    file, overrides = split_cli_args(["--config", str(path), "optim.lr=2e-5", "tag=x"])
    config = load_config(Config, file, overrides)
    assert config == Config(seed=9, optim=Optim(lr=2e-5), tag="x")
