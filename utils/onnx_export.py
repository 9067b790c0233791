"""ONNX export of any registered model and its check against PyTorch with onnxruntime (export_onnx.py).

`clip_shape` / `size_rule` give a model's input layout from the registry task and the model's declared
attributes (`seqlen` / `num_frames`, `stride`, `size_multiple`, `min_grid`); `export_onnx` traces the model
with a dynamic batch axis (and H, W with `dynamic_hw`); `verify_onnx` runs the file with onnxruntime.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import nets
from utils.errors import ConfigError

OPSET = 17


def require_package(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"the {module} package is needed here: pip install {module}") from None


def size_rule(name: str, model: nn.Module) -> tuple[int, int]:
    """`(multiple, minimum)` for the H and W of registered model `name`: H and W must be multiples of
    `model.size_multiple` and at least `model.min_grid * model.stride`. Undeclared, the registry task
    decides: detectors multiples of 32 (the YOLOX pyramid down to H/32), segmenters any size of at least 4
    (two 2x poolings); a model with a stricter rule declares `size_multiple`."""
    task = nets.model_info(name).task
    multiple = int(getattr(model, "size_multiple", 32 if task == "detect" else 1))
    minimum = max(multiple, int(getattr(model, "min_grid", 1)) * int(getattr(model, "stride", 1)),
                  32 if task == "detect" else 4)
    return multiple, minimum


def clip_shape(name: str, model: nn.Module, hw: tuple[int, int], batch: int = 1) -> tuple[int, ...]:
    """The input shape of registered model `name`, from its registry task and attributes: detectors
    `[B, 3, T, H, W]`, segmenters `[B, 1, T, H, W]`, with T = `model.seqlen`, else `model.num_frames`, else 1
    (a single-frame detector reads the last frame of the clip). ConfigError when H, W break `size_rule`."""
    h, w = hw
    multiple, minimum = size_rule(name, model)
    if h % multiple or w % multiple or min(h, w) < minimum:
        rule = f"multiples of {multiple}, " if multiple > 1 else ""
        raise ConfigError(f"{name} needs H and W {rule}at least {minimum}, got {h}x{w}")
    frames = int(getattr(model, "seqlen", None) or getattr(model, "num_frames", None) or 1)
    channels = 3 if nets.model_info(name).task == "detect" else 1
    return (batch, channels, frames, h, w)


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, opset: int = OPSET,
                dynamic_hw: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Trace `model` (eval mode, CPU) on `example` and write an ONNX file with input `clip` and output
    `output`; axis 0 is dynamic (and H, W with `dynamic_hw`). `metadata` goes into the file's
    metadata_props. Returns the path."""
    onnx = require_package("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    axes_in, axes_out = {0: "batch"}, {0: "batch"}
    if dynamic_hw:
        axes_in.update({3: "height", 4: "width"})
        axes_out.update({2: "out_height", 3: "out_width"})
    with warnings.catch_warnings():
        # Shape checks inside the models become constants of the trace (checked again by `verify_onnx`);
        # the TorchScript exporter announces its deprecation.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["clip"], output_names=["output"],
                              dynamic_axes={"clip": axes_in, "output": axes_out}, do_constant_folding=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    if metadata:
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.save(proto, str(path))
    return path


def verify_onnx(path: str | Path, model: nn.Module, inputs: list[torch.Tensor]) -> list[tuple[float, float]]:
    """Run the ONNX file with onnxruntime (CPU) and PyTorch on each input -> per input (max |difference|,
    max |PyTorch output|)."""
    ort = require_package("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.cpu().eval()
    diffs = []
    for x in inputs:
        got = session.run(None, {"clip": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        if got.shape != want.shape:
            raise ConfigError(f"{path}: onnxruntime output {list(got.shape)} != PyTorch {list(want.shape)} "
                              f"for input {list(x.shape)}")
        diffs.append((float(np.abs(got.astype(np.float64) - want).max()), float(np.abs(want).max())))
    return diffs


__all__ = ["OPSET", "clip_shape", "export_onnx", "require_package", "size_rule", "verify_onnx"]
