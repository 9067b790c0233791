"""Res-UNet + DTUM: the multi-frame baseline of "Direction-coded Temporal U-shape Module for Multiframe
Infrared Small Target Detection" (NUDT-MIRSDT).

A small 2-D Res-UNet turns every frame of a 5-frame clip into 32-channel features; the DTUM (direction-coded
temporal U-shape module) mixes them along time with (5, 1, 1) convolutions in a 3-level U-shape whose
down-sampling is a 2x2 max pool that multiplies each pooled value by a code of *where* in its window the
maximum was (-1.5 / -0.5 / 0.5 / 1.5 for top-left / top-right / bottom-left / bottom-right). The result is
per-pixel logits of the current (last) frame.

    >>> m = nets.build_model("resunet_dtum")
    >>> m(x)            # x [B, 1, 5, H, W] normalised frames, current frame last -> logits [B, 1, H, W]

Layout and arithmetic follow the authors' `res_UNet_DTUM(num_classes=1, input_channels=3, Res_block,
[2, 2, 2, 2], [8, 16, 32, 64, 128])` + `DTUM(32, 1, num_frames=5)`: the 1-channel clip is repeated to 3
identical channels, the UNet runs once per frame (current frame first, then the 4 earlier ones, as the
authors do; in training mode each call normalises with its own batch statistics), BN everywhere has
PyTorch's defaults, the UNet upsamples bilinearly (align_corners=True) and the DTUM by nearest neighbour.
Ties inside a pooling window go to the first maximum in row-major order (`F.max_pool3d`'s indices), which
is the authors' rule. `convert_official` maps the authors' state dict (`UNet.*`, `DTUM.*`, 254 keys).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import register_model

__all__ = ["DTUM", "DTUM_RECIPE", "DirectionPool", "ResBlock", "ResUNet", "ResUNetDTUM", "direction_code"]

StateDict = dict[str, torch.Tensor]


class ResBlock(nn.Module):
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the input (through a 1x1 conv + BN when the width
    changes), then ReLU. Convs have biases. `[B, Cin, H, W] -> [B, Cout, H, W]`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + skip)


def _stage(cin: int, cout: int, blocks: int = 1) -> nn.Sequential:
    return nn.Sequential(ResBlock(cin, cout), *(ResBlock(cout, cout) for _ in range(blocks - 1)))


class ResUNet(nn.Module):
    """Per-frame feature extractor (227,808 parameters): encoder widths 8 / 16 / 32 / 64 (1, 2, 2, 2 blocks,
    2x2 max pools), decoder 32 / 16 / 8 with skip concatenation and bilinear x2 upsampling
    (align_corners=True), then a 1x1 conv to `out_channels`. `[B, 3, H, W] -> [B, out_channels, H, W]`,
    H and W multiples of 8. Module names follow the authors' UNet++-style grid (`convI_J`)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 32) -> None:
        super().__init__()
        w = (8, 16, 32, 64)
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv0_0 = _stage(in_channels, w[0])
        self.conv1_0 = _stage(w[0], w[1], 2)
        self.conv2_0 = _stage(w[1], w[2], 2)
        self.conv3_0 = _stage(w[2], w[3], 2)
        self.conv2_1 = _stage(w[2] + w[3], w[2])
        self.conv1_2 = _stage(w[1] + w[2], w[1])
        self.conv0_3 = _stage(w[0] + w[1], w[0])
        self.final = nn.Conv2d(w[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.conv0_0(x)
        x1 = self.conv1_0(self.pool(x0))
        x2 = self.conv2_0(self.pool(x1))
        x3 = self.conv3_0(self.pool(x2))
        d2 = self.conv2_1(torch.cat([x2, self.up(x3)], 1))
        d1 = self.conv1_2(torch.cat([x1, self.up(d2)], 1))
        d0 = self.conv0_3(torch.cat([x0, self.up(d1)], 1))
        return self.final(d0)


def direction_code(indices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Where each 2x2 maximum sat in its window, as a multiplier.

    `indices [B, C, T, h, w]` are `F.max_pool3d(..., (1, 2, 2), return_indices=True)` indices into the
    flattened `(T, height, width)` input volume (height, width even). Returns float32 `[B, C, T, h, w]`:
    `(column is odd) + 2 * (row is odd) - 1.5`, i.e. -1.5 top-left, -0.5 top-right, 0.5 bottom-left,
    1.5 bottom-right (all exact in any float dtype).
    """
    pos = torch.remainder(indices, height * width)  # index inside the frame
    row, col = torch.div(pos, width, rounding_mode="floor"), torch.remainder(pos, width)
    return (torch.remainder(col, 2) + 2 * torch.remainder(row, 2)).to(torch.float32) - 1.5


class DirectionPool(nn.Module):
    """2x2 spatial max pool per frame that also returns the direction codes of the maxima.

    `x [B, C, T, H, W] -> (pooled [B, C, T, H/2, W/2], code [B, C, T, H/2, W/2])`; the first maximum in
    row-major window order wins ties (max_pool3d's strict `>` scan on CPU and CUDA).
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, idx = F.max_pool3d(x, (1, 2, 2), (1, 2, 2), return_indices=True)
        return pooled, direction_code(idx, x.shape[-2], x.shape[-1])


class DTUM(nn.Module):
    """Direction-coded temporal U-shape module (70,497 parameters for 32 channels, 5 frames).

    `feats [B, C, T, H, W]` (T = num_frames, H, W multiples of 8) -> logits `[B, num_classes, 1, H, W]`:
    BN+ReLU; encoder conv1_1 at full size, then three times (direction pool -> temporal conv -> abs -> BN ->
    ReLU) down to H/8; decoder conv3_2 / conv2_2 (nearest x2 upsampling, skip concatenation; conv2_2's
    output is detached, as the authors'); conv1_2 has no temporal padding and collapses T to 1; the head
    (1x3x3 conv -> BN -> ReLU -> Dropout3d(0.5) -> 1x1x1 conv) reads it beside the current frame's input
    features. Because of that detach, conv2_1 ... bn2_2 (the direction-coded levels) get no gradient: in the
    authors' released weights they are still at their random initialisation (only their BN statistics moved).
    """

    def __init__(self, channels: int = 32, num_classes: int = 1, num_frames: int = 5) -> None:
        super().__init__()
        c, k, pad = channels, (num_frames, 1, 1), ((num_frames - 1) // 2, 0, 0)
        self.relu = nn.ReLU(inplace=True)
        self.pool = DirectionPool()
        self.up = nn.Upsample(scale_factor=(1, 2, 2), mode="nearest")
        self.bn0 = nn.BatchNorm3d(c)
        for name in ("1_1", "2_1", "3_1", "4_1"):
            setattr(self, f"conv{name}", nn.Conv3d(c, c, k, padding=pad))
            setattr(self, f"bn{name}", nn.BatchNorm3d(c))
        for name in ("3_2", "2_2"):
            setattr(self, f"conv{name}", nn.Conv3d(2 * c, c, k, padding=pad))
            setattr(self, f"bn{name}", nn.BatchNorm3d(c))
        self.conv1_2 = nn.Conv3d(2 * c, c, k)
        self.bn1_2 = nn.BatchNorm3d(c)
        self.head_conv = nn.Conv3d(2 * c, 32, (1, 3, 3), padding=(0, 1, 1))
        self.head_bn = nn.BatchNorm3d(32)
        self.dropout = nn.Dropout3d(0.5)
        self.classifier = nn.Conv3d(32, num_classes, 1)

    def _down(self, x: torch.Tensor, conv: nn.Conv3d, bn: nn.BatchNorm3d) -> torch.Tensor:
        pooled, code = self.pool(x)
        return self.relu(bn(torch.abs(conv(pooled * code))))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(feats))
        x1 = self.relu(self.bn1_1(self.conv1_1(x)))
        x2 = self._down(x1, self.conv2_1, self.bn2_1)
        x3 = self._down(x2, self.conv3_1, self.bn3_1)
        x4 = self._down(x3, self.conv4_1, self.bn4_1)
        o3 = self.relu(self.bn3_2(self.conv3_2(torch.cat([self.up(x4), x3], 1))))
        o2 = self.relu(self.bn2_2(self.conv2_2(torch.cat([self.up(o3), x2], 1)))).detach()
        o1 = self.relu(self.bn1_2(self.conv1_2(torch.cat([self.up(o2), x1], 1))))
        head = self.relu(self.head_bn(self.head_conv(torch.cat([o1, x[:, :, -1:]], 1))))
        return self.classifier(self.dropout(head))


# The authors' training recipe (their train.py, fully supervised), as train_NUDT.py option defaults:
# SoftIoU over the batch, Adam 1e-3 (0.9, 0.99) without weight decay, StepLR(3, 0.5) per epoch, 20 epochs of
# batch 1, every training frame once per epoch (its 5-frame window) in a shuffled order, whole native-size
# frames, no augmentation, no EMA; selection by the DTUM protocol on the validation split.
DTUM_RECIPE = {
    "epochs": 20, "batch_size": 1, "lr": 1e-3, "optimizer": "adam", "betas": (0.9, 0.99), "adam_eps": 1e-8,
    "weight_decay": 0.0, "schedule": "step", "step_size": 3, "step_gamma": 0.5, "min_lr_ratio": 0.0,
    "ema": False, "seqlen": 5, "resize": 0, "patch": 0, "loss": "dtum_soft_iou", "sampling": "all",
    "val_protocol": "dtum",
}


@register_model("resunet_dtum", task="segment", recipe=DTUM_RECIPE)
class ResUNetDTUM(nn.Module):
    """Res-UNet + DTUM (298,305 parameters: UNet 227,808, DTUM 70,497).

    `x [B, 1, 5, H, W]` (normalised frames in time order, current frame last; H, W multiples of 8) ->
    logits `[B, 1, H, W]` of the current frame (probabilities = sigmoid). Runs in any float dtype.
    `clip_output = "last"`: one output frame per clip, so a sequence is scored with the window of
    `num_frames` frames ending at each frame (utils.segmentation.predict_sequence).
    """

    num_frames = 5
    clip_output = "last"

    def __init__(self) -> None:
        super().__init__()
        self.unet = ResUNet(in_channels=3, out_channels=32)
        self.dtum = DTUM(32, num_classes=1, num_frames=self.num_frames)

    def frame_features(self, clip: torch.Tensor) -> torch.Tensor:
        """UNet features of every frame: `clip [B, 1, T, H, W] -> [B, 32, T, H, W]` (time order kept).
        The UNet runs once per frame, the current (last) one first, on the frame repeated to 3 channels."""
        rgb = clip.repeat(1, 3, 1, 1, 1)
        t = rgb.shape[2]
        feats = [self.unet(rgb[:, :, i]) for i in range(t - 1, -1, -1)]
        return torch.stack(feats[::-1], dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1 or x.shape[2] != self.num_frames:
            raise ValueError(
                f"ResUNetDTUM expects a clip [B, 1, {self.num_frames}, H, W] (T must be {self.num_frames}), "
                f"got {list(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % 8 or w % 8 or h == 0 or w == 0:
            raise ValueError(f"ResUNetDTUM needs frame height and width that are multiples of 8, got {h}x{w}")
        return self.dtum(self.frame_features(x)).squeeze(2)

    def convert_official(self, state_dict: StateDict) -> tuple[StateDict, list[str]]:
        """Map the authors' keys (`UNet.*` -> `unet.*`, `DTUM.*` -> `dtum.*`, the DTUM head
        `final.{0,1,4}` -> `head_conv` / `head_bn` / `classifier`). No key is dropped; keys outside these
        prefixes are passed through unchanged for the strict loader to report."""
        head = {"final.0.": "head_conv.", "final.1.": "head_bn.", "final.4.": "classifier."}
        out: StateDict = {}
        for key, value in state_dict.items():
            new = key
            if key.startswith("UNet."):
                new = "unet." + key[len("UNet."):]
            elif key.startswith("DTUM."):
                rest = key[len("DTUM."):]
                for old, repl in head.items():
                    if rest.startswith(old):
                        rest = repl + rest[len(old):]
                        break
                new = "dtum." + rest
            out[new] = value
        return out, []
