"""STMENet: parity with the authors' model, official-key conversion, shapes, errors, training helpers."""

from __future__ import annotations

import json

import pytest
import torch

import nets
from nets.stmenet import CSAM, STMENet, init_weights, param_groups

PARAMS_ITSDT = 9_851_409  # the authors' 9,909,777 minus their 58,368 unused fusion parameters
PARAMS_IRDST = 9_934_353  # the authors' count: the IRDST variant has no unused parameters
DEAD_PARAMS = 58_368


@pytest.fixture(scope="module")
def itsdt() -> STMENet:
    return nets.build_model("stmenet", variant="itsdt")


@pytest.fixture(scope="module")
def irdst() -> STMENet:
    return nets.build_model("stmenet", variant="irdst")


def _random_state_dict(listing: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the listed keys and shapes, small random weights and sane BN statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, spec in listing.items():
        shape = spec["shape"]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


def _clip(t: int = 5, h: int = 64, w: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# Parity with the authors' model
# ----------------------------------------------------------------------------------------------------------
def test_parity_with_reference_outputs(ref_dir, itsdt):
    folder = ref_dir / "stmenet"
    model = nets.load_official(itsdt, folder / "STME_scaledinit_state_dict.pt").eval()
    torch.manual_seed(2)
    x = torch.randn(1, 3, 5, 256, 320)
    with torch.no_grad():
        feats = model.features(x)
        out = model(x)
    expected = torch.load(folder / "STME_scaledinit_outputs_b.pt", weights_only=True)["head_outputs"][0]
    assert out.shape == expected.shape == (1, 6, 32, 40)
    assert (out - expected).abs().max().item() < 1e-3
    assert torch.equal(out, feats["head"])
    inter = torch.load(folder / "STME_scaledinit_intermediates_b.pt", weights_only=True)
    for ours, theirs in [("f1", "backbone.out0"), ("f3", "backbone.out2"), ("temporal", "backbone_3d"),
                         ("encoder1", "cls_channel_encoders1"), ("encoder3", "cls_channel_encoders3"),
                         ("fusion", "feature_fusion")]:
        assert feats[ours].shape == inter[theirs].shape, ours
        assert (feats[ours] - inter[theirs]).abs().max().item() < 1e-3, ours


def test_irdst_state_dict_loads_strictly_and_runs(ref_dir, irdst):
    listing = json.loads((ref_dir / "stmenet" / "STME_IRDST_state_dict_keys.json").read_text())
    assert len(listing) == 729
    state = _random_state_dict(listing)
    model = nets.load_official(irdst, {f"module.{k}": v for k, v in state.items()}).eval()
    # the IRDST-only fusion block lands where it should, and every tensor comes back under its own name
    squeeze = model.fusion.refine.squeeze.conv.weight
    assert torch.equal(squeeze, state["feature_fusion.C3_p4.conv1.conv.weight"])
    back = model.to_official()
    assert set(back) == set(listing)
    assert all(torch.equal(back[k], state[k]) for k in listing)
    with torch.no_grad():
        out = model(_clip())
    assert out.shape == (1, 6, 8, 12) and torch.isfinite(out).all()


def test_official_key_conversion_counts(ref_dir, itsdt):
    listing = json.loads((ref_dir / "stmenet" / "STME_state_dict_keys.json").read_text())
    assert len(listing) == 747
    state = _random_state_dict(listing)
    ours, dropped = itsdt.convert_official(state)
    # 18 dead parameter tensors plus their 18 BatchNorm buffers are dropped; the other 729 - 18 = 711 map
    assert len(dropped) == 36
    assert all(k.startswith(("feature_fusion.C3_p4.", "feature_fusion.C3_p3.")) for k in dropped)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(state[k].numel() for k in dropped if not k.endswith(buffers)) == DEAD_PARAMS
    assert set(ours) == set(itsdt.state_dict()) and len(ours) == 711
    back = itsdt.to_official(ours)
    assert set(back) == set(listing) - set(dropped)
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_wrong_checkpoints_raise_clear_errors(ref_dir, itsdt, irdst):
    folder = ref_dir / "stmenet"
    irdst_state = _random_state_dict(json.loads((folder / "STME_IRDST_state_dict_keys.json").read_text()))
    with pytest.raises(ValueError, match="variant='irdst'"):
        nets.load_official(itsdt, irdst_state)
    with pytest.raises(ValueError, match="variant='itsdt'"):
        nets.load_official(irdst, folder / "STME_scaledinit_state_dict.pt")
    itsdt_state = _random_state_dict(json.loads((folder / "STME_state_dict_keys.json").read_text()))
    itsdt_state["head.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="1 unexpected"):
        nets.load_official(itsdt, itsdt_state)
    del itsdt_state["head.extra.weight"], itsdt_state["head.stems.0.conv.weight"]
    with pytest.raises(ValueError, match="1 missing"):
        nets.load_official(itsdt, itsdt_state)


# ----------------------------------------------------------------------------------------------------------
# Architecture, shapes, errors
# ----------------------------------------------------------------------------------------------------------
def test_parameter_counts(itsdt, irdst):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(itsdt) == PARAMS_ITSDT
    assert count(irdst) == PARAMS_IRDST
    # per-module counts of the authors' model (summary.json), dead fusion blocks excluded
    assert count(itsdt.spatial) == 4_212_672
    assert count(itsdt.temporal) == 821_996
    assert [count(e) for e in itsdt.encoders] == [762_997, 779_381, 812_149]
    assert count(itsdt.encoders[0].refine) == 375_028
    assert count(itsdt.fusion) == 124_416 - DEAD_PARAMS
    assert count(irdst.fusion) == 148_992
    assert count(itsdt.head) == 2_396_166
    assert nets.build_model("stmenet", variant="daub").state_dict().keys() == itsdt.state_dict().keys()


@pytest.mark.parametrize("hw", [(64, 96), (128, 128), (96, 32)])
def test_output_shapes(itsdt, hw):
    with torch.no_grad():
        out = itsdt.eval()(torch.randn(2, 3, 5, *hw))
    assert out.shape == (2, 6, hw[0] // 8, hw[1] // 8)


def test_clip_lengths_3_to_8(irdst):
    irdst.eval()
    with torch.no_grad():
        for t in range(3, 9):
            assert irdst(_clip(t=t, h=64, w=64)).shape == (1, 6, 8, 8)


def test_num_classes():
    model = nets.build_model("stmenet", num_classes=3).eval()
    with torch.no_grad():
        assert model(_clip(h=32, w=32)).shape == (1, 8, 4, 4)


@pytest.mark.parametrize(
    "shape, match",
    [((3, 5, 64, 64), "5-D"), ((1, 1, 5, 64, 64), "3 channels"), ((1, 3, 5, 60, 64), "multiples of 32"),
     ((1, 3, 5, 64, 100), "multiples of 32")],
)
def test_bad_input_shapes(itsdt, shape, match):
    with pytest.raises(ValueError, match=match) as err:
        itsdt(torch.zeros(shape))
    assert "\n" not in str(err.value)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="variant"):
        nets.build_model("stmenet", variant="sirst")
    with pytest.raises(ValueError, match="num_classes"):
        nets.build_model("stmenet", num_classes=0)


def test_train_and_eval_return_the_same_layout(itsdt):
    x = _clip(h=64, w=64)
    itsdt.train()
    out_train = itsdt(x)
    itsdt.eval()
    with torch.no_grad():
        out_eval = itsdt(x)
    assert out_train.shape == out_eval.shape == (1, 6, 8, 8)
    itsdt.zero_grad()
    out_train.square().mean().backward()
    assert all(e.csam.gamma.grad is not None and e.csam.gamma.grad.abs().item() > 0 for e in itsdt.encoders)


# ----------------------------------------------------------------------------------------------------------
# Initialisation and optimiser groups
# ----------------------------------------------------------------------------------------------------------
def test_init_weights_follows_the_authors_recipe():
    torch.manual_seed(0)
    itsdt = nets.build_model("stmenet")
    with torch.no_grad():
        for m in itsdt.modules():
            if isinstance(m, CSAM):
                m.gamma.fill_(1.0)
    init_weights(itsdt)
    head_conv = itsdt.head.cls_convs[0].conv.weight
    assert abs(head_conv.std().item() - 0.02) < 2e-3 and abs(head_conv.mean().item()) < 1e-3
    bn = itsdt.head.stem.bn
    assert bn.eps == 1e-3 and bn.momentum == 0.03 and torch.all(bn.bias == 0)
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and bn.weight.std().item() > 0
    assert itsdt.encoders[0].conv1.bn.eps == 1e-5
    bn3d = itsdt.temporal.stem.bn
    assert torch.all(bn3d.weight == 1) and torch.all(bn3d.bias == 0)  # PyTorch defaults
    assert all(e.csam.gamma.item() == 0 for e in itsdt.encoders)
    # conv biases keep PyTorch's uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) default
    bias = itsdt.head.obj_pred.bias
    assert bias.abs().max().item() <= 1 / 256**0.5


def test_param_groups(itsdt):
    groups = param_groups(itsdt, 5e-4)
    decay, no_decay = groups[0]["params"], groups[1]["params"]
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    ids = [id(p) for p in decay + no_decay]
    assert len(ids) == len(set(ids)) == len(list(itsdt.parameters()))
    in_no_decay = {id(p) for p in no_decay}
    assert all(id(e.csam.gamma) in in_no_decay for e in itsdt.encoders)
    assert id(itsdt.temporal.stem.bn.weight) in in_no_decay
    assert id(itsdt.head.stem.bn.weight) in in_no_decay and id(itsdt.head.obj_pred.bias) in in_no_decay
    assert all(p.dim() > 1 for p in decay)
    # the authors' counts: 8,608 BN2d weights, 28,940 biases, 9,872,226 weights incl. BN3d; minus dead blocks
    bn3d = sum(m.weight.numel() for m in itsdt.temporal.modules() if isinstance(m, torch.nn.BatchNorm3d))
    assert sum(p.numel() for p in no_decay) == (8_608 - 512) + (28_940 - 512) + bn3d + 3
    torch.optim.SGD(groups, lr=1e-3, momentum=0.937, nesterov=True)
