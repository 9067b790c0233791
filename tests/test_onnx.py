"""ONNX export of both families: the graph runs in onnxruntime and matches PyTorch (dynamic batch, fixed T).

onnx and onnxruntime are test-only dependencies: without them these tests skip with the reason."""

from __future__ import annotations

import pytest
import torch

import export_onnx
import nets
from nets.fast import randomize_batchnorm
from utils import onnx_export

_HINT = "(a test-only dependency: pip install onnx onnxruntime)"
onnx = pytest.importorskip("onnx", reason=f"onnx is not installed {_HINT}")
pytest.importorskip("onnxruntime", reason=f"onnxruntime is not installed {_HINT}")




def _dims(path, which: str = "input") -> list:
    value = (onnx.load(str(path)).graph.input if which == "input" else onnx.load(str(path)).graph.output)[0]
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_deeppro_export_dynamic_batch_and_size(tmp_path):
    """Difference convs (effective kernels built in the graph) and TPro export; H, W dynamic too."""
    torch.manual_seed(0)
    model = randomize_batchnorm(nets.build_model("deeppro"))
    path = onnx_export.export_onnx(model, tmp_path / "deeppro.onnx", torch.randn(1, 1, 40, 12, 12),
                                   dynamic_hw=True, metadata={"model": "deeppro"})
    assert _dims(path) == ["batch", 1, 40, "height", "width"]
    inputs = [torch.randn(3, 1, 40, 12, 12), torch.randn(2, 1, 40, 16, 20)]  # other batch, other size
    checks = onnx_export.verify_onnx(path, model, inputs)
    for diff, scale in checks:
        assert scale > 0.1 and diff < 1e-5 * max(1.0, scale)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta == {"model": "deeppro"}


def test_stmenet_export_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(nets.build_model("stmenet", variant="irdst"))
    path = onnx_export.export_onnx(model, tmp_path / "stmenet.onnx", torch.randn(1, 3, 5, 32, 64))
    assert _dims(path) == ["batch", 3, 5, 32, 64] and _dims(path, "output") == ["batch", 6, 4, 8]
    checks = onnx_export.verify_onnx(path, model, [torch.randn(2, 3, 5, 32, 64)])  # traced at batch 1
    for diff, scale in checks:
        assert scale > 0.01 and diff < 1e-5 * max(1.0, scale)


def test_export_cli_with_the_official_deeppro_plus(ref_dir, tmp_path, capsys):
    """The authors' DeepPro-Plus weights through the script: logits reach ~1e2, ONNX stays within 1e-3."""
    weights = ref_dir / "deeppro" / "ckpt_DeepPro-Plus_NUDT-MIRSDT_best_model.pth"
    out = tmp_path / "plus.onnx"
    report = export_onnx.main(["--weights", str(weights), "--out", str(out), "--size", "16", "20"])
    assert report["input_shape"] == [1, 1, 40, 16, 20]
    assert report["max_abs_diff"] < 1e-3
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["model"] == "deeppro_plus" and float(meta["max_abs_diff_vs_pytorch"]) < 1e-3
    assert "max abs diff" in capsys.readouterr().out
