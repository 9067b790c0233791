"""STMENet: spatio-temporal mixed encoding for moving infrared dim and small target detection.

    x [B, 3, T, H, W] (key frame last) -> raw YOLOX map [B, 5 + num_classes, H/8, W/8]
                                          channels (dx, dy, log w, log h, obj, cls...)

Spatial branch: YOLOX-S CSPDarknet on the key frame -> f1/f2/f3 (128/256/512 channels at H/8, /16, /32).
Temporal branch: 3-D ShuffleNetV2 on the whole clip -> one 464-channel map at H/32, nearest-upsampled x2
and x4. One self-refining encoder per scale (RepBlock on the temporal map, concat with the spatial map,
convs with a channel self-attention) gives 128 channels; a top-down fusion brings the three scales to H/8;
a decoupled YOLOX head predicts one stride-8 level.

Matches the authors' code (UESTC-nnLab/STME) to float rounding given the same weights; their checkpoints
load through `nets.load_official` (`STMENet.convert_official`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import register_model
from nets.blocks import BaseConv
from nets.darknet import CSPDarknet
from nets.shufflenet3d import ShuffleNet3d

FAST_REWRITES = "nets.stmenet_fast"  # rewrites for nets.fast.optimize_for_inference
VARIANTS = ("itsdt", "daub", "irdst")
ENCODER_CHANNELS = 128


# ----------------------------------------------------------------------------------------------------------
# Self-refining encoder
# ----------------------------------------------------------------------------------------------------------
class ChannelAttention(nn.Module):
    """`[B, C, H, W] -> [B, C, 1, 1]`: sigmoid(MLP(avgpool)) + sigmoid(MLP(maxpool)) with a shared MLP."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.excite(F.relu(self.squeeze(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mlp(F.adaptive_avg_pool2d(x, 1)) + self._mlp(F.adaptive_max_pool2d(x, 1))


def _depthwise(channels: int, kernel: tuple[int, int]) -> nn.Conv2d:
    """Depthwise Conv2d with bias and "same" padding."""
    return nn.Conv2d(channels, channels, kernel, padding=(kernel[0] // 2, kernel[1] // 2), groups=channels)


class RepBlock(nn.Module):
    """Refines the temporal map: `[B, C, H, W] -> [B, C, H, W]` (375,028 parameters at C = 464).

    One 1x1 conv `proj` is used three times: `u = ca(v) * v` with `v = GELU(proj(x))`; `s0 = dw5x5(u)`;
    `s = s0 + dw7x1(dw1x7 s0) + dw11x1(dw1x11 s0) + dw21x1(dw1x21 s0)` (depthwise strips);
    `out = proj(proj(s) * u)`.
    """

    STRIPS = (7, 11, 21)

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.ca = ChannelAttention(channels, channels // reduction)
        self.dw5x5 = _depthwise(channels, (5, 5))
        for k in self.STRIPS:
            setattr(self, f"dw1x{k}", _depthwise(channels, (1, k)))
            setattr(self, f"dw{k}x1", _depthwise(channels, (k, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.act(self.proj(x))
        u = self.ca(u) * u
        s0 = self.dw5x5(u)
        s = None
        for k in self.STRIPS:
            strip = getattr(self, f"dw{k}x1")(getattr(self, f"dw1x{k}")(s0))
            s = strip if s is None else s + strip
        s = s + s0
        return self.proj(self.proj(s) * u)


class CSAM(nn.Module):
    """Channel self-attention: `[B, C, H, W] -> [B, C, H, W]`.

    `E = X X^T`, `A = softmax(rowmax(E) - E)`, `out = gamma * (A X) + X`; `gamma` is a learned scalar
    starting at 0 (the block starts as the identity). `E` sums HW squares: it is computed in float32 even
    under autocast (in float16 it overflows once a channel's RMS passes 256 / sqrt(HW), and inf - inf gives
    NaN attention); `A X` runs in the autocast dtype.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        attention = channel_attention(flat)
        attended = torch.bmm(attention.to(flat.dtype), flat).view(b, c, h, w)
        return self.gamma * attended + x


def channel_attention(flat: torch.Tensor) -> torch.Tensor:
    """CSAM's `softmax(rowmax(E) - E)` with `E = X X^T` in float32 (autocast off): `[B, C, N] -> [B, C, C]`.
    `flat` may be any strided view (e.g. the transpose of channels-last rows)."""
    # Autocast exists for real devices only (a shape probe on the meta device has none to turn off).
    off = torch.autocast(flat.device.type, enabled=False) if flat.device.type != "meta" else nullcontext()
    with off:
        f32 = flat.float()
        energy = torch.bmm(f32, f32.transpose(1, 2))
        return torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)


class ConvBN(nn.Module):
    """Conv2d (no bias) + BatchNorm2d (PyTorch defaults) + LeakyReLU(0.1), "same" padding."""

    def __init__(self, c_in: int, c_out: int, k: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SelfRefiningEncoder(nn.Module):
    """One scale: `(spatial [B, Cs, h, w], temporal [B, Ct, h, w]) -> [B, 128, h, w]`.

    `refine` (RepBlock) on the temporal map, concat with the spatial map, then 1x1 ConvBN -> 3x3 ConvBN ->
    CSAM -> 3x3 ConvBN -> Dropout(0.1) -> 1x1 Conv2d (bias).
    """

    def __init__(self, c_spatial: int, c_temporal: int, c_out: int = ENCODER_CHANNELS) -> None:
        super().__init__()
        self.refine = RepBlock(c_temporal)
        self.reduce = ConvBN(c_spatial + c_temporal, c_out, 1)
        self.conv1 = ConvBN(c_out, c_out, 3)
        self.csam = CSAM()
        self.conv2 = ConvBN(c_out, c_out, 3)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Conv2d(c_out, c_out, 1)

    def forward(self, spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
        x = self.reduce(torch.cat([spatial, self.refine(temporal)], dim=1))
        x = self.conv2(self.csam(self.conv1(x)))
        return self.out(self.drop(x))


# ----------------------------------------------------------------------------------------------------------
# Multi-scale fusion and head
# ----------------------------------------------------------------------------------------------------------
class FusionRefine(nn.Module):
    """IRDST variant only: three 1x1 BaseConvs `c -> c/2 -> c/2 -> c` (size kept)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.squeeze = BaseConv(channels, channels // 2, 1)
        self.mix = BaseConv(channels // 2, channels // 2, 1)
        self.expand = BaseConv(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.mix(self.squeeze(x)))


class MultiScaleFusion(nn.Module):
    """`(e1 [B, c, H/8], e2 [B, c, H/16], e3 [B, c, H/32]) -> [B, c, H/8, W/8]`, top-down, nearest x2.

    `p4 = lateral(cat[up2(e3), e2])` (with `refine` before `lateral` in the IRDST variant);
    `out = out(cat[up2(p4), e1])`.
    """

    def __init__(self, channels: int = ENCODER_CHANNELS, refine: bool = False) -> None:
        super().__init__()
        self.lateral = BaseConv(2 * channels, channels, 1)
        self.refine = FusionRefine(2 * channels) if refine else None
        self.out = BaseConv(2 * channels, channels, 1)

    def forward(self, e1: torch.Tensor, e2: torch.Tensor, e3: torch.Tensor) -> torch.Tensor:
        p = torch.cat([F.interpolate(e3, scale_factor=2, mode="nearest"), e2], dim=1)
        if self.refine is not None:
            p = self.refine(p)
        p4 = self.lateral(p)
        return self.out(torch.cat([F.interpolate(p4, scale_factor=2, mode="nearest"), e1], dim=1))


class DecoupledHead(nn.Module):
    """YOLOX decoupled head, one level: `[B, c_in, h, w] -> [B, 4 + 1 + num_classes, h, w]` raw."""

    def __init__(self, c_in: int, num_classes: int, width: int = 256) -> None:
        super().__init__()
        self.stem = BaseConv(c_in, width, 1)
        self.cls_convs = nn.Sequential(BaseConv(width, width, 3), BaseConv(width, width, 3))
        self.reg_convs = nn.Sequential(BaseConv(width, width, 3), BaseConv(width, width, 3))
        self.cls_pred = nn.Conv2d(width, num_classes, 1)
        self.reg_pred = nn.Conv2d(width, 4, 1)
        self.obj_pred = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        reg = self.reg_convs(x)
        return torch.cat([self.reg_pred(reg), self.obj_pred(reg), self.cls_pred(self.cls_convs(x))], dim=1)


# ----------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------
class STMENet(nn.Module):
    """`x [B, 3, T, H, W] -> [B, 5 + num_classes, H/8, W/8]` raw (same in train and eval mode).

    `variant`: "itsdt" / "daub" (one architecture) or "irdst" (an extra FusionRefine in the fusion).
    `num_frames` is the clip length the data pipeline should feed (T = 5 in the paper); the network itself
    accepts any T >= 1 and H, W multiples of 32.
    """

    def __init__(self, variant: str = "itsdt", num_classes: int = 1, num_frames: int = 5) -> None:
        super().__init__()
        variant = variant.lower()
        if variant not in VARIANTS:
            raise ValueError(f"unknown STMENet variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.variant = variant
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.stride = 8
        self.spatial = CSPDarknet(depth=0.33, width=0.5)
        self.temporal = ShuffleNet3d("1.0x")
        c_t = self.temporal.out_channels
        self.encoders = nn.ModuleList([SelfRefiningEncoder(c, c_t) for c in self.spatial.out_channels])
        self.fusion = MultiScaleFusion(ENCODER_CHANNELS, refine=variant == "irdst")
        self.head = DecoupledHead(ENCODER_CHANNELS, num_classes)
        init_weights(self)

    @staticmethod
    def check_input(x: torch.Tensor) -> None:
        """Raise ValueError (one line) unless `x` is `[B, 3, T, H, W]` with H, W multiples of 32."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"STMENet expects a tensor [B, 3, T, H, W], got {type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(f"STMENet expects a 5-D input [B, 3, T, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise ValueError(f"STMENet expects 3 channels in [B, 3, T, H, W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if x.shape[2] < 1 or h % 32 or w % 32 or h == 0 or w == 0:
            raise ValueError(f"STMENet needs T >= 1 and H, W positive multiples of 32, got T={x.shape[2]}, "
                             f"H={h}, W={w} (letterbox or pad the frames)")

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate maps by name (for debugging and parity checks): spatial f1/f2/f3, temporal,
        encoder1..3, fusion, head."""
        self.check_input(x)
        f1, f2, f3 = self.spatial(x[:, :, -1])
        t = self.temporal(x)
        temporal = (F.interpolate(t, scale_factor=4, mode="nearest"),
                    F.interpolate(t, scale_factor=2, mode="nearest"), t)
        e1, e2, e3 = (enc(f, tm) for enc, f, tm in zip(self.encoders, (f1, f2, f3), temporal))
        fused = self.fusion(e1, e2, e3)
        return {"f1": f1, "f2": f2, "f3": f3, "temporal": t, "encoder1": e1, "encoder2": e2,
                "encoder3": e3, "fusion": fused, "head": self.head(fused)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["head"]

    # ------------------------------------------------------------------------------------------------------
    # The authors' checkpoints
    # ------------------------------------------------------------------------------------------------------
    def official_key_map(self) -> OrderedDict[str, str]:
        """Our state-dict key -> the authors' key (`model/STME.py`, `model/STME_IRDST.py`)."""
        return OrderedDict((k, official_key(k)) for k in self.state_dict())

    def dead_official_keys(self) -> list[str]:
        """The authors' keys that never take part in their forward (ITSDT/DAUB variant only)."""
        if self.variant == "irdst":
            return []
        return [f"feature_fusion.{block}.conv{i}.{leaf}" for block in ("C3_p4", "C3_p3") for i in (1, 2, 3)
                for leaf in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                             "bn.num_batches_tracked")]

    def convert_official(
        self, state_dict: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The authors' state dict -> (ours, dropped keys). Drops only their dead fusion blocks
        (`feature_fusion.C3_p4.*`, `feature_fusion.C3_p3.*`, 58,368 parameters, ITSDT/DAUB variant); keys it
        does not know pass through unchanged so the strict load names them. Raises ValueError when the
        checkpoint is of the other variant."""
        state = OrderedDict((k[len("module."):] if k.startswith("module.") else k, v)
                            for k, v in state_dict.items())
        self._check_variant(state)
        to_ours = {v: k for k, v in self.official_key_map().items()}
        dead = set(self.dead_official_keys())
        out: dict[str, torch.Tensor] = OrderedDict()
        dropped: list[str] = []
        for key, value in state.items():
            if key in to_ours:
                out[to_ours[key]] = value
            elif key in dead:
                dropped.append(key)
            else:
                out[key] = value
        return out, dropped

    def to_official(
        self, state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> OrderedDict[str, torch.Tensor]:
        """Our state dict (default: this model's) -> the authors' key names (without their dead blocks)."""
        state = self.state_dict() if state_dict is None else state_dict
        return OrderedDict((official_key(k), v) for k, v in state.items())

    def _check_variant(self, state: Mapping[str, torch.Tensor]) -> None:
        probe = state.get("feature_fusion.C3_p4.conv3.conv.weight")
        irdst_fusion = probe is not None and probe.shape[0] == 2 * ENCODER_CHANNELS
        itsdt_fusion = any(k.startswith("feature_fusion.C3_p3.") for k in state) or (
            probe is not None and not irdst_fusion
        )
        if self.variant == "irdst" and itsdt_fusion:
            raise ValueError("checkpoint is of the ITSDT/DAUB STMENet variant (it has the unused "
                             "feature_fusion.C3_p3 block); build the model with variant='itsdt' or 'daub'")
        if self.variant != "irdst" and irdst_fusion:
            raise ValueError("checkpoint is of the IRDST STMENet variant (its feature_fusion.C3_p4 maps "
                             "256 -> 256 channels); build the model with variant='irdst'")


_BRANCH_INDEX = {
    ("branch1", "dw"): 0, ("branch1", "pw"): 2,
    ("branch2", "pw1"): 0, ("branch2", "dw"): 3, ("branch2", "pw2"): 5,
}
_CSP = {"main": "conv1", "side": "conv2", "merge": "conv3"}
_ENCODER = {"reduce": "fuse_convs.0.convs", "conv1": "fuse_convs.1.convs", "csam": "fuse_convs.2",
            "conv2": "fuse_convs.3.convs", "out": "fuse_convs.5"}
_FUSION = {"lateral": "lateral_conv0", "out": "reduce_conv1", "refine.squeeze": "C3_p4.conv1",
           "refine.mix": "C3_p4.conv2", "refine.expand": "C3_p4.conv3"}
_HEAD = {"stem": "stems.0", "cls_pred": "cls_preds.0", "reg_pred": "reg_preds.0", "obj_pred": "obj_preds.0",
         "cls_convs": "cls_convs.0", "reg_convs": "reg_convs.0"}
_STAGE_OFFSET = {"stage1": 0, "stage2": 4, "stage3": 12}


def _spatial_key(parts: list[str]) -> str:
    if parts[0] == "stem":
        return ".".join(["stem"] + parts[1:])
    stage, block, rest = parts[0], parts[1], parts[2:]
    n = stage[len("stage"):]
    index = {"down": 0, "spp": 1, "csp": 2 if n == "5" else 1}[block]
    if block == "spp":
        rest = [{"reduce": "conv1", "merge": "conv2"}[rest[0]]] + rest[1:]
    elif block == "csp":
        if rest[0] == "blocks":
            rest = ["m", rest[1], {"conv1x1": "conv1", "conv3x3": "conv2"}[rest[2]]] + rest[3:]
        else:
            rest = [_CSP[rest[0]]] + rest[1:]
    return ".".join([f"dark{n}", str(index)] + rest)


def _temporal_key(parts: list[str]) -> str:
    if parts[0] == "stem":
        return ".".join(["conv1", {"conv": "0", "bn": "1"}[parts[1]]] + parts[2:])
    stage, unit, branch, layer, kind = parts[:5]
    index = _BRANCH_INDEX[(branch, layer)] + (1 if kind == "bn" else 0)
    return ".".join(["features", str(_STAGE_OFFSET[stage] + int(unit)), branch.replace("branch", "banch"),
                     str(index)] + parts[5:])


def _encoder_key(parts: list[str]) -> str:
    scale = int(parts[0]) + 1
    if parts[1] == "refine":
        name = parts[2]
        if name == "proj":
            name = "conv"
        elif name == "ca":
            name = "ca." + {"squeeze": "fc1", "excite": "fc2"}[parts[3]]
            parts = parts[:3] + parts[4:]
        else:
            name = re.sub(r"^dw(\d+)x(\d+)$", r"dconv\1_\2", name)
        return ".".join([f"cls_channel_encoders{scale}.fuse_time.0", name] + parts[3:])
    rest = parts[2:]
    if parts[1] in ("reduce", "conv1", "conv2"):
        rest = [{"conv": "0", "bn": "1"}[rest[0]]] + rest[1:]
    return ".".join([f"cls_channel_encoders{scale}", _ENCODER[parts[1]]] + rest)


def official_key(key: str) -> str:
    """One of our STMENet state-dict keys -> the authors' key; unknown keys come back unchanged."""
    parts = key.split(".")
    try:
        top, parts = parts[0], parts[1:]
        if top == "spatial":
            return "backbone.backbone." + _spatial_key(parts)
        if top == "temporal":
            return "backbone_3d.backbone." + _temporal_key(parts)
        if top == "encoders":
            return _encoder_key(parts)
        if top == "fusion":
            n = 2 if parts[0] == "refine" else 1
            return ".".join(["feature_fusion", _FUSION[".".join(parts[:n])]] + parts[n:])
        if top == "head":
            return ".".join(["head", _HEAD[parts[0]]] + parts[1:])
    except (KeyError, IndexError, ValueError):
        return key
    return key


# ----------------------------------------------------------------------------------------------------------
# Training helpers: the authors' initialisation and optimiser groups
# ----------------------------------------------------------------------------------------------------------
def init_weights(model: nn.Module, std: float = 0.02) -> nn.Module:
    """The authors' recipe: Conv2d / Conv3d weights ~ N(0, std), BatchNorm2d weight ~ N(1, 0.02) and bias 0;
    conv biases and BatchNorm3d stay at PyTorch defaults; CSAM gamma = 0. Returns `model`."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, CSAM):
            nn.init.zeros_(m.gamma)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimiser groups: conv / linear weights with `weight_decay`; everything else (BatchNorm 2-D and 3-D
    weights, all biases, CSAM gamma) without.

    Fixes two bugs of the authors' grouping: CSAM gamma was never given to the optimiser (it stayed 0), and
    BatchNorm3d weights received weight decay.
    """
    decay, no_decay = [], []
    weight_layers = (nn.modules.conv._ConvNd, nn.Linear)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (decay if isinstance(module, weight_layers) and name == "weight" else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


@register_model("stmenet", task="detect", variants=VARIANTS)
def stmenet(variant: str = "itsdt", num_classes: int = 1, num_frames: int = 5) -> STMENet:
    """`nets.build_model("stmenet", variant="itsdt" | "daub" | "irdst", num_classes=1, num_frames=5)`."""
    return STMENet(variant=variant, num_classes=num_classes, num_frames=num_frames)
