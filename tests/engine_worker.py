"""A tiny training job for the engine tests (run as a script, also under torchrun).

The model has BatchNorm (buffers for the EMA) and dropout, the dataset adds random noise per item (numpy
and torch RNGs), so exact resume needs every RNG state and the per-item seeding. `--kill-at E:I`
SIGKILLs the process at iteration I (1-based) of epoch E (1-based), before that step's loss is
computed. `--dump-dir D` makes every rank save its final weights to D/rank<R>.pt.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.config import TrainConfig, option, parse_config  # noqa: E402
from utils.engine import Task, train  # noqa: E402
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

    def __init__(self, n: int = N_ITEMS, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, N_FEATURES, generator=g)
        w = torch.randn(N_FEATURES, 1, generator=g)
        self.y = self.x @ w + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
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


def make_evaluator(dataset: NoisyRegression):
    def evaluate(model: nn.Module, epoch: int) -> dict[str, float]:
        out = model(dataset.x)
        return {"val_loss": float(torch.mean((out - dataset.y) ** 2))}

    return evaluate


@dataclass
class WorkerConfig(TrainConfig):
    """Test-worker options"""

    kill_at: str = option("", "SIGKILL at EPOCH:ITER (1-based)")
    dump_dir: str = option("", "each rank saves its final weights here")


class KillSwitch:
    """Wraps a loss function; SIGKILLs the process at a chosen (epoch, iteration)."""

    def __init__(self, loss_fn, spec: str):
        self.loss_fn = loss_fn
        self.target = tuple(int(v) for v in spec.split(":")) if spec else None
        self.epoch, self.calls = 0, 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.calls = epoch + 1, 0

    def __call__(self, outputs, targets):
        self.calls += 1
        if self.target == (self.epoch, self.calls):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.loss_fn(outputs, targets)


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    defaults = WorkerConfig(epochs=3, batch_size=4, lr=0.05, workers=0, device="cpu", eval_period=1,
                            progress=False, tensorboard=False, plot=False, seed=7)
    cfg = parse_config(defaults, argv, "engine test worker")
    ds = NoisyRegression()
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
    main()
