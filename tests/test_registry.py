"""Every registered model, through the registry only: builds, pinned parameter count, a tiny forward and
backward with the output shape its task promises, the fast path (within 1e-4 of eager, or a clean refusal)
and ONNX export with onnxruntime parity. A model added to the registry is picked up without a change here,
except that its parameter count must be pinned in PARAMS.

Inputs come from the model's own declarations (`export_onnx.clip_shape`: task, `num_frames` / `seqlen`,
`size_multiple`, `min_grid`, `stride`), at the smallest size it accepts (`utils.compare.example_clip`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import nets
from nets.fast import optimize_for_inference, randomize_batchnorm, register_rewrite
from utils import onnx_export as export_onnx
from utils.compare import build, example_clip, model_entries
from utils.complexity import count_params
from utils.errors import ConfigError

# registry name, or "name/variant" for a model with variants -> parameters of the default build.
PARAMS = {
    "stmenet/itsdt": 9_851_409,
    "stmenet/daub": 9_851_409,
    "stmenet/irdst": 9_934_353,
    "deeppro": 49_129,
    "deeppro_plus": 70_913,
    "resunet_dtum": 298_305,
    "acm_yolox": 3_040_693,
    "agpcnet_yolox": 14_881_311,
    "dnanet_yolox": 7_217_694,
}
# ONNX export (TorchScript tracing, checker, onnxruntime) of a model this size costs ~3 s of CPU even at the
# smallest input, too much for this file on a shared 2-core machine; tests/test_onnx.py exports STMENet.
ONNX_MAX_PARAMS = 5_000_000
FAST_DECLINES = (ValueError, NotImplementedError)

ENTRIES = [(name, variant) for _, name, variant in model_entries()]
IDS = [f"{n}/{v}" if v else n for n, v in ENTRIES]


@pytest.fixture(autouse=True)
def _one_thread(_few_threads):
    """Tiny inputs: one thread (handing such small layers to a second thread costs more than it saves)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _key(name: str, variant: str | None) -> str:
    return f"{name}/{variant}" if variant else name




def expected_output_shape(name: str, model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """What the task promises for input `[B, C, T, H, W]`: a detector `[B, 5 + classes, H/stride, W/stride]`,
    a segmenter logits `[B, K, H, W]` with K = seqlen (one map per clip frame) or 1 (the current frame)."""
    b, _, _, h, w = shape
    if nets.model_info(name).task == "detect":
        return (b, 5 + int(getattr(model, "num_classes", 1)), h // model.stride, w // model.stride)
    return (b, int(getattr(model, "seqlen", None) or 1), h, w)


def fast_or_decline(model: nn.Module) -> tuple[nn.Module | None, str]:
    """`(fast model, "")`, or `(None, reason)` when the fast path refuses the model with one of
    FAST_DECLINES and a one-line message. Any other exception propagates (a bug)."""
    try:
        return optimize_for_inference(model), ""
    except FAST_DECLINES as err:
        reason = str(err).strip()
        assert reason and "\n" not in reason, f"the fast path declined without a one-line reason: {err!r}"
        return None, f"{type(err).__name__}: {reason}"


def test_registry_lists_models_with_tasks():
    assert ENTRIES, "no model registered"
    for name, _ in ENTRIES:
        assert nets.model_info(name).task in nets.TASKS


@pytest.mark.parametrize(("name", "variant"), ENTRIES, ids=IDS)
def test_parameter_count_is_pinned(name, variant):
    key = _key(name, variant)
    n = count_params(build(name, variant))
    assert key in PARAMS, f"{key} has no pinned parameter count: add PARAMS[{key!r}] = {n:_} to {__file__}"
    assert n == PARAMS[key], f"{key}: {n:,} parameters, pinned {PARAMS[key]:,}"


@pytest.mark.parametrize(("name", "variant"), ENTRIES, ids=IDS)
def test_tiny_forward_and_backward(name, variant):
    torch.manual_seed(0)
    model = build(name, variant).train()
    shape = example_clip(name, model, batch=2)  # batch 2: BatchNorm in training mode at a 1x1 coarse map
    x = torch.randn(shape, requires_grad=True)
    out = model(x)
    assert tuple(out.shape) == expected_output_shape(name, model, shape)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "the input gets no gradient"
    # Most weights must be trained by this loss; some may be cut off on purpose (Res-UNet+DTUM detaches its
    # direction-coded levels, as the authors do).
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    reached = sum(p.numel() for p in model.parameters() if p.grad is not None)
    assert reached >= 0.5 * count_params(model), f"most parameters get no gradient: {missing[:5]} ..."
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(("name", "variant"), ENTRIES, ids=IDS)
def test_smallest_input_is_smallest(name, variant):
    """One step below the example size is refused: by the declared rule (ConfigError) or by the model."""
    model = build(name, variant)
    shape = example_clip(name, model)
    multiple = export_onnx.size_rule(name, model)[0]
    smaller = (shape[3] - multiple, shape[4] - multiple)
    if min(smaller) < 1:  # the first multiple: nothing smaller exists
        assert shape[3] == shape[4] == multiple
        return
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        x = torch.zeros(export_onnx.clip_shape(name, model, smaller))
        with torch.no_grad():
            model.eval()(x)


@pytest.mark.parametrize(("name", "variant"), ENTRIES, ids=IDS)
def test_fast_path_matches_eager_or_declines(name, variant):
    torch.manual_seed(0)
    model = randomize_batchnorm(build(name, variant))
    x = torch.randn(example_clip(name, model))
    fast, reason = fast_or_decline(model)
    if fast is None:
        pytest.skip(f"{name}: the fast path declines ({reason})")
    with torch.no_grad():
        want = model(x)
    got = fast(x)
    assert got.shape == want.shape
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= 1e-4 * scale
    for attr in ("stride", "num_frames", "seqlen"):
        assert getattr(fast, attr, None) == getattr(model, attr, None), f"the fast path hides `{attr}`"


def test_fast_path_decline_is_a_clean_error():
    """A rewrite that cannot handle a layer raises; `fast_or_decline` reports it in one line."""

    class Unfoldable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def refuse(module: nn.Module, options: dict) -> nn.Module:
        raise NotImplementedError(f"no fast version of {type(module).__name__}")

    register_rewrite(Unfoldable)(refuse)
    fast, reason = fast_or_decline(nn.Sequential(nn.Conv2d(1, 1, 1), Unfoldable()))
    assert fast is None and reason == "NotImplementedError: no fast version of Unfoldable"

    def crash(module: nn.Module, options: dict) -> nn.Module:
        raise RuntimeError("a bug in a rewrite")

    register_rewrite(Unfoldable)(crash)
    with pytest.raises(RuntimeError, match="a bug"):  # anything else is a bug and is not swallowed
        fast_or_decline(Unfoldable())


def test_clip_shape_follows_task_and_attributes():
    for name, variant in ENTRIES:
        model = build(name, variant)
        b, c, t, h, w = example_clip(name, model, (64, 64), batch=3)
        assert (b, c) == (3, 3 if nets.model_info(name).task == "detect" else 1)
        assert t == int(getattr(model, "seqlen", None) or getattr(model, "num_frames", None) or 1)
        multiple, minimum = export_onnx.size_rule(name, model)
        assert h == w and h % multiple == 0 and h >= max(64, minimum)
    detector = next((n, v) for n, v in ENTRIES if nets.model_info(n).task == "detect")
    with pytest.raises(ConfigError, match="multiples of"):
        export_onnx.clip_shape(detector[0], build(*detector), (33, 64))


@pytest.mark.parametrize(("name", "variant"), ENTRIES, ids=IDS)
def test_onnx_export_parity(name, variant, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (a test-only dependency: pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    torch.manual_seed(0)
    model = randomize_batchnorm(build(name, variant))
    n = count_params(model)
    if n > ONNX_MAX_PARAMS:
        pytest.skip(f"{name}: {n:,} parameters > {ONNX_MAX_PARAMS:,}: ONNX export too slow for this file")
    shape = example_clip(name, model)
    path = export_onnx.export_onnx(model, tmp_path / f"{name}.onnx", torch.randn(shape))
    batch2 = torch.randn((2, *shape[1:]))
    for diff, scale in export_onnx.verify_onnx(path, model, [batch2]):
        assert scale > 1e-3, "degenerate output: parity would prove nothing"
        assert diff <= 1e-4 * max(1.0, scale)
