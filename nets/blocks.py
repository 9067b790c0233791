"""2-D convolution units of the YOLOX-S detector (spatial branch, fusion and head of STMENet).

`BaseConv` is the YOLOX unit: Conv2d (no bias, "same" padding) -> BatchNorm2d(eps=1e-3, momentum=0.03)
-> activation (SiLU by default).
"""

from __future__ import annotations

import torch
import torch.nn as nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def make_activation(name: str) -> nn.Module:
    """`silu`, `relu`, `lrelu` (slope 0.1) or `identity`."""
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r} (use silu, relu, lrelu or identity)")


class BaseConv(nn.Module):
    """Conv2d + BatchNorm2d + activation: `[B, c_in, H, W] -> [B, c_out, H/stride, W/stride]`."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, act: str = "silu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Focus(nn.Module):
    """Space-to-depth then a BaseConv: `[B, c_in, H, W] -> [B, c_out, H/2, W/2]`.

    Each 2x2 cell becomes four channel groups in the order top-left, bottom-left, top-right, bottom-right.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 3, act: str = "silu") -> None:
        super().__init__()
        self.conv = BaseConv(4 * c_in, c_out, k, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(cells, dim=1))


class Bottleneck(nn.Module):
    """1x1 then 3x3 BaseConv (width kept), plus the input when `shortcut`: `[B, c, H, W] -> same`."""

    def __init__(self, channels: int, shortcut: bool = True, act: str = "silu") -> None:
        super().__init__()
        self.conv1x1 = BaseConv(channels, channels, 1, act=act)
        self.conv3x3 = BaseConv(channels, channels, 3, act=act)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3x3(self.conv1x1(x))
        return y + x if self.shortcut else y


class CSPLayer(nn.Module):
    """Cross-stage partial block: `[B, c_in, H, W] -> [B, c_out, H, W]`.

    Main path: 1x1 to c_out/2 then `n` Bottlenecks; side path: 1x1 to c_out/2; concat(main, side) -> 1x1.
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, act: str = "silu") -> None:
        super().__init__()
        hidden = c_out // 2
        self.main = BaseConv(c_in, hidden, 1, act=act)
        self.side = BaseConv(c_in, hidden, 1, act=act)
        self.blocks = nn.Sequential(*[Bottleneck(hidden, shortcut, act=act) for _ in range(n)])
        self.merge = BaseConv(2 * hidden, c_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([self.blocks(self.main(x)), self.side(x)], dim=1))


class SPP(nn.Module):
    """Spatial pyramid pooling: 1x1 to c_in/2, concat with stride-1 max pools, 1x1 to c_out (size kept)."""

    def __init__(self, c_in: int, c_out: int, pools: tuple[int, ...] = (5, 9, 13), act: str = "silu") -> None:
        super().__init__()
        hidden = c_in // 2
        self.reduce = BaseConv(c_in, hidden, 1, act=act)
        self.pools = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in pools])
        self.merge = BaseConv(hidden * (len(pools) + 1), c_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.merge(torch.cat([x] + [pool(x) for pool in self.pools], dim=1))
