"""Inference-only fast path for every registered model.

    >>> fast = optimize_for_inference(model)   # a new module; `model` is left untouched
    >>> logits = fast(x)                       # same outputs as `model.eval()(x)` within 1e-3 (float32)

`optimize_for_inference` deep-copies the model in eval mode and replaces layers by inference-only
equivalents, one small rewrite per module type (`register_rewrite`). This module holds the generic rules,
which any model gets: every convolution, with the BatchNorm and activation that follow it (conv-BN(-act)
sequences, units with `conv` / `bn` / `act` attributes such as `BaseConv`, plain convs), becomes one
`FoldedConv`: BN folded into the weights, difference-conv kernels built once, channels-last memory, and on
the CPU one oneDNN call that applies bias, activation (and a residual sum) while writing the output.

Model-specific rewrites live beside their models: a model module names its companion in a module-level
`FAST_REWRITES = "nets.<model>_fast"`, which `optimize_for_inference` imports (registering its rules) for
every module type in the model, e.g. `nets.deeppro_fast` and `nets.stmenet_fast`.

The result is an `InferenceModel` that runs under `torch.inference_mode()`; options add autocast (`amp`,
reduced precision: outside the 1e-3 contract), `torch.compile` and CUDA graphs (CUDA only; one graph per
input shape, the `max_graphs` most recent kept).
"""

from __future__ import annotations

import copy
import importlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FAST_MODES", "FoldedConv", "InferenceModel", "as_rows", "conv_bn_act", "fold_batchnorm",
           "for_evaluation", "optimize_for_inference", "pointwise_conv", "randomize_batchnorm",
           "register_rewrite", "rewrite", "rewrite_children"]

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


def rewrite(module: nn.Module, options: dict) -> nn.Module:
    """The replacement of `module` (itself, with its children rewritten, when no rule applies). `options`:
    the keyword options of `optimize_for_inference` (`channels_last`, `tile_pixels`)."""
    for cls in type(module).__mro__:
        if cls in _REWRITES:
            new = _REWRITES[cls](module, options)
            if new is not None:
                return new
            break
    return rewrite_children(module, options)


def rewrite_children(module: nn.Module, options: dict) -> nn.Module:
    """`module` with each child replaced by its rewrite (for rules that keep the module itself)."""
    for name, child in list(module.named_children()):
        module._modules[name] = rewrite(child, options)
    return module


def _import_companions(model: nn.Module) -> None:
    """Import the rewrite module that each module type's defining module names in `FAST_REWRITES`."""
    for name in sorted({type(m).__module__ for m in model.modules()}):
        companion = getattr(sys.modules.get(name), "FAST_REWRITES", None)
        if companion:
            importlib.import_module(companion)


# ----------------------------------------------------------------------------------------------------------
# Convolution + BatchNorm + activation
# ----------------------------------------------------------------------------------------------------------
def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None,
                   bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
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


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` in eval mode with seeded non-trivial BatchNorm statistics and affine terms (mean and bias in
    [-0.5, 0.5), variance and weight in [0.5, 1.5)) and CSAM gammas of 0.3, so that every term folding
    touches shows in the output: for parity tests and speed measurements of untrained models."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen) + low

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(uniform(m.running_mean, -0.5))
                m.running_var.copy_(uniform(m.running_var, 0.5))
                if m.affine:
                    m.weight.copy_(uniform(m.weight, 0.5))
                    m.bias.copy_(uniform(m.bias, -0.5))
            if isinstance(getattr(m, "gamma", None), nn.Parameter):
                m.gamma.fill_(0.3)
    return model.eval()


_ONEDNN_ACTIVATIONS = {nn.ReLU: "relu", nn.SiLU: "swish", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu"}


def _onednn_activation(act: nn.Module | None) -> tuple[str, list, str] | None:
    """The activation as oneDNN post-op arguments `(name, scalars, algorithm)`; None if it has none."""
    name = "none" if act is None else _ONEDNN_ACTIVATIONS.get(type(act))
    if name is None:
        return None
    scalars = [act.negative_slope] if name == "leaky_relu" else []
    return name, scalars, act.approximate if name == "gelu" else ""


def _onednn_ready(x: torch.Tensor) -> bool:
    """Whether the fused oneDNN convolution applies: float32 CPU tensors outside autocast, in eager mode
    (under torch.compile, inductor does its own fusion)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() in (4, 5)
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


_ACTIVATIONS = (nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.GELU, nn.Identity)
_PACK_LOCK = threading.Lock()


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """`x [B, C, *S]` as a matrix view `[B, N, C]` over its N = prod(S) positions (no copy when `x` is
    contiguous in the standard or the channels-last memory format)."""
    b, c = x.shape[:2]
    if not x.is_contiguous():
        last = x.movedim(1, -1)
        if last.is_contiguous():
            return last.view(b, -1, c)
        x = x.contiguous()
    return x.view(b, c, -1).transpose(1, 2)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, channels_last: bool,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 convolution `x [B, Cin, *S] -> [B, Cout, *S]` (`weight [Cout, Cin]`) as one matrix product per
    sample, written in the channels-last or channels-first memory format whatever the input's format (the
    product reads either layout in place). With `out` (a result of this function with the same layout),
    the product is added to it instead."""
    b, spatial, cout = x.shape[0], x.shape[2:], weight.shape[0]
    dtype = x.dtype if out is None else out.dtype  # autocast leaves layers in mixed precisions
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    rows = as_rows(x).to(dtype)
    if out is None:
        mat = x.new_empty((b, rows.shape[1], cout) if channels_last else (b, cout, rows.shape[1]))
    else:
        mat = as_rows(out) if channels_last else out.view(b, cout, -1)
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

    def __init__(self, conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm | None = None,
                 act: nn.Module | None = None, channels_last: bool = True) -> None:
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
            with _PACK_LOCK:  # DeepPro tiles may run on several threads
                if len(self._packed) >= 8:
                    self._packed.clear()
                self._packed[key] = packed
        return packed

    def extra_repr(self) -> str:
        return (f"{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, channels_last={self.channels_last}, "
                f"gemm={self.gemm}")

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                overwrite_residual: bool = False) -> torch.Tensor:
        """`act(conv(x) + residual)`; with `overwrite_residual` (a private residual) the result may be written
        into the residual's memory instead of fresh memory."""
        if self.gemm is not None:
            out = pointwise_conv(x, self.weight.flatten(1), self.bias, self.gemm == "channels_last")
            return self._activate(out if residual is None else out.add_(residual))
        x = x.contiguous(memory_format=self.memory_format)
        if residual is not None:
            residual = residual.contiguous(memory_format=self.memory_format)
        if self.fused_act is not None and _onednn_ready(x):
            args = (self._onednn_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups)
            if residual is not None and self.fused_act[0] == "relu":  # oneDNN fuses "add then ReLU"
                if overwrite_residual:
                    out = torch.ops.mkldnn._convolution_pointwise_.binary(
                        residual, x, *args, "add", 1.0, "relu", [], "")
                else:
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


def conv_bn_act(module: nn.Module, options: dict) -> nn.Module:
    """Rule for units computing `act(bn(conv(x)))` from `conv`, `bn` and optional `act` attributes (YOLOX
    `BaseConv` here; model modules register their own such units with it)."""
    return FoldedConv(module.conv, module.bn, getattr(module, "act", None), options["channels_last"])


def _register_shared_units() -> None:
    """The rule for the shared YOLOX unit of `nets.blocks` (imported lazily)."""
    from nets import blocks

    register_rewrite(blocks.BaseConv)(conv_bn_act)


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
class InferenceModel(nn.Module):
    """Runs the rewritten `model` under `torch.inference_mode()`, optionally under autocast to `amp`, and
    with `cuda_graph` replays a captured CUDA graph per input shape (CUDA inputs only; a call with extra
    arguments, or on another device, runs normally). Graphs of the `max_graphs` most recently used input
    shapes are kept (each holds its own static input, output and memory pool); older ones are dropped."""

    def __init__(self, model: nn.Module, amp: torch.dtype | None = None, cuda_graph: bool = False,
                 max_graphs: int = 4) -> None:
        super().__init__()
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model = model
        self.amp = amp
        self.cuda_graph = cuda_graph
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()  # least recently used first

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_graphs"] = OrderedDict()  # captured graphs belong to one process and device
        return state

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

    def _graph_for(self, x: torch.Tensor) -> tuple:
        """`(graph, static_in, static_out)` for inputs like `x`: cached, or captured now (evicting the
        least recently used entry when `max_graphs` are held)."""
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.pop(key, None)
        if entry is None:
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            entry = self._capture(x)
        self._graphs[key] = entry
        return entry

    def _capture(self, x: torch.Tensor) -> tuple:
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
        return graph, static_in, static_out

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        graph, static_in, static_out = self._graph_for(x)
        with torch.inference_mode():
            static_in.copy_(x)
            graph.replay()
            return static_out.clone()


def optimize_for_inference(model: nn.Module, *, channels_last: bool = True, compile: bool = False,
                           amp: torch.dtype | None = None, cuda_graph: bool = False,
                           tile_pixels: int = 1024) -> nn.Module:
    """An inference-only copy of `model` with the same outputs (within 1e-3 in float32).

    `channels_last`: channels-last memory for the convolutions. `tile_pixels`: tile size of DeepPro on the
    CPU (0: whole frames). `compile`: wrap the rewritten model in `torch.compile` (needs a compiler
    toolchain; the first call compiles). `amp`: autocast dtype (torch.bfloat16 / torch.float16), for GPUs,
    outside the 1e-3 contract. `cuda_graph`: capture and replay a CUDA graph per input shape (CUDA only).
    `model` itself is never modified; its parameters stay where they are (move the result with `.to()`).
    """
    _register_shared_units()
    _import_companions(model)
    # Copy the module tree but not its tensors (most are folded into new ones), then snapshot the rest.
    source = {id(t): t for t in (*model.parameters(), *model.buffers())}
    net = copy.deepcopy(model, memo=dict(source)).eval()
    net = rewrite(net, {"channels_last": channels_last, "tile_pixels": tile_pixels})
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
    model's parameters are on the CPU (measured there with 2 threads: STMENet about 2x, DeepPro about 11x,
    DeepPro-Plus about 3x faster; outputs within ~1e-7) and the eager model on other devices, where the fast
    path has not been measured yet.
    """
    if fast not in FAST_MODES:
        raise ValueError(f"fast must be one of {FAST_MODES}, got {fast!r}")
    model = model.eval()
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    if fast == "on" or (fast == "auto" and on_cpu):
        return optimize_for_inference(model)
    return model
