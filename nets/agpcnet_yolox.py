"""AGPCNet + YOLOX head (`agpcnet_yolox`): the STMENet paper's single-frame AGPCNet baseline.

    x [B, 3, H, W] (or a clip [B, 3, T, H, W]: its last frame) -> raw [B, 6, H/8, W/8]

Backbone: AGPCNet (attention-guided pyramid context; ResNet-18 with a 7x7 stride-1 stem and no max pool,
context module CPM with patch-wise global context blocks at scales 10/6/5/3, reduce ratios 16/4, `post`
attention; asymmetric fusion decoder) -> one segmentation logit map [B, 1, H, W]; neck BaseConv 1->4->16->64
(stride 2 each) ->256 (stride 1); one decoupled YOLOX head. Matches UESTC-nnLab/STME `model/AGPCNet.py`
`AGPCBody(1, 's')` (key names included). H and W must be multiples of 8 with H/8, W/8 >= 10 (the largest
patch grid is 10 x 10). 14,881,311 parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import register_model
from nets.single_frame_head import FCNHead, SingleFrameDetector, YOLOXHead, conv_neck


# ----------------------------------------------------------------------------------------------------------
# ResNet-18 encoder
# ----------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 conv (stride s) -> BN -> ReLU -> 3x3 conv -> BN, + skip, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """`[B, 3, H, W] -> (c1 [B, 128, H/2], c2 [B, 256, H/4], c3 [B, 512, H/8])` (outputs of layer2..4).

    7x7 stride-1 stem (64 channels), no max pool; layer1 keeps H, layers 2-4 halve it.
    """

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 1, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths = (64, 128, 256, 512)
        c_in = 64
        for i, (c, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}",
                    nn.Sequential(BasicBlock(c_in, c, stride), *[BasicBlock(c, c) for _ in range(n - 1)]))
            c_in = c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(F.relu(self.bn1(self.conv1(x))))
        c1 = self.layer2(x)
        c2 = self.layer3(c1)
        return c1, c2, self.layer4(c2)


# ----------------------------------------------------------------------------------------------------------
# Context pyramid module
# ----------------------------------------------------------------------------------------------------------
def _conv_bn(c_in: int, c_out: int, k: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    """Conv2d (bias, "same" padding) -> BatchNorm2d [-> act]."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


def _bottleneck_gate(c: int, c_mid: int, pool: bool = False) -> nn.Sequential:
    """[avgpool ->] 1x1 conv-BN-ReLU (c -> c_mid) -> 1x1 conv-BN (c_mid -> c) -> sigmoid."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if pool else []
    layers += [*_conv_bn(c, c_mid, act=nn.ReLU(inplace=True)), *_conv_bn(c_mid, c, act=nn.Sigmoid())]
    return nn.Sequential(*layers)


class NonLocalBlock(nn.Module):
    """Self-attention over positions: `[B, C, h, w] -> same`, `out = gamma * (V softmax(Q^T K)^T) + x`.

    Q, K: 1x1 convs to C / reduce_ratio channels; V: 1x1 conv to C; softmax over the key positions.
    """

    def __init__(self, planes: int, reduce_ratio: int = 8) -> None:
        super().__init__()
        inter = planes // reduce_ratio
        self.query_conv = nn.Conv2d(planes, inter, 1)
        self.key_conv = nn.Conv2d(planes, inter, 1)
        self.value_conv = nn.Conv2d(planes, planes, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).reshape(b, -1, h * w).transpose(1, 2)  # [B, N, C']
        k = self.key_conv(x).reshape(b, -1, h * w)  # [B, C', N]
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # [B, N(query), N(key)]
        v = self.value_conv(x).reshape(b, c, h * w)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class GlobalChannelAttention(nn.Module):
    """`GCA_Channel` in `post` mode: `[B, C, H, W] -> [B, C, s, s]` per-patch channel weights in (0, 1).

    Adaptive max pool to s x s, a full-width NonLocalBlock over the s*s cells, then the 1x1 bottleneck gate.
    """

    def __init__(self, planes: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.non_local_att = NonLocalBlock(planes, reduce_ratio=1)
        self.conv_att = _bottleneck_gate(planes, planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_att(self.non_local_att(F.adaptive_max_pool2d(x, self.scale)))


def patch_edges(n: int, scale: int) -> list[int]:
    """Split `n` into `scale` patches of `n // scale` (the last one takes the rest): the `scale + 1` edges."""
    step = n // scale
    return [i * step for i in range(scale)] + [n]


class PatchContextBlock(nn.Module):
    """`AGCB_Patch`: `[B, C, H, W] -> same`.

    The map is cut into a scale x scale grid; each patch goes through a NonLocalBlock and is weighted by its
    cell of the global channel attention; the patches are put back, then 3x3 conv -> BN,
    `out = ReLU(gamma * that + x)`.
    """

    def __init__(self, planes: int, scale: int, reduce_ratio_nl: int) -> None:
        super().__init__()
        self.scale = scale
        self.non_local = NonLocalBlock(planes, reduce_ratio=reduce_ratio_nl)
        self.conv = _conv_bn(planes, planes, 3)
        self.attention = GlobalChannelAttention(planes, scale)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gca = self.attention(x)  # [B, C, s, s]
        rows, cols = patch_edges(x.shape[2], self.scale), patch_edges(x.shape[3], self.scale)
        context = torch.cat([
            torch.cat([self.non_local(x[:, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]])
                       * gca[:, :, i:i + 1, j:j + 1] for j in range(self.scale)], dim=3)
            for i in range(self.scale)], dim=2)
        return F.relu(self.gamma * self.conv(context) + x)


class ContextPyramid(nn.Module):
    """CPM: `[B, C, h, w] -> [B, C, h, w]`.

    1x1 conv-BN-ReLU to C / r0, one PatchContextBlock per scale, concat(reduced, blocks...) -> 1x1
    conv-BN-ReLU.
    """

    def __init__(self, planes: int = 512, scales: tuple[int, ...] = (10, 6, 5, 3),
                 reduce_ratios: tuple[int, int] = (16, 4)) -> None:
        super().__init__()
        inter = planes // reduce_ratios[0]
        self.conv1 = _conv_bn(planes, inter, act=nn.ReLU(inplace=True))
        self.scale_list = nn.ModuleList([PatchContextBlock(inter, s, reduce_ratios[1]) for s in scales])
        self.conv2 = _conv_bn(inter * (len(scales) + 1), planes, act=nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        return self.conv2(torch.cat([reduced] + [block(reduced) for block in self.scale_list], dim=1))


# ----------------------------------------------------------------------------------------------------------
# Decoder and network
# ----------------------------------------------------------------------------------------------------------
class AsymFusion(nn.Module):
    """`AsymFusionModule`: `(high [B, c_high, h, w], low [B, c_low, h, w]) -> [B, c_out, h, w]`.

    `high' = plus_conv(high)`; `out = end_conv(low + high') * ca(high') * pa(low)` with `ca` a pooled
    channel gate and `pa` a per-pixel gate.
    """

    def __init__(self, c_high: int, c_low: int, c_out: int) -> None:
        super().__init__()
        self.pa = _bottleneck_gate(c_low, c_low // 4)
        self.plus_conv = _conv_bn(c_high, c_low, act=nn.ReLU(inplace=True))
        self.ca = _bottleneck_gate(c_low, c_low // 4, pool=True)
        self.end_conv = _conv_bn(c_low, c_out, 3, act=nn.ReLU(inplace=True))

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = self.plus_conv(high)
        return self.end_conv(low + high) * self.ca(high) * self.pa(low)


class AGPCNet(nn.Module):
    """`[B, 3, H, W] -> [B, 1, H, W]` segmentation logits (H, W multiples of 8, H/8, W/8 >= max(scales)).

    ResNet-18 -> CPM on c3 (H/8) -> bilinear (align_corners True) to H/4, fuse with c2 -> to H/2, fuse with
    c1 -> FCN head -> bilinear to H x W.
    """

    def __init__(self, scales: tuple[int, ...] = (10, 6, 5, 3), reduce_ratios: tuple[int, int] = (16, 4),
                 drop: float = 0.1) -> None:
        super().__init__()
        self.backbone = ResNet18()
        self.fuse23 = AsymFusion(512, 256, 256)
        self.fuse12 = AsymFusion(256, 128, 128)
        self.head = FCNHead(128, 1, drop=drop, bias=True)
        self.context = ContextPyramid(512, scales, reduce_ratios)
        for m in self.modules():  # the authors' initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        c1, c2, c3 = self.backbone(x)
        out = F.interpolate(self.context(c3), size=(h // 4, w // 4), mode="bilinear", align_corners=True)
        out = F.interpolate(self.fuse23(out, c2), size=(h // 2, w // 2), mode="bilinear", align_corners=True)
        out = self.head(self.fuse12(out, c1))
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)


class AGPCNetYOLOX(SingleFrameDetector):
    """AGPCNet backbone + neck + YOLOX head: `[B, 3, H, W]` (or a clip) -> `[B, 5 + C, H/8, W/8]`."""

    size_multiple = 8
    min_grid = 10

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__(num_classes)
        self.backbone = AGPCNet()
        self.head = YOLOXHead(num_classes)
        self.conv = conv_neck((1, 4, 16, 64, 256), (2, 2, 2, 1))


@register_model("agpcnet_yolox")
def agpcnet_yolox(num_classes: int = 1) -> AGPCNetYOLOX:
    """AGPCNet + YOLOX head (14,881,311 parameters with one class)."""
    return AGPCNetYOLOX(num_classes)
