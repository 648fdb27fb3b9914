"""Model registry: ``register_model`` / ``list_models`` / ``create_model``.

A factory is any callable ``(num_classes=7, **kw) -> nn.Module``; registering it under a name
makes it available to :func:`create_model` and to the parametrised model tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering a model factory under ``name`` (duplicate names are an error)."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 7, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; unknown names raise ``ValueError``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        valid = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; valid names: {valid}") from None
    return factory(num_classes=num_classes, **kwargs)
