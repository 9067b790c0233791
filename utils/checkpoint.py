"""Training checkpoints: atomic writes, safe reads with one-line errors, RNG state capture and restore.

A training checkpoint is a dict with `format == "irstd-train"` and (see utils.engine for the writer):
`identity` {name, kwargs}, `model` (state dict), `ema` ({weights, updates} or None), `optimizer`,
`scaler`, `epoch` (epochs completed), `iter_in_epoch`, `global_step`, `rng` (per rank), `config`,
`history` (the per-epoch log rows), `best`. `best.pt` holds the same minus optimizer / scaler / RNG.
Files are read with torch's weights-only unpickler: a checkpoint can never run code.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.errors import CheckpointError, CheckpointNotFound

FORMAT = "irstd-train"
FORMAT_VERSION = 1


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip().splitlines()
    line = text[0].strip() if text else type(err).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Write a file through `write(fileobj)` atomically: temp file in the same folder, flush, fsync,
    os.replace. On any failure (disk full, ...) the temp file is removed, the old file is untouched and
    CheckpointError names the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: could not write ({_first_line(err)}); the previous file is intact") \
            from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Delete temp files left by a writer that was killed mid-save."""
    for tmp in Path(folder).glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list:
    """numpy objects that the authors' DeepPro checkpoints pickle (a float64 scalar and its dtype).

    Files written with numpy 1.x name `numpy.core.multiarray.scalar`; under numpy 2 that object lives in
    `numpy._core`, so it is allow-listed under both names.
    """
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


def read_checkpoint(path: str | os.PathLike, numpy_scalars: bool = True) -> dict:
    """Load any weights file safely (torch's weights-only unpickler, on CPU): our checkpoints and the
    authors' files alike. Arbitrary pickled code is never run. `numpy_scalars` allow-lists the numpy
    scalars and dtypes that the authors' DeepPro files pickle (our training checkpoints hold none).
    Raises CheckpointError with one line for a missing, empty, truncated, foreign or unsafe file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFound(f"{path}: checkpoint not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty checkpoint file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals() if numpy_scalars else []):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every torch.load failure becomes one clear line
        with open(path, "rb") as f:
            head = f.read(4)
        if not head.startswith(b"PK") and not head.startswith(b"\x80"):
            raise CheckpointError(f"{path}: not a checkpoint: neither a checkpoint of this toolbox nor the "
                                  "authors' weights (not a PyTorch checkpoint: neither a zip archive nor a "
                                  "pickle)") from None
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f"a pickled {found.group(1)} object" if found else "pickled objects"
            raise CheckpointError(f"{path}: holds {what} that cannot be loaded safely (not a plain state "
                                  "dict or checkpoint dict; a whole model saved with torch.save(model)? use "
                                  "the authors' plain state dict instead, e.g. ResUNet_DTUM_para.pth for "
                                  "Res-UNet+DTUM, or save model.state_dict() with their code)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt "
                              f"({_first_line(err)})") from None
    return obj


def load_checkpoint(path: str | os.PathLike) -> dict:
    """`read_checkpoint` plus a check that the file is a training checkpoint of this toolbox."""
    obj = read_checkpoint(path, numpy_scalars=False)
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        keys = ", ".join(list(map(str, obj.keys()))[:5]) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: not a training checkpoint of this toolbox (found: {keys})")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {obj['format_version']} is newer than this code "
                              f"({FORMAT_VERSION})")
    return dict(obj)


def describe_identity(identity: Mapping | None) -> str:
    if not identity:
        return "an unnamed model"
    kwargs = identity.get("kwargs") or {}
    args = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"{identity.get('name')}({args})"


def check_identity(ckpt: Mapping, identity: Mapping, path: str | os.PathLike) -> None:
    """CheckpointError when the checkpoint was written for another model (name or kwargs differ)."""
    saved = ckpt.get("identity") or {}
    if saved.get("name") != identity.get("name") or dict(saved.get("kwargs") or {}) != dict(
            identity.get("kwargs") or {}):
        raise CheckpointError(f"{path}: checkpoint is for {describe_identity(saved)}, this run builds "
                              f"{describe_identity(identity)}")


def describe_mismatch(own: Mapping, state: Mapping) -> str:
    """'' when `state` has exactly the keys and shapes of `own` (two state dicts), else one clause naming
    the counts and a first example of missing, unexpected and differently shaped keys."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs "
                     f"{tuple(own[k].shape)})")
    return "; ".join(parts)


def load_state_strict(module: nn.Module, state: Mapping, path: str | os.PathLike,
                      what: str = "model") -> None:
    """`module.load_state_dict(state)` (strict) with a one-line CheckpointError on mismatch."""
    problem = describe_mismatch(module.state_dict(), state)
    if problem:
        raise CheckpointError(f"{path}: {what} weights do not fit this model: {problem}")
    module.load_state_dict(state)


def model_weights(ckpt: Mapping, prefer_ema: bool = True) -> dict:
    """The weights to evaluate from a training checkpoint: the EMA copy when present, else the model."""
    ema = ckpt.get("ema")
    if prefer_ema and ema:
        return ema["weights"]
    return ckpt["model"]


def load_weights(model: nn.Module, path: str | os.PathLike, prefer_ema: bool = True,
                 identity: Mapping | None = None) -> nn.Module:
    """Load a training checkpoint's (EMA) weights strictly into `model`; checks identity when given."""
    ckpt = load_checkpoint(path)
    if identity is not None:
        check_identity(ckpt, identity, path)
    load_state_strict(model, model_weights(ckpt, prefer_ema), path)
    return model


# ----------------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict:
    """Python, numpy, torch CPU and (when initialised) current-CUDA-device generator states, in
    weights-only-safe types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's current device only
    return state


def restore_rng_state(state: Mapping) -> None:
    """Inverse of `capture_rng_state` (the CUDA state goes to the current device)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


__all__ = [
    "FORMAT", "FORMAT_VERSION", "atomic_save", "atomic_write", "atomic_write_text", "capture_rng_state",
    "check_identity", "describe_identity", "describe_mismatch", "load_checkpoint", "load_state_strict",
    "load_weights", "model_weights", "read_checkpoint", "remove_stale_temps", "restore_rng_state",
]
