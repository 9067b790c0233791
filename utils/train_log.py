"""The training run's logs: the per-epoch CSV, TensorBoard scalars, the curve plot and the console lines.

`LogMixin` is part of utils.engine.Trainer: it uses the trainer's `cfg`, `task`, `is_main`, `run_dir`,
`history`, `start_epoch`, `identity`, `use_amp`, `ema`, `info`, `device`, `_warned` and `_tb`.
"""

from __future__ import annotations

import csv
import io

from tqdm import tqdm

from utils.checkpoint import atomic_write_text

LOG_CSV = "train_log.csv"
CURVES_PNG = "training_curves.png"


class LogMixin:
    """Console messages, the banner, and the log files of the run folder (rank 0 writes them)."""

    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def _warn(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log(f"warning: {msg}")

    def _banner(self) -> str:
        amp = f"AMP {self.cfg.amp_dtype}" if self.use_amp else "AMP off"
        world = self.info.world_size
        ema = "on" if self.ema else "off"
        return (f"training {self.identity['name']} on {self.device} ({world} process(es), batch "
                f"{self.cfg.batch_size} x {world}, {amp}, EMA {ema}) -> {self.run_dir}")

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
