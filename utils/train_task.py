"""The training engine's interface types: the `Task` a script supplies, the `TrainResult` it gets back, and
the error a non-finite loss, gradient or weight raises (utils.engine runs the task)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from utils.errors import ToolboxError


class NonFiniteLossError(ToolboxError):
    """The loss or the gradients became NaN or inf (and `skip_nonfinite` is off), or the weights did."""


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
