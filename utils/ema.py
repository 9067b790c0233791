"""Exponential moving average of a model's weights (the YOLOX / STMENet recipe)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from utils.distributed import unwrap_model


class ModelEMA:
    """Moving average of every floating-point entry of the state dict (parameters and buffers).

    After update n the average moves with decay `d(n) = decay * (1 - exp(-n / tau))`, so early updates
    follow the model closely: `ema = d * ema + (1 - d) * model`. Integer buffers (BatchNorm's
    `num_batches_tracked`) are copied. The average lives in `self.ema`, an eval-mode copy without
    gradients; evaluate and save that module.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        if not 0.0 <= decay < 1.0 or tau <= 0:
            raise ValueError(f"EMA needs 0 <= decay < 1 and tau > 0, got decay={decay}, tau={tau}")
        self.ema = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates

    def decay_at(self, updates: int) -> float:
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model`'s current weights (a DDP wrapper is unwrapped)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        source = unwrap_model(model).state_dict()
        for key, value in self.ema.state_dict().items():
            new = source[key].detach()
            if value.dtype.is_floating_point:
                value.mul_(d).add_(new.to(value.dtype), alpha=1.0 - d)
            else:
                value.copy_(new)

    def state_dict(self) -> dict:
        return {"weights": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


__all__ = ["ModelEMA"]
