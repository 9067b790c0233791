"""Temporal branch of STMENet: a 3-D ShuffleNetV2 (1.0x, as in YOWOv2-nano), last stage only.

All 3-D convolutions have no bias and padding 1 (3x3x3) or 0 (1x1x1); BatchNorm3d keeps PyTorch defaults.
Starts from scratch: the authors' Kinetics / private pre-training cannot be reproduced.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

WIDTHS = {
    "0.25x": (24, 32, 64, 128),
    "0.5x": (24, 48, 96, 192),
    "1.0x": (24, 116, 232, 464),
    "1.5x": (24, 176, 352, 704),
    "2.0x": (24, 224, 488, 976),
}
STAGE_UNITS = (4, 8, 4)


def conv_bn_3d(
    c_in: int, c_out: int, k: int = 1, stride: int | tuple[int, ...] = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """Conv3d (no bias) + BatchNorm3d (+ ReLU)."""
    layers = OrderedDict(
        conv=nn.Conv3d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        bn=nn.BatchNorm3d(c_out),
    )
    if relu:
        layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """`[B, C, T, H, W]`: view as (groups, C/groups), swap the two, flatten back."""
    b, c = x.shape[:2]
    return x.view(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class ShuffleUnit3d(nn.Module):
    """ShuffleNetV2 unit: `[B, c_in, T, H, W] -> [B, c_out, T', H', W']` (halved by 2 when `stride == 2`).

    Stride 2: `cat(branch1(x), branch2(x))`; stride 1: `cat(x[:, :C/2], branch2(x[:, C/2:]))`; then a
    channel shuffle.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleUnit3d stride must be 1 or 2, got {stride}")
        half = c_out // 2
        self.stride = stride
        if stride == 2:
            self.branch1 = nn.Sequential(
                OrderedDict(
                    dw=conv_bn_3d(c_in, c_in, 3, stride=2, groups=c_in, relu=False),
                    pw=conv_bn_3d(c_in, half, 1),
                )
            )
        else:
            self.branch1 = None
            c_in = half
        self.branch2 = nn.Sequential(
            OrderedDict(
                pw1=conv_bn_3d(c_in, half, 1),
                dw=conv_bn_3d(half, half, 3, stride=stride, groups=half, relu=False),
                pw2=conv_bn_3d(half, half, 1),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is not None:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        else:
            keep, run = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch2(run)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet3d(nn.Module):
    """`x [B, 3, T, H, W] -> [B, C, H/32, W/32]` (C = 464 at 1.0x), averaged over the remaining time steps.

    stem: Conv3d k3 stride (1, 2, 2) + BN + ReLU, then MaxPool3d k3 s2 p1 (time is pooled too); three
    stages of 4 / 8 / 4 units, the first of each with stride 2 in T, H and W. Any T >= 1 works.
    """

    def __init__(self, width: str = "1.0x") -> None:
        super().__init__()
        if width not in WIDTHS:
            raise ValueError(f"unknown ShuffleNet3d width {width!r}; choose from {', '.join(WIDTHS)}")
        channels = WIDTHS[width]
        self.out_channels = channels[-1]
        self.stem = conv_bn_3d(3, channels[0], 3, stride=(1, 2, 2))
        self.pool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        c_in = channels[0]
        stages = []
        for units, c_out in zip(STAGE_UNITS, channels[1:]):
            stages.append(nn.Sequential(*[ShuffleUnit3d(c_in if i == 0 else c_out, c_out, 2 if i == 0 else 1)
                                          for i in range(units)]))
            c_in = c_out
        self.stage1, self.stage2, self.stage3 = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return x.mean(dim=2)
