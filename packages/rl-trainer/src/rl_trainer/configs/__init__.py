"""Example configurations shipped with the package (``accelerate`` launch configs)."""

from __future__ import annotations

from pathlib import Path

ACCELERATE_DIR = Path(__file__).parent / "accelerate"


def accelerate_configs() -> dict[str, Path]:
    """Returns {name: path} of the shipped accelerate configs (ddp, fsdp, deepspeed_zero2, ...)."""
    return {p.stem: p for p in sorted(ACCELERATE_DIR.glob("*.yaml"))}


def accelerate_config(name: str) -> Path:
    """Returns the path of the shipped accelerate config ``name`` (for --config_file)."""
    configs = accelerate_configs()
    if name not in configs:
        raise ValueError(f"no accelerate config {name!r}; shipped: {', '.join(configs)}")
    return configs[name]
