"""Resuming a training run: which checkpoint, whether the run folder may be written, and restoring the
optimizer, scaler, counters, log, best record and RNG states from a last.pt.

`ResumeMixin` is part of utils.engine.Trainer: it uses the trainer's `cfg`, `task`, `info`, `is_main`,
`run_dir`, `last_path`, `best_path`, `ema`, `optimizer`, `scaler`, `sampler`, `log` and `_warn`.
"""

from __future__ import annotations

from pathlib import Path

from utils.checkpoint import load_checkpoint, load_state_strict, restore_rng_state
from utils.config import config_to_dict
from utils.errors import CheckpointError, ConfigError
from utils.train_log import LOG_CSV

# Options that may change between a run and its resumption without a warning.
_RUN_ONLY = {"out", "resume", "device", "workers", "progress", "tensorboard", "plot", "exist_ok", "epochs"}


class ResumeMixin:
    """The resume path, the run-folder check, and restoring a checkpoint's training state."""

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
