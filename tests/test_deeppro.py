"""DeepPro / DeepPro-Plus: layers, shapes, key conversion and parity with the authors' checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import nets
from nets.deeppro import DeepPro, DeepProPlus, SpatialDiffConv3d, TemporalDiffConv3d, TPro
from utils.checkpoint import read_checkpoint

MODELS = {"deeppro": ("DeepPro", "deeppro"), "deeppro_plus": ("DeepPro-Plus", "deeppro_plus")}


def _ckpt_path(ref_dir, name: str, noise: bool = False):
    tag = MODELS[name][0]
    return ref_dir / "deeppro" / f"ckpt_{tag}_NUDT-MIRSDT{'-Noise' if noise else ''}_best_model.pth"


def _official(ref_dir, name: str, noise: bool = False) -> torch.nn.Module:
    model = nets.build_model(name)
    return nets.load_official(model, _ckpt_path(ref_dir, name, noise)).eval()


# ---------------------------------------------------------------- layers


def test_temporal_diff_kernel_is_second_difference_with_replicated_ends():
    conv = TemporalDiffConv3d(2, 3, (3, 1, 1))
    w, e = conv.weight, conv.effective_weight()
    assert torch.allclose(e[:, :, 0], w[:, :, 0] - w[:, :, 1])
    assert torch.allclose(e[:, :, 1], 2 * w[:, :, 1] - w[:, :, 0] - w[:, :, 2])
    assert torch.allclose(e[:, :, 2], w[:, :, 2] - w[:, :, 1])
    assert torch.allclose(e.sum(dim=2), torch.zeros(3, 2, 1, 1), atol=1e-6)
    # A constant-in-time signal is cancelled: only the bias remains (away from the zero-padded ends).
    conv = TemporalDiffConv3d(1, 2, (3, 3, 3), padding=(2, 1, 1), dilation=(2, 1, 1))
    x = torch.randn(1, 1, 1, 6, 5).expand(1, 1, 9, 6, 5)
    y = conv(x)
    assert y.shape == (1, 2, 9, 6, 5)
    assert torch.allclose(y[:, :, 2:-2], conv.bias.view(1, 2, 1, 1, 1).expand_as(y[:, :, 2:-2]), atol=1e-5)


def test_spatial_diff_kernel_adds_centre_minus_surround():
    conv = SpatialDiffConv3d(2, 3, (5, 7, 7), padding=(2, 3, 3))
    w, e = conv.weight, conv.effective_weight()
    centre = e[:, :, :, 3, 3]
    assert torch.allclose(centre, w.sum(dim=(3, 4)))
    mask = torch.ones(7, 7, dtype=torch.bool)
    mask[3, 3] = False
    assert torch.equal(e[..., mask], -w[..., mask])
    # Each slice sums to its raw centre tap: w_c x_c + sum_i w_i (x_c - x_i).
    assert torch.allclose(e.sum(dim=(3, 4)), w[:, :, :, 3, 3], atol=1e-5)
    x = torch.randn(1, 2, 6, 9, 8)
    assert torch.allclose(conv(x), F.conv3d(x, e, conv.bias, padding=(2, 3, 3)), atol=1e-5)


def test_difference_convs_train_their_raw_weights():
    for conv in (TemporalDiffConv3d(1, 2, (3, 1, 1)), SpatialDiffConv3d(1, 2, (3, 3, 3))):
        conv(torch.randn(1, 1, 5, 6, 6)).square().sum().backward()
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_tpro_heads_act_on_their_own_channel_groups():
    torch.manual_seed(0)
    tpro = TPro(channels=8, num_heads=4, seqlen=6).eval()
    for m in tpro.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 6, 3, 4)
    # Independent reference: group g = channels [2g, 2g+2) mixed over time by head g.
    w = torch.stack([h.weight for h in tpro.heads])  # [4, 6, 6]
    b = torch.stack([h.bias for h in tpro.heads])  # [4, 6]
    xg = x.view(2, 4, 2, 6, 3, 4) / 6**0.5
    mixed = torch.einsum("bgcthw,got->bgcohw", xg, w) + b.view(1, 4, 1, 6, 1, 1)
    expected = tpro.mix(torch.relu(tpro.bn(mixed.reshape(2, 8, 6, 3, 4))))
    with torch.no_grad():
        assert torch.allclose(tpro(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="heads"):
        TPro(channels=30, num_heads=4)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("name, n_params", [("deeppro", 49_129), ("deeppro_plus", 70_913)])
def test_parameter_count(name, n_params):
    assert sum(p.numel() for p in nets.build_model(name).parameters()) == n_params


@pytest.mark.parametrize("name, cls", [("deeppro", DeepPro), ("deeppro_plus", DeepProPlus)])
def test_shapes_odd_sizes_and_bad_input(name, cls):
    model = nets.build_model(name, seqlen=40)
    assert isinstance(model, cls)
    x = torch.randn(2, 1, 40, 7, 9)
    logits = model(x)
    assert logits.shape == (2, 40, 7, 9)
    logits2, feats = model(x, return_feats=True)
    assert feats.shape == (2, 8, 40, 7, 9) and torch.equal(logits, logits2)
    assert torch.equal(model.forward_features(x), feats)
    for bad in (torch.randn(1, 1, 39, 8, 8), torch.randn(1, 2, 40, 8, 8), torch.randn(1, 40, 8, 8)):
        with pytest.raises(ValueError, match="seqlen=40"):
            model(bad)
    short = nets.build_model(name, seqlen=6)
    assert short(torch.randn(1, 1, 6, 5, 4)).shape == (1, 6, 5, 4)
    if name == "deeppro":
        with pytest.raises(ValueError, match="at least 4x4"):
            short(torch.randn(1, 1, 6, 5, 3))


@pytest.mark.parametrize("name", ["deeppro", "deeppro_plus"])
def test_one_training_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = nets.build_model(name, seqlen=8).train()
    logits = model(torch.randn(2, 1, 8, 9, 10))
    F.binary_cross_entropy_with_logits(logits, (torch.rand_like(logits) > 0.9).float()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


# ---------------------------------------------------------------- official weights


@pytest.mark.parametrize("listing, name", [
    ("deeppro_nudt", "deeppro"), ("deeppro_noise", "deeppro"),
    ("deeppro_plus_nudt", "deeppro_plus"), ("deeppro_plus_noise", "deeppro_plus"),
])
def test_convert_official_maps_every_listed_key(ref_dir, listing, name):
    spec = json.loads((ref_dir / "deeppro" / f"state_dict_shapes_{listing}.json").read_text())["state_dict"]
    fake = {k: torch.zeros(v["shape"]) for k, v in spec.items()}
    model = nets.build_model(name)
    converted, dropped = model.convert_official(fake)
    assert dropped == [] and len(converted) == len(fake)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    with pytest.raises(ValueError, match="unexpected"):
        nets.load_official(model, {**fake, "extra.weight": torch.zeros(1)})


def test_load_official_reads_checkpoint_files(ref_dir):
    """nets.load_official must read the authors' files (numpy float64 pickled under 'class_avg_iou')."""
    for name in MODELS:
        for noise in (False, True):
            path = _ckpt_path(ref_dir, name, noise)
            ckpt = read_checkpoint(path)
            assert 0.0 < float(ckpt["class_avg_iou"]) < 1.0 and int(ckpt["epoch"]) >= 0
            model = nets.load_official(nets.build_model(name), path)
            assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["deeppro", "deeppro_plus"])
def test_parity_input_a(ref_dir, name):
    ref = torch.load(ref_dir / "deeppro" / f"outputs_a_{MODELS[name][1]}_nudt.pt", weights_only=True)
    model = _official(ref_dir, name)
    torch.manual_seed(0)
    x = torch.rand(1, 1, 40, 64, 64)
    with torch.no_grad():
        logits, feats = model(x, return_feats=True)
        logits64 = model.double()(x.double())
    assert (logits - ref["logits"]).abs().max() < 1e-3
    assert (feats - ref["feats"]).abs().max() < 1e-3
    assert (logits64 - ref["logits_f64"]).abs().max() < 1e-9
    assert ref["logits"].abs().max() > 1.0  # the check is not vacuous


# our module -> the authors' module whose output it reproduces (input C)
_LAYERS = {
    "deeppro": {
        "stem": "conv_in", "branches.0.block2": "layer1", "branches.1.block2": "layer2",
        "branches.2.block2": "layer3", "branches.0.tpro": "TPro1", "branches.1.tpro": "TPro2",
        "branches.2.tpro": "TPro3", "branches.0.proj": "conv_out1_1", "branches.1.proj": "conv_out1_2",
        "branches.2.proj": "conv_out1_3", "fuse": "conv_out2", "head": "final",
    },
    "deeppro_plus": {
        "stem": "conv_in", "block2": "layer1", "tpro": "TPro", "proj": "conv_out1", "head": "conv_out2",
    },
}


@pytest.mark.parametrize("name", ["deeppro", "deeppro_plus"])
def test_parity_input_c_layer_by_layer(ref_dir, name):
    ref = torch.load(ref_dir / "deeppro" / f"intermediates_c_{MODELS[name][1]}_nudt.pt", weights_only=True)
    model = _official(ref_dir, name)
    got = {}
    modules = dict(model.named_modules())
    for ours in _LAYERS[name]:
        modules[ours].register_forward_hook(lambda _m, _i, out, key=ours: got.__setitem__(key, out.clone()))
    torch.manual_seed(123)
    x = torch.randn(1, 1, 40, 16, 20)
    with torch.no_grad():
        logits, feats = model(x, return_feats=True)
    for ours, theirs in _LAYERS[name].items():
        assert got[ours].shape == ref[theirs].shape, ours
        assert (got[ours] - ref[theirs]).abs().max() < 1e-3, ours
    assert (logits - ref["__logits"]).abs().max() < 1e-3
    assert (feats - ref["__feats"]).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["deeppro", "deeppro_plus"])
def test_noise_checkpoints_load_and_run(ref_dir, name):
    """No reference outputs exist for the Noise weights: they must load strictly, differ from the clean
    weights, give finite outputs, and agree between float32 and float64."""
    noisy, clean = _official(ref_dir, name, noise=True), _official(ref_dir, name)
    torch.manual_seed(123)
    x = torch.randn(1, 1, 40, 16, 20)
    with torch.no_grad():
        out = noisy(x)
        out64 = noisy.double()(x.double())
        assert (out - clean(x)).abs().max() > 1e-2
    assert out.shape == (1, 40, 16, 20) and torch.isfinite(out).all()
    assert (out.double() - out64).abs().max() < 1e-3
