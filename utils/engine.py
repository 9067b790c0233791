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

Parts of `Trainer` live beside it: utils.train_task (Task, TrainResult), utils.train_signals (stopping,
loader workers), utils.train_step (the optimizer step), utils.train_resume, utils.train_log.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
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
    save_checkpoint,
)
from utils.config import TrainConfig, config_to_dict, plain_value
from utils.distributed import epoch_fraction, epoch_permutation, epoch_weighted_draws
from utils.ema import ModelEMA
from utils.errors import CheckpointError, ConfigError, Interrupted
from utils.optim import all_params_group, build_optimizer, schedule_from_config, set_lr
from utils.train_log import CURVES_PNG, LOG_CSV, LogMixin
from utils.train_resume import ResumeMixin
from utils.train_signals import SignalsMixin, _end_workers, _StopNow
from utils.train_step import StepMixin
from utils.train_task import NonFiniteLossError, Task, TrainResult


def amp_supported(device: torch.device) -> bool:
    """Whether mixed precision runs on `device` (CUDA only; tests patch this to exercise the AMP path
    on the CPU)."""
    return device.type == "cuda"


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------


class Trainer(SignalsMixin, ResumeMixin, LogMixin, StepMixin):
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

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

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



def train(cfg: TrainConfig, task: Task) -> TrainResult:
    """Build a Trainer for `task` under `cfg` and run it to `cfg.epochs`."""
    return Trainer(cfg, task).fit()


__all__ = [
    "CURVES_PNG", "LOG_CSV", "NonFiniteLossError", "Task", "TrainResult", "Trainer", "epoch_fraction",
    "epoch_permutation", "epoch_weighted_draws", "seed_everything", "train",
]
