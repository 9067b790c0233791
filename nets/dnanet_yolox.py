"""DNANet + YOLOX head (`dnanet_yolox`): the STMENet paper's single-frame DNANet baseline.

    x [B, 3, H, W] (or a clip [B, 3, T, H, W]: its last frame) -> raw [B, 6, H/8, W/8]

Backbone: DNANet (dense nested attention U-Net; Res-CBAM blocks, 2/2/2/2 blocks, filters 16..256, deep
supervision) -> its four side outputs concatenated, [B, 4, H, W]; neck BaseConv 4->16->64->256 (stride 2
each); one decoupled YOLOX head. Matches UESTC-nnLab/STME `model/dna_net/test.py` `DNABody(1, 's')` (key
names included). H and W must be multiples of 16. 7,217,694 parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import register_model
from nets.single_frame_head import SingleFrameDetector, YOLOXHead, conv_neck


class ChannelAttention(nn.Module):
    """CBAM channel gate: `[B, C, H, W] -> [B, C, 1, 1]`, sigmoid(MLP(avgpool) + MLP(maxpool)), shared MLP
    C -> C/16 -> C (1x1 convs without bias)."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._mlp(F.adaptive_avg_pool2d(x, 1)) + self._mlp(F.adaptive_max_pool2d(x, 1)))


class SpatialAttention(nn.Module):
    """CBAM spatial gate: `[B, C, H, W] -> [B, 1, H, W]`, sigmoid(7x7 conv of [channel mean, channel max])."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv1(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)))


class ResCBAMBlock(nn.Module):
    """`Res_CBAM_block`: `[B, c_in, H, W] -> [B, c_out, H, W]`.

    3x3 conv (bias) -> BN -> ReLU -> 3x3 conv (bias) -> BN -> channel gate -> spatial gate, plus the input
    (through a 1x1 conv (bias) + BN `shortcut` when the width changes), ReLU.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out))
        self.ca = ChannelAttention(c_out)
        self.sa = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out = self.ca(out) * out
        out = self.sa(out) * out
        return F.relu(out + skip)


def _layer(c_in: int, c_out: int, blocks: int = 1) -> nn.Sequential:
    return nn.Sequential(ResCBAMBlock(c_in, c_out), *[ResCBAMBlock(c_out, c_out) for _ in range(blocks - 1)])


def _up(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by `factor`, align_corners=True (DNANet's `up`, `up_4`.., and `down` = factor 0.5)."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


class DNANet(nn.Module):
    """`[B, 3, H, W] -> (4 x [B, 1, H, W])` deep-supervision logits (H, W multiples of 16).

    Node `conv{i}_{j}` works at H / 2^i; `x{i}_0` comes from `x{i-1}_0` by 2x2 max pool; a nested node
    concatenates the earlier nodes of its row, the bilinear x2 upsampling of the node below and (rows 1..3)
    the bilinear x0.5 *downsampling* (interpolation, not pooling) of the node above. The final node fuses
    1x1-projected `x4_0, x3_1, x2_2, x1_3` (upsampled x16, x8, x4, x2) with `x0_4`. Outputs: 1x1 convs on
    `x0_1, x0_2, x0_3` and the final node.
    """

    def __init__(self, num_classes: int = 1, input_channels: int = 3,
                 num_blocks: tuple[int, ...] = (2, 2, 2, 2),
                 nb_filter: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        f0, f1, f2, f3, f4 = nb_filter
        b0, b1, b2, b3 = num_blocks
        self.conv0_0 = _layer(input_channels, f0)
        self.conv1_0 = _layer(f0, f1, b0)
        self.conv2_0 = _layer(f1, f2, b1)
        self.conv3_0 = _layer(f2, f3, b2)
        self.conv4_0 = _layer(f3, f4, b3)

        self.conv0_1 = _layer(f0 + f1, f0)
        self.conv1_1 = _layer(f1 + f2 + f0, f1, b0)
        self.conv2_1 = _layer(f2 + f3 + f1, f2, b1)
        self.conv3_1 = _layer(f3 + f4 + f2, f3, b2)

        self.conv0_2 = _layer(f0 * 2 + f1, f0)
        self.conv1_2 = _layer(f1 * 2 + f2 + f0, f1, b0)
        self.conv2_2 = _layer(f2 * 2 + f3 + f1, f2, b1)

        self.conv0_3 = _layer(f0 * 3 + f1, f0)
        self.conv1_3 = _layer(f1 * 3 + f2 + f0, f1, b0)

        self.conv0_4 = _layer(f0 * 4 + f1, f0)
        self.conv0_4_final = _layer(f0 * 5, f0)

        self.conv0_4_1x1 = nn.Conv2d(f4, f0, 1)
        self.conv0_3_1x1 = nn.Conv2d(f3, f0, 1)
        self.conv0_2_1x1 = nn.Conv2d(f2, f0, 1)
        self.conv0_1_1x1 = nn.Conv2d(f1, f0, 1)

        self.final1 = nn.Conv2d(f0, num_classes, 1)
        self.final2 = nn.Conv2d(f0, num_classes, 1)
        self.final3 = nn.Conv2d(f0, num_classes, 1)
        self.final4 = nn.Conv2d(f0, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pool = F.max_pool2d
        x0_0 = self.conv0_0(x)
        x1_0 = self.conv1_0(pool(x0_0, 2))
        x0_1 = self.conv0_1(torch.cat([x0_0, _up(x1_0, 2)], 1))

        x2_0 = self.conv2_0(pool(x1_0, 2))
        x1_1 = self.conv1_1(torch.cat([x1_0, _up(x2_0, 2), _up(x0_1, 0.5)], 1))
        x0_2 = self.conv0_2(torch.cat([x0_0, x0_1, _up(x1_1, 2)], 1))

        x3_0 = self.conv3_0(pool(x2_0, 2))
        x2_1 = self.conv2_1(torch.cat([x2_0, _up(x3_0, 2), _up(x1_1, 0.5)], 1))
        x1_2 = self.conv1_2(torch.cat([x1_0, x1_1, _up(x2_1, 2), _up(x0_2, 0.5)], 1))
        x0_3 = self.conv0_3(torch.cat([x0_0, x0_1, x0_2, _up(x1_2, 2)], 1))

        x4_0 = self.conv4_0(pool(x3_0, 2))
        x3_1 = self.conv3_1(torch.cat([x3_0, _up(x4_0, 2), _up(x2_1, 0.5)], 1))
        x2_2 = self.conv2_2(torch.cat([x2_0, x2_1, _up(x3_1, 2), _up(x1_2, 0.5)], 1))
        x1_3 = self.conv1_3(torch.cat([x1_0, x1_1, x1_2, _up(x2_2, 2), _up(x0_3, 0.5)], 1))
        x0_4 = self.conv0_4(torch.cat([x0_0, x0_1, x0_2, x0_3, _up(x1_3, 2)], 1))

        final = self.conv0_4_final(torch.cat([
            _up(self.conv0_4_1x1(x4_0), 16), _up(self.conv0_3_1x1(x3_1), 8),
            _up(self.conv0_2_1x1(x2_2), 4), _up(self.conv0_1_1x1(x1_3), 2), x0_4], 1))
        return self.final1(x0_1), self.final2(x0_2), self.final3(x0_3), self.final4(final)


class DNANetYOLOX(SingleFrameDetector):
    """DNANet backbone + neck + YOLOX head: `[B, 3, H, W]` (or a clip) -> `[B, 5 + num_classes, H/8, W/8]`.

    The neck reads the four deep-supervision maps concatenated, `[B, 4, H, W]` (with one class).
    """

    size_multiple = 16

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__(num_classes)
        self.backbone = DNANet(num_classes, 3)
        self.conv = conv_neck((4 * num_classes, 16, 64, 256), (2, 2, 2))
        self.head = YOLOXHead(num_classes)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.backbone(x), dim=1)


@register_model("dnanet_yolox")
def dnanet_yolox(num_classes: int = 1) -> DNANetYOLOX:
    """DNANet + YOLOX head (7,217,694 parameters with one class)."""
    return DNANetYOLOX(num_classes)
