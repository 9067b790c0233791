"""DeepPro / DeepPro-Plus rewrites for the fast inference path (`nets.fast.optimize_for_inference`).

Registered on import; `nets.deeppro` names this module in `FAST_REWRITES`, so the fast path imports it for
any model containing DeepPro layers.

- A residual block (`FastResBlock`) adds its shortcut inside its last convolution (oneDNN's fused sum).
- TPro (`FastTPro`) is one batched matrix product over time per channel (1/sqrt(T) and its BN folded in)
  instead of permutes, chunks and one Linear per head.
- The last block, TPro, the projection (and DeepPro's slice of the fusion) run as one `_Chain`: the
  block's 1x1 convolutions become matrix products into a channels-first buffer (the layout TPro reads),
  every big map is written into the memory of one that is dead by then instead of into fresh memory
  (which the CPU page-faults in on first touch), and each `relu(z + b)` is one pass, `max(z, -b)`, with
  `b` carried into the next bias.
- DeepPro (`FastDeepPro`) runs in tiles on the CPU, each scale on tiles of its own resolution: its
  convolutions are temporal or 1x1, so a tile runs alone (2x2 pools as elementwise maxima) and its
  16/32-channel maps stay in cache; the fusion and head run per full-resolution tile, the coarse maps
  upsampled into it as matrix products.

Outputs match the eager model to float rounding (about 1e-7 in float32).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import deeppro
from nets.fast import FoldedConv, as_rows, conv_bn_act, register_rewrite, rewrite_children

__all__ = ["FastDeepPro", "FastDeepProPlus", "FastResBlock", "FastTPro", "FramePool2x2"]


def _dense_view(buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A dead tensor's memory (any layout, at least as many elements) as a standard-layout tensor of
    `shape`: big products write into it instead of fresh memory, which the CPU page-faults in on first
    touch."""
    return buffer.as_strided(shape, torch.empty(shape, device="meta").stride(), buffer.storage_offset())


def _products(weight: torch.Tensor, x: torch.Tensor, out: torch.Tensor, accumulate: bool = False) -> None:
    """`out[i] (+)= weight @ x[i]` per sample for matrices `x [B, K, N]`, `out [B, M, N]`, in `out`'s dtype
    (under autocast the layers' outputs come in mixed precisions)."""
    weight, x = weight.to(out.dtype), x.to(out.dtype)
    for i in range(x.shape[0]):
        if accumulate:
            out[i].addmm_(weight, x[i])
        else:
            torch.mm(weight, x[i], out=out[i])


class FastResBlock(nn.Module):
    """DeepPro residual block with BN folded: `relu(conv3(conv2(conv1(x))) + skip(x))`, the shortcut added
    inside conv3. `[B, Cin, T, H, W] -> [B, Cout, T, H, W]`. (Where TPro follows, `_Chain` runs conv3 and
    the shortcut itself.)"""

    def __init__(self, block: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.conv1 = FoldedConv(block.conv1, block.bn1, block.relu, channels_last)
        self.conv2 = FoldedConv(block.conv2, block.bn2, block.relu, channels_last)
        self.conv3 = FoldedConv(block.conv3, block.bn3, block.relu, channels_last)
        self.skip = FoldedConv(block.skip.conv, block.skip.bn, None, channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.conv1(x))
        return self.conv3(h, residual=self.skip(x), overwrite_residual=True)


class FastTPro(nn.Module):
    """TPro as one batched product over time per channel (`[T, T] @ [T, H*W]`), with 1/sqrt(T) and the BN
    folded into it, then ReLU and the folded 1x1x1 mix as a channels-first matrix product.
    `[B, C, T, H, W] -> [B, C, T, H, W]`, channels-first in and out."""

    def __init__(self, tpro: nn.Module) -> None:
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
        self.mix = FoldedConv(tpro.mix.conv, tpro.mix.bn, tpro.mix.act, channels_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape[:3]
        if t != self.weight.shape[-1]:
            raise ValueError(f"TPro was built for {self.weight.shape[-1]} frames, got {t}")
        x = x.contiguous()
        profiles = x.view(b, c, t, -1)
        mixed = torch.empty_like(profiles)
        weight = self.weight.to(x.dtype)
        for i in range(b):
            torch.bmm(weight, profiles[i], out=mixed[i]).add_(self.bias).relu_()
        out = torch.empty_like(x)
        flat = out.view(b, c, -1)
        _products(self.mix.weight.flatten(1), mixed.view(b, c, -1), flat)
        flat.add_(self.mix.bias.view(-1, 1))
        return self.mix._activate(out)


def _interpolation_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """`[n_out, n_in]`: 1-D linear interpolation with `align_corners=True`, the weights computed as PyTorch's
    bilinear kernel computes them (float32 source positions), two per row."""
    scale = torch.tensor(float(n_in - 1), device=like.device) / max(n_out - 1, 1)
    pos = scale * torch.arange(n_out, dtype=torch.float32, device=like.device)
    i0 = pos.long().clamp(max=n_in - 1)
    lam = (pos - i0).clamp(0, 1)
    rows = torch.arange(n_out, device=like.device)
    out = torch.zeros(n_out, n_in, device=like.device)
    out.index_put_((rows, i0), 1 - lam, accumulate=True)
    out.index_put_((rows, (i0 + 1).clamp(max=n_in - 1)), lam, accumulate=True)
    return out.to(like.dtype)


_DENSE_UPSAMPLING = 160  # largest h + w (multiply-adds per output value) upsampled by matrix products


def _add_upsampled(total: torch.Tensor, z: torch.Tensor, along_w: torch.Tensor | None = None,
                   along_h: torch.Tensor | None = None) -> None:
    """`total [N, H, W] += bilinear(z [N, h, w] -> H x W, align_corners=True)`. Small maps (h + w up to
    `_DENSE_UPSAMPLING`) as `A_H @ (z @ A_W^T)`: one product along the width, one batched product along the
    height accumulated into `total` (the dense matrices `A_W [W, w]`, `A_H [H, h]` are built when not given;
    they cost h + w multiply-adds per output value); larger ones with `F.interpolate`."""
    n, h, w = z.shape
    height, width = total.shape[1:]
    if h + w > _DENSE_UPSAMPLING:
        total.add_(F.interpolate(z[None], size=(height, width), mode="bilinear", align_corners=True)[0])
        return
    along_w = _interpolation_matrix(w, width, total) if along_w is None else along_w
    along_h = _interpolation_matrix(h, height, total) if along_h is None else along_h
    with torch.autocast(total.device.type, enabled=False):  # accumulated in `total`'s dtype
        rows = torch.mm(z.reshape(n * h, w).to(total.dtype), along_w.t()).view(n, h, width)
        total.baddbmm_(along_h.expand(n, height, h), rows)


class FramePool2x2(nn.Module):
    """`nn.MaxPool3d((1, 2, 2))` as two elementwise maxima of strided views (no indices computed; about 3x
    faster on channels-last maps). `[B, C, T, H, W] -> [B, C, T, H // 2, W // 2]`, same values."""

    @staticmethod
    def matches(pool: nn.Module) -> bool:
        """Whether `pool` is a max pool this module replaces exactly."""
        def triple(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3
        return (isinstance(pool, nn.MaxPool3d) and triple(pool.kernel_size) == (1, 2, 2)
                and triple(pool.stride) == (1, 2, 2) and triple(pool.padding) == (0, 0, 0)
                and triple(pool.dilation) == (1, 1, 1) and not pool.ceil_mode and not pool.return_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :h, :w]
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _linear_into(memory: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bias-free 1x1x1 convolution `[B, Cin, *S] -> [B, Cout, *S]` (`weight [Cout, Cin]`, channels-first in
    and out) written into the memory of the dead tensor `memory` where it is large enough."""
    shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    fits = memory.dtype == x.dtype and memory.numel() >= math.prod(shape)
    out = _dense_view(memory, shape) if fits else x.new_empty(shape)
    _products(weight, x.reshape(shape[0], x.shape[1], -1), out.view(shape[0], shape[1], -1))
    return out


class _Chain(nn.Module):
    """`mix(proj(tpro(block(x))))` for a residual block followed by TPro and a 1x1x1 projection with ReLU
    (and optionally the 1x1x1 product `mix = (weight, bias)`), channels-first from the block's last
    product on. `[B, Cin, T, H, W] -> [B, 8, T, H, W]`.

    Every `relu(z + b)` between two linear maps runs as `max(z, -b)`, and the `b` goes into the next map's
    bias: one pass over the map instead of two (the biases after TPro vary with the time step, so they are
    `[C, T]`). Each big intermediate is written into the memory of one that is dead by then."""

    def __init__(self, block: FastResBlock, tpro: FastTPro, proj: FoldedConv,
                 mix: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> None:
        super().__init__()
        for act in (tpro.mix.act, proj.act):
            if not isinstance(act, nn.ReLU):
                raise ValueError(f"_Chain needs ReLU activations, got {act}")
        self.parts = (block, tpro, proj)  # not submodules: their weights stay where they are
        d = torch.float64
        shift = (block.conv3.bias + block.skip.bias).to(d)  # [C]
        floors = [-shift.view(-1, 1)]
        shift = tpro.bias.squeeze(-1).to(d) + shift.view(-1, 1) * tpro.weight.to(d).sum(-1)  # [C, T]
        floors.append(-shift)
        shift = tpro.mix.bias.to(d).view(-1, 1) + tpro.mix.weight.flatten(1).to(d) @ shift
        floors.append(-shift)
        shift = proj.bias.to(d).view(-1, 1) + proj.weight.flatten(1).to(d) @ shift  # [8, T]
        floors.append(-shift)
        self.register_buffer("mix", None if mix is None else mix[0].detach().clone(), persistent=False)
        if mix is not None:
            shift = mix[0].to(d) @ shift + (0 if mix[1] is None else mix[1].to(d).view(-1, 1))
        dtype = proj.weight.dtype
        for i, floor in enumerate(floors):
            self.register_buffer(f"floor{i}", floor.unsqueeze(-1).to(dtype), persistent=False)
        self.register_buffer("shift", shift.unsqueeze(-1).to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block, tpro, proj = self.parts
        first = block.conv1(x)
        h = block.conv2(first)
        b, c, t = h.shape[:3]
        if t != tpro.weight.shape[-1]:
            raise ValueError(f"TPro was built for {tpro.weight.shape[-1]} frames, got {t}")
        y = _dense_view(first, tuple(h.shape))  # conv1's output is dead
        maps = y.view(b, c, t, -1)
        flat = y.view(b, c, -1)
        _products(block.conv3.weight.flatten(1), as_rows(h).transpose(1, 2), flat)
        _products(block.skip.weight.flatten(1), as_rows(x).transpose(1, 2), flat, accumulate=True)
        torch.maximum(flat, self.floor0.to(y.dtype).view(-1, 1), out=flat)
        mixed = _dense_view(h, tuple(maps.shape))  # so is conv2's
        weight = tpro.weight.to(y.dtype)
        for i in range(b):
            torch.bmm(weight, maps[i], out=mixed[i])
        torch.maximum(mixed, self.floor1.to(y.dtype), out=mixed)
        _products(tpro.mix.weight.flatten(1), mixed.view(b, c, -1), flat)
        torch.maximum(maps, self.floor2.to(y.dtype), out=maps)
        out = _linear_into(h, proj.weight.flatten(1), y)
        view = out.view(b, out.shape[1], t, -1)
        torch.maximum(view, self.floor3.to(y.dtype), out=view)
        if self.mix is not None:
            out = _linear_into(y, self.mix, out)
            view = out.view(b, out.shape[1], t, -1)
        view.add_(self.shift.to(y.dtype))
        return out


class FastDeepPro(nn.Module):
    """DeepPro on the CPU in tiles of about `tile_pixels` pixels (bands of rows, split into columns on wide
    frames), scale by scale.

    Up to the three 8-channel branch outputs every layer acts on single pixels over time or pools 2x2 cells,
    so a tile runs alone and its 16- and 32-channel maps stay in cache. Four passes of tiles, each sized in
    the pixels of the scale it works at: the stem, 2x2-pooled (the input both coarse scales share); scale 1
    and the first block of scale 2, pooled again; the rest of scale 2; and, on full-resolution tiles, the
    stem again (cheaper than keeping it), scale 0, the coarse scales upsampled into it (matrix products on
    the few coarse rows and columns a tile reads), the fusion's activation and the head. A coarse scale run
    on full-resolution bands would run every layer on a quarter or a sixteenth of a band, where the per-call
    cost of the convolutions exceeds their work; and with the fusion done per tile, no full-resolution
    intermediate is ever allocated (the features only when asked for). The branch outputs are mixed by
    their slices of the 1x1 fusion before they are upsampled (both are linear).

    N intra-op threads become N worker threads with one intra-op thread each, taking the tiles of a pass:
    a tile is too small to split well, and a busy core then delays only its own jobs instead of every
    operation's barrier. On other devices, under torch.compile, with `tile_pixels=0` or on frames of at
    most `tile_pixels` pixels, the clip runs at once. Inputs, outputs and errors as DeepPro.
    """

    def __init__(self, model: nn.Module, tile_pixels: int) -> None:
        super().__init__()
        self.seqlen = model.seqlen
        self.stem, self.branches, self.fuse, self.head = model.stem, model.branches, model.fuse, model.head
        self.tile_pixels = tile_pixels
        self.head.gemm = "channels_first"
        c = self.branches[0].proj.weight.shape[0]
        fusion = self.fuse.weight.flatten(1)
        # Each scale ends in its slice of the 1x1 fusion (with the fusion's bias in scale 0).
        self.chains = nn.ModuleList(
            _Chain(branch.block2, branch.tpro, branch.proj,
                   (fusion[:, k * c: (k + 1) * c], self.fuse.bias if k == 0 else None))
            for k, branch in enumerate(self.branches))
        for branch in self.branches:
            for name in ("pool1", "pool2"):
                if FramePool2x2.matches(getattr(branch, name)):
                    setattr(branch, name, FramePool2x2())
        # The passes share the first pool of scales 1 and 2 (both 2x2 max pools of the stem).
        pools = [(type(b.pool1), type(b.pool2)) for b in self.branches]
        self.staged = pools[1:] == [(FramePool2x2, nn.Identity), (FramePool2x2, FramePool2x2)]

    def forward(self, x: torch.Tensor, return_feats: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """`x [B, 1, T, H, W] -> logits [B, T, H, W]` (and the features `[B, 8, T, H, W]` with
        `return_feats=True`)."""
        logits, feats = self._run(x, with_logits=True, return_feats=return_feats)
        return (logits, feats) if return_feats else logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, 1, T, H, W] -> feats [B, 8, T, H, W]`."""
        return self._run(x, with_logits=False)[1]

    def _run(self, x: torch.Tensor, with_logits: bool,
             return_feats: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if x.dim() != 5 or x.shape[1] != 1 or x.shape[2] != self.seqlen:
            raise ValueError(f"DeepPro expects a clip [B, 1, {self.seqlen}, H, W] (T must equal "
                             f"seqlen={self.seqlen}), got {list(x.shape)}")
        b, _, t, h, w = x.shape
        if min(h, w) < 4:
            raise ValueError(f"DeepPro pools twice by 2: frames must be at least 4x4, got {h}x{w}")
        whole = (x.device.type != "cpu" or not self.tile_pixels or torch.compiler.is_compiling()
                 or not self.staged or h * w <= self.tile_pixels)
        if whole:
            stem = self.stem(x)
            feats = self._fuse([self._branch(k, stem) for k in range(len(self.branches))])
            return (self.head(feats)[:, 0] if with_logits else None), feats
        logits = x.new_empty(b, t, h, w) if with_logits else None
        c = self.fuse.weight.shape[0]
        feats = None if with_logits and not return_feats else x.new_empty(b, c, t, h, w)
        # the convolutions' layout, so tiles are copied in and out without transposing
        like = {"dtype": x.dtype, "device": x.device, "memory_format": torch.channels_last_3d}
        pooled = torch.empty(b, self.stem.weight.shape[0], t, h // 2, w // 2, **like)
        halved = torch.empty(b, self.branches[2].block1.conv3.weight.shape[0], t, h // 4, w // 4, **like)
        coarse = [x.new_empty(b, c, t, h // s, w // s) for s in (2, 4)]
        upsampling = [(_Interpolation.of(z.shape[-2], h, x), _Interpolation.of(z.shape[-1], w, x))
                      for z in coarse]
        threads = torch.get_num_threads()
        full = _tiles(h, w, self.tile_pixels, threads, align=2, max_cols=_UPSAMPLED_COLS)
        _in_parallel(
            [partial(self._pass_stem, x, pooled, i, tile) for i in range(b) for tile in full],
            [partial(self._pass_scale1, pooled, coarse[0], halved, i, tile) for i in range(b)
             for tile in _tiles(h // 2, w // 2, self.tile_pixels, threads, align=2)],
            [partial(self._pass_scale2, halved, coarse[1], i, tile) for i in range(b)
             for tile in _tiles(h // 4, w // 4, self.tile_pixels, threads, align=1)],
            [partial(self._pass_scale0, x, coarse, upsampling, logits, feats, i, tile) for i in range(b)
             for tile in full],
        )
        return logits, feats

    def _pass_stem(self, x: torch.Tensor, pooled: torch.Tensor, i: int, tile: tuple) -> None:
        """Tile `(r0, r1, c0, c1)` of clip i (offsets even): the stem, 2x2-pooled into `pooled`."""
        r0, r1, c0, c1 = tile
        _place(pooled, i, tile, 2, self.branches[1].pool1(self.stem(x[i: i + 1, :, :, r0:r1, c0:c1])))

    def _pass_scale1(self, pooled: torch.Tensor, out: torch.Tensor, halved: torch.Tensor, i: int,
                     tile: tuple) -> None:
        """Tile of the pooled stem: scale 1 into `out`, the first block of scale 2 pooled into `halved`."""
        r0, r1, c0, c1 = tile
        p = pooled[i: i + 1, :, :, r0:r1, c0:c1]
        _place(out, i, tile, 1, self.chains[1](self.branches[1].block1(p)))
        _place(halved, i, tile, 2, self.branches[2].pool2(self.branches[2].block1(p)))

    def _pass_scale2(self, halved: torch.Tensor, out: torch.Tensor, i: int, tile: tuple) -> None:
        """Tile of the twice-pooled map: the rest of scale 2 into `out`."""
        r0, r1, c0, c1 = tile
        _place(out, i, tile, 1, self.chains[2](halved[i: i + 1, :, :, r0:r1, c0:c1]))

    def _pass_scale0(self, x: torch.Tensor, coarse: list[torch.Tensor], upsampling: list[tuple],
                     logits: torch.Tensor | None, feats: torch.Tensor | None, i: int, tile: tuple) -> None:
        """Tile of clip i at full resolution: the stem again (cheaper than keeping it), scale 0, the coarse
        scales (already mixed by their slices of the fusion) upsampled into it, the fusion's activation
        and the head, written into `logits` and `feats` (each optional)."""
        r0, r1, c0, c1 = tile
        stem = self.stem(x[i: i + 1, :, :, r0:r1, c0:c1])
        y = self.chains[0](self.branches[0].block1(stem))  # [1, 8, T, nr, nc], channels-first
        total = y.view(-1, r1 - r0, c1 - c0)
        for z, (along_h, along_w) in zip(coarse, upsampling):
            (h0, h1), (w0, w1) = along_h.window(r0, r1), along_w.window(c0, c1)
            part = z[i, :, :, h0:h1, w0:w1].reshape(-1, w1 - w0)  # [8 T (h1 - h0), w1 - w0]
            a_h, a_w = along_h.matrix[r0:r1, h0:h1], along_w.matrix[c0:c1, w0:w1]
            with torch.autocast(total.device.type, enabled=False):  # accumulated in `total`'s dtype
                rows = torch.mm(part.to(total.dtype), a_w.t().to(total.dtype))
                total.baddbmm_(a_h.to(total.dtype).expand(total.shape[0], -1, -1),
                               rows.view(total.shape[0], h1 - h0, c1 - c0))
        y = self.fuse._activate(y)
        if feats is not None:
            feats[i: i + 1, :, :, r0:r1, c0:c1] = y
        if logits is not None:
            logits[i, :, r0:r1, c0:c1] = self.head(y)[0, 0]

    def _branch(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Scale k on the stem's output, `[B, 8, T, H, W] -> [B, 8, T, H/s, W/s]`, mixed by its slice of the
        fusion (`self.chains`)."""
        branch = self.branches[k]
        return self.chains[k](branch.pool2(branch.block1(branch.pool1(x))))

    def _fuse(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """`feats = fuse(cat[y0, up(y1), up(y2)])` in `outs[0]`'s memory. The branch maps are already mixed
        by their slices of the 1x1 fusion (`_Chain`; it is linear and so is the upsampling), so the coarse
        maps are upsampled and added into the first one as two matrix products each (`_add_upsampled`)."""
        total = outs[0]
        b, c, _, h, w = total.shape
        sizes = [z.shape[-2:] for z in outs[1:]]
        matrices = [(None, None) if zh + zw > _DENSE_UPSAMPLING else
                    (_interpolation_matrix(zw, w, total), _interpolation_matrix(zh, h, total))
                    for zh, zw in sizes]
        for i in range(b):
            for j in range(c):
                for z, (along_w, along_h) in zip(outs[1:], matrices):
                    _add_upsampled(total[i, j], z[i, j], along_w, along_h)
        return self.fuse._activate(total)


_UPSAMPLED_COLS = 128  # widest full-resolution tile: the dense width products cost about cols / 2 per value


class _Interpolation:
    """Bilinear (align_corners=True) upsampling `n_in -> n_out` along one axis as its dense matrix
    `[n_out, n_in]` (`_interpolation_matrix`), with the input window that each output range reads.
    `_Interpolation.of(n_in, n_out, like)` keeps the most recent ones."""

    _recent: OrderedDict = OrderedDict()
    _lock = threading.Lock()

    def __init__(self, n_in: int, n_out: int, like: torch.Tensor) -> None:
        self.matrix = _interpolation_matrix(n_in, n_out, like)
        used = self.matrix != 0
        self.first = used.float().argmax(1).tolist()
        self.last = (n_in - 1 - used.flip(1).float().argmax(1)).tolist()

    @classmethod
    def of(cls, n_in: int, n_out: int, like: torch.Tensor) -> _Interpolation:
        key = (n_in, n_out, like.dtype, like.device)
        with cls._lock:
            found = cls._recent.get(key)
            if found is None:
                found = cls._recent[key] = cls(n_in, n_out, like)
                while len(cls._recent) > 16:
                    cls._recent.popitem(last=False)
            cls._recent.move_to_end(key)
        return found

    def window(self, start: int, stop: int) -> tuple[int, int]:
        """`(lo, hi)`: the inputs that outputs `start..stop-1` read."""
        return min(self.first[start:stop]), max(self.last[start:stop]) + 1


def _tiles(h: int, w: int, pixels: int, threads: int, align: int,
           max_cols: int | None = None) -> list[tuple[int, int, int, int]]:
    """`(r0, r1, c0, c1)` tiles covering an `h x w` map: bands of rows with about `pixels` pixels (at most
    an equal share of the map per thread, so every thread gets work), split into columns on maps wider
    than `max_cols` or than `pixels` allows; offsets multiples of `align`."""
    pixels = max(1, min(pixels, -(-h * w // threads)))
    width = min(w, max_cols or w)
    rows = min(h, max(align, pixels // width // align * align))
    cols = min(width, max(align, pixels // rows // align * align))
    return [(r0, min(r0 + rows, h), c0, min(c0 + cols, w))
            for r0 in range(0, h, rows) for c0 in range(0, w, cols)]


def _place(out: torch.Tensor, i: int, tile: tuple, scale: int, y: torch.Tensor) -> None:
    """Write a tile's result `y [1, C, T, h, w]` into `out [B, C, T, H, W]` at tile `(r0, r1, c0, c1)` of
    the map `scale` times finer (floored, as the pools floor)."""
    r0, c0 = tile[0] // scale, tile[2] // scale
    h, w = y.shape[-2:]
    if h and w:
        out[i: i + 1, :, :, r0: r0 + h, c0: c0 + w] = y


def _in_parallel(*phases: list) -> None:
    """Run the jobs (no-argument callables) of each phase, phase after phase, on N worker threads (N the
    intra-op thread count) with one intra-op thread each, in the caller's grad, inference and CPU autocast
    modes; the caller's thread count is restored afterwards. With N = 1 the jobs still run on a (fresh)
    worker: on the calling thread, glibc's main heap returns the tiles' freed maps to the system and page-
    faults them back in for the next tile (measured: 69k faults and 0.1 s of system time per 128x128 clip,
    against a few thousand on a worker)."""
    threads = torch.get_num_threads()
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
    amp, amp_dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def work(job) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                torch.autocast("cpu", dtype=amp_dtype, enabled=amp):
            job()

    try:
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for phase in phases:
                list(pool.map(work, phase))
    finally:
        torch.set_num_threads(threads)


register_rewrite(deeppro.ConvBNAct)(conv_bn_act)
register_rewrite(deeppro.DiffResBlock)(lambda m, o: FastResBlock(m, o["channels_last"]))
register_rewrite(deeppro.TPro)(lambda m, o: FastTPro(m))
register_rewrite(deeppro.DeepPro)(lambda m, o: FastDeepPro(rewrite_children(m, o), o["tile_pixels"]))


class FastDeepProPlus(nn.Module):
    """DeepPro-Plus on whole clips with its blocks, TPro and 1x1x1 layers rewritten; from the second block
    on the maps are channels-first and the big intermediates reuse dead ones' memory. Inputs, outputs and
    errors as DeepProPlus."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.seqlen = model.seqlen
        self.stem, self.block1, self.block2 = model.stem, model.block1, model.block2
        self.tpro, self.proj, self.head = model.tpro, model.proj, model.head
        self.chain = _Chain(self.block2, self.tpro, self.proj)
        self.head.gemm = "channels_first"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, 1, T, H, W] -> feats [B, 8, T, H, W]`."""
        deeppro.check_clip(x, self.seqlen, "DeepProPlus")
        return self.chain(self.block1(self.stem(x)))

    def forward(self, x: torch.Tensor, return_feats: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """`x [B, 1, T, H, W] -> logits [B, T, H, W]` (and the features with `return_feats=True`)."""
        feats = self.forward_features(x)
        logits = self.head(feats).squeeze(1)
        return (logits, feats) if return_feats else logits


register_rewrite(deeppro.DeepProPlus)(lambda m, o: FastDeepProPlus(rewrite_children(m, o)))
