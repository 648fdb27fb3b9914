"""Model registry: ``register_model`` / ``list_models`` / ``create_model``.

A factory is any callable ``(num_classes=7, **kw) -> nn.Module``; registering it under a name
makes it available to :func:`create_model` and to the parametrised model tests.

When a factory's keyword default changes, old checkpoints (which store only the keyword
arguments they were given) would silently rebuild a different model. Registering the change
(``changed_defaults={"kw": ChangedDefault(old=..., new=...)}``) avoids that:
:func:`with_changed_defaults` fills the new default into every checkpoint written from now on,
and the old one into a checkpoint that does not record the argument
(:class:`capsnet_model.checkpoint.ModelInfo` does both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)


@dataclass(frozen=True)
class ChangedDefault:
    """A keyword argument whose default changed: ``old`` before, ``new`` now."""

    old: Any
    new: Any


_REGISTRY: dict[str, ModelFactory] = {}
_CHANGED: dict[str, dict[str, ChangedDefault]] = {}


def register_model(
    name: str, *, changed_defaults: Mapping[str, ChangedDefault] | None = None
) -> Callable[[F], F]:
    """Decorator registering a model factory under ``name`` (duplicate names are an error);
    ``changed_defaults``: keyword arguments whose default changed (see the module doc)."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        if changed_defaults:
            _CHANGED[name] = dict(changed_defaults)
        return factory

    return decorator


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def changed_defaults(name: str) -> dict[str, ChangedDefault]:
    """Returns the keyword arguments of model ``name`` whose default changed (``{}`` for none
    or for an unregistered name)."""
    return dict(_CHANGED.get(name, {}))


def with_changed_defaults(name: str, kwargs: Mapping[str, Any], *, old: bool) -> dict[str, Any]:
    """Returns a copy of ``kwargs`` with every changed default of model ``name`` that it does
    not set filled in: the ``old`` value (a checkpoint written before the change) or the new
    one."""
    out = dict(kwargs)
    for key, change in _CHANGED.get(name, {}).items():
        out.setdefault(key, change.old if old else change.new)
    return out


def create_model(name: str, num_classes: int = 7, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; unknown names raise ``ValueError``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        valid = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; valid names: {valid}") from None
    return factory(num_classes=num_classes, **kwargs)
