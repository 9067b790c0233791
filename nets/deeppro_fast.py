"""DeepPro / DeepPro-Plus rewrites for the fast inference path (`nets.fast.optimize_for_inference`).

Registered on import; `nets.deeppro` names this module in `FAST_REWRITES`, so the fast path imports it for
any model containing DeepPro layers.

- A residual block (`FastResBlock`) adds its shortcut inside its last convolution (oneDNN's fused sum);
  where TPro follows, its 1x1 convolutions become matrix products accumulated into a channels-first
  buffer, the layout TPro reads.
- TPro (`FastTPro`) is one batched matrix product over time per channel (1/sqrt(T) and its BN folded in)
  instead of permutes, chunks and one Linear per head; its 1x1 mix writes channels-last for what follows.
- DeepPro (`FastDeepPro`) runs in horizontal bands on the CPU: its convolutions are temporal or 1x1, so a
  band of rows runs the stem and the three branches alone and its 16/32-channel maps stay in cache.

Pooling and upsampling run the original operations, so outputs match the eager model to float rounding.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import deeppro
from nets.fast import FoldedConv, conv_bn_act, pointwise_conv, register_rewrite, rewrite_children

__all__ = ["FastDeepPro", "FastResBlock", "FastTPro"]


class FastResBlock(nn.Module):
    """DeepPro residual block with BN folded: `relu(conv3(conv2(conv1(x))) + skip(x))`, the shortcut added
    inside conv3. `[B, Cin, T, H, W] -> [B, Cout, T, H, W]`. With `channels_first_output` (set when TPro
    follows) conv3 and the shortcut are matrix products accumulated into one channels-first buffer."""

    def __init__(self, block: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.conv1 = FoldedConv(block.conv1, block.bn1, block.relu, channels_last)
        self.conv2 = FoldedConv(block.conv2, block.bn2, block.relu, channels_last)
        self.conv3 = FoldedConv(block.conv3, block.bn3, block.relu, channels_last)
        self.skip = FoldedConv(block.skip.conv, block.skip.bn, None, channels_last)
        self.channels_first_output = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.conv1(x))
        if not self.channels_first_output:
            return self.conv3(h, residual=self.skip(x))
        out = pointwise_conv(h, self.conv3.weight.flatten(1), self.conv3.bias + self.skip.bias, False)
        return pointwise_conv(x, self.skip.weight.flatten(1), None, False, out=out).relu_()


class FastTPro(nn.Module):
    """TPro as one batched product over time per channel (`[T, T] @ [T, H*W]`), with 1/sqrt(T) and the BN
    folded into it, then ReLU and the folded 1x1x1 mix. `[B, C, T, H, W] -> [B, C, T, H, W]`."""

    def __init__(self, tpro: nn.Module, channels_last: bool) -> None:
        super().__init__()
        c, t = tpro.bn.num_features, tpro.seqlen
        per_head = c // tpro.num_heads
        w = torch.stack([h.weight.detach().double() for h in tpro.heads]).repeat_interleave(per_head, 0)
        b = torch.stack([h.bias.detach().double() for h in tpro.heads]).repeat_interleave(per_head, 0)
        bn, dtype = tpro.bn, tpro.heads[0].weight.dtype
        scale = torch.rsqrt(bn.running_var.double() + bn.eps) * bn.weight.double()
        shift = bn.bias.double() - bn.running_mean.double() * scale
        self.weight = nn.Parameter((w * (scale / math.sqrt(t)).view(c, 1, 1)).to(dtype), requires_grad=False)
        self.bias = nn.Parameter((b * scale.view(c, 1) + shift.view(c, 1)).unsqueeze(-1).to(dtype),
                                 requires_grad=False)
        self.mix = FoldedConv(tpro.mix.conv, tpro.mix.bn, tpro.mix.act, channels_last)
        if channels_last:  # read the channels-first product, write channels-last for the next convolution
            self.mix.gemm = "channels_last"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape[:3]
        if t != self.weight.shape[-1]:
            raise ValueError(f"TPro was built for {self.weight.shape[-1]} frames, got {t}")
        profiles = x.contiguous().view(b * c, t, -1)
        weight, bias = self.weight, self.bias
        if b > 1:
            weight, bias = weight.repeat(b, 1, 1), bias.repeat(b, 1, 1)
        out = torch.baddbmm(bias, weight, profiles).relu_()
        return self.mix(out.view(x.shape))


class FastDeepPro(nn.Module):
    """DeepPro evaluated on the CPU in bands of about `tile_pixels` pixels (rows in multiples of 4).

    Up to the three 8-channel branch outputs every layer acts on single pixels over time or pools 2x2 cells,
    so a band runs the stem and the three branches alone and its 16- and 32-channel maps stay in cache and
    out of fresh (page-faulting) allocations; several threads take whole bands. Upsampling, fusion and the
    head then run on whole frames. On other devices, or with `tile_pixels=0`, the clip runs at once.
    Inputs, outputs and errors as DeepPro.
    """

    def __init__(self, model: nn.Module, tile_pixels: int) -> None:
        super().__init__()
        self.seqlen = model.seqlen
        self.stem, self.branches, self.fuse, self.head = model.stem, model.branches, model.fuse, model.head
        self.tile_pixels = tile_pixels
        self.head.gemm = "channels_first"
        for branch in self.branches:
            branch.block2.channels_first_output = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, 1, T, H, W] -> feats [B, 8, T, H, W]`."""
        if x.dim() != 5 or x.shape[1] != 1 or x.shape[2] != self.seqlen:
            raise ValueError(f"DeepPro expects a clip [B, 1, {self.seqlen}, H, W] (T must equal "
                             f"seqlen={self.seqlen}), got {list(x.shape)}")
        b, _, t, h, w = x.shape
        if min(h, w) < 4:
            raise ValueError(f"DeepPro pools twice by 2: frames must be at least 4x4, got {h}x{w}")
        whole = x.device.type != "cpu" or not self.tile_pixels or torch.compiler.is_compiling()
        rows = h if whole else max(4, self.tile_pixels // w // 4 * 4)
        if rows >= h:
            stem = self.stem(x)
            outs = [branch(stem) for branch in self.branches]
        else:
            outs = [x.new_empty(b, branch.proj.weight.shape[0], t, h // s, w // s)
                    for branch, s in zip(self.branches, (1, 2, 4))]
            self._run_bands(x, outs, rows)
        return self._fuse(outs, h, w)

    def _band(self, x: torch.Tensor, outs: list[torch.Tensor], i: int, r0: int, rows: int) -> None:
        """Stem and branches on rows [r0, r0 + rows) of clip i, written into the branch maps `outs`."""
        band = self.stem(x[i: i + 1, :, :, r0: r0 + rows])
        n = band.shape[3]
        for branch, out, s in zip(self.branches, outs, (1, 2, 4)):
            if n // s:  # the last band may be too short for the pooled branches
                out[i: i + 1, :, :, r0 // s: r0 // s + n // s] = branch(band)

    def _run_bands(self, x: torch.Tensor, outs: list[torch.Tensor], rows: int) -> None:
        """All bands. With N > 1 intra-op threads the bands go to N worker threads with one intra-op thread
        each: a band is too small to split well, and a busy core then delays only its own bands instead of
        every operation's barrier. The caller's thread count is restored afterwards."""
        jobs = [(i, r0) for i in range(x.shape[0]) for r0 in range(0, x.shape[3], rows)]
        threads = torch.get_num_threads()
        if threads == 1 or len(jobs) == 1:
            for i, r0 in jobs:
                self._band(x, outs, i, r0, rows)
            return
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def work(job: tuple[int, int]) -> None:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                self._band(x, outs, *job, rows)

        try:
            with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                list(pool.map(work, jobs))
        finally:
            torch.set_num_threads(threads)

    def _fuse(self, outs: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
        """`fuse(cat[y0, up(y1), up(y2)])` without the concatenation: the 1x1 fusion is linear and so is the
        bilinear upsampling, so the coarse maps are mixed at their own resolution and then upsampled."""
        parts = self.fuse.weight.flatten(1).split([y.shape[1] for y in outs], dim=1)
        total = pointwise_conv(outs[0], parts[0], self.fuse.bias, False)
        for y, part in zip(outs[1:], parts[1:]):
            z = pointwise_conv(y, part, None, False)
            b, c, t, hy, wy = z.shape
            up = F.interpolate(z.view(b, c * t, hy, wy), size=(h, w), mode="bilinear", align_corners=True)
            total.add_(up.view(b, c, t, h, w))
        return self.fuse._activate(total)

    def forward(self, x: torch.Tensor, return_feats: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """`x [B, 1, T, H, W] -> logits [B, T, H, W]` (and the features with `return_feats=True`)."""
        feats = self.forward_features(x)
        logits = self.head(feats).squeeze(1)
        return (logits, feats) if return_feats else logits


register_rewrite(deeppro.ConvBNAct)(conv_bn_act)
register_rewrite(deeppro.DiffResBlock)(lambda m, o: FastResBlock(m, o["channels_last"]))
register_rewrite(deeppro.TPro)(lambda m, o: FastTPro(m, o["channels_last"]))
register_rewrite(deeppro.DeepPro)(lambda m, o: FastDeepPro(rewrite_children(m, o), o["tile_pixels"]))


@register_rewrite(deeppro.DeepProPlus)
def _deeppro_plus(model: nn.Module, options: dict) -> nn.Module:
    """DeepPro-Plus keeps its forward; its last block writes channels-first for TPro and its head is a
    matrix product."""
    model = rewrite_children(model, options)
    model.block2.channels_first_output = True
    model.head.gemm = "channels_first"
    return model
