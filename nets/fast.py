"""Inference-only fast path for every registered model.

    >>> fast = optimize_for_inference(model)   # a new module; `model` is left untouched
    >>> logits = fast(x)                       # same outputs as `model.eval()(x)` within 1e-3 (float32)

`optimize_for_inference` deep-copies the model in eval mode and replaces layers by inference-only
equivalents, one small rewrite per module type (see `register_rewrite`):

- every convolution, with the BatchNorm and activation that follow it (`BaseConv`, `ConvBN`, `ConvBNAct`,
  `conv_bn_3d` sequences, plain convs), becomes one `FoldedConv`: BN folded into the weights and bias, the
  DeepPro difference-conv kernels built once instead of every forward, channels-last memory, and on the CPU
  one oneDNN call that applies bias, activation (and a residual sum) while writing the output;
- a DeepPro residual block adds its shortcut inside the last convolution; 1x1 convolutions become matrix
  products where the next layer wants the other memory layout (around TPro). The temporal (k, 1, 1)
  convolutions stay oneDNN convolutions: as one matrix product per time tap they measured 2x slower;
- TPro becomes one batched matrix product over time per channel (1/sqrt(T) and its BN folded in) instead
  of permutes, chunks and one Linear per head;
- DeepPro runs in horizontal bands on the CPU (`FastDeepPro`): its convolutions are temporal or 1x1, so a
  band of rows runs the stem and the three branches alone and its 16/32-channel maps stay in cache;
- STMENet's RepBlocks apply their first 1x1 conv, GELU and channel attention to the coarse temporal map
  before the nearest upsampling instead of after it (`FastSTMENet`), and CSAM works on channels-last rows.

Pooling, upsampling and concatenations run the original code, so outputs match the eager model to float
rounding (about 1e-7 in float32). The result is an `InferenceModel` that runs under
`torch.inference_mode()`; options add autocast (`amp`, reduced precision: outside the 1e-3 contract),
`torch.compile` and CUDA graphs (CUDA only; ignored on other devices).
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "FAST_MODES",
    "for_evaluation",
    "FastDeepPro",
    "FastCSAM",
    "FastRepBlock",
    "FastResBlock",
    "FastSTMENet",
    "FastTPro",
    "FoldedConv",
    "InferenceModel",
    "fold_batchnorm",
    "pointwise_conv",
    "optimize_for_inference",
    "register_rewrite",
]

Rewrite = Callable[[nn.Module, dict], "nn.Module | None"]
_PLAIN_ATTRIBUTES = ("stride", "num_frames", "seqlen", "variant", "num_classes", "clip_output")
_REWRITES: dict[type, Rewrite] = {}


def register_rewrite(*types: type) -> Callable[[Rewrite], Rewrite]:
    """Decorator: `fn(module, options) -> replacement` for modules of these types (and subclasses).
    Returning None keeps the module and rewrites its children instead."""

    def wrap(fn: Rewrite) -> Rewrite:
        for t in types:
            _REWRITES[t] = fn
        return fn

    return wrap


def _rewrite(module: nn.Module, options: dict) -> nn.Module:
    """The replacement of `module` (itself, with its children rewritten, when no rule applies)."""
    for cls in type(module).__mro__:
        if cls in _REWRITES:
            new = _REWRITES[cls](module, options)
            if new is not None:
                return new
            break
    for name, child in list(module.named_children()):
        module._modules[name] = _rewrite(child, options)
    return module


# ----------------------------------------------------------------------------------------------------------
# Convolution + BatchNorm + activation
# ----------------------------------------------------------------------------------------------------------
def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """`bn(conv(x; weight, bias))` in eval mode as one convolution: the folded `(weight, bias)`."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if bias is not None:
        shift = shift + bias * scale
    w = weight * scale.view(-1, *([1] * (weight.dim() - 1))).to(weight.dtype)
    return w.detach(), shift.detach().to(weight.dtype)


def _onednn_activation(act: nn.Module | None) -> tuple[str, list, str] | None:
    """The activation as oneDNN post-op arguments `(name, scalars, algorithm)`; None if it has none."""
    if act is None:
        return "none", [], ""
    if isinstance(act, nn.ReLU):
        return "relu", [], ""
    if isinstance(act, nn.SiLU):
        return "swish", [], ""
    if isinstance(act, nn.LeakyReLU):
        return "leaky_relu", [act.negative_slope], ""
    if isinstance(act, nn.GELU):
        return "gelu", [], act.approximate
    return None


def _onednn_ready(x: torch.Tensor) -> bool:
    """Whether the fused oneDNN convolution applies: float32 CPU tensors outside autocast, in eager mode
    (under torch.compile, inductor does its own fusion)."""
    return (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
        and x.dim() in (4, 5)
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


_ACTIVATIONS = (nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.GELU, nn.Identity)
_PACK_LOCK = threading.Lock()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """`x [B, C, *S]` as a matrix view `[B, N, C]` over its N = prod(S) positions (no copy when `x` is
    contiguous in the standard or the channels-last memory format)."""
    b, c = x.shape[:2]
    if not x.is_contiguous():
        last = x.movedim(1, -1)
        if last.is_contiguous():
            return last.view(b, -1, c)
        x = x.contiguous()
    return x.view(b, c, -1).transpose(1, 2)


def pointwise_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    channels_last: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """1x1 convolution `x [B, Cin, *S] -> [B, Cout, *S]` (`weight [Cout, Cin]`) as one matrix product per
    sample, written in the channels-last or channels-first memory format whatever the input's format (the
    product reads either layout in place). With `out` (a result of this function with the same layout),
    the product is added to it instead."""
    b, spatial, cout = x.shape[0], x.shape[2:], weight.shape[0]
    dtype = x.dtype if out is None else out.dtype  # autocast leaves layers in mixed precisions
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    rows = _rows(x).to(dtype)
    if out is None:
        mat = x.new_empty((b, rows.shape[1], cout) if channels_last else (b, cout, rows.shape[1]))
    else:
        mat = _rows(out) if channels_last else out.view(b, cout, -1)
    for i in range(b):
        a, m = (rows[i], weight.t()) if channels_last else (weight, rows[i].t())
        if out is not None:
            mat[i].addmm_(a, m)
        elif bias is None:
            torch.mm(a, m, out=mat[i])
        else:
            torch.addmm(bias if channels_last else bias.view(-1, 1), a, m, out=mat[i])
    if out is not None:
        return out
    return mat.view(b, *spatial, cout).movedim(-1, 1) if channels_last else mat.view(b, cout, *spatial)


class FoldedConv(nn.Module):
    """A convolution with the BatchNorm that follows it folded in, and its activation.

    `forward(x, residual=None)`: `act(conv(x) + residual)`, `x [B, Cin, *S] -> [B, Cout, *S']`, where the
    original computed `act(bn(conv(x)))` (plus `residual` before the activation). Difference convolutions
    contribute their effective kernel, computed once here. On the CPU (float32) one fused oneDNN call
    writes the result; elsewhere `F.conv2d` / `F.conv3d` followed by the in-place activation. With
    `channels_last`, inputs and outputs use the channels-last memory format. Setting `gemm` to
    "channels_first" or "channels_last" (1x1 kernels with stride 1 and no groups only) computes the
    convolution as a matrix product written in that format instead, which turns a layout change between
    two layers into a free by-product.
    """

    def __init__(
        self,
        conv: nn.modules.conv._ConvNd,
        bn: nn.modules.batchnorm._BatchNorm | None = None,
        act: nn.Module | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if conv.transposed or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FoldedConv supports zero-padded forward convolutions, got {conv}")
        effective = getattr(conv, "effective_weight", None)  # DeepPro difference convolutions
        weight = (effective() if callable(effective) else conv.weight).detach()
        bias = None if conv.bias is None else conv.bias.detach()
        if bn is not None:
            weight, bias = fold_batchnorm(weight, bias, bn)
        else:  # a snapshot: later changes to the source convolution must not leak in
            weight = weight if callable(effective) else weight.clone()
            bias = None if bias is None else bias.clone()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups = conv.groups
        if isinstance(act, nn.Identity):
            act = None
        if act is not None and hasattr(act, "inplace"):
            act = copy.copy(act)
            act.inplace = True
        self.act = act
        self.fused_act = _onednn_activation(act)
        self.channels_last = channels_last and weight.dim() in (4, 5)
        self.memory_format = torch.contiguous_format
        if self.channels_last:
            self.memory_format = torch.channels_last if weight.dim() == 4 else torch.channels_last_3d
        self.gemm: str | None = None
        self._packed: dict[tuple, torch.Tensor] = {}  # oneDNN-blocked weights by input shape

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_packed"] = {}  # opaque oneDNN tensors are rebuilt on demand, never copied or pickled
        return state

    def _onednn_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight reordered once into oneDNN's blocked layout for inputs of this shape (the reorder
        otherwise runs in every call, which dominates small feature maps)."""
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None:
            reorder = (torch._C._nn.mkldnn_reorder_conv3d_weight if x.dim() == 5
                       else torch._C._nn.mkldnn_reorder_conv2d_weight)
            try:
                packed = reorder(self.weight.detach().to_mkldnn(), self.padding, self.stride, self.dilation,
                                 self.groups, list(x.shape))
            except (RuntimeError, AttributeError):  # not supported here: oneDNN reorders per call
                packed = self.weight
            with _PACK_LOCK:  # DeepPro bands may run on several threads
                if len(self._packed) >= 8:
                    self._packed.clear()
                self._packed[key] = packed
        return packed

    def extra_repr(self) -> str:
        return (f"{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, channels_last={self.channels_last}, "
                f"gemm={self.gemm}")

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.gemm is not None:
            out = pointwise_conv(x, self.weight.flatten(1), self.bias, self.gemm == "channels_last")
            return self._activate(out if residual is None else out.add_(residual))
        x = x.contiguous(memory_format=self.memory_format)
        if residual is not None:
            residual = residual.contiguous(memory_format=self.memory_format)
        if self.fused_act is not None and _onednn_ready(x):
            args = (self._onednn_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups)
            if residual is not None and self.fused_act[0] == "relu":  # oneDNN fuses "add then ReLU"
                out = torch.ops.mkldnn._convolution_pointwise.binary(
                    x, residual, *args, "add", None, "relu", [], "")
            elif residual is None:
                out = torch.ops.mkldnn._convolution_pointwise(x, *args, *self.fused_act)
            else:
                out = torch.ops.mkldnn._convolution_pointwise(x, *args, "none", [], "")
                out = self._activate(out.add_(residual))
        else:
            conv = F.conv3d if self.weight.dim() == 5 else F.conv2d if self.weight.dim() == 4 else F.conv1d
            out = conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            out = self._activate(out if residual is None else out.add_(residual))
        return out.contiguous(memory_format=self.memory_format)

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act is None else self.act(x)


@register_rewrite(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _plain_conv(conv: nn.modules.conv._ConvNd, options: dict) -> nn.Module | None:
    if conv.transposed or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return FoldedConv(conv, channels_last=options["channels_last"])


@register_rewrite(nn.Sequential)
def _conv_bn_sequence(seq: nn.Sequential, options: dict) -> nn.Module | None:
    """`Sequential(conv, bn[, act])` -> one FoldedConv; other sequences keep their (rewritten) children."""
    mods = list(seq)
    if not 2 <= len(mods) <= 3 or not isinstance(mods[0], (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return None
    if not isinstance(mods[1], nn.modules.batchnorm._BatchNorm) or isinstance(mods[0].padding, str):
        return None
    if len(mods) == 3 and not isinstance(mods[2], _ACTIVATIONS):
        return None
    return FoldedConv(mods[0], mods[1], mods[2] if len(mods) == 3 else None, options["channels_last"])


def _conv_bn_act(module: nn.Module, options: dict) -> nn.Module:
    """Units with `conv`, `bn` and optional `act` attributes (BaseConv, ConvBN, ConvBNAct)."""
    return FoldedConv(module.conv, module.bn, getattr(module, "act", None), options["channels_last"])


# ----------------------------------------------------------------------------------------------------------
# DeepPro
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# STMENet
# ----------------------------------------------------------------------------------------------------------
class FastCSAM(nn.Module):
    """Channel self-attention computed on the channels-last rows `X^T [B, HW, C]` (no reshapes):
    `E = X X^T`, `A = softmax(rowmax(E) - E)`, `out = gamma * (A X) + X`. `[B, C, H, W] -> same`."""

    def __init__(self, csam: nn.Module) -> None:
        super().__init__()
        self.gamma = nn.Parameter(csam.gamma.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = _rows(x)  # [B, HW, C]
        energy = torch.bmm(rows.transpose(1, 2), rows)
        attention = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
        out = torch.bmm(rows, attention.transpose(1, 2)).view(b, h, w, c).permute(0, 3, 1, 2)
        return out.mul_(self.gamma).add_(x)


class FastRepBlock(nn.Module):
    """RepBlock fed with the coarse temporal map and the upsampling factor: its first 1x1 conv, the GELU
    and the channel attention act on single positions (the attention on average and max pools, which
    nearest upsampling leaves unchanged), so they run before the upsampling, on `scale**2` times fewer
    positions. `forward(x [B, C, h, w], scale) -> [B, C, h * scale, w * scale]`, equal to
    `RepBlock(up(x, scale))`."""

    def __init__(self, block: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.proj_gelu = FoldedConv(block.proj, None, block.act, channels_last)  # first use, GELU fused
        for name, child in list(block.named_children()):
            block._modules[name] = _rewrite(child, {"channels_last": channels_last, "tile_pixels": 0})
        self.block = block

    def forward(self, x: torch.Tensor, scale: int = 1) -> torch.Tensor:
        blk = self.block
        u = self.proj_gelu(x)
        u = blk.ca(u) * u
        if scale > 1:
            u = F.interpolate(u, scale_factor=scale, mode="nearest")
        s0 = blk.dw5x5(u)
        s = s0
        for k in blk.STRIPS:
            s = s + getattr(blk, f"dw{k}x1")(getattr(blk, f"dw1x{k}")(s0))
        return blk.proj(blk.proj(s) * u)


class FastSTMENet(nn.Module):
    """STMENet with each encoder refining the coarse temporal map before upsampling it (`FastRepBlock`).
    `x [B, 3, T, H, W] -> [B, 5 + num_classes, H/8, W/8]`, same checks and outputs as STMENet."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.check_input = model.check_input
        self.spatial, self.temporal, self.encoders = model.spatial, model.temporal, model.encoders
        self.fusion, self.head = model.fusion, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        spatial = self.spatial(x[:, :, -1])
        t = self.temporal(x)
        scales = []
        for enc, f in zip(self.encoders, spatial):
            temporal = enc.refine(t, f.shape[-1] // t.shape[-1])
            y = enc.reduce(torch.cat([f, temporal], dim=1))
            scales.append(enc.out(enc.drop(enc.conv2(enc.csam(enc.conv1(y))))))
        return self.head(self.fusion(*scales))


def _register_model_rewrites() -> None:
    """Rules for the toolbox's own layer types (imported here: nets.fast must not import them eagerly)."""
    from nets import blocks, deeppro, stmenet

    register_rewrite(blocks.BaseConv, stmenet.ConvBN, deeppro.ConvBNAct)(_conv_bn_act)
    register_rewrite(deeppro._DiffResBlock)(lambda m, o: FastResBlock(m, o["channels_last"]))
    register_rewrite(deeppro.TPro)(lambda m, o: FastTPro(m, o["channels_last"]))

    @register_rewrite(deeppro.DeepProPlus)
    def _deeppro_plus(model: nn.Module, options: dict) -> nn.Module:
        for name, child in list(model.named_children()):
            model._modules[name] = _rewrite(child, options)
        model.block2.channels_first_output = True
        model.head.gemm = "channels_first"
        return model

    register_rewrite(stmenet.CSAM)(lambda m, o: FastCSAM(m))
    register_rewrite(stmenet.RepBlock)(lambda m, o: FastRepBlock(m, o["channels_last"]))

    @register_rewrite(stmenet.STMENet)
    def _stmenet(model: nn.Module, options: dict) -> nn.Module:
        for name, child in list(model.named_children()):
            model._modules[name] = _rewrite(child, options)
        return FastSTMENet(model)

    @register_rewrite(deeppro.DeepPro)
    def _deeppro(model: nn.Module, options: dict) -> nn.Module:
        for name, child in list(model.named_children()):
            model._modules[name] = _rewrite(child, options)
        return FastDeepPro(model, options["tile_pixels"])


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
class InferenceModel(nn.Module):
    """Runs the rewritten `model` under `torch.inference_mode()`, optionally under autocast to `amp`, and
    with `cuda_graph` replays one captured CUDA graph per input shape (CUDA inputs only; a call with
    extra arguments, or on another device, runs normally)."""

    def __init__(self, model: nn.Module, amp: torch.dtype | None = None, cuda_graph: bool = False) -> None:
        super().__init__()
        self.model = model
        self.amp = amp
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.cuda_graph and x.is_cuda and not args and not kwargs:
            return self._replay(x)
        return self._run(x, *args, **kwargs)

    def _run(self, x: torch.Tensor, *args, **kwargs):
        with torch.inference_mode():
            if self.amp is None:
                return self.model(x, *args, **kwargs)
            with torch.autocast(x.device.type, dtype=self.amp):
                return self.model(x, *args, **kwargs)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._graphs:
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (allocations, kernel selection)
                for _ in range(2):
                    self._run(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        with torch.inference_mode():
            static_in.copy_(x)
            graph.replay()
            return static_out.clone()


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    compile: bool = False,
    amp: torch.dtype | None = None,
    cuda_graph: bool = False,
    tile_pixels: int = 2048,
) -> nn.Module:
    """An inference-only copy of `model` with the same outputs (within 1e-3 in float32).

    `channels_last`: channels-last memory for the convolutions. `tile_pixels`: band size of DeepPro on the
    CPU (0: whole frames). `compile`: wrap the rewritten model in `torch.compile` (needs a compiler
    toolchain; the first call compiles). `amp`: autocast dtype (torch.bfloat16 / torch.float16), for GPUs,
    outside the 1e-3 contract. `cuda_graph`: capture and replay a CUDA graph per input shape (CUDA only).
    `model` itself is never modified; its parameters stay where they are (move the result with `.to()`).
    """
    _register_model_rewrites()
    # Copy the module tree but not its tensors (most are folded into new ones), then snapshot the rest.
    source = {id(t): t for t in (*model.parameters(), *model.buffers())}
    net = copy.deepcopy(model, memo=dict(source)).eval()
    net = _rewrite(net, {"channels_last": channels_last, "tile_pixels": tile_pixels})
    for module in net.modules():
        for name, p in module._parameters.items():
            if p is not None and (id(p) in source or p.requires_grad):
                module._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=False)
        for name, b in module._buffers.items():
            if b is not None and id(b) in source:
                module._buffers[name] = b.clone()
    if compile:
        net = torch.compile(net, dynamic=False)
    fast = InferenceModel(net, amp=amp, cuda_graph=cuda_graph).eval()
    for name in _PLAIN_ATTRIBUTES:  # what callers read off a model (e.g. the clip length), kept visible
        value = getattr(model, name, None)
        if isinstance(value, (int, float, str, bool)):
            setattr(fast, name, value)
    return fast


FAST_MODES = ("auto", "on", "off")


def for_evaluation(model: nn.Module, fast: str = "auto") -> nn.Module:
    """`model` ready for an evaluation script: the fast path (`optimize_for_inference`) or the eager model.

    `fast`: "on" always the fast path, "off" the eager model in eval mode, "auto" the fast path when the
    model's parameters are on the CPU (measured there: 1.7-6.5x faster, outputs within ~1e-7) and the eager
    model on other devices, where the fast path has not been measured yet.
    """
    if fast not in FAST_MODES:
        raise ValueError(f"fast must be one of {FAST_MODES}, got {fast!r}")
    model = model.eval()
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    if fast == "on" or (fast == "auto" and on_cpu):
        return optimize_for_inference(model)
    return model
