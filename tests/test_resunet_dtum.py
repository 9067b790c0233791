"""Res-UNet + DTUM: size, key conversion, parity with the authors' outputs, direction codes and their ties."""

from __future__ import annotations

import json

import pytest
import torch

import nets
from nets.resunet_dtum import DirectionPool, ResUNetDTUM, direction_code


def _official(ref_dir) -> ResUNetDTUM:
    model = nets.build_model("resunet_dtum")
    nets.load_official(model, ref_dir / "baselines" / "resunet_dtum" / "ResUNet_DTUM_para.pth")
    return model.eval()


def _outputs_a(ref_dir) -> dict:
    return torch.load(ref_dir / "baselines" / "resunet_dtum" / "outputs_a.pt", weights_only=True)


def test_parameter_count():
    model = nets.build_model("resunet_dtum")
    count = {name: sum(p.numel() for p in mod.parameters()) for name, mod in (("all", model),
             ("unet", model.unet), ("dtum", model.dtum))}  # fmt: skip
    assert count == {"all": 298_305, "unet": 227_808, "dtum": 70_497}
    assert model.num_frames == 5


def test_convert_official_maps_every_key(ref_dir):
    spec = json.loads((ref_dir / "baselines" / "resunet_dtum" / "ResUNet_DTUM_keys.json").read_text())
    assert len(spec) == 254
    fake = {k: torch.zeros(shape) for k, shape in spec.items()}
    model = nets.build_model("resunet_dtum")
    converted, dropped = model.convert_official(fake)
    own = model.state_dict()
    assert dropped == [] and set(converted) == set(own) and len(converted) == 254
    assert all(converted[k].shape == own[k].shape for k in own)
    with pytest.raises(ValueError, match="unexpected"):
        nets.load_official(model, {**fake, "DTUM.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        nets.load_official(model, {k: v for k, v in fake.items() if k != "DTUM.final.4.bias"})


def test_parity_float64_and_float32(ref_dir):
    ref = _outputs_a(ref_dir)
    model = _official(ref_dir)
    with torch.no_grad():
        logits32 = model(ref["input"])
        logits64 = model.double()(ref["input"].double())
    assert logits64.shape == (1, 1, 64, 64) and logits64.dtype == torch.float64
    assert (logits64 - ref["logits_fp64"]).abs().max() <= 1e-3  # the contract (measured: 2e-13)
    # float32 agreement on input A (measured 6.1e-5); float64 is the check that means something.
    assert (logits32 - ref["logits"]).abs().max() <= 1e-3
    assert torch.equal(ref["logits"], ref["authors_raw_output"].squeeze(2))
    assert ref["logits_fp64"].abs().max() > 100  # large logits: the check is not vacuous


def test_intermediates_input_a(ref_dir):
    """Layer-by-layer against the authors' fp32 intermediates; direction codes must be exactly equal."""
    path = ref_dir / "baselines" / "resunet_dtum" / "intermediates_a.pt"
    ref = torch.load(path, weights_only=True)["tensors"]
    model = _official(ref_dir)
    got: dict[str, list] = {}

    def keep(name):
        return lambda _m, _i, out: got.setdefault(name, []).append(
            tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()
        )

    modules = dict(model.named_modules())
    for ours in ("unet.conv0_0", "unet.conv3_0", "unet.conv0_3", "unet.final", "dtum.pool", "dtum.bn1_1",
                 "dtum.conv2_1", "dtum.bn2_1", "dtum.bn3_1", "dtum.bn4_1", "dtum.bn3_2", "dtum.bn2_2",
                 "dtum.bn1_2", "dtum.head_conv"):
        modules[ours].register_forward_hook(keep(ours))
    model.dtum.register_forward_pre_hook(lambda _m, inp: keep("dtum.input")(_m, None, inp[0]))
    with torch.no_grad():
        out = model(_outputs_a(ref_dir)["input"])

    pairs = {f"UNet.{k}[last frame]": got[f"unet.{k}"][0] for k in ("conv0_0", "conv3_0", "conv0_3", "final")}
    pairs["DTUM.input (UNet features of the 5 frames, time order)"] = got["dtum.input"][0]
    for k in ("bn1_1", "conv2_1", "bn2_1", "bn3_1", "bn4_1", "bn3_2", "bn2_2", "bn1_2"):
        pairs[f"DTUM.{k}"] = got[f"dtum.{k}"][0]
    pairs["DTUM.final.0"] = got["dtum.head_conv"][0]
    pairs["output (authors' [B,1,1,H,W])"] = out.unsqueeze(2)
    assert set(pairs) | {f"DTUM.direction[pool {i}]" for i in range(3)} == set(ref)
    for name, tensor in pairs.items():
        assert tensor.shape == ref[name].shape, name
        assert (tensor - ref[name]).abs().max() <= 1e-3, name
    assert len(got["dtum.pool"]) == 3
    for i, (_pooled, code) in enumerate(got["dtum.pool"]):
        assert torch.equal(code, ref[f"DTUM.direction[pool {i}]"]), i


def test_direction_code_first_maximum_wins_ties():
    """Four 2x2 windows per frame (H=2, W=8), one per code; frames and channels shift the flat indices."""
    # window values -> first maximum in row-major order (0,0), (0,1), (1,0), (1,1)
    windows = [
        ([[5.0, 5.0], [5.0, 5.0]], -1.5),  # four-way tie: top-left
        ([[1.0, 2.0], [2.0, 2.0]], -0.5),  # three-way tie from (0,1): top-right
        ([[0.0, 0.0], [3.0, 3.0]], 0.5),  # bottom row tie: bottom-left
        ([[0.0, 0.0], [0.0, 4.0]], 1.5),  # unique maximum bottom-right
    ]
    frame = torch.cat([torch.tensor(w) for w, _ in windows], dim=1)  # [2, 8]
    x = frame.expand(2, 3, 5, 2, 8).clone()  # B=2, C=3, T=5
    x[1, 2, 4] = frame.flip(1)  # mirrored windows in one frame: codes swap left/right
    pooled, code = DirectionPool()(x)
    expected = torch.tensor([c for _, c in windows])
    assert pooled.shape == code.shape == (2, 3, 5, 1, 4)
    assert torch.equal(code[0, 0, 0, 0], expected) and torch.equal(code[1, 1, 3, 0], expected)
    # the frame mirrored left-right: windows in reverse order, each mirrored; ties still go to (0,0) / (1,0)
    assert torch.equal(code[1, 2, 4, 0], torch.tensor([0.5, 0.5, -1.5, -1.5]))
    assert torch.equal(pooled[0, 0, 0, 0], torch.tensor([5.0, 2.0, 3.0, 4.0]))
    # the same codes from indices built by hand (flat into (T, H, W) = (5, 2, 8)): frame 3, window 1 at (1, 3)
    assert direction_code(torch.tensor([3 * 16 + 1 * 8 + 3]), 2, 8).item() == 1.5
    assert code.dtype == torch.float32


def test_bad_input_shapes():
    model = nets.build_model("resunet_dtum").eval()
    for shape, match in [((1, 1, 4, 16, 16), "T must be 5"), ((1, 3, 5, 16, 16), r"\[B, 1, 5, H, W\]"),
                         ((1, 5, 16, 16), r"\[B, 1, 5, H, W\]"), ((1, 1, 5, 20, 16), "multiples of 8"),
                         ((1, 1, 5, 16, 12), "multiples of 8")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            model(torch.zeros(shape))


def test_forward_backward_float64_and_the_detached_branch():
    """Train mode in float64: finite gradients; the authors' `.detach()` after conv2_2 cuts the whole
    direction-coded branch (conv2_1 ... conv2_2) off the loss, so it gets no gradient."""
    torch.manual_seed(0)
    model = nets.build_model("resunet_dtum").double().train()
    x = torch.randn(2, 1, 5, 16, 24, dtype=torch.float64)
    logits = model(x)
    assert logits.shape == (2, 1, 16, 24) and logits.dtype == torch.float64
    logits.square().mean().backward()
    d = model.dtum
    trained = [model.unet.conv0_0[0].conv1, d.bn0, d.conv1_1, d.conv1_2, d.head_conv, d.classifier]
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in trained)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    cut = [d.conv2_1, d.bn2_1, d.conv3_1, d.conv4_1, d.conv3_2, d.bn3_2, d.conv2_2, d.bn2_2]
    assert all(m.weight.grad is None for m in cut)
