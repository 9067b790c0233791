"""Loading the authors' released weights into our modules.

Each model class that can read official weights implements

    convert_official(self, state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]

returning the state dict in our key names and the list of source keys it deliberately dropped (documented
dead parameters). This module reads the file safely and loads the result strictly.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn as nn


def _numpy_safe_globals() -> list:
    """numpy objects that the official DeepPro checkpoints pickle (a float64 scalar and its dtype).

    Checkpoints written with numpy 1.x name `numpy.core.multiarray.scalar`; under numpy 2 that object lives
    in `numpy._core`, so it is allow-listed under both names.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a hard requirement elsewhere
        return []
    allowed: list = [np.dtype, np.ndarray]
    allowed += sorted({type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")}, key=str)
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    for attr in ("scalar", "_reconstruct"):
        obj = getattr(multiarray, attr)
        allowed += [obj] + [(obj, f"numpy.{core}.multiarray.{attr}") for core in ("core", "_core")]
    return allowed


def read_checkpoint(source) -> Mapping:
    """Read a checkpoint file with torch's weights-only unpickler plus a small numpy allow-list.

    `source` may be a path or an object that is already loaded. Arbitrary pickled code is never run.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name and a one-line reason
        with open(path, "rb") as f:
            head = f.read(4)
        if not head.startswith(b"PK") and not head.startswith(b"\x80"):
            raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)") \
                from None
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise ValueError(f"{path}: holds pickled objects that cannot be loaded safely (not a plain "
                             "state dict or checkpoint dict)") from None
        reason = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


def extract_state_dict(obj: Mapping) -> OrderedDict[str, torch.Tensor]:
    """Find the state dict in the authors' formats and strip a DataParallel `module.` prefix."""
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


def load_official(model: nn.Module, source) -> nn.Module:
    """Convert the authors' keys with `model.convert_official` and load strictly; returns `model`."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "official state dict"
    convert = getattr(model, "convert_official", None)
    if convert is None:
        raise ValueError(f"{type(model).__name__} has no converter for official weights")
    try:
        converted, _dropped = convert(extract_state_dict(read_checkpoint(source)))
    except ValueError as err:
        msg = str(err)
        raise ValueError(msg if msg.startswith(f"{name}: ") else f"{name}: {msg}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in converted]
    unexpected = [k for k in converted if k not in own]
    wrong = [
        f"{k} {tuple(converted[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in converted and converted[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shape (e.g. {wrong[0]})")
        raise ValueError(
            f"{name}: weights do not fit {type(model).__name__}: " + "; ".join(parts)
            + " (wrong model or variant for this checkpoint?)"
        )
    model.load_state_dict(converted, strict=True)
    return model
