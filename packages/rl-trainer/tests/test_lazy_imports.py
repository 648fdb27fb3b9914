"""The package's public names load on first use, so configuration code starts fast."""

from __future__ import annotations

import subprocess
import sys

import rl_trainer


def test_every_public_name_resolves_to_its_module() -> None:
    assert set(rl_trainer.__all__) == set(rl_trainer._EXPORTS)
    for name in rl_trainer.__all__:
        value = getattr(rl_trainer, name)
        module = rl_trainer._EXPORTS[name]
        assert getattr(value, "__module__", "").startswith(f"rl_trainer.{module}"), name
    assert set(rl_trainer.__all__) <= set(dir(rl_trainer))


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        rl_trainer.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_configuration_modules_do_not_load_transformers_or_accelerate() -> None:
    code = (
        "import sys\n"
        "import rl_trainer.config, rl_trainer.config_io, rl_trainer.rewards\n"
        "import rl_trainer.advantages, rl_trainer.rollout\n"
        "rl_trainer.rollout.available_rollout_backends()\n"
        "print(sorted(m for m in ('transformers', 'accelerate', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
