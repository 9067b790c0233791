"""utils.complexity: parameter counts and multiply-accumulates, checked against the authors' numbers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import nets
from nets.deeppro import SpatialDiffConv3d, TemporalDiffConv3d
from utils.complexity import count_macs, count_params, main, param_kilobytes
from utils.errors import ConfigError

_OWN_KEYS = ("conv3d", "tdiff", "sdiff", "linear", "total")


def test_hand_counted_layers():
    model = nn.Sequential(
        nn.Conv3d(2, 4, (3, 3, 3), padding=1),  # out [1, 4, 5, 6, 7]: 840 outputs x 2*27
        TemporalDiffConv3d(4, 3, (3, 1, 1), padding=(2, 0, 0), dilation=(2, 1, 1)),  # 630 x 4*3
        SpatialDiffConv3d(3, 2, (1, 3, 3), padding=(0, 1, 1)),  # 420 x 3*9
        nn.BatchNorm3d(2),  # 420 inputs x 4 (thop, affine)
        nn.Linear(7, 5),  # 300 outputs x 7
    )
    macs = count_macs(model, (1, 2, 5, 6, 7))
    assert macs["conv3d"] == 840 * 54
    assert macs["tdiff"] == 630 * 12
    assert macs["sdiff"] == 420 * 27
    assert macs["linear"] == 300 * 7
    assert macs["total"] == 840 * 54 + 630 * 12 + 420 * 27 + 300 * 7
    assert macs["thop_style"] == macs["total"] + 420 * 4
    assert count_params(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, key", [("deeppro", "DeepPro"), ("deeppro_plus", "DeepPro-Plus")])
def test_params_and_kilobytes_match_the_authors(ref_dir, name, key):
    ref = json.loads((ref_dir / "deeppro" / "complexity_and_latency.json").read_text())["params"]
    model = nets.build_model(name)
    assert count_params(model) == ref[key] == {"deeppro": 49_129, "deeppro_plus": 70_913}[name]
    assert param_kilobytes(model) == ref[f"{key}_fp32_bytes"] / 1024


@pytest.mark.parametrize("name", ["deeppro", "deeppro_plus"])
def test_macs_match_the_authors_at_every_size(ref_dir, name):
    ref = json.loads((ref_dir / "deeppro" / "complexity_and_latency.json").read_text())[f"{name}_nudt"]
    model = nets.build_model(name)
    assert "40x128x128" in ref and "40x480x720" in ref
    for size, numbers in ref.items():
        t, h, w = (int(v) for v in size.split("x"))
        macs = count_macs(model, (1, 1, t, h, w))
        assert {k: macs[k] for k in _OWN_KEYS} == numbers["own_macs"], size
        assert macs["thop_style"] == numbers["thop_with_diffconv_macs"], size
        assert macs["thop_style"] - macs["tdiff"] - macs["sdiff"] == numbers["thop_default_macs"], size
    # The papers' per-frame "GFLOPs" at 480x720: 5.3 (DeepPro) and 20.5 (DeepPro-Plus).
    per_frame = count_macs(model, (1, 1, 40, 480, 720))["thop_style"] / 40 / 1e9
    assert round(per_frame, 1) == {"deeppro": 5.3, "deeppro_plus": 20.5}[name]


@pytest.mark.parametrize("name", ["deeppro", "deeppro_plus"])
def test_meta_count_equals_a_real_run_and_leaves_the_model_alone(name):
    model = nets.build_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shape = (1, 1, 40, 9, 11)  # odd size: the pools floor
    assert count_macs(model, shape) == count_macs(model, shape, device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError):
        count_macs(model, (1, 1, 40, 0, 8))


def test_cli_prints_params_kb_and_gmacs(capsys):
    main(["--model", "deeppro", "--size", "40x480x720"])
    out = capsys.readouterr().out
    assert "49,129" in out and "191.9 KB" in out
    assert "193.094" in out and "4.8273" in out  # own count per clip / per frame
    assert "213.802" in out and "5.3450" in out  # thop-style per clip / per frame
    with pytest.raises(ConfigError, match="TxHxW"):
        main(["--size", "480x720"])


def test_resunet_dtum_counts_match_the_published_numbers():
    """Baselines README: 39.90 G (conv MACs, 5-frame clip, 512x512) = 5 x 3.85 G UNet + 20.63 G DTUM,
    24.49 G per frame with the test loop's feature cache; DeepPro table: "54.0 GFLOPs (480*720)" =
    thop-style MACs of one 5-frame clip."""
    model = nets.build_model("resunet_dtum")
    clip = count_macs(model, (1, 1, 5, 512, 512))
    unet = count_macs(model.unet, (1, 3, 512, 512))
    dtum = count_macs(model.dtum, (1, 32, 5, 512, 512))
    assert unet["total"] == unet["conv2d"] == 3_854_565_376
    assert dtum["total"] == dtum["conv3d"] == 20_631_781_376
    assert clip["conv2d"] == 5 * unet["total"] and clip["conv3d"] == dtum["total"]
    assert clip["total"] == 39_904_608_256 and round(clip["total"] / 1e9, 2) == 39.90
    assert round((unet["total"] + dtum["total"]) / 1e9, 2) == 24.49  # one new frame per call, cached features
    big = count_macs(model, (1, 1, 5, 480, 720))
    assert big["total"] == 52_608_614_400
    assert big["thop_style"] == 53_979_264_000 and round(big["thop_style"] / 1e9, 1) == 54.0


def test_resunet_dtum_meta_count_equals_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = nets.build_model("resunet_dtum").eval()
    shape = (1, 1, 5, 16, 24)
    macs = count_macs(model, shape)
    assert macs == count_macs(model, shape, device="cpu")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(shape))
    assert macs["total"] * 2 == counter.get_total_flops()


def test_cli_resunet_dtum_reads_a_one_channel_clip(capsys):
    main(["--model", "resunet_dtum", "--size", "5x480x720"])
    out = capsys.readouterr().out
    assert "[1, 1, 5, 480, 720]" in out and "298,305" in out and "1165.3 KB" in out
    assert "52.609" in out and "53.979" in out
