"""One training step: batches to the device, the forward / loss / backward / optimizer step with its
non-finite and AMP handling, and the BatchNorm batch-size guard.

`StepMixin` is part of utils.engine.Trainer: it uses the trainer's `cfg`, `task`, `info`, `device`, `model`,
`ddp_model`, `optimizer`, `scaler`, `ema`, `sampler`, `use_amp`, `amp_dtype` and `_hooks`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial

import torch
import torch.nn as nn

from utils import distributed as du
from utils.errors import ConfigError
from utils.train_task import NonFiniteLossError


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


class StepMixin:
    """The optimizer step and the checks around it."""

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
