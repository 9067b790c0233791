"""ACM + YOLOX head (`acm_yolox`): the STMENet paper's single-frame ACM baseline.

    x [B, 3, H, W] (or a clip [B, 3, T, H, W]: its last frame) -> raw [B, 6, H/8, W/8]

Backbone: ASKCResUNet (asymmetric contextual modulation; layer blocks 4/4/4, channels 8/16/32/64,
AsymBi fusion) -> one segmentation logit map [B, 1, H, W]; neck BaseConv 1->4->16->64 (stride 2 each) ->256
(stride 1); one decoupled YOLOX head. Matches UESTC-nnLab/STME `model/acm_net/ACM.py` `ACMBody(1, 's')`
(key names included). H and W must be multiples of 16. 3,040,693 parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import register_model
from nets.single_frame_head import FCNHead, SingleFrameDetector, YOLOXHead, conv_neck


class ResidualBlock(nn.Module):
    """`body` = 3x3 conv (stride s) -> BN -> ReLU -> 3x3 conv -> BN; plus the input (through a 1x1 conv + BN
    `downsample` when the shape changes); ReLU. `[B, c_in, H, W] -> [B, c_out, H/s, W/s]`."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(self.body(x) + skip)


def _res_layer(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    rest = [ResidualBlock(c_out, c_out) for _ in range(blocks - 1)]
    return nn.Sequential(ResidualBlock(c_in, c_out, stride), *rest)


class AsymBiFusion(nn.Module):
    """Asymmetric bi-directional channel fusion (`AsymBiChaFuseReduce`): `(high, low) [B, c, h, w] -> same`.

    `high' = ReLU(BN(conv1x1 high))`; top-down weights = sigmoid(MLP(avgpool high')) per channel;
    bottom-up weights = sigmoid(pointwise MLP(low)) per pixel and channel;
    `out = post(2 * low * topdown + 2 * high' * bottomup)`, post = 3x3 conv -> BN -> ReLU.
    """

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        mid = channels // r
        self.feature_high = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels),
                                          nn.ReLU(inplace=True))
        self.topdown = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1), nn.BatchNorm2d(channels), nn.Sigmoid(),
        )
        self.bottomup = nn.Sequential(
            nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, 1), nn.BatchNorm2d(channels), nn.Sigmoid(),
        )
        self.post = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True))

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = self.feature_high(high)
        return self.post(2 * low * self.topdown(high) + 2 * high * self.bottomup(low))


class ASKCResUNet(nn.Module):
    """ACM U-Net: `[B, 3, H, W] -> [B, 1, H, W]` segmentation logits (H, W multiples of 16).

    Stem: BN on the raw input, 3x3 convs 3->8 (stride 2) ->8 ->16, 3x3 max pool (stride 2): H/4.
    Encoder layers at H/4, H/8, H/16; decoder: 4x4 transposed conv x2, AsymBi fusion with the skip, residual
    layer, twice; FCN head at H/4, bilinear (align_corners False) up to H x W.
    """

    def __init__(self, layer_blocks: tuple[int, ...] = (4, 4, 4),
                 channels: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.stem = nn.Sequential(
            nn.BatchNorm2d(3),
            nn.Conv2d(3, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True),
            nn.Conv2d(c0, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True),
            nn.Conv2d(c0, 2 * c0, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * c0), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = _res_layer(2 * c0, c1, layer_blocks[0], 1)
        self.layer2 = _res_layer(c1, c2, layer_blocks[1], 2)
        self.layer3 = _res_layer(c2, c3, layer_blocks[2], 2)
        self.deconv2 = nn.ConvTranspose2d(c3, c2, 4, 2, 1)
        self.fuse2 = AsymBiFusion(c2)
        self.uplayer2 = _res_layer(c2, c2, layer_blocks[1], 1)
        self.deconv1 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
        self.fuse1 = AsymBiFusion(c1)
        self.uplayer1 = _res_layer(c1, c1, layer_blocks[0], 1)
        self.head = FCNHead(c1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        up2 = self.uplayer2(self.fuse2(self.deconv2(c3), c2))
        up1 = self.uplayer1(self.fuse1(self.deconv1(up2), c1))
        return F.interpolate(self.head(up1), size=size, mode="bilinear", align_corners=False)


class ACMYOLOX(SingleFrameDetector):
    """ACM backbone + neck + YOLOX head: `[B, 3, H, W]` (or a clip) -> `[B, 5 + num_classes, H/8, W/8]`."""

    size_multiple = 16

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__(num_classes)
        self.backbone = ASKCResUNet()
        self.head = YOLOXHead(num_classes)
        self.conv = conv_neck((1, 4, 16, 64, 256), (2, 2, 2, 1))


@register_model("acm_yolox")
def acm_yolox(num_classes: int = 1) -> ACMYOLOX:
    """ACM + YOLOX head (3,040,693 parameters with one class)."""
    return ACMYOLOX(num_classes)
