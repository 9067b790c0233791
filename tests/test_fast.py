"""The fast inference path (nets/fast.py and the models' rewrite companions nets/*_fast.py) against the eager
models, and the speed benchmarks' smoke runs."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import nets
from nets.deeppro_fast import FramePool2x2, _add_upsampled
from nets.fast import (
    FoldedConv,
    InferenceModel,
    fold_batchnorm,
    optimize_for_inference,
    pointwise_conv,
    randomize_batchnorm,
)
from nets.stmenet import CSAM
from nets.stmenet_fast import FastCSAM
from tests.conftest import bench_module

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")




def _check(model: nn.Module, fast: nn.Module, x: torch.Tensor, **kwargs) -> None:
    with torch.no_grad():
        expected = model(x, **kwargs)
    got = fast(x, **kwargs)
    for e, g in zip(*(t if isinstance(t, tuple) else (t,) for t in (expected, got))):
        assert g.shape == e.shape
        assert (g - e).abs().max().item() < ATOL
        assert e.std() > 1e-3  # not a vacuous comparison


# ---------------------------------------------------------------- parity, random weights


@pytest.mark.parametrize("name", ["deeppro", "deeppro_plus"])
@pytest.mark.parametrize("tile_pixels", [0, 24])
def test_deeppro_parity_random_weights(name, tile_pixels):
    torch.manual_seed(0)
    model = randomize_batchnorm(nets.build_model(name, seqlen=8))
    fast = optimize_for_inference(model, tile_pixels=tile_pixels)
    for shape in [(2, 1, 8, 13, 10), (1, 1, 8, 4, 7), (1, 1, 8, 18, 5)]:  # odd sizes, partial last band
        _check(model, fast, torch.randn(shape), return_feats=True)


@pytest.mark.parametrize("shape, tile_pixels, threads", [
    ((1, 1, 6, 21, 300), 256, 2),  # wider than a full-resolution tile: tiles of rows x columns
    ((2, 1, 6, 33, 18), 64, 3),  # odd sizes at every scale, more threads than some passes have tiles
    ((1, 1, 6, 9, 130), 100, 1),
])
def test_deeppro_tiles_at_every_scale(shape, tile_pixels, threads):
    """The four tile passes (stem, scale 1, scale 2, scale 0 with the fusion) on shapes where the tiles of
    each scale end in partial rows and columns; logits, features and `forward_features` as the model's."""
    torch.manual_seed(6)
    model = randomize_batchnorm(nets.build_model("deeppro", seqlen=6))
    fast = optimize_for_inference(model, tile_pixels=tile_pixels)
    torch.set_num_threads(threads)
    x = torch.randn(shape)
    _check(model, fast, x, return_feats=True)
    with torch.no_grad():
        assert (fast.model.forward_features(x) - model.forward_features(x)).abs().max() < ATOL


def test_deeppro_bands_on_two_threads():
    """Several threads take whole bands; the caller's thread count survives."""
    torch.manual_seed(5)
    model = randomize_batchnorm(nets.build_model("deeppro", seqlen=8))
    fast = optimize_for_inference(model, tile_pixels=40)
    torch.set_num_threads(2)
    _check(model, fast, torch.randn(2, 1, 8, 22, 10))
    with torch.no_grad():  # outside inference mode too
        _check(model, fast.model, torch.randn(1, 1, 8, 17, 12))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("variant", ["itsdt", "irdst"])
def test_stmenet_parity_random_weights(variant):
    torch.manual_seed(0)
    model = randomize_batchnorm(nets.build_model("stmenet", variant=variant))
    fast = optimize_for_inference(model)
    _check(model, fast, torch.randn(2, 3, 5, 64, 64))
    _check(model, fast, torch.randn(1, 3, 3, 32, 32))


def test_fast_path_without_channels_last_and_outside_onednn():
    """float64 skips the fused oneDNN kernels: the plain convolution path must agree too."""
    torch.manual_seed(1)
    model = randomize_batchnorm(nets.build_model("deeppro", seqlen=6)).double()
    fast = optimize_for_inference(model, channels_last=False)
    _check(model, fast, torch.randn(1, 1, 6, 9, 8, dtype=torch.float64))
    model = randomize_batchnorm(nets.build_model("stmenet", variant="irdst")).double()
    _check(model, optimize_for_inference(model), torch.randn(1, 3, 3, 32, 32, dtype=torch.float64))


def test_original_model_is_untouched_and_errors_are_kept():
    model = nets.build_model("deeppro", seqlen=6).train()
    before = copy.deepcopy(model.state_dict())
    fast = optimize_for_inference(model)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fast.modules())
    x = torch.randn(1, 1, 6, 8, 8)
    assert torch.equal(copy.deepcopy(fast)(x), fast(x))  # cached oneDNN weights are not copied
    with pytest.raises(ValueError, match="seqlen=6"):
        fast(torch.randn(1, 1, 5, 8, 8))
    with pytest.raises(ValueError, match="at least 4x4"):
        fast(torch.randn(1, 1, 6, 3, 8))


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("act", [nn.ReLU(), nn.SiLU(), nn.LeakyReLU(0.1), nn.GELU(), None])
def test_folded_conv_matches_conv_bn_act(act):
    torch.manual_seed(2)
    for conv, x in [
        (nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), torch.randn(2, 6, 11, 9)),
        (nn.Conv2d(8, 8, (1, 7), padding=(0, 3), groups=8), torch.randn(1, 8, 6, 10)),
        (nn.Conv3d(4, 6, (3, 1, 1), padding=(2, 0, 0), dilation=(2, 1, 1)), torch.randn(2, 4, 7, 5, 3)),
        (nn.Conv3d(4, 4, 3, stride=(1, 2, 2), padding=1, groups=2), torch.randn(1, 4, 5, 8, 8)),
    ]:
        norm = nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm3d
        bn = randomize_batchnorm(norm(conv.out_channels))
        with torch.no_grad():
            y = bn(conv(x))
            expected = y if act is None else act(y)
            folded = FoldedConv(conv, bn, act).eval()
            assert (folded(x) - expected).abs().max() < 1e-4
            residual = torch.randn_like(y)
            want = y + residual if act is None else act(y + residual)
            assert (folded(x, residual=residual) - want).abs().max() < 1e-4
            private = residual.clone()
            assert (folded(x, residual=private, overwrite_residual=True) - want).abs().max() < 1e-4


def test_fold_batchnorm_and_pointwise_layouts():
    torch.manual_seed(3)
    conv, bn = nn.Conv3d(5, 7, 1), randomize_batchnorm(nn.BatchNorm3d(7))
    w, b = fold_batchnorm(conv.weight, conv.bias, bn)
    x = torch.randn(2, 5, 3, 4, 6)
    with torch.no_grad():
        expected = bn(conv(x))
        for source in (x, x.contiguous(memory_format=torch.channels_last_3d)):
            for channels_last in (True, False):
                out = pointwise_conv(source, w.flatten(1), b, channels_last)
                assert out.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
                assert (out - expected).abs().max() < 1e-5
                twice = pointwise_conv(source, w.flatten(1), None, channels_last, out=out.clone())
                assert (twice - expected - (expected - b.view(1, -1, 1, 1, 1))).abs().max() < 1e-5


def test_deeppro_pooling_and_upsampling_pieces_match_torch():
    """The band pieces against the torch operations they replace: 2x2 frame max pools (odd sizes, NaN,
    channels-last input) and bilinear align_corners upsampling added as two matrix products."""
    g = torch.Generator().manual_seed(8)
    pool = FramePool2x2()
    for shape in [(1, 3, 4, 5, 7), (2, 8, 3, 4, 4)]:
        x = torch.randn(shape, generator=g)
        x[0, 0, 0, 1, 1] = float("nan")
        for inp in (x, x.contiguous(memory_format=torch.channels_last_3d)):
            assert torch.equal(pool(inp).isnan(), nn.functional.max_pool3d(inp, (1, 2, 2)).isnan())
            got, want = pool(inp).nan_to_num(), nn.functional.max_pool3d(inp, (1, 2, 2)).nan_to_num()
            assert torch.equal(got, want)
    assert FramePool2x2.matches(nn.MaxPool3d((1, 2, 2)))
    assert not FramePool2x2.matches(nn.MaxPool3d((1, 2, 2), ceil_mode=True))
    assert not FramePool2x2.matches(nn.MaxPool3d(2))
    for (h, w), (height, width) in [((4, 5), (9, 11)), ((1, 3), (4, 6)), ((32, 32), (128, 128)),
                                    ((90, 100), (180, 201))]:  # the last one through F.interpolate
        z = torch.randn(6, h, w, generator=g)
        total = torch.randn(6, height, width, generator=g)
        want = total + nn.functional.interpolate(z[None], size=(height, width), mode="bilinear",
                                                 align_corners=True)[0]
        _add_upsampled(total, z)
        assert (total - want).abs().max() < 1e-5


def test_options_that_need_a_gpu_are_harmless_on_cpu():
    torch.manual_seed(4)
    model = randomize_batchnorm(nets.build_model("deeppro", seqlen=6))
    x = torch.randn(1, 1, 6, 8, 8)
    with torch.no_grad():
        expected = model(x)
    graphed = optimize_for_inference(model, cuda_graph=True)
    assert (graphed(x) - expected).abs().max() < ATOL
    low = optimize_for_inference(model, amp=torch.bfloat16)(x)  # reduced precision: outside the contract
    assert low.shape == expected.shape and torch.isfinite(low).all()


# ---------------------------------------------------------------- official DeepPro weights


@pytest.mark.parametrize("name, tag", [("deeppro", "deeppro"), ("deeppro_plus", "deeppro_plus")])
def test_official_checkpoints_reproduce_reference_logits(ref_dir, name, tag):
    folder = ref_dir / "deeppro"
    label = {"deeppro": "DeepPro", "deeppro_plus": "DeepPro-Plus"}[name]
    model = nets.load_official(nets.build_model(name), folder / f"ckpt_{label}_NUDT-MIRSDT_best_model.pth")
    ref = torch.load(folder / f"outputs_a_{tag}_nudt.pt", weights_only=True)
    torch.manual_seed(0)
    x = torch.rand(1, 1, 40, 64, 64)
    for tile_pixels in (0, 512):
        logits, feats = optimize_for_inference(model, tile_pixels=tile_pixels)(x, return_feats=True)
        assert (logits - ref["logits"]).abs().max() < ATOL
        assert (feats - ref["feats"]).abs().max() < ATOL


# ---------------------------------------------------------------- benchmark smoke run


def test_speed_benchmark_quick_mode(tmp_path):
    speed = bench_module("speed")
    out = tmp_path / "speed.json"
    speed.main(["--quick", "--device", "cpu", "--threads", "1", "--json", str(out)])
    records = json.loads(out.read_text())
    assert {r["model"] for r in records} == set(speed.MODELS)
    for r in records:
        assert {"model", "input", "device", "eager_ms", "fast_ms", "max_abs_diff"} <= set(r)
        assert r["eager_ms"] > 0 and r["fast_ms"] > 0 and r["max_abs_diff"] < ATOL


def test_deeppro_speed_benchmark_against_the_eager_model(tmp_path, capsys):
    """bench/deeppro_speed.py without --authors: our eager model as the reference, same logits."""
    deeppro_speed = bench_module("deeppro_speed")
    out = tmp_path / "dp.json"
    deeppro_speed.main(["--shape", "1x1x6x12x16", "--rounds", "1", "--threads", "1", "--json", str(out)])
    records = json.loads(out.read_text())
    assert [r["model"] for r in records] == list(deeppro_speed.MODELS)
    for r in records:
        assert r["reference"] == "eager" and r["fast_s"] > 0 and r["max_abs_diff"] < 1e-4
    assert "deeppro_plus" in capsys.readouterr().out
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="no DeepPro.py found"):
        deeppro_speed.main(["--authors", str(tmp_path), "--models", "deeppro", "--rounds", "1"])


@pytest.mark.parametrize("name, kwargs, shape", [
    ("deeppro", {}, (1, 1, 40, 16, 20)),
    ("stmenet", {"variant": "irdst"}, (1, 3, 5, 64, 64)),
])
def test_for_evaluation_modes(name, kwargs, shape):
    """The scripts' --fast switch: auto and on give the fast path on the CPU, off the eager model; the
    attributes the scripts read off a model stay visible, and the outputs agree."""
    from nets.fast import FAST_MODES, for_evaluation

    model = randomize_batchnorm(nets.build_model(name, **kwargs)).train()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    eager = for_evaluation(model, "off")
    assert eager is model and not model.training
    with torch.no_grad():
        ref = eager(x)
    for mode in ("auto", "on"):
        fast = for_evaluation(model, mode)
        assert isinstance(fast, InferenceModel)
        for attr in ("num_frames", "seqlen", "stride", "variant"):
            if hasattr(model, attr):
                assert getattr(fast, attr) == getattr(model, attr)
        assert (fast(x) - ref).abs().max().item() < ATOL
    assert FAST_MODES == ("auto", "on", "off")
    with pytest.raises(ValueError, match="fast must be one of"):
        for_evaluation(model, "yes")


# ---------------------------------------------------------------- structure: generic rules, companions


class _Unknown(nn.Module):
    """A model the fast path has never heard of: no rewrite module, a custom block, standard layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.custom = _Gate()
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.custom(self.features(x)))


class _Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.bn(self.conv(x)))


def test_model_without_rewrites_gets_generic_folding():
    torch.manual_seed(6)
    model = randomize_batchnorm(_Unknown())
    fast = optimize_for_inference(model)
    net = fast.model
    assert isinstance(net.features, FoldedConv) and isinstance(net.features.act, nn.SiLU)
    assert isinstance(net.custom, _Gate) and isinstance(net.custom.conv, FoldedConv)
    assert isinstance(net.custom.bn, nn.BatchNorm2d)  # not a conv-BN unit the fast path knows: kept
    assert isinstance(net.out, FoldedConv)
    _check(model, fast, torch.randn(2, 3, 9, 7))


def test_rewrites_live_beside_their_models():
    """nets.fast imports no model; a model's companion is imported when a model that needs it is rewritten."""
    code = ("import sys, torch.nn as nn; from nets.fast import optimize_for_inference; "
            "assert not {'nets.deeppro', 'nets.stmenet'} & set(sys.modules); "
            "optimize_for_inference(nn.Sequential(nn.Conv2d(1, 2, 1))); "
            "assert not {'nets.deeppro_fast', 'nets.stmenet_fast'} & set(sys.modules); "
            "import nets; optimize_for_inference(nets.build_model('deeppro', seqlen=4)); "
            "assert 'nets.deeppro_fast' in sys.modules and 'nets.stmenet_fast' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cuda_graph_cache_keeps_the_most_recent_shapes(monkeypatch):
    """The cache logic on the CPU, with the capture mocked: at most `max_graphs` graphs, least recently used
    evicted first, a hit captures nothing."""
    fast = InferenceModel(nn.Identity(), cuda_graph=True, max_graphs=2)
    captured = []
    monkeypatch.setattr(fast, "_capture", lambda x: captured.append(tuple(x.shape)) or (len(captured),))
    shapes = [(1, 4), (2, 4), (1, 4), (3, 4), (2, 4), (1, 4)]
    entries = [fast._graph_for(torch.zeros(s)) for s in shapes]
    assert captured == [(1, 4), (2, 4), (3, 4), (2, 4), (1, 4)]  # (2, 4) was evicted by (3, 4), then (1, 4)
    assert entries[2] == entries[0] and len(fast._graphs) == 2
    assert [k[0] for k in fast._graphs] == [(2, 4), (1, 4)]
    assert not copy.deepcopy(fast)._graphs  # captured graphs are never copied
    with pytest.raises(ValueError, match="max_graphs"):
        InferenceModel(nn.Identity(), max_graphs=0)


# ---------------------------------------------------------------- CSAM under autocast


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_csam_energy_stays_finite_under_autocast(dtype):
    """A 64x64 map (512 input, stride 8) whose channels' RMS is 6: `X X^T` overflows float16 (the old
    formulation gives inf, then NaN attention); CSAM and FastCSAM keep the energy in float32."""
    torch.manual_seed(7)
    x = 6 * torch.randn(1, 16, 64, 64)
    csam = CSAM()
    with torch.no_grad():
        csam.gamma.fill_(0.5)
        expected = csam(x)
        flat = x.reshape(1, 16, -1)
        with torch.autocast("cpu", dtype=dtype):
            old = torch.bmm(flat, flat.transpose(1, 2))
            old = torch.softmax(old.amax(dim=-1, keepdim=True) - old, dim=-1)
        assert old.isnan().any() == (dtype == torch.float16)  # the hazard is real in float16 only
        for layer, inp in ((csam, x), (FastCSAM(csam), x.contiguous(memory_format=torch.channels_last))):
            with torch.autocast("cpu", dtype=dtype):
                got = layer(inp)
            assert torch.isfinite(got).all()
            assert ((got.float() - expected).abs() / expected.abs().amax()).max() < 2e-2
