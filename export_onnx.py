"""Export a registered model to ONNX and check it against PyTorch with onnxruntime.

    python export_onnx.py --weights runs/stmenet_itsdt/best.pt --out stmenet_itsdt.onnx
    python export_onnx.py --weights best_model.pth --out deeppro.onnx --size 256 --dynamic-hw

The graph takes the clip and returns the raw output, exactly as the PyTorch model (pre- and
post-processing stay outside: letterbox + ImageNet normalisation and decode + NMS for STMENet, grey
normalisation (x - 105.4025) / 26.6452 and sigmoid for DeepPro):

    STMENet   clip [B, 3, T, H, W] -> head [B, 6, H/8, W/8]   (T = num_frames; H, W multiples of 32)
    DeepPro   clip [B, 1, 40, H, W] -> logits [B, 40, H, W]

The batch axis is dynamic; T is fixed; H and W are fixed to --size unless --dynamic-hw. The difference
convolutions build their effective kernels inside the graph (from the stored weights), TPro becomes
per-head MatMuls. Export uses the TorchScript-based exporter (opset 17 by default). After export the file
is checked with onnx.checker and, when onnxruntime is installed, run on random clips at batch 1 and 2 (and
a second size with --dynamic-hw): the largest absolute difference to PyTorch is printed and stored in the
file's metadata. onnx and onnxruntime are optional: `pip install onnx onnxruntime`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch

from utils.cli import run_main
from utils.config import REQUIRED, Config, option, parse_config
from utils.data.roots import COCO_STYLES
from utils.onnx_export import OPSET, clip_shape, export_onnx, require_package, size_rule, verify_onnx
from utils.weights import load_weights


@dataclass
class ExportConfig(Config):
    """ONNX export options"""

    weights: str = option(REQUIRED, "our checkpoint or the authors' weights", required=True)
    out: str = option(REQUIRED, "output .onnx file", required=True)
    model: str = option("auto", "model of --weights (auto: read from the file)")
    variant: str = option("itsdt", "STMENet variant tried first for the authors' weights",
                          choices=COCO_STYLES)
    size: tuple[int, int] | None = option(None, "input size, N or HxW (none: detectors the checkpoint's "
                                          "input size, else 512; segmenters 256)", size="hw")
    dynamic_hw: bool = option(False, "also make H and W dynamic")
    opset: int = option(OPSET, "ONNX opset (>= 17)")
    verify: bool = option(True, "compare with PyTorch through onnxruntime")
    seed: int = option(0, "seed of the random verification clips")

    def validate(self) -> None:
        self.at_least(17, "opset")
        self.require(self.size is None or min(self.size) > 0, f"--size must be positive, got {self.size}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_config(ExportConfig(), argv, __doc__.split("\n\n")[0], "export_onnx.py")
    loaded = load_weights(args.weights, args.model, variant=args.variant)
    model = loaded.model.cpu().eval()
    if args.size:
        hw = args.size
    else:
        side = int(loaded.train_config.get("input_size") or 512) if loaded.is_detector else 256
        hw = (side, side)
    gen = torch.Generator().manual_seed(args.seed)
    example = torch.randn(clip_shape(loaded.name, model, hw), generator=gen)
    kwargs = {k: getattr(model, k) for k in ("variant", "num_classes", "num_frames", "seqlen")
              if hasattr(model, k)}
    meta = {"model": loaded.name, "kwargs": json.dumps(kwargs), "weights_source": loaded.source,
            "input": "clip " + ("[B, 3, T, H, W] letterboxed, /255, ImageNet mean/std" if loaded.is_detector
                                else "[B, 1, T, H, W] grey, (x - 105.4025) / 26.6452"),
            "output": ("raw head [B, 6, H/8, W/8] (dx, dy, log w, log h, obj, cls)" if loaded.is_detector
                       else "logits [B, T, H, W] (sigmoid for probabilities)")}
    t0 = time.perf_counter()
    path = export_onnx(model, args.out, example, args.opset, args.dynamic_hw, meta)
    print(f"exported {loaded.name} ({loaded.source}) to {path} in {time.perf_counter() - t0:.1f} s: input "
          f"{list(example.shape)} (batch dynamic{', H and W dynamic' if args.dynamic_hw else ''}), "
          f"opset {args.opset}, {path.stat().st_size / 2**20:.1f} MiB")
    report = {"onnx": str(path), "input_shape": list(example.shape), "max_abs_diff": None}
    if not args.verify:
        return report
    shapes = [clip_shape(loaded.name, model, hw, 1), clip_shape(loaded.name, model, hw, 2)]
    if args.dynamic_hw:
        other = tuple(v + max(size_rule(loaded.name, model)[0], 8) for v in hw)
        shapes.append(clip_shape(loaded.name, model, other, 1))
    inputs = [torch.randn(s, generator=gen) for s in shapes]
    checks = verify_onnx(path, model, inputs)
    for s, (diff, scale) in zip(shapes, checks):
        print(f"  onnxruntime vs PyTorch, input {list(s)}: max abs diff {diff:.3g} "
              f"(max |output| {scale:.3g})")
    report["max_abs_diff"] = max(d for d, _ in checks)
    onnx = require_package("onnx")
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "max_abs_diff_vs_pytorch", f"{report['max_abs_diff']:.3g}"
    onnx.save(proto, str(path))
    return report


if __name__ == "__main__":
    run_main(main)
