"""The training loop shared by every training script: AMP, EMA, DDP, logs, checkpoints, exact resume.

A script describes its job as a `Task` and calls `train(cfg, task)`:

    cfg = parse_config(STMEConfig(epochs=100, batch_size=4, lr=6.25e-4), argv)
    task = Task(model=lambda: nets.build_model("stmenet", variant="itsdt"),
                model_name="stmenet", model_kwargs={"variant": "itsdt"},
                loss_fn=YOLOXLoss(num_classes=1), train_dataset=ds, collate_fn=collate,
                epoch_indices=epoch_fraction(len(ds), 0.2),
                param_groups=lambda m: conv_decay_groups(m, cfg.weight_decay),
                evaluate=evaluate_map, select_metric="map50", select_mode="max")
    result = train(cfg, task)

Per epoch: the lr is set from `lr_at(epoch, iteration)`, every batch runs forward (autocast on CUDA),
loss (in float32), backward, optimizer step and EMA update; every `eval_period` epochs `evaluate` runs on
the EMA model (or the model). Rank 0 then appends a row to OUT/train_log.csv (epoch, lr, train_loss,
train_<part>..., skipped_steps, <metrics>..., time), writes TensorBoard scalars and the curve plot, and
saves OUT/best.pt (when the selection metric improves) and then OUT/last.pt atomically, each with a digest
of its content (utils.checkpoint); weights, EMA or gradients that are not finite never reach a file.

Safety: a lock (OUT/.lock) keeps a second job out of the run folder; a fresh run refuses a folder that holds
an earlier run's files unless --exist-ok. SIGINT / SIGTERM stop within seconds (at once while waiting for
data or evaluating, else after the running step), save last.pt where the run stopped, and raise
utils.errors.Interrupted (one line; utils.cli.run_main exits 128 + signal); a second signal stops at once.
A batch that leaves one value per channel in a training BatchNorm layer is refused before the first step.
Under float16 AMP, steps the GradScaler skips are counted (amp_skipped_steps) and left out of the EMA and
the loss means.

Exact resume: a checkpoint holds everything the next step depends on (weights, EMA, optimizer, scaler,
epoch / iteration counters, every rank's RNG states, the log), the epoch's sample list is a pure
function of (seed, epoch), and each item is loaded with a seed derived from (seed, epoch, position), so
`--resume` continues bit-identically on CPU, also from a mid-epoch checkpoint (`--save-every-iters`).

DDP: run the same script under `torchrun --nproc_per_node=G`. `--batch-size` is per process (effective
batch = batch x G); the lr is unchanged unless `--scale-lr`. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils import distributed as du
from utils.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    RunLock,
    atomic_write_text,
    capture_rng_state,
    check_identity,
    load_checkpoint,
    load_state_strict,
    remove_stale_temps,
    restore_rng_state,
    save_checkpoint,
)
from utils.config import TrainConfig, config_to_dict, plain_value
from utils.distributed import (
    SeededItems,
    epoch_fraction,
    epoch_permutation,
    epoch_weighted_draws,
    seed_worker,
)
from utils.ema import ModelEMA
from utils.errors import CheckpointError, ConfigError, Interrupted, ToolboxError
from utils.optim import all_params_group, build_optimizer, schedule_from_config, set_lr

LOG_CSV = "train_log.csv"
CURVES_PNG = "training_curves.png"
# Options that may change between a run and its resumption without a warning.
_RUN_ONLY = {"out", "resume", "device", "workers", "progress", "tensorboard", "plot", "exist_ok", "epochs"}


class NonFiniteLossError(ToolboxError):
    """The loss or the gradients became NaN or inf (and `skip_nonfinite` is off), or the weights did."""


class _StopNow(KeyboardInterrupt):
    """Raised by the signal handler where stopping at once is safe (or at a second signal: `forced`)."""

    def __init__(self, signum: int, forced: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.forced = signum, forced


def amp_supported(device: torch.device) -> bool:
    """Whether mixed precision runs on `device` (CUDA only; tests patch this to exercise the AMP path
    on the CPU)."""
    return device.type == "cuda"


def _end_workers(iterator) -> None:
    """End a DataLoader iterator's worker processes now (SIGTERM, which `_worker_init` turns into a quiet
    exit) instead of letting them finish the batches they hold, and wait for them; a no-op without
    workers. Worker-exit errors torch raises meanwhile (its SIGCHLD check) are moot: the run is stopping."""
    workers = list(getattr(iterator, "_workers", ()))
    for w in workers:
        with contextlib.suppress(OSError, ValueError, AttributeError, RuntimeError):
            if w.is_alive():
                os.kill(w.pid, signal.SIGTERM)
    for w in workers:
        with contextlib.suppress(OSError, ValueError, AttributeError, RuntimeError):
            w.join(timeout=5)


_worker_quitting = False  # set in a loader worker by its first SIGINT / SIGTERM


def _quit_worker(signum: int, frame) -> None:
    """A loader worker's SIGINT / SIGTERM: the first leaves through torch's worker loop (which exits cleanly
    on a KeyboardInterrupt), a second one (the job's signal plus the main process's `_end_workers`, or an
    exit stuck on a full pipe) ends the worker at once, with exit code 0 so torch sees no failure."""
    global _worker_quitting
    if _worker_quitting:
        os._exit(0)
    _worker_quitting = True
    raise KeyboardInterrupt


def _worker_excepthook(exc_type, exc, tb) -> None:
    """A loader worker's sys.excepthook: a connection the main process dropped while stopping (it hung up in
    the middle of fetching a batch's shared tensors) is not worth a traceback; anything else is."""
    if not issubclass(exc_type, ConnectionError):
        sys.__excepthook__(exc_type, exc, tb)


def _worker_init(seed: int, epoch: int, rank: int, worker_id: int) -> None:
    """DataLoader worker_init_fn: per-worker seeding; SIGINT / SIGTERM end the worker quietly while the main
    process decides what to keep."""
    seed_worker(seed, epoch, rank, worker_id)
    signal.signal(signal.SIGINT, _quit_worker)
    signal.signal(signal.SIGTERM, _quit_worker)
    sys.excepthook = _worker_excepthook


# ----------------------------------------------------------------------------------------------------
# The task a script supplies
# ----------------------------------------------------------------------------------------------------


@dataclass
class Task:
    """What to train. Only `model`, `loss_fn` and `train_dataset` are required.

    - model: an nn.Module, or a no-argument callable building it (built after seeding: reproducible init).
    - loss_fn(outputs, targets) -> (loss scalar, {name: float or tensor}) for logging.
    - train_dataset / collate_fn: each batch from the collate is `(inputs, targets)`; tensors (also
      inside lists, tuples, dicts) are moved to the device. Items are loaded with the global RNGs
      seeded per (seed, epoch, position), or through `train_dataset.epoch_item(index, position, seed)`
      when the dataset has it (see utils.distributed.SeededItems).
    - epoch_indices(epoch, seed) -> dataset indices of one epoch (default: a seeded permutation).
    - param_groups(model) -> optimizer groups (default: all parameters with cfg.weight_decay).
    - make_optimizer(groups) -> optimizer (default: cfg.optimizer with cfg's numbers).
    - lr_at(epoch, iteration) -> lr (default: cfg.schedule).
    - evaluate(model, epoch) -> {metric: float} (epoch 0-based), run in eval mode under no_grad on the
      EMA model when EMA is on; on rank 0 only unless eval_on_all_ranks (then every rank calls it and
      may pool with utils.distributed.all_gather_object; rank 0's answer is used).
    - select_metric / select_mode ("max" | "min"): which logged value picks best.pt ("train_loss",
      "val_loss", "map50", "iou", ...).
    - model_name / model_kwargs: identity stored in checkpoints; resuming another model is refused.
    - forward(model, inputs) -> outputs (default: model(inputs)); on_epoch_start(epoch) hook.
    """

    model: nn.Module | Callable[[], nn.Module]
    loss_fn: Callable[[Any, Any], tuple[torch.Tensor, Mapping[str, Any]]]
    train_dataset: Dataset
    collate_fn: Callable | None = None
    epoch_indices: Callable[[int, int], Sequence[int]] | None = None
    param_groups: Callable[[nn.Module], list[dict]] | None = None
    make_optimizer: Callable[[list[dict]], torch.optim.Optimizer] | None = None
    lr_at: Callable[[int, int], float] | None = None
    evaluate: Callable[[nn.Module, int], Mapping[str, float]] | None = None
    eval_on_all_ranks: bool = False
    select_metric: str = "train_loss"
    select_mode: str = "min"
    model_name: str = ""
    model_kwargs: dict = field(default_factory=dict)
    forward: Callable[[nn.Module, Any], Any] | None = None
    on_epoch_start: Callable[[int], None] | None = None
    find_unused_parameters: bool = False


@dataclass
class TrainResult:
    """Paths of the run, the best selection value and its epoch (1-based), the log rows, and the trained
    modules (`model`; `ema_model` is the EMA copy, or `model` itself when EMA is off)."""

    run_dir: Path
    last: Path
    best: Path | None
    best_value: float | None
    best_epoch: int | None
    history: list[dict]
    model: nn.Module
    ema_model: nn.Module


# ----------------------------------------------------------------------------------------------------
# Seeding and batches
# ----------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(obj, device: torch.device, non_blocking: bool):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(x, device, non_blocking) for x in obj)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj


def _to_float32(obj):
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_float32(x) for x in obj)
    if isinstance(obj, Mapping):
        return {k: _to_float32(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------


class Trainer:
    """Owns the model, optimizer, EMA, scaler and run folder of one training run; `fit()` runs it."""

    def __init__(self, cfg: TrainConfig, task: Task):
        if task.select_mode not in ("max", "min"):
            raise ConfigError(f"select_mode must be 'max' or 'min', got {task.select_mode!r}")
        if task.evaluate is None and not task.select_metric.startswith("train_"):
            raise ConfigError(f"selection metric {task.select_metric!r} needs an evaluator")
        self.cfg, self.task = cfg, task
        self._owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        self.info, self.device = du.init_distributed(cfg.device)
        self.is_main = self.info.is_main
        self.run_dir = Path(cfg.out)
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self._warned: set[str] = set()
        self._tb = None
        self._stop: int | None = None  # the signal that asked to stop
        self._interruptible = False  # whether the signal handler may raise at once
        self._hooks: list = []
        self._sigchld = None  # torch's SIGCHLD handler while `_defer_worker_checks` wraps it
        self._child_pending = False
        self._epoch = 0
        created = not self.run_dir.exists()
        self._lock = RunLock(self.run_dir) if self.is_main else None
        try:
            if self._lock is not None:
                self._lock.acquire()
                if self._lock.stale:
                    self.log(f"taking over the lock of PID {self._lock.stale.get('pid')} on host "
                             f"{self._lock.stale.get('host')} (that job is gone)")
            self._setup()
        except BaseException:
            self._release()
            if created and self.is_main and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
            raise

    def _setup(self) -> None:
        cfg, task = self.cfg, self.task
        resume_path = self._resume_path()
        ckpt = load_checkpoint(resume_path) if resume_path is not None else None
        if ckpt is not None and "optimizer" not in ckpt:
            raise CheckpointError(f"{resume_path}: holds weights only (a best.pt); resume from last.pt")
        self._check_run_folder(resume_path)

        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)
        model = task.model() if callable(task.model) and not isinstance(task.model, nn.Module) else task.model
        if not isinstance(model, nn.Module):
            raise TypeError(f"Task.model must be an nn.Module or build one, got {type(model).__name__}")
        self.identity = {"name": task.model_name or type(model).__name__,
                         "kwargs": plain_value(dict(task.model_kwargs))}
        if ckpt is not None:
            check_identity(ckpt, self.identity, resume_path)
            load_state_strict(model, ckpt["model"], resume_path)
        model.to(self.device)
        if isinstance(task.loss_fn, nn.Module):
            task.loss_fn.to(self.device)
        if cfg.sync_bn and self.info.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif cfg.sync_bn:
            self._warn("sync_bn", "--sync-bn needs DDP on CUDA; using plain BatchNorm")
        self.model = model
        self.ddp_model: nn.Module = model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=task.find_unused_parameters)
            seed_everything(cfg.seed + self.info.rank)
        self.ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None

        groups = task.param_groups(model) if task.param_groups else all_params_group(model, cfg.weight_decay)
        self.optimizer = (task.make_optimizer(groups) if task.make_optimizer else
                          build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.nesterov,
                                          cfg.betas, cfg.weight_decay))
        self.lr_at = task.lr_at or schedule_from_config(cfg)
        self.lr_factor = float(self.info.world_size) if cfg.scale_lr else 1.0
        self.use_amp = cfg.amp and amp_supported(self.device)
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp and
                                           self.amp_dtype == torch.float16)
        indices_fn = task.epoch_indices or epoch_permutation(len(task.train_dataset))
        self.sampler = du.ShardedEpochSampler(indices_fn, cfg.batch_size, cfg.seed, self.info.rank,
                                              self.info.world_size, cfg.max_iters_per_epoch,
                                              len(task.train_dataset))

        self.start_epoch, self.start_iter, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self.best: dict = {"metric": task.select_metric, "mode": task.select_mode, "value": None,
                           "epoch": None}
        self._resumed_stats: dict | None = None
        if ckpt is not None:
            self._restore(ckpt, resume_path)

    # ------------------------------------------------------------------ set-up helpers

    def _resume_path(self) -> Path | None:
        r = (self.cfg.resume or "").strip()
        if not r:
            return None
        if r == "auto":
            if self.last_path.exists():
                return self.last_path
            self.log(f"--resume auto: no {self.last_path} yet, starting a fresh run")
            return None
        return Path(r)

    def _check_run_folder(self, resume_path: Path | None) -> None:
        """Refuse to write over an earlier run's files unless --exist-ok; a fresh --exist-ok run starts the
        folder over (its old last.pt, best.pt and log go, so what is on disk is this run's)."""
        earlier = [p for p in (self.last_path, self.best_path, self.run_dir / LOG_CSV) if p.exists()]
        if not earlier:
            return
        if resume_path is None:
            if not self.cfg.exist_ok:
                if self.last_path.exists():
                    raise ConfigError(f"{self.last_path} exists: pass --resume auto to continue that run, or "
                                      "--exist-ok to start over in the same folder, or choose another --out")
                raise ConfigError(f"{earlier[0]} exists (an earlier run) but there is no "
                                  f"{self.last_path.name} to resume: pass --exist-ok to start over in the "
                                  "same folder, or choose another --out")
            if self.is_main:
                for p in earlier:
                    p.unlink(missing_ok=True)
            return
        if resume_path.resolve() != self.last_path.resolve() and not self.cfg.exist_ok:
            names = ", ".join(p.name for p in earlier)
            raise ConfigError(f"{self.run_dir} holds another run's checkpoints ({names}): resuming "
                              f"{resume_path} there would write over them; pass --exist-ok or "
                              "choose another --out")

    def _restore(self, ckpt: dict, path: Path) -> None:
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError(f"{path}: checkpoint has no EMA weights but --ema is on "
                                      "(pass --no-ema)")
            load_state_strict(self.ema.ema, ckpt["ema"]["weights"], path, "EMA")
            self.ema.updates = int(ckpt["ema"]["updates"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{path}: optimizer state does not fit ({reason})") from None
        scaler_state = ckpt.get("scaler") or {}
        if scaler_state:
            self.scaler.load_state_dict(scaler_state)
        elif self.scaler.is_enabled():
            self._warn("scaler", f"{path} was written without a float16 loss scaler (CPU, bfloat16 or "
                                 "--no-amp): the scaler starts afresh")
        self.start_epoch = int(ckpt["epoch"])
        self.start_iter = int(ckpt.get("iter_in_epoch", 0))
        self.global_step = int(ckpt.get("global_step", 0))
        self.history = [dict(r) for r in ckpt.get("history", [])]
        best = ckpt.get("best") or {}
        if best.get("metric") == self.task.select_metric and best.get("mode") == self.task.select_mode:
            self.best = dict(best)
            self._adopt_newer_best(path)
        ranks = ckpt.get("rank_states") or []
        if len(ranks) != self.info.world_size:
            self._warn("ranks", f"checkpoint written by {len(ranks)} process(es), resuming with "
                                f"{self.info.world_size}: the continuation is not bit-identical")
        state = ranks[self.info.rank] if self.info.rank < len(ranks) else (ranks[0] if ranks else None)
        if state is not None:
            restore_rng_state(state["rng"])
            if self.start_iter > 0:
                self._resumed_stats = state.get("stats")
        now = config_to_dict(self.cfg)
        changed = [f"{k} {v!r} -> {now[k]!r}" for k, v in (ckpt.get("config") or {}).items()
                   if k not in _RUN_ONLY and k in now and now[k] != v]
        if changed:
            self._warn("config", "resuming with changed options: " + ", ".join(changed))
        where = f"epoch {self.start_epoch + 1}"
        if self.start_iter:
            self.sampler.set_epoch(self.start_epoch)
            done = self.start_iter >= self.sampler.num_batches()
            where += " (its evaluation)" if done else f", iteration {self.start_iter + 1}"
        self.log(f"resumed from {path}: continuing at {where}")

    def _adopt_newer_best(self, path: Path) -> None:
        """best.pt is written before last.pt: a run stopped between the two leaves a best.pt newer than
        what last.pt records. Keep that best.pt (and its record) rather than forget it."""
        if path.resolve() != self.last_path.resolve() or not self.best_path.exists():
            return
        try:
            record = dict(load_checkpoint(self.best_path).get("best") or {})
        except CheckpointError as err:
            self._warn("best", f"{err}; a new best.pt will be written at the next improvement")
            return
        value, epoch, mode = record.get("value"), record.get("epoch"), self.best["mode"]
        if (record.get("metric") != self.best["metric"] or record.get("mode") != mode or value is None
                or epoch is None or epoch == self.best.get("epoch")):
            return
        old = self.best.get("value")
        if old is None or (value >= old if mode == "max" else value <= old):
            self.best = record
            self.log(f"{self.best_path} (epoch {epoch}) is newer than what {path.name} records: keeping it "
                     "as the best checkpoint")

    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def _warn(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log(f"warning: {msg}")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame) -> None:
        if self._stop is not None:
            raise _StopNow(self._stop, forced=True)
        self._stop = signum
        if self._interruptible:
            raise _StopNow(signum)

    def _check_stop(self) -> None:
        if self._stop is not None:
            raise _StopNow(self._stop)

    def _defer_worker_checks(self) -> None:
        """torch checks its loader workers on SIGCHLD and raises at whatever line runs then; a worker that
        ends with the job's signal would so break a step in half. Once torch's handler is in place (the
        first loader iterator installs it), run it only where stopping is safe (see `_next_batch`)."""
        if threading.current_thread() is not threading.main_thread() or self._sigchld is not None:
            return
        current = signal.getsignal(signal.SIGCHLD)
        if not callable(current):
            return
        self._sigchld = current

        def on_child(signum: int, frame) -> None:
            if self._interruptible:
                current(signum, frame)
            else:
                self._child_pending = True

        signal.signal(signal.SIGCHLD, on_child)

    def _install_signal_handlers(self) -> dict:
        """SIGINT / SIGTERM: stop at once where that is safe (waiting for data, evaluating), else after the
        running step or write; a second signal stops at once. Main thread only (signal's rule)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        saved = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return saved

    def _interrupted(self, stop: _StopNow, epoch: int, completed: int, n_batches: int, stats: dict | None,
                     t0: float, rank_states: list | None) -> Interrupted:
        """Save where the run stopped (single process, unless forced) and build the one-line error."""
        name = signal.Signals(stop.signum).name
        if stop.forced or self.info.distributed or stats is None:
            why = "a second signal" if stop.forced else ("DDP" if self.info.distributed else "")
            kept = (f"{self.last_path} holds the last checkpoint" if self.last_path.exists()
                    else "no checkpoint was written yet")
            return Interrupted(f"stopped by {name}{f' ({why})' if why else ''} at epoch {epoch + 1}: "
                               f"nothing saved now, {kept}", stop.signum)
        stats["elapsed"] = time.time() - t0
        self._interruptible = False
        self._save(epoch, completed, stats, improved=False, rank_states=rank_states)
        where = f"iteration {completed}/{n_batches}" if completed < n_batches else "before its evaluation"
        return Interrupted(f"stopped by {name} at epoch {epoch + 1}, {where}: saved {self.last_path}; "
                           "continue with --resume auto", stop.signum)

    # ------------------------------------------------------------------ main loop

    def fit(self) -> TrainResult:
        cfg = self.cfg
        saved_handlers = self._install_signal_handlers()
        self._interruptible = True
        try:
            self._check_stop()
            self._guard_batchnorm()
            if self.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                remove_stale_temps(self.run_dir)
                atomic_write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n",
                                  self.run_dir / "config.json")
                if self.history:
                    self._write_csv()
                self._open_tensorboard()
                self.log(self._banner())
            du.barrier()
            for epoch in range(self.start_epoch, cfg.epochs):
                start = self.start_iter if epoch == self.start_epoch else 0
                self._run_epoch(epoch, start)
                if self._stop is not None and epoch + 1 < cfg.epochs:
                    name = signal.Signals(self._stop).name
                    raise Interrupted(f"stopped by {name} after epoch {epoch + 1}: saved {self.last_path}; "
                                      "continue with --resume auto", self._stop)
            if self.start_epoch >= cfg.epochs:
                self.log(f"nothing to do: the checkpoint already finished {self.start_epoch} epoch(s)")
        except _StopNow as stop:
            raise self._interrupted(stop, self._epoch, 0, 0, None, 0.0, None) from None
        finally:
            self._interruptible = False
            for sig, handler in saved_handlers.items():
                signal.signal(sig, handler)
            if self._sigchld is not None:
                signal.signal(signal.SIGCHLD, self._sigchld)
                self._sigchld = None
            for h in self._hooks:
                h.remove()
            self._hooks.clear()
            if self._tb is not None:
                self._tb.close()
            if self._owns_group:
                du.cleanup_distributed()
            self._release()
        best = self.best_path if self.best["value"] is not None else None
        return TrainResult(self.run_dir, self.last_path, best, self.best["value"], self.best["epoch"],
                           self.history, self.model, self.ema.ema if self.ema is not None else self.model)

    def _guard_batchnorm(self) -> None:
        """Refuse up front a batch that leaves one value per channel in a training BatchNorm layer (torch
        would fail inside the forward with "Expected more than 1 value per channel")."""
        batch = self.cfg.batch_size

        def check(module: nn.Module, args, name: str = "") -> None:
            x = args[0] if args else None
            if module.training and isinstance(x, torch.Tensor) and x.dim() >= 2 and x.numel() <= x.shape[1]:
                raise ConfigError(f"--batch-size {batch} leaves one value per channel in BatchNorm layer "
                                  f"'{name}' (input {list(x.shape)}), which cannot train: raise --batch-size "
                                  "(or the input / crop size)")

        for name, module in self.model.named_modules():
            batchnorm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            if batchnorm and not isinstance(module, nn.SyncBatchNorm):
                self._hooks.append(module.register_forward_pre_hook(partial(check, name=name)))

    def _banner(self) -> str:
        amp = f"AMP {self.cfg.amp_dtype}" if self.use_amp else "AMP off"
        world = self.info.world_size
        ema = "on" if self.ema else "off"
        return (f"training {self.identity['name']} on {self.device} ({world} process(es), batch "
                f"{self.cfg.batch_size} x {world}, {amp}, EMA {ema}) -> {self.run_dir}")

    def _loader(self, epoch: int, start: int) -> DataLoader:
        self.sampler.set_epoch(epoch, start)
        g = torch.Generator().manual_seed(du.sample_seed(self.cfg.seed, epoch, 1 << 30) + self.info.rank)
        return DataLoader(SeededItems(self.task.train_dataset), batch_sampler=self.sampler,
                          num_workers=self.cfg.workers, collate_fn=self.task.collate_fn,
                          pin_memory=self.device.type == "cuda",
                          worker_init_fn=partial(_worker_init, self.cfg.seed, epoch, self.info.rank),
                          generator=g, persistent_workers=False)

    def _next_batch(self, iterator):
        """The next batch; a signal may stop the wait at once. A loader failure after a stop signal (its
        workers got the signal too) counts as the stop."""
        self._interruptible = True
        try:
            if self._child_pending:
                self._child_pending = False
                self._sigchld(signal.SIGCHLD, None)
            self._check_stop()
            return next(iterator)
        except (StopIteration, KeyboardInterrupt):
            raise
        except Exception:
            if self._stop is not None:
                raise _StopNow(self._stop) from None
            raise
        finally:
            self._interruptible = False

    def _run_epoch(self, epoch: int, start: int) -> None:
        cfg, task = self.cfg, self.task
        self._epoch = epoch
        if task.on_epoch_start is not None:
            task.on_epoch_start(epoch)
        self._interruptible = False
        loader = self._loader(epoch, start)
        n_batches = self.sampler.num_batches()
        if n_batches == 0:
            raise ConfigError(f"epoch {epoch + 1} gives each process {len(self.sampler.shard())} item(s), "
                              f"fewer than --batch-size {cfg.batch_size}")
        stats = self._resumed_stats if start > 0 and self._resumed_stats else \
            {"loss_sum": 0.0, "count": 0, "skipped": 0, "amp_skipped": 0, "parts": {}, "elapsed": 0.0}
        stats.setdefault("amp_skipped", 0)
        self._resumed_stats = None
        t0 = time.time() - stats["elapsed"]
        self.ddp_model.train()
        bar = tqdm(total=n_batches, initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   dynamic_ncols=True, disable=not (self.is_main and cfg.progress), mininterval=0.5)
        completed, rank_states, iterator = start, None, None
        try:
            try:
                iterator = iter(loader)
            except Exception:
                if self._stop is not None:  # a worker that got the job's signal while starting
                    raise _StopNow(self._stop) from None
                raise
            self._defer_worker_checks()
            for it in range(start, n_batches):
                try:
                    batch = self._next_batch(iterator)
                except StopIteration:
                    break
                lr = self.lr_at(epoch, it) * self.lr_factor
                set_lr(self.optimizer, lr)
                self._step(epoch, it, n_batches, batch, stats)
                self.global_step += 1
                completed = it + 1
                if stats["count"]:
                    mean = stats["loss_sum"] / stats["count"]
                    bar.set_postfix(loss=f"{mean:.4g}", lr=f"{lr:.3g}", refresh=False)
                bar.update(1)
                if cfg.save_every_iters and (it + 1) % cfg.save_every_iters == 0 and it + 1 < n_batches:
                    stats["elapsed"] = time.time() - t0
                    self._save(epoch, it + 1, stats, improved=False)
                self._check_stop()
            iterator = None
            if self.info.distributed:  # BatchNorm statistics drift per rank after the last forward: rank 0's
                ema = list(self.ema.ema.state_dict().values()) if self.ema is not None else []
                du.broadcast_tensors(list(self.model.buffers()) + ema)
            stats["elapsed"] = time.time() - t0
            rank_states = [{"rng": capture_rng_state(), "stats": dict(stats)}] if not self.info.distributed \
                else None
            self._interruptible = True
            self._check_stop()
            row = self._epoch_row(epoch, stats, t0)
            self._interruptible = False
        except _StopNow as stop:
            self._interruptible = False
            _end_workers(iterator)
            iterator = None
            raise self._interrupted(stop, epoch, completed, n_batches, stats, t0, rank_states) from None
        finally:
            self._interruptible = False
            bar.close()
        self.history.append(row)
        improved = self._update_best(row)
        self._save(epoch + 1, 0, None, improved)
        if self.is_main:
            self._write_csv()
            self._write_tensorboard(row)
            self._plot()
            self.log(self._row_text(row, improved))
        du.barrier()

    def _restore_buffers(self, saved: list[torch.Tensor] | None) -> None:
        if saved is not None:
            with torch.no_grad():
                for b, old in zip(self.model.buffers(), saved):
                    b.copy_(old)

    def _agree(self, ok: bool) -> bool:
        """`ok` on every rank (all ranks must take the same branch: backward and step all-reduce)."""
        if self.info.distributed:
            return du.all_reduce_sum([0.0 if ok else 1.0], self.device)[0] == 0.0
        return ok

    def _step(self, epoch: int, it: int, n_batches: int, batch, stats: dict) -> None:
        """One optimizer step. A non-finite loss or (without the float16 scaler) non-finite gradients stop
        the run, or with --skip-nonfinite skip the update (BatchNorm statistics restored) and count it. A
        step the float16 GradScaler skips (overflowing gradients: the scale drops) is counted and leaves the
        EMA and the loss statistics alone."""
        cfg = self.cfg
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise ConfigError("the collate function must return (inputs, targets)")
        inputs, targets = _to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        forward = self.task.forward or (lambda m, x: m(x))
        # a skipped step must also leave the BatchNorm statistics of its forward pass behind
        saved = [b.detach().clone() for b in self.model.buffers()] if cfg.skip_nonfinite else None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            outputs = forward(self.ddp_model, inputs)
        loss, parts = self.task.loss_fn(_to_float32(outputs), targets)
        value = float(loss.detach())
        bad = None if self._agree(math.isfinite(value)) else f"non-finite loss ({value})"
        if bad is None:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            scaled = self.scaler.is_enabled()
            if cfg.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            elif not scaled:
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                norm = torch.nn.utils.get_total_norm(grads, math.inf) if grads else torch.zeros(())
            # DDP has averaged the gradients: every rank sees the same norm and takes the same branch
            if not scaled and not bool(torch.isfinite(norm)):
                bad = f"non-finite gradients (loss {value:.6g})"
        if bad is not None:
            self.optimizer.zero_grad(set_to_none=True)
            if not cfg.skip_nonfinite:
                items = self.sampler.batch_indices(it)
                shown = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items()) if parts else "none"
                raise NonFiniteLossError(
                    f"epoch {epoch + 1}, iteration {it + 1}/{n_batches}: {bad} on the batch of dataset items "
                    f"{items} (loss parts: {shown}); lower --lr, check these items, or pass --skip-nonfinite "
                    "to skip such steps")
            self._restore_buffers(saved)
            stats["skipped"] += 1
            return
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # the scaler found inf/NaN gradients and skipped the step
                stats["amp_skipped"] += 1
                return
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        stats["loss_sum"] += value
        stats["count"] += 1
        for k, v in parts.items():
            stats["parts"][k] = stats["parts"].get(k, 0.0) + float(v)

    # ------------------------------------------------------------------ epoch end

    def _epoch_row(self, epoch: int, stats: dict, t0: float) -> dict:
        """The epoch's log row: mean training loss and parts over all ranks, evaluation metrics, and the
        wall time of training plus evaluation."""
        names = sorted(stats["parts"])
        sums = du.all_reduce_sum([stats["loss_sum"], stats["count"], stats["skipped"], stats["amp_skipped"]]
                                 + [stats["parts"][k] for k in names], self.device)
        count = sums[1]
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.lr_at(epoch, 0) * self.lr_factor,
                               "train_loss": sums[0] / count if count else float("nan")}
        for k, s in zip(names, sums[4:]):
            row[k if k.startswith("train_") else f"train_{k}"] = s / count if count else float("nan")
        row["skipped_steps"] = int(sums[2])
        if self.scaler.is_enabled():
            row["amp_skipped_steps"] = int(sums[3])
        if self.task.evaluate is not None and ((epoch + 1) % self.cfg.eval_period == 0
                                               or epoch + 1 == self.cfg.epochs):
            metrics = None
            if self.is_main or self.task.eval_on_all_ranks:
                metrics = self._evaluate(epoch)
            metrics = du.broadcast_object(metrics)
            row.update(metrics)
        row["time"] = round(time.time() - t0, 3)
        return row

    def _evaluate(self, epoch: int) -> dict:
        model = self.ema.ema if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                metrics = self.task.evaluate(model, epoch)
        finally:
            model.train(was_training)
        out = {}
        for k, v in dict(metrics or {}).items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"evaluator returned a non-numeric value for {k!r}: {v!r}") from None
        if self.task.select_metric not in out and not self.task.select_metric.startswith("train_"):
            raise ConfigError(f"evaluator returned {sorted(out)} without the selection metric "
                              f"{self.task.select_metric!r}")
        return out

    def _update_best(self, row: dict) -> bool:
        value = row.get(self.task.select_metric)
        if value is None or not math.isfinite(value):
            return False
        old = self.best["value"]
        better = old is None or (value >= old if self.task.select_mode == "max" else value <= old)
        if better:
            self.best.update(value=float(value), epoch=int(row["epoch"]))
        return better

    def _check_finite_weights(self, epoch: int) -> None:
        """A checkpoint never holds NaN / inf weights: stop before writing one."""
        parts = [("model", self.model.state_dict())]
        if self.ema is not None:
            parts.append(("EMA", self.ema.ema.state_dict()))
        for what, state in parts:
            floats = [(k, v) for k, v in state.items() if v.is_floating_point()]
            if not floats:
                continue
            ok = torch.stack([torch.isfinite(v).all() for _, v in floats])
            if not bool(ok.all()):
                key = floats[int((~ok).nonzero()[0])][0]
                kept = (f"{self.last_path} keeps the previous checkpoint" if self.last_path.exists()
                        else "nothing was saved")
                raise NonFiniteLossError(f"epoch {epoch + 1}: the {what} weights hold NaN/inf (e.g. {key}); "
                                         f"not saved, {kept}; lower --lr or pass --clip-grad")

    def _save(self, epoch: int, iter_in_epoch: int, stats: dict | None, improved: bool,
              rank_states: list | None = None) -> None:
        """Write best.pt (when improved) and then last.pt; `epoch` = epochs completed, `iter_in_epoch` = steps
        into the next. best.pt goes first: a stop between the two writes leaves the new best on disk, and a
        resume keeps it (see `_adopt_newer_best`). `rank_states` replaces the states captured now."""
        if rank_states is None:
            rank_states = du.all_gather_object({"rng": capture_rng_state(), "stats": stats})
        if not self.is_main:
            return
        self._check_finite_weights(epoch - 1 if iter_in_epoch == 0 else epoch)
        ckpt = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "identity": self.identity,
            "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch, "iter_in_epoch": iter_in_epoch, "global_step": self.global_step,
            "config": config_to_dict(self.cfg), "history": self.history, "best": dict(self.best),
            "torch_version": str(torch.__version__),
        }
        if improved:
            save_checkpoint(ckpt, self.best_path)
        save_checkpoint({**ckpt, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                         "rank_states": rank_states}, self.last_path)

    # ------------------------------------------------------------------ logs

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.history:
            columns += [k for k in row if k not in columns and k != "time"]
        columns.append("time")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(buf.getvalue(), self.run_dir / LOG_CSV)

    def _open_tensorboard(self) -> None:
        if not self.cfg.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self._warn("tb", "tensorboard is not installed; no TensorBoard logs")
            return
        # drop events an interrupted (or overwritten) run logged after the point this run starts from
        self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.start_epoch + 1)

    def _write_tensorboard(self, row: dict) -> None:
        if self._tb is None:
            return
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self._tb.add_scalar(k, v, row["epoch"])
        self._tb.flush()

    def _plot(self) -> None:
        if not self.cfg.plot:
            return
        try:
            from utils.plots import plot_training_curves
        except ImportError:
            self._warn("plot", "utils.plots.plot_training_curves is not available; skipping the curve plot")
            return
        try:
            plot_training_curves(self.run_dir / LOG_CSV, self.run_dir / CURVES_PNG)
        except Exception as err:  # noqa: BLE001 - a failed plot must not stop training
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._warn("plot_failed", f"training-curve plot failed ({reason})")

    def _row_text(self, row: dict, improved: bool) -> str:
        skip = {"epoch", "time"}
        body = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                         if k not in skip and not (k == "skipped_steps" and v == 0))
        mark = f"  * best {self.task.select_metric}" if improved else ""
        return f"epoch {row['epoch']}/{self.cfg.epochs}  {body}  ({row['time']:.1f} s){mark}"


def train(cfg: TrainConfig, task: Task) -> TrainResult:
    """Build a Trainer for `task` under `cfg` and run it to `cfg.epochs`."""
    return Trainer(cfg, task).fit()


__all__ = [
    "CURVES_PNG", "LOG_CSV", "NonFiniteLossError", "Task", "TrainResult", "Trainer", "epoch_fraction",
    "epoch_permutation", "epoch_weighted_draws", "seed_everything", "train",
]
