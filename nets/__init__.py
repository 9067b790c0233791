"""Model zoo: a small registry of the toolbox's networks.

    >>> import nets
    >>> model = nets.build_model("stmenet", variant="itsdt")
    >>> model = nets.load_official(nets.build_model("deeppro"), "best_model.pth")

Models import only torch; they take tensors and return tensors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# Modules that register models when imported (kept lazy so `import nets` stays cheap).
_MODEL_MODULES = ("nets.stmenet", "nets.deeppro", "nets.acm_yolox", "nets.agpcnet_yolox", "nets.dnanet_yolox")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a model constructor under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def _populate() -> None:
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:  # a model file that does not exist yet
            if err.name != mod:
                raise


def list_models() -> list[str]:
    """Names accepted by `build_model`."""
    _populate()
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. `build_model("stmenet", variant="irdst")`."""
    _populate()
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key](**kwargs)


def load_official(model: nn.Module, source) -> nn.Module:
    """Load the authors' weights (a path or an already-loaded object) strictly into `model`."""
    from nets.official import load_official as _load

    return _load(model, source)


__all__ = ["build_model", "list_models", "load_official", "register_model"]
