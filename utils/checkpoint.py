"""Training checkpoints: atomic writes, safe reads with one-line errors, RNG state capture and restore.

A training checkpoint is a dict with `format == "irstd-train"` and (see utils.engine for the writer):
`identity` {name, kwargs}, `model` (state dict), `ema` ({weights, updates} or None), `optimizer`,
`scaler`, `epoch` (epochs completed), `iter_in_epoch`, `global_step`, `rng` (per rank), `config`,
`history` (the per-epoch log rows), `best`, and `digest`: a SHA-256 over every tensor and value of the
dict (see `payload_digest`), checked by `read_checkpoint`, so a flipped bit on disk or a bad copy is refused
instead of loading a silently different model (files written before the digest existed still load).
`best.pt` holds the same minus optimizer / scaler / RNG. Files are read with torch's weights-only
unpickler: a checkpoint can never run code.

`RunLock` guards a run folder against a second job writing into it at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import socket
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.errors import CheckpointError, CheckpointNotFound, ConfigError

FORMAT = "irstd-train"
FORMAT_VERSION = 1
DIGEST_KEY = "digest"
LOCK_NAME = ".lock"


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


class _RecordingFile:
    """A binary file that remembers the first OSError of its writes: torch's zip writer turns a failed
    write (disk full, quota) into a RuntimeError with an unhelpful text, this keeps the real reason."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self._f.flush()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _os_reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno is not None:
        return os.strerror(err.errno)
    return _first_line(err)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Write a file through `write(fileobj)` atomically: temp file in the same folder, flush, fsync,
    os.replace. On any failure (disk full, read-only folder, permission denied, ...) the temp file is
    removed, the old file is untouched and a one-line CheckpointError names the file and the reason."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    rec = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            rec = _RecordingFile(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = rec.error if rec is not None and rec.error is not None else err
        if isinstance(err, RuntimeError) and cause is err:
            raise
        raise CheckpointError(f"{path}: could not write ({_os_reason(cause)}); the previous file is intact") \
            from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(ckpt: Mapping, path: str | os.PathLike) -> Path:
    """`atomic_save` of a training checkpoint with its `digest` added (see `payload_digest`)."""
    body = {k: v for k, v in ckpt.items() if k != DIGEST_KEY}
    return atomic_save({**body, DIGEST_KEY: payload_digest(body)}, path)


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


def _hash_into(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            h.update(repr(k).encode())
            _hash_into(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _hash_into(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def payload_digest(obj: Mapping) -> str:
    """`sha256:<hex>` over every tensor (dtype, shape, bytes) and every plain value of a checkpoint dict,
    in order, without its own `digest` entry."""
    h = hashlib.sha256()
    _hash_into(h, {k: v for k, v in obj.items() if k != DIGEST_KEY})
    return "sha256:" + h.hexdigest()


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
    if isinstance(obj, Mapping) and DIGEST_KEY in obj:
        if payload_digest(obj) != obj[DIGEST_KEY]:
            raise CheckpointError(f"{path}: corrupt checkpoint (its content does not match the digest "
                                  "stored when it was written: damaged storage or a bad copy)")
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
# Run-folder lock
# ----------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder for the time of one training job: `FOLDER/.lock`, held with
    flock and holding the owner's PID and host. A second job on the folder gets a one-line ConfigError
    naming them; the lock of a job that died (killed, crashed) is taken over, since the kernel drops
    its flock (where a file system has no flock, a lock of a PID that no longer runs on this host is).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.stale: dict | None = None  # the holder recorded by a dead job whose lock was taken over

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            data = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict) -> ConfigError:
        who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        return ConfigError(f"{self.folder}: run folder is in use by {who} (another training job writes "
                           f"there): wait for it, stop it, or choose another --out (remove {self.path} only "
                           "if that job is gone)")

    def acquire(self) -> RunLock:
        """Take the lock (a no-op when held); see the class docstring."""
        if self._fd is not None:
            return self
        host = socket.gethostname()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                holder = self._holder(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise self._busy(holder) from None
                except OSError as err:
                    if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                        os.close(fd)
                        raise
                    pid = holder.get("pid")
                    if holder and (holder.get("host") != host or (isinstance(pid, int) and _pid_alive(pid))):
                        os.close(fd)
                        raise self._busy(holder) from None
                try:  # the previous holder may have removed the file meanwhile: lock the one on disk
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            self.stale = holder or None
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": host}).encode("utf-8"))
        except ConfigError:
            raise
        except OSError as err:
            raise CheckpointError(f"{self.path}: could not write ({_os_reason(err)})") from None
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


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
    "DIGEST_KEY", "FORMAT", "FORMAT_VERSION", "LOCK_NAME", "RunLock", "atomic_save", "atomic_write",
    "atomic_write_text", "capture_rng_state", "check_identity", "describe_identity", "describe_mismatch",
    "load_checkpoint", "load_state_strict", "load_weights", "model_weights", "payload_digest",
    "read_checkpoint", "remove_stale_temps", "restore_rng_state", "save_checkpoint",
]
