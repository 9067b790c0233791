"""Shared parts of the single-frame baselines of the STMENet paper (ACM / AGPCNet / DNANet + a YOLOX head).

    key frame [B, 3, H, W] -> segmentation backbone -> map [B, c, H, W] (c = 1; DNANet 4)
        -> neck `conv`: 3x3 BaseConvs down to [B, 256, H/8, W/8]
        -> `head`: one decoupled YOLOX level -> raw [B, 4 + 1 + num_classes, H/8, W/8] (reg, obj, cls)

A model also accepts a clip `[B, 3, T, H, W]` and then uses its key frame, the last one (`x[:, :, -1]`), so
the clip data pipeline can feed it unchanged. Module and parameter names are the authors' (UESTC-nnLab/STME
`ACMBody`, `AGPCBody`, `DNABody`): their state dicts load as they are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from nets.blocks import BaseConv

HEAD_WIDTH = 256


class YOLOXHead(nn.Module):
    """One decoupled YOLOX level without a stem: `[B, 256, h, w] -> [B, 4 + 1 + num_classes, h, w]` raw.

    cls: two 3x3 BaseConvs -> 1x1 conv; reg: two 3x3 BaseConvs -> 1x1 conv (4 box values) and, from the
    same reg features, a 1x1 conv (objectness). Output channels: reg (4), obj (1), cls (num_classes).
    """

    def __init__(self, num_classes: int = 1, width: int = HEAD_WIDTH) -> None:
        super().__init__()
        self.cls_convs = nn.Sequential(BaseConv(width, width, 3), BaseConv(width, width, 3))
        self.cls_preds = nn.Conv2d(width, num_classes, 1)
        self.reg_convs = nn.Sequential(BaseConv(width, width, 3), BaseConv(width, width, 3))
        self.reg_preds = nn.Conv2d(width, 4, 1)
        self.obj_preds = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reg = self.reg_convs(x)
        return torch.cat([self.reg_preds(reg), self.obj_preds(reg), self.cls_preds(self.cls_convs(x))], dim=1)


class FCNHead(nn.Module):
    """Segmentation head of ACM and AGPCNet: `[B, c, H, W] -> [B, c_out, H, W]`.

    3x3 conv c -> c/4 (with a bias when `bias`) -> BN -> ReLU -> Dropout(drop) -> 1x1 conv (bias) to `c_out`.
    """

    def __init__(self, c_in: int, c_out: int = 1, drop: float = 0.1, bias: bool = False) -> None:
        super().__init__()
        mid = c_in // 4
        self.block = nn.Sequential(nn.Conv2d(c_in, mid, 3, 1, 1, bias=bias), nn.BatchNorm2d(mid),
                                   nn.ReLU(inplace=True), nn.Dropout(drop), nn.Conv2d(mid, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def conv_neck(channels: Sequence[int], strides: Sequence[int]) -> nn.Sequential:
    """3x3 BaseConvs `channels[i] -> channels[i + 1]` with `strides[i]` (the authors' `conv` neck)."""
    if len(channels) != len(strides) + 1:
        raise ValueError(f"conv_neck: {len(channels)} channel counts need {len(channels) - 1} strides, "
                         f"got {len(strides)}")
    return nn.Sequential(*[BaseConv(c_in, c_out, 3, stride=s)
                           for c_in, c_out, s in zip(channels[:-1], channels[1:], strides)])


class SingleFrameDetector(nn.Module):
    """Base class: `x [B, 3, H, W]` or `[B, 3, T, H, W]` -> raw head map `[B, 6, H/8, W/8]`.

    Subclasses register `backbone`, `conv` (neck) and `head` in the authors' order (it fixes the state-dict
    key order) and may override `segment` (backbone input -> the map the neck reads). Class attributes:
    `size_multiple` (H and W must be multiples of it) and `min_grid` (smallest H/8 and W/8).
    """

    stride = 8
    num_frames = 1
    size_multiple = 16
    min_grid = 1

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes

    def key_frame(self, x: torch.Tensor) -> torch.Tensor:
        """Validate `x` and return the frame to detect on, `[B, 3, H, W]` (a clip's last frame)."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} expects a tensor [B, 3, H, W] or [B, 3, T, H, W], "
                             f"got {type(x).__name__}")
        if x.dim() not in (4, 5) or x.shape[1] != 3:
            raise ValueError(f"{name} expects [B, 3, H, W] or [B, 3, T, H, W], got shape {tuple(x.shape)}")
        if x.dim() == 5:
            if x.shape[2] < 1:
                raise ValueError(f"{name} got a clip with no frames, shape {tuple(x.shape)}")
            x = x[:, :, -1]
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h == 0 or w == 0 or h % m or w % m:
            raise ValueError(f"{name} needs H and W positive multiples of {m}, got H={h}, W={w} "
                             "(letterbox or pad the frames)")
        if min(h, w) // self.stride < self.min_grid:
            raise ValueError(f"{name} needs H/8 and W/8 >= {self.min_grid} (H, W >= "
                             f"{self.min_grid * self.stride}), got H={h}, W={w}")
        return x

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone: `[B, 3, H, W] -> [B, c, H, W]` segmentation logits read by the neck."""
        return self.backbone(x)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate maps by name: `backbone` `[B, c, H, W]`, `neck` `[B, 256, H/8, W/8]`, `head`."""
        seg = self.segment(self.key_frame(x))
        neck = self.conv(seg)
        return {"backbone": seg, "neck": neck, "head": self.head(neck)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["head"]

    def convert_official(
        self, state_dict: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The authors' state dict -> (ours, dropped). Our key names are theirs, so this is the identity
        (the loader strips a `module.` prefix); nothing is dropped and the strict load checks the rest."""
        return OrderedDict(state_dict.items()), []
