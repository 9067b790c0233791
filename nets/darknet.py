"""Spatial branch of STMENet: the YOLOX CSPDarknet (YOLOX-S by default), without a neck."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from nets.blocks import SPP, BaseConv, CSPLayer, Focus


class CSPDarknet(nn.Module):
    """CSPDarknet53 scaled by `depth` and `width` (0.33 / 0.5 = YOLOX-S).

    `x [B, 3, H, W] -> (f1 [B, 4c, H/8, W/8], f2 [B, 8c, H/16, W/16], f3 [B, 16c, H/32, W/32])` with
    `c = 32 * width / 0.5`, i.e. 128 / 256 / 512 channels for YOLOX-S.
    """

    def __init__(self, depth: float = 0.33, width: float = 0.5, act: str = "silu") -> None:
        super().__init__()
        c = int(64 * width)
        n = max(round(3 * depth), 1)
        self.out_channels = (4 * c, 8 * c, 16 * c)
        self.stem = Focus(3, c, k=3, act=act)
        self.stage2 = self._stage(c, 2 * c, n, act)
        self.stage3 = self._stage(2 * c, 4 * c, 3 * n, act)
        self.stage4 = self._stage(4 * c, 8 * c, 3 * n, act)
        self.stage5 = nn.Sequential(
            OrderedDict(
                down=BaseConv(8 * c, 16 * c, 3, stride=2, act=act),
                spp=SPP(16 * c, 16 * c, act=act),
                csp=CSPLayer(16 * c, 16 * c, n, shortcut=False, act=act),
            )
        )

    @staticmethod
    def _stage(c_in: int, c_out: int, n: int, act: str) -> nn.Sequential:
        down = BaseConv(c_in, c_out, 3, stride=2, act=act)
        return nn.Sequential(OrderedDict(down=down, csp=CSPLayer(c_out, c_out, n, act=act)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stage2(self.stem(x))
        f1 = self.stage3(x)
        f2 = self.stage4(f1)
        f3 = self.stage5(f2)
        return f1, f2, f3
