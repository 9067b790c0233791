"""Optimizers, parameter groups and learning-rate schedules of the two recipes.

A schedule is a function `lr_at(epoch, iteration) -> float` (epoch 0-based, iteration within the epoch).
Both authors' recipes set the lr once per epoch, so theirs ignore `iteration`.

- STMENet (YOLOX `yolox_warm_cos_lr` with the authors' arguments, evaluated at the epoch number e of
  E epochs): quadratic warm-up from `lr * warmup_lr_ratio` over W epochs, cosine to `min_lr`, `min_lr` for
  the last N epochs, with W = min(max(0.05 E, 1), 3) and N = min(max(0.05 E, 1), 15) unless given
  (E = 100: W = 3, N = 5):
      e <= W:          (lr - lr0) * (e / W)^2 + lr0,   lr0 = max(lr * warmup_lr_ratio, 1e-6)
      e >= E - N:      min_lr
      otherwise:       min_lr + (lr - min_lr) * (1 + cos(pi * (e - W) / (E - W - N))) / 2
- DeepPro: `max(lr * gamma^(e // step), min_lr)` (lr 1e-3, gamma 0.7, step 10, min 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from utils.errors import ConfigError

LRSchedule = Callable[[int, int], float]

# Modules whose `weight` gets weight decay in `conv_decay_groups`.
_DECAYED = (nn.modules.conv._ConvNd, nn.Linear)


# ----------------------------------------------------------------------------------------------------
# Parameter groups and optimizers
# ----------------------------------------------------------------------------------------------------


def conv_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of conv / linear layers with `weight_decay`; everything else (norm weights,
    biases, free scalars such as CSAM's gamma) without. Every trainable parameter appears once."""
    decay, seen = [], set()
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(module, _DECAYED) and isinstance(w, nn.Parameter) and w.requires_grad:
            if id(w) not in seen:
                seen.add(id(w))
                decay.append(w)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return [{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def all_params_group(model: nn.Module, weight_decay: float) -> list[dict]:
    """One group of every trainable parameter with `weight_decay` (coupled L2, as DeepPro's Adam)."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


def make_sgd(groups: Iterable, lr: float, momentum: float = 0.937, nesterov: bool = True,
             weight_decay: float = 0.0) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum; `weight_decay` applies to groups that do not set their own."""
    return torch.optim.SGD(list(groups), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


def make_adam(groups: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with coupled L2 weight decay (not AdamW), as DeepPro."""
    return torch.optim.Adam(list(groups), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def build_optimizer(name: str, groups: Iterable, lr: float, momentum: float = 0.937, nesterov: bool = True,
                    betas: tuple[float, float] = (0.9, 0.999),
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """`name` = "sgd" | "adam"."""
    key = name.lower()
    if key == "sgd":
        return make_sgd(groups, lr, momentum, nesterov, weight_decay)
    if key == "adam":
        return make_adam(groups, lr, betas, weight_decay=weight_decay)
    raise ConfigError(f"--optimizer {name!r}: expected sgd or adam")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr (times the group's optional `lr_scale`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------


def warmup_epochs_default(epochs: int) -> float:
    """The authors' warm-up length: min(max(0.05 * epochs, 1), 3)."""
    return min(max(0.05 * epochs, 1.0), 3.0)


def no_aug_epochs_default(epochs: int) -> float:
    """The authors' final min-lr phase: min(max(0.05 * epochs, 1), 15)."""
    return min(max(0.05 * epochs, 1.0), 15.0)


def warm_cos_lr(lr: float, epochs: int, min_lr_ratio: float = 0.01, warmup_epochs: float | None = None,
                warmup_lr_ratio: float = 0.1, no_aug_epochs: float | None = None) -> LRSchedule:
    """YOLOX warm-up + cosine, set once per epoch (formula in the module docstring)."""
    total = float(epochs)
    warm = warmup_epochs_default(epochs) if warmup_epochs is None else float(warmup_epochs)
    tail = no_aug_epochs_default(epochs) if no_aug_epochs is None else float(no_aug_epochs)
    min_lr = lr * min_lr_ratio
    lr0 = max(warmup_lr_ratio * lr, 1e-6)
    span = total - warm - tail

    def lr_at(epoch: int, iteration: int = 0) -> float:
        e = float(epoch)
        if e <= warm:
            return (lr - lr0) * (e / warm) ** 2 + lr0 if warm > 0 else lr
        if e >= total - tail or span <= 0:
            return min_lr
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * (e - warm) / span))

    return lr_at


def step_lr(lr: float, step_size: int = 10, gamma: float = 0.7, min_lr: float = 1e-5) -> LRSchedule:
    """`max(lr * gamma ** (epoch // step_size), min_lr)` (DeepPro)."""
    if step_size < 1:
        raise ConfigError(f"lr step size must be >= 1, got {step_size}")

    def lr_at(epoch: int, iteration: int = 0) -> float:
        return max(lr * gamma ** (epoch // step_size), min_lr)

    return lr_at


def constant_lr(lr: float) -> LRSchedule:
    def lr_at(epoch: int, iteration: int = 0) -> float:
        return lr

    return lr_at


def schedule_from_config(cfg) -> LRSchedule:
    """The schedule named by `cfg.schedule` ("warm_cos" | "step" | "constant") with `cfg`'s numbers."""
    if cfg.schedule == "warm_cos":
        return warm_cos_lr(cfg.lr, cfg.epochs, cfg.min_lr_ratio, cfg.warmup_epochs, cfg.warmup_lr_ratio,
                           cfg.no_aug_epochs)
    if cfg.schedule == "step":
        return step_lr(cfg.lr, cfg.step_size, cfg.step_gamma, cfg.lr * cfg.min_lr_ratio)
    if cfg.schedule == "constant":
        return constant_lr(cfg.lr)
    raise ConfigError(f"--schedule {cfg.schedule!r}: expected warm_cos, step or constant")


__all__ = [
    "LRSchedule", "all_params_group", "build_optimizer", "constant_lr", "conv_decay_groups", "make_adam",
    "make_sgd", "no_aug_epochs_default", "schedule_from_config", "set_lr", "step_lr", "warm_cos_lr",
    "warmup_epochs_default",
]
