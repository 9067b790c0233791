"""DeepPro and DeepPro-Plus: per-pixel detection of moving infrared small targets from temporal profiles.

Paper: "Probing Deep into Temporal Profile Makes the Infrared Small Target Detector Much Better".
Both networks read a clip `[B, 1, T, H, W]` (T = `seqlen`, 40 in the paper) of normalised grey frames and
return per-pixel logits `[B, T, H, W]` for every frame; `forward_features` also gives the 8-channel
features `[B, 8, T, H, W]` that precede the 1x1x1 classifier.

Building blocks:
- `TemporalDiffConv3d`: a Conv3d whose effective kernel is the second difference over time of the stored
  weight (ends replicated), so its taps sum to zero along time.
- `SpatialDiffConv3d`: a Conv3d whose effective kernel adds centre-minus-surround differences in every
  time slice.
- `TPro`: per-pixel, per-head Linear(T -> T) over the temporal profile of the features.
- `TDResBlock` / `STDResBlock`: residual blocks built from the difference convs.

Weights are stored raw (as in the authors' code) and the effective kernels are rebuilt in every forward.
Initialisation is PyTorch's default everywhere, as in the authors' code (the difference convs use the same
Kaiming-uniform rule as `nn.Conv3d`). `convert_official` maps the authors' checkpoint keys to ours.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import register_model

FAST_REWRITES = "nets.deeppro_fast"  # rewrites for nets.fast.optimize_for_inference

__all__ = [
    "ConvBNAct",
    "DeepPro",
    "DeepProPlus",
    "DiffResBlock",
    "STDResBlock",
    "SpatialDiffConv3d",
    "TDResBlock",
    "TPro",
    "TemporalDiffConv3d",
]



class TemporalDiffConv3d(nn.Conv3d):
    """Conv3d with the kernel `w'[k] = 2 w[k] - w[min(k+1, K-1)] - w[max(k-1, 0)]` over the K time taps.

    `x [B, Cin, T, H, W] -> [B, Cout, T', H', W']` exactly as `nn.Conv3d` with the same arguments.
    """

    def effective_weight(self) -> torch.Tensor:
        """The kernel actually applied, `[Cout, Cin/groups, kT, kH, kW]`."""
        w = self.weight
        k = w.shape[2]
        taps = torch.arange(k, device=w.device)
        nxt = w.index_select(2, (taps + 1).clamp(max=k - 1))
        prv = w.index_select(2, (taps - 1).clamp(min=0))
        return 2 * w - nxt - prv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class SpatialDiffConv3d(nn.Conv3d):
    """Conv3d with the kernel `-w`, except the spatial centre tap of each time slice, which becomes
    `sum_{h,w} w[..., t, :, :]`. Per slice the response is `w_c x_c + sum_{i != c} w_i (x_c - x_i)`:
    the centre tap plus learned centre-minus-surround differences.

    `x [B, Cin, T, H, W] -> [B, Cout, T', H', W']` exactly as `nn.Conv3d` with the same arguments.
    """

    def effective_weight(self) -> torch.Tensor:
        """The kernel actually applied, `[Cout, Cin/groups, kT, kH, kW]`."""
        w = self.weight
        kh, kw = w.shape[3], w.shape[4]
        centre = torch.zeros(kh, kw, dtype=torch.bool, device=w.device)
        centre[kh // 2, kw // 2] = True
        return torch.where(centre, torch.sum(w, dim=[3, 4], keepdim=True), -w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class ConvBNAct(nn.Module):
    """`conv` -> BatchNorm3d -> ReLU (optional). `x [B, Cin, T, H, W] -> [B, Cout, T', H', W']`."""

    def __init__(self, conv: nn.Conv3d, act: bool = True) -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm3d(conv.out_channels)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _pointwise(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=1)


class DiffResBlock(nn.Module):
    """conv1 (temporal difference) -> BN -> ReLU -> conv2 -> BN -> ReLU -> 1x1x1 conv -> BN, plus a
    1x1x1 conv + BN shortcut; sum, ReLU. Shapes keep T, H, W: `[B, Cin, T, H, W] -> [B, Cout, T, H, W]`."""

    def __init__(self, conv1: nn.Conv3d, conv2: nn.Conv3d) -> None:
        super().__init__()
        cin, cout = conv1.in_channels, conv1.out_channels
        self.conv1 = conv1
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = conv2
        self.bn2 = nn.BatchNorm3d(cout)
        self.conv3 = _pointwise(cout, cout)
        self.bn3 = nn.BatchNorm3d(cout)
        # The authors' blocks always change the width, so the projection shortcut always exists.
        self.skip = ConvBNAct(_pointwise(cin, cout), act=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.skip(x))


class TDResBlock(DiffResBlock):
    """Temporal-only residual block (kernels (3,1,1)): temporal difference conv with dilation 2 in time,
    then a plain (3,1,1) conv. `[B, Cin, T, H, W] -> [B, Cout, T, H, W]`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            TemporalDiffConv3d(in_channels, out_channels, (3, 1, 1), padding=(2, 0, 0), dilation=(2, 1, 1)),
            nn.Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0)),
        )


class STDResBlock(DiffResBlock):
    """Spatio-temporal residual block (kernels (3,3,3)): temporal difference conv (dilation (2,1,1)), then
    a spatial difference conv (dilation (1,2,2)). `[B, Cin, T, H, W] -> [B, Cout, T, H, W]`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            TemporalDiffConv3d(in_channels, out_channels, (3, 3, 3), padding=(2, 1, 1), dilation=(2, 1, 1)),
            SpatialDiffConv3d(out_channels, out_channels, (3, 3, 3), padding=(1, 2, 2), dilation=(1, 2, 2)),
        )


class TPro(nn.Module):
    """Temporal profile mixing. The channels are split into `num_heads` contiguous groups; head i applies
    its own Linear(seqlen -> seqlen) along time to every pixel's profile (input scaled by 1/sqrt(seqlen)),
    then BN -> ReLU -> 1x1x1 conv -> BN -> ReLU. `x [B, C, T, H, W] -> [B, C, T, H, W]`, T == seqlen.
    """

    def __init__(self, channels: int = 32, num_heads: int = 8, seqlen: int = 40) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"TPro: {channels} channels do not split into {num_heads} heads")
        self.seqlen = seqlen
        self.num_heads = num_heads
        self.heads = nn.ModuleList(nn.Linear(seqlen, seqlen) for _ in range(num_heads))
        self.bn = nn.BatchNorm3d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.mix = ConvBNAct(_pointwise(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, T, H, W] -> [B, H, W, C, T]: Linear acts on the last (time) axis.
        profile = x.permute(0, 3, 4, 1, 2) / (self.seqlen**0.5)
        groups = profile.chunk(self.num_heads, dim=3)
        out = torch.cat([head(g) for head, g in zip(self.heads, groups)], dim=3)
        out = out.permute(0, 3, 4, 1, 2)  # back to [B, C, T, H, W]
        return self.mix(self.relu(self.bn(out)))


def check_clip(x: torch.Tensor, seqlen: int, name: str) -> None:
    """Raise ValueError (one line) unless `x` is a clip `[B, 1, seqlen, H, W]`."""
    if x.dim() != 5 or x.shape[1] != 1 or x.shape[2] != seqlen:
        raise ValueError(
            f"{name} expects a clip [B, 1, {seqlen}, H, W] (T must equal seqlen={seqlen}), "
            f"got {list(x.shape)}"
        )


StateDict = dict[str, torch.Tensor]


def _rename(state_dict: StateDict, rules: list) -> StateDict:
    """Apply the first matching regex rule to each key; keys no rule matches are kept unchanged (the
    strict loader then reports them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in rules:
            if re.match(pattern, key):
                new = re.sub(pattern, repl, key)
                break
        out[new] = value
    return out


# Renames inside the residual blocks and TPro (authors' name -> ours), applied after the prefix rules.
_INNER_RULES = [
    (r"^(.*)\.shortcut\.0\.", r"\1.skip.conv."),
    (r"^(.*)\.shortcut\.1\.", r"\1.skip.bn."),
    (r"^(.*tpro)\.QK_heads\.", r"\1.heads."),
    (r"^(.*tpro)\.norm1\.", r"\1.bn."),
    (r"^(.*tpro)\.conv\.0\.", r"\1.mix.conv."),
    (r"^(.*tpro)\.conv\.1\.", r"\1.mix.bn."),
]


def _convert(state_dict: StateDict, prefix_rules: list) -> StateDict:
    """Authors' keys -> ours: top-level prefixes first, then the residual-block and TPro internals."""
    return _rename(_rename(state_dict, prefix_rules), _INNER_RULES)


class _ProfileBranch(nn.Module):
    """One DeepPro scale: [pool] TD(8,16) [pool] TD(16,32) -> TPro(32, 4 heads) -> 1x1x1 conv 32->8.
    `[B, 8, T, H, W] -> [B, 8, T, H/s, W/s]` with s = 1, 2 or 4 (pools floor)."""

    def __init__(self, pool_before: tuple[bool, bool], seqlen: int) -> None:
        super().__init__()
        self.pool1 = nn.MaxPool3d((1, 2, 2)) if pool_before[0] else nn.Identity()
        self.block1 = TDResBlock(8, 16)
        self.pool2 = nn.MaxPool3d((1, 2, 2)) if pool_before[1] else nn.Identity()
        self.block2 = TDResBlock(16, 32)
        self.tpro = TPro(32, num_heads=4, seqlen=seqlen)
        self.proj = ConvBNAct(_pointwise(32, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.pool2(self.block1(self.pool1(x))))
        return self.proj(self.tpro(x))


class _TemporalProbe(nn.Module):
    """What DeepPro and DeepPro-Plus share: `forward_features` (defined by each) feeding the 1x1x1
    classifier `head`."""

    def forward(self, x: torch.Tensor, return_feats: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """`x [B, 1, T, H, W] -> logits [B, T, H, W]`; with `return_feats=True` also the features
        `[B, 8, T, H, W]` as `(logits, feats)`."""
        feats = self.forward_features(x)
        logits = self.head(feats).squeeze(1)
        return (logits, feats) if return_feats else logits


@register_model("deeppro", task="segment")
class DeepPro(_TemporalProbe):
    """DeepPro (49,129 parameters): temporal-only convs at three scales, each followed by TPro.

    `x [B, 1, seqlen, H, W] -> logits [B, seqlen, H, W]` (any H, W; coarse scales are upsampled back
    bilinearly with align_corners=True).
    """

    def __init__(self, seqlen: int = 40) -> None:
        super().__init__()
        self.seqlen = seqlen
        self.stem = ConvBNAct(nn.Conv3d(1, 8, (5, 1, 1), padding=(2, 0, 0)))
        self.branches = nn.ModuleList(
            _ProfileBranch(pools, seqlen) for pools in ((False, False), (True, False), (True, True))
        )
        self.fuse = ConvBNAct(_pointwise(3 * 8, 8))
        self.head = _pointwise(8, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, 1, T, H, W] -> feats [B, 8, T, H, W]` (input of the 1x1x1 classifier)."""
        check_clip(x, self.seqlen, type(self).__name__)
        h, w = x.shape[-2:]
        if min(h, w) < 4:
            raise ValueError(f"DeepPro pools twice by 2: frames must be at least 4x4, got {h}x{w}")
        stem = self.stem(x)
        scales = []
        for branch in self.branches:
            y = branch(stem)
            b, c, t, hy, wy = y.shape
            if (hy, wy) != (h, w):
                # 2-D upsampling of every frame: [B, C*T, h, w] -> [B, C*T, H, W].
                y = y.reshape(b, c * t, hy, wy)
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True).reshape(b, c, t, h, w)
            scales.append(y)
        return self.fuse(torch.cat(scales, dim=1))

    def convert_official(self, state_dict: StateDict) -> tuple[StateDict, list[str]]:
        """Map the authors' keys (`conv_in`, `layer1.{0,1}`, `layer2.{1,2}`, `layer3.{1,3}`,
        `TPro{1,2,3}`, `conv_out1_{1,2,3}`, `conv_out2`, `final`) to ours. No key is dropped."""
        prefix = [
            (r"^conv_in\.0\.", "stem.conv."),
            (r"^conv_in\.1\.", "stem.bn."),
            (r"^layer1\.0\.", "branches.0.block1."),
            (r"^layer1\.1\.", "branches.0.block2."),
            (r"^layer2\.1\.", "branches.1.block1."),
            (r"^layer2\.2\.", "branches.1.block2."),
            (r"^layer3\.1\.", "branches.2.block1."),
            (r"^layer3\.3\.", "branches.2.block2."),
            (r"^TPro([123])\.", lambda m: f"branches.{int(m.group(1)) - 1}.tpro."),
            (r"^conv_out1_([123])\.0\.", lambda m: f"branches.{int(m.group(1)) - 1}.proj.conv."),
            (r"^conv_out1_([123])\.1\.", lambda m: f"branches.{int(m.group(1)) - 1}.proj.bn."),
            (r"^conv_out2\.0\.", "fuse.conv."),
            (r"^conv_out2\.1\.", "fuse.bn."),
            (r"^final\.", "head."),
        ]
        return _convert(state_dict, prefix), []


@register_model("deeppro_plus", task="segment")
class DeepProPlus(_TemporalProbe):
    """DeepPro-Plus (70,913 parameters): spatial difference stem, two spatio-temporal residual blocks
    and one TPro (8 heads), all at full resolution.

    `x [B, 1, seqlen, H, W] -> logits [B, seqlen, H, W]` (any H, W).
    """

    def __init__(self, seqlen: int = 40) -> None:
        super().__init__()
        self.seqlen = seqlen
        self.stem = ConvBNAct(SpatialDiffConv3d(1, 8, (5, 7, 7), padding=(2, 3, 3)))
        self.block1 = STDResBlock(8, 16)
        self.block2 = STDResBlock(16, 32)
        self.tpro = TPro(32, num_heads=8, seqlen=seqlen)
        self.proj = ConvBNAct(_pointwise(32, 8))
        self.head = _pointwise(8, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, 1, T, H, W] -> feats [B, 8, T, H, W]` (input of the 1x1x1 classifier)."""
        check_clip(x, self.seqlen, type(self).__name__)
        return self.proj(self.tpro(self.block2(self.block1(self.stem(x)))))

    def convert_official(self, state_dict: StateDict) -> tuple[StateDict, list[str]]:
        """Map the authors' keys (`conv_in`, `layer1.{0,1}`, `TPro`, `conv_out1`, `conv_out2`) to ours.
        No key is dropped."""
        prefix = [
            (r"^conv_in\.0\.", "stem.conv."),
            (r"^conv_in\.1\.", "stem.bn."),
            (r"^layer1\.0\.", "block1."),
            (r"^layer1\.1\.", "block2."),
            (r"^TPro\.", "tpro."),
            (r"^conv_out1\.0\.", "proj.conv."),
            (r"^conv_out1\.1\.", "proj.bn."),
            (r"^conv_out2\.", "head."),
        ]
        return _convert(state_dict, prefix), []
