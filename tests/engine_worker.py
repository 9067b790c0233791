"""A tiny training job for the engine tests (run as a script, also under torchrun).

The model has BatchNorm (buffers for the EMA) and dropout, the dataset adds random noise per item (numpy
and torch RNGs), so exact resume needs every RNG state and the per-item seeding. `--kill-at E:I`
SIGKILLs the process at iteration I (1-based) of epoch E (1-based), before that step's loss is
computed; `--kill-at E:I:TERM` (or INT, ...) sends that signal instead. `--item-delay S` makes every item
take S seconds to load (a slow loader, to signal the job while it waits for data); `--bad-item I` makes
item I raise a DataError (as a corrupt file would). `--dump-dir D` makes every rank save its final
weights to D/rank<R>.pt. Run as a script, errors and interrupts end through utils.cli.run_main.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import run_main  # noqa: E402
from utils.config import TrainConfig, option, parse_config  # noqa: E402
from utils.engine import Task, train  # noqa: E402
from utils.errors import DataError  # noqa: E402
from utils.optim import conv_decay_groups  # noqa: E402

N_ITEMS, N_FEATURES = 48, 8


def quick_config(tmp: Path, **kw) -> TrainConfig:
    """A fast, quiet CPU TrainConfig writing to tmp/run (constant lr, no plots or TensorBoard)."""
    base = dict(out=str(Path(tmp) / "run"), epochs=4, batch_size=8, lr=0.05, schedule="constant", workers=0,
                device="cpu", progress=False, tensorboard=False, plot=False, seed=1, eval_period=1)
    base.update(kw)
    return TrainConfig(**base)


class NoisyRegression(Dataset):
    """Item i: (x_i + noise [8], y_i [1]); the noise comes from the global numpy and torch RNGs."""

    def __init__(self, n: int = N_ITEMS, seed: int = 0, delay: float = 0.0, bad_item: int = -1):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, N_FEATURES, generator=g)
        w = torch.randn(N_FEATURES, 1, generator=g)
        self.y = self.x @ w + 0.1
        self.delay, self.bad_item = delay, bad_item

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.delay:
            time.sleep(self.delay)
        if i == self.bad_item:
            raise DataError(f"items/{i}.png: cannot read image (truncated file)")
        noise = torch.from_numpy(np.random.randn(N_FEATURES).astype(np.float32)) * 0.01
        noise = noise + 0.01 * torch.rand(N_FEATURES)
        return self.x[i] + noise, self.y[i]


def tiny_model() -> nn.Module:
    """[B, 8] -> [B, 1]."""
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(16, 1))


def mse_loss(outputs: torch.Tensor, targets: torch.Tensor):
    loss = torch.mean((outputs - targets) ** 2)
    return loss, {"mse": loss.detach(), "l1": torch.mean((outputs - targets).abs()).detach()}


class CountingSGD(torch.optim.SGD):
    """SGD that appends 1 to `self.calls` (a list given to the constructor) at every step it takes."""

    def __init__(self, params, calls: list, **kwargs):
        super().__init__(params, **kwargs)
        self.calls = calls

    def step(self, closure=None):
        self.calls.append(1)
        return super().step(closure)


def make_evaluator(dataset: NoisyRegression):
    def evaluate(model: nn.Module, epoch: int) -> dict[str, float]:
        out = model(dataset.x)
        return {"val_loss": float(torch.mean((out - dataset.y) ** 2))}

    return evaluate


def make_task(**kw) -> Task:
    """The engine Task of the tiny regression problem (keyword arguments replace its fields)."""
    ds = NoisyRegression()
    base = dict(model=tiny_model, model_name="tiny", model_kwargs={"width": 16}, loss_fn=mse_loss,
                train_dataset=ds, evaluate=make_evaluator(ds), select_metric="val_loss", select_mode="min")
    base.update(kw)
    return Task(**base)


@dataclass
class WorkerConfig(TrainConfig):
    """Test-worker options"""

    kill_at: str = option("", "SIGKILL at EPOCH:ITER (1-based), or another signal: EPOCH:ITER:TERM")
    dump_dir: str = option("", "each rank saves its final weights here")
    item_delay: float = option(0.0, "seconds each item takes to load")
    bad_item: int = option(-1, "this dataset item raises a DataError")


class KillSwitch:
    """Wraps a loss function; sends a signal (SIGKILL by default) to the process at a chosen (epoch,
    iteration)."""

    def __init__(self, loss_fn, spec: str):
        self.loss_fn = loss_fn
        parts = spec.split(":") if spec else []
        self.target = (int(parts[0]), int(parts[1])) if parts else None
        self.signal = getattr(signal, f"SIG{parts[2]}") if len(parts) > 2 else signal.SIGKILL
        self.epoch, self.calls = 0, 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.calls = epoch + 1, 0

    def __call__(self, outputs, targets):
        self.calls += 1
        if self.target == (self.epoch, self.calls):
            os.kill(os.getpid(), self.signal)
        return self.loss_fn(outputs, targets)


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    defaults = WorkerConfig(epochs=3, batch_size=4, lr=0.05, workers=0, device="cpu", eval_period=1,
                            progress=False, tensorboard=False, plot=False, seed=7)
    cfg = parse_config(defaults, argv, "engine test worker")
    ds = NoisyRegression(delay=cfg.item_delay, bad_item=cfg.bad_item)
    kill = KillSwitch(mse_loss, cfg.kill_at)
    task = Task(model=tiny_model, model_name="tiny", model_kwargs={"width": 16}, loss_fn=kill,
                train_dataset=ds, param_groups=lambda m: conv_decay_groups(m, cfg.weight_decay),
                evaluate=make_evaluator(ds), select_metric="val_loss", select_mode="min",
                on_epoch_start=kill.on_epoch_start)
    result = train(cfg, task)
    if cfg.dump_dir:
        rank = int(os.environ.get("RANK", "0"))
        Path(cfg.dump_dir).mkdir(parents=True, exist_ok=True)
        torch.save({"model": result.model.state_dict(), "ema": result.ema_model.state_dict()},
                   Path(cfg.dump_dir) / f"rank{rank}.pt")
    print(f"done: best {result.best_value} at epoch {result.best_epoch}")


if __name__ == "__main__":
    run_main(main)
