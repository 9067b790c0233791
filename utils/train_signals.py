"""Stopping a training run on SIGINT / SIGTERM, and the DataLoader's worker processes (seeding, quiet exit).

`SignalsMixin` is part of utils.engine.Trainer: it uses the trainer's `cfg`, `task`, `info`, `device`,
`sampler`, `last_path`, `_stop`, `_interruptible`, `_sigchld`, `_child_pending` and `_save`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from functools import partial

import torch
from torch.utils.data import DataLoader

from utils import distributed as du
from utils.distributed import SeededItems, seed_worker
from utils.errors import Interrupted


class _StopNow(KeyboardInterrupt):
    """Raised by the signal handler where stopping at once is safe (or at a second signal: `forced`)."""

    def __init__(self, signum: int, forced: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.forced = signum, forced


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
    # Then torch's own shutdown: it closes the index queues without waiting for their feeder threads, so
    # the interpreter's exit does not hang joining a feeder whose worker is gone.
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        with contextlib.suppress(Exception):
            shutdown()


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


class SignalsMixin:
    """Signal handling, the safe points where a run may stop, and the epoch's DataLoader."""

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._signal_pid:  # a loader worker forked before its worker_init ran: it has
            os._exit(0)  # no work to keep, and a traceback from the fork bootstrap helps nobody
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
        self._signal_pid = os.getpid()
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

