"""Weights files -> ready models: the one loader of the toolbox.

    >>> loaded = load_weights("runs/stmenet_itsdt/best.pt")          # our checkpoint: EMA weights
    >>> loaded = load_weights("best_model.pth", model="deeppro")      # the authors' DeepPro file
    >>> loaded.model, loaded.name, loaded.source, loaded.train_config

Every script, `nets.load_official` and the training engine read weight files through
`utils.checkpoint.read_checkpoint` (weights-only unpickler, one-line CheckpointError); this module turns
what it read into a model:

- a training checkpoint of this toolbox names its model (`identity`: registry name and constructor
  kwargs), which is built and loaded strictly (its EMA weights when present and wanted);
- anything else is taken as the authors' weights: the state dict is found (`model_state_dict`,
  `state_dict`, `model` or the dict itself; a DataParallel `module.` prefix stripped) and converted with
  the model's `convert_official`. With `model="auto"` every registered model (and each of its variants,
  the given `variant` first) is tried until one fits strictly.

Models that can read the authors' weights implement

    convert_official(self, state_dict) -> tuple[dict[str, Tensor], list[str]]

returning the state dict in our key names and the source keys it deliberately dropped (documented dead
parameters); ValueError when the weights are of another variant.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

import nets
from utils.checkpoint import (
    FORMAT,
    describe_identity,
    describe_mismatch,
    load_state_strict,
    model_weights,
    read_checkpoint,
)
from utils.errors import CheckpointError, ConfigError

# What each task's tools take, in words for error messages.
TASK_WORDS = {"detect": "STMENet or another detector", "segment": "a DeepPro model or another segmenter"}


@dataclass
class LoadedModel:
    """A model with its weights loaded, and where they came from."""

    model: nn.Module
    name: str  # registry name
    source: str  # in words, for logs and result files
    train_config: dict = field(default_factory=dict)  # the training options of our checkpoints
    kind: str = "ours"  # "ours" (a toolbox checkpoint) or "official" (the authors' weights)
    ema: bool = False  # the EMA weights of a toolbox checkpoint were loaded
    epoch: int | None = None

    @property
    def task(self) -> str:
        return nets.model_info(self.name).task

    @property
    def is_detector(self) -> bool:
        return self.task == "detect"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _label(source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "official state dict"


def extract_state_dict(obj) -> OrderedDict[str, torch.Tensor]:
    """The tensors of a state dict in the authors' formats, without a DataParallel `module.` prefix."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict or checkpoint dict, got {type(obj).__name__}")
    for key in ("model_state_dict", "state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise ValueError("the checkpoint holds no tensors (not a model state dict)")
    if all(k.startswith("module.") for k in tensors):
        tensors = OrderedDict((k[len("module."):], v) for k, v in tensors.items())
    return tensors


def _read(source):
    """A path is read once through the toolbox's reader; an object is used as it is."""
    return read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source


def load_official(model: nn.Module, source) -> nn.Module:
    """Convert the authors' weights (a path or a loaded object) with `model.convert_official` and load
    them strictly; CheckpointError (a ValueError) naming the file and the first mismatch otherwise."""
    name = _label(source)
    convert = getattr(model, "convert_official", None)
    if convert is None:
        raise CheckpointError(f"{name}: {type(model).__name__} has no converter for the authors' weights")
    obj = _read(source)
    try:
        converted, _dropped = convert(extract_state_dict(obj))
    except ValueError as err:
        msg = _first_line(err)
        raise CheckpointError(msg if msg.startswith(f"{name}: ") else f"{name}: {msg}") from None
    problem = describe_mismatch(model.state_dict(), converted)
    if problem:
        raise CheckpointError(f"{name}: weights do not fit {type(model).__name__}: {problem} (wrong model or "
                              "variant for this checkpoint?)")
    model.load_state_dict(converted, strict=True)
    return model


def _candidates(model: str, task: str | None, variant: str | None,
                fallback: bool = True) -> list[tuple[str, str | None]]:
    """(name, variant) pairs to try for the authors' weights, the asked-for variant first (only it when
    not `fallback`)."""
    names = [nets.canonical_name(model)] if model != "auto" else nets.list_models(task)
    out = []
    for name in names:
        variants = list(nets.model_info(name).variants) or [None]
        if variant in variants:
            variants = [variant] + ([v for v in variants if v != variant] if fallback else [])
        out += [(name, v) for v in variants]
    return out


def load_weights(source: str | os.PathLike, model: str = "auto", *, task: str | None = None,
                 variant: str | None = None, variant_fallback: bool = True, prefer_ema: bool = True,
                 **build_kwargs) -> LoadedModel:
    """Build the model a weights file needs and load it strictly (see the module docstring).

    `model`: a registry name, or "auto" (from the checkpoint's identity or by trying the registered
    models of `task` on the authors' keys). `variant`: the variant tried first for the authors' weights
    (with `variant_fallback=False` the only one: evaluation scores the variant it was asked for).
    `build_kwargs` (e.g. `seqlen`, `num_frames`) go to the constructor of the authors' models that take them.
    """
    path = Path(source)
    want = "auto" if model in ("", None, "auto") else nets.canonical_name(model)
    if want != "auto" and want not in nets.list_models():
        raise ConfigError(f"--model {model!r}: expected auto or one of {', '.join(nets.list_models())}")
    if want != "auto" and task is not None and nets.model_info(want).task != task:
        raise ConfigError(f"--model {want} is not {TASK_WORDS[task]} ({', '.join(nets.list_models(task))})")
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _load_ours(path, obj, want, task, prefer_ema)
    try:
        state = extract_state_dict(obj)
    except ValueError as err:
        raise CheckpointError(f"{path}: {_first_line(err)}") from None
    fitted = _fit_official(state, _candidates(want, task, variant, variant_fallback), build_kwargs)
    if isinstance(fitted, tuple):
        net, name, var = fitted
        what = f"{name} {var} variant" if var else name
        epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
        epoch = int(epoch) + 1 if isinstance(epoch, int) or hasattr(epoch, "__index__") else None
        return LoadedModel(net, name, f"the authors' state dict, {what}", {}, "official", False, epoch)
    if want != "auto" and fitted:
        reason = _first_line(fitted[0][1]).replace("official state dict: ", "")
        other = _fit_official(state, _candidates("auto", nets.model_info(want).task, variant), build_kwargs)
        hint = f" (the keys look like {other[1]})" if isinstance(other, tuple) else ""
        raise CheckpointError(f"{path}: the authors' weights do not fit --model {want}{hint}: {reason}")
    if not fitted:
        raise CheckpointError(f"{path}: neither a checkpoint of this toolbox nor the authors' weights of a "
                              "registered model")
    name, err = fitted[0]
    reason = _first_line(err).replace(f"{path}: ", "").replace("official state dict: ", "")
    raise CheckpointError(f"{path}: neither a checkpoint of this toolbox nor the authors' weights of a "
                          f"registered model; closest: {name}: {reason} ({len(fitted) - 1} other models "
                          "tried)")


def _fit_official(state: Mapping, candidates: list[tuple[str, str | None]], build_kwargs: Mapping):
    """The first candidate model that loads `state` strictly as `(model, name, variant)`, else the list of
    `(name, CheckpointError)` of every failed try, closest first: a model whose converter recognised the
    keys but refused them (e.g. another variant), then by the number of keys that do not match (models
    without a converter are skipped)."""
    errors: list[tuple[int, str, CheckpointError]] = []
    keys = set(state)
    for name, var in candidates:
        net = nets.build_model(name, **nets.accepted_kwargs(name, **build_kwargs, variant=var))
        if not hasattr(net, "convert_official"):
            continue
        try:
            load_official(net, state)
        except CheckpointError as err:
            own = set(net.state_dict())
            refused = "weights do not fit" not in str(err)  # the converter itself said why
            errors.append((-1 if refused else len(own ^ keys), name, err))
            continue
        return net, name, var
    return [(name, err) for _, name, err in sorted(errors, key=lambda e: e[0])]


def _load_ours(path: Path, obj: Mapping, want: str, task: str | None, prefer_ema: bool) -> LoadedModel:
    identity = obj.get("identity") or {}
    name = nets.canonical_name(str(identity.get("name", "")))
    if want != "auto" and want != name:
        raise CheckpointError(f"{path}: checkpoint is for {describe_identity(identity)}, not {want}")
    if name not in nets.list_models():
        raise CheckpointError(f"{path}: checkpoint is for {describe_identity(identity)}, which is not a "
                              f"registered model ({', '.join(nets.list_models())})")
    if task is not None and nets.model_info(name).task != task:
        raise CheckpointError(f"{path}: checkpoint is for {describe_identity(identity)}, not "
                              f"{TASK_WORDS[task]}")
    net = nets.build_model(name, **dict(identity.get("kwargs") or {}))
    use_ema = bool(prefer_ema and obj.get("ema"))
    load_state_strict(net, model_weights(obj, prefer_ema), path, "EMA" if use_ema else "model")
    epoch = obj.get("epoch")
    source = (f"toolbox checkpoint, {'EMA' if use_ema else 'raw'} weights, epoch {epoch}, "
              f"{describe_identity(identity)}")
    return LoadedModel(net, name, source, dict(obj.get("config") or {}), "ours", use_ema, epoch)


__all__ = ["LoadedModel", "extract_state_dict", "load_official", "load_weights"]
