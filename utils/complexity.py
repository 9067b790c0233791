"""Model size and multiply-accumulate counts.

    >>> count_params(model)
    >>> count_macs(model, (1, 1, 40, 480, 720))   # shapes only: runs on the meta device by default

`count_macs` hooks the layers that do the arithmetic and counts, per call, from the output shape:
- convolutions: `out.numel() * Cin/groups * prod(kernel)` (bias not counted); the DeepPro difference convs
  are convolutions too and are reported apart as `tdiff` / `sdiff`;
- `nn.Linear`: `out.numel() * in_features`.
Modules called several times count every call; transposed convolutions are not counted.
`total` is their sum. `thop_style` adds what `thop.profile` adds for these networks: BatchNorm at
4 operations per input element when affine (2 otherwise); thop counts ReLU, max pooling and identity as 0
and does not see functional calls such as `F.interpolate`. It is thop's count with the difference convs
registered as convolutions (plain thop gives them 0). The DeepPro papers' "GFLOPs" are thop-style MACs
per clip divided by the number of frames. Upsampling is not counted, not even as `nn.Upsample` modules
(recent thop versions add 1 op per output element for nearest, 11 for bilinear): Res-UNet+DTUM's
"54.0 GFLOPs (480*720)" in the DeepPro table is `thop_style` of one 5-frame clip without them (53.98 G;
with thop's upsampling ops it would be 54.58 G). Its 39.90 G at 512x512 is `total` for a 5-frame clip.

CLI: `python -m utils.complexity --model deeppro --size 40x480x720`;
`--model resunet_dtum --size 5x480x720` for Res-UNet+DTUM.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from utils.errors import ConfigError

__all__ = ["count_macs", "count_params", "param_kilobytes"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def param_kilobytes(model: nn.Module) -> float:
    """Parameter storage in fp32 as the DeepPro paper reports it: 4 bytes per parameter / 1024."""
    return count_params(model) * 4 / 1024


def _conv_kind(module: nn.Module) -> str:
    # Imported here so that the counter works for any model even if nets.deeppro changes.
    from nets.deeppro import SpatialDiffConv3d, TemporalDiffConv3d

    if isinstance(module, TemporalDiffConv3d):
        return "tdiff"
    if isinstance(module, SpatialDiffConv3d):
        return "sdiff"
    return f"conv{len(module.kernel_size)}d"


def count_macs(
    model: nn.Module, input_shape: Sequence[int], device: str | torch.device = "meta"
) -> dict[str, int]:
    """Multiply-accumulates of one forward pass on an input of `input_shape` (e.g. `(1, 1, 40, H, W)`).

    Returns `{'conv3d', 'tdiff', 'sdiff', 'linear', 'total', 'thop_style'}` (plus `conv1d` / `conv2d`
    when the model has such layers). By default the pass runs on a copy of the model on the meta device:
    only shapes are computed, so large inputs cost nothing. `device="cpu"` runs a real pass instead.
    `model` itself is not modified.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"count_macs: input shape must be positive integers, got {list(input_shape)}")
    net = copy.deepcopy(model).to(device).eval()
    counts = {"conv3d": 0, "tdiff": 0, "sdiff": 0, "linear": 0}
    norm_ops = 0

    def on_conv(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        kind = _conv_kind(module)
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        counts[kind] = counts.get(kind, 0) + output.numel() * per_output

    def on_linear(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        counts["linear"] += output.numel() * module.in_features

    def on_norm(module: nn.modules.batchnorm._BatchNorm, inputs, _output) -> None:
        nonlocal norm_ops
        norm_ops += inputs[0].numel() * (4 if module.affine else 2)

    handles = []
    for module in net.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_hook(on_norm))
    try:
        with torch.no_grad():
            net(torch.zeros(shape, device=device))
    finally:
        for h in handles:
            h.remove()
    counts["total"] = sum(counts.values())
    counts["thop_style"] = counts["total"] + norm_ops
    return counts


def _parse_size(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0:
        raise ConfigError(f"--size must be TxHxW with positive integers (e.g. 40x480x720), got {text!r}")
    return parts  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    import nets

    parser = argparse.ArgumentParser(
        prog="python -m utils.complexity", description="Parameters and multiply-accumulates of a model."
    )
    parser.add_argument("--model", default="deeppro", help="registered model name (default: deeppro)")
    parser.add_argument("--size", default="40x480x720", help="clip size TxHxW (default: 40x480x720)")
    parser.add_argument(
        "--channels", type=int, default=None,
        help="input channels (default: 1 for DeepPro and Res-UNet+DTUM, 3 otherwise)",
    )
    args = parser.parse_args(argv)
    t, h, w = _parse_size(args.size)
    name = args.model.lower().replace("-", "_")
    deeppro = name.startswith("deeppro")
    model = nets.build_model(args.model, seqlen=t) if deeppro else nets.build_model(args.model)
    channels = args.channels or (1 if deeppro or name == "resunet_dtum" else 3)
    macs = count_macs(model, (1, channels, t, h, w))
    parts = ", ".join(f"{k} {v / 1e9:.3f}" for k, v in macs.items() if k not in ("total", "thop_style"))
    print(f"model: {args.model}  input: [1, {channels}, {t}, {h}, {w}]")
    print(f"params: {count_params(model):,}  ({param_kilobytes(model):.1f} KB in fp32)")
    print(f"GMACs per clip: {macs['total'] / 1e9:.3f}  ({parts})")
    print(f"GMACs per frame: {macs['total'] / 1e9 / t:.4f}")
    print(f"thop-style GMACs (BN included): {macs['thop_style'] / 1e9:.3f} per clip, "
          f"{macs['thop_style'] / 1e9 / t:.4f} per frame")


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
