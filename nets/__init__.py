"""Model zoo: a small registry of the toolbox's networks.

    >>> import nets
    >>> model = nets.build_model("stmenet", variant="itsdt")
    >>> model = nets.load_official(nets.build_model("deeppro"), "best_model.pth")
    >>> nets.list_models(task="segment")
    ['deeppro', 'deeppro_plus']

Each model registers itself with its task ("detect": `[B, 5 + C, H/8, W/8]` YOLOX maps; "segment":
per-pixel logits) and, where it has them, its architecture variants. Models import only torch; they take
tensors and return tensors. Reading weight files is `utils.weights`' job: `load_official` hands a path
to it (the one reader of the toolbox) and converts the authors' keys with the model's `convert_official`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

TASKS = ("detect", "segment")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model: its constructor, task, architecture variants and training
    recipe (plain data: option name -> value, the defaults a training script uses for this model)."""

    name: str
    build: Callable[..., nn.Module]
    task: str
    variants: tuple[str, ...] = ()
    recipe: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}
# Modules that register models when imported (kept lazy so `import nets` stays cheap). One line per model.
_MODEL_MODULES = ("nets.stmenet", "nets.deeppro", "nets.resunet_dtum", "nets.acm_yolox", "nets.agpcnet_yolox",
                  "nets.dnanet_yolox")


def register_model(name: str, *, task: str = "detect", variants: tuple[str, ...] = (),
                   recipe: dict | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a model constructor under `name` for `task` ("detect" or "segment"); `recipe`:
    training-option defaults of the model's authors (plain data, e.g. {"lr": 1e-3, "epochs": 20}) that the
    training script applies unless the user sets the option."""
    if task not in TASKS:
        raise ValueError(f"model {name!r}: task must be one of {TASKS}, got {task!r}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = _REGISTRY.get(name)
        if old is not None and old.build is not fn:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, fn, task, tuple(variants), dict(recipe or {}))
        return fn

    return wrap


def _populate() -> None:
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:  # a model file that does not exist yet
            if err.name != mod:
                raise


def canonical_name(name: str) -> str:
    """The registry key of a model name: case and `-` / `_` do not matter (`DeepPro-Plus` -> deeppro_plus)."""
    return str(name).strip().lower().replace("-", "_")


def list_models(task: str | None = None) -> list[str]:
    """Names accepted by `build_model`, optionally only those of one task."""
    _populate()
    return sorted(n for n, info in _REGISTRY.items() if task is None or info.task == task)


def model_info(name: str) -> ModelInfo:
    """The registry entry of `name` (ValueError naming the choices when unknown)."""
    _populate()
    key = canonical_name(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. `build_model("stmenet", variant="irdst")`."""
    return model_info(name).build(**kwargs)


def accepted_kwargs(name: str, **kwargs) -> dict:
    """The entries of `kwargs` that model `name`'s constructor takes (None values dropped): one set of
    script options serves every model, e.g. `build_model(name, **accepted_kwargs(name, num_frames=5))`."""
    params = inspect.signature(model_info(name).build).parameters
    return {k: v for k, v in kwargs.items() if v is not None and k in params}


def load_official(model: nn.Module, source) -> nn.Module:
    """Load the authors' weights (a path or an already-loaded object) strictly into `model`."""
    from utils.weights import load_official as _load

    return _load(model, source)


__all__ = ["ModelInfo", "TASKS", "accepted_kwargs", "build_model", "canonical_name", "list_models",
           "load_official", "model_info", "register_model"]
