"""STMENet rewrites for the fast inference path (`nets.fast.optimize_for_inference`).

Registered on import; `nets.stmenet` names this module in `FAST_REWRITES`.

- Each encoder's RepBlock applies its first 1x1 conv, GELU and channel attention to the coarse temporal map
  before the nearest upsampling instead of after it (`FastRepBlock`, `FastSTMENet`).
- CSAM works on channels-last rows (`FastCSAM`), its channel energy in float32 under autocast.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import stmenet
from nets.fast import FoldedConv, as_rows, conv_bn_act, register_rewrite, rewrite, rewrite_children

__all__ = ["FastCSAM", "FastRepBlock", "FastSTMENet"]


class FastCSAM(nn.Module):
    """Channel self-attention computed on the channels-last rows `X^T [B, HW, C]` (no reshapes):
    `E = X X^T` (float32, see `stmenet.CSAM`), `A = softmax(rowmax(E) - E)`, `out = gamma * (A X) + X`.
    `[B, C, H, W] -> same`."""

    def __init__(self, csam: nn.Module) -> None:
        super().__init__()
        self.gamma = nn.Parameter(csam.gamma.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = as_rows(x)  # [B, HW, C]
        attention = stmenet.channel_attention(rows.transpose(1, 2)).to(rows.dtype)
        out = torch.bmm(rows, attention.transpose(1, 2)).view(b, h, w, c).permute(0, 3, 1, 2)
        return out.mul_(self.gamma).add_(x)


class FastRepBlock(nn.Module):
    """RepBlock fed with the coarse temporal map and the upsampling factor: its first 1x1 conv, the GELU
    and the channel attention act on single positions (the attention on average and max pools, which
    nearest upsampling leaves unchanged), so they run before the upsampling, on `scale**2` times fewer
    positions. `forward(x [B, C, h, w], scale) -> [B, C, h * scale, w * scale]`, equal to
    `RepBlock(up(x, scale))`."""

    def __init__(self, block: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.proj_gelu = FoldedConv(block.proj, None, block.act, channels_last)  # first use, GELU fused
        for name, child in list(block.named_children()):
            block._modules[name] = rewrite(child, {"channels_last": channels_last, "tile_pixels": 0})
        self.block = block

    def forward(self, x: torch.Tensor, scale: int = 1) -> torch.Tensor:
        blk = self.block
        u = self.proj_gelu(x)
        u = blk.ca(u) * u
        if scale > 1:
            u = F.interpolate(u, scale_factor=scale, mode="nearest")
        s0 = blk.dw5x5(u)
        s = s0
        for k in blk.STRIPS:
            s = s + getattr(blk, f"dw{k}x1")(getattr(blk, f"dw1x{k}")(s0))
        return blk.proj(blk.proj(s) * u)


class FastSTMENet(nn.Module):
    """STMENet with each encoder refining the coarse temporal map before upsampling it (`FastRepBlock`).
    `x [B, 3, T, H, W] -> [B, 5 + num_classes, H/8, W/8]`, same checks and outputs as STMENet."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.check_input = model.check_input
        self.spatial, self.temporal, self.encoders = model.spatial, model.temporal, model.encoders
        self.fusion, self.head = model.fusion, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        spatial = self.spatial(x[:, :, -1])
        t = self.temporal(x)
        scales = []
        for enc, f in zip(self.encoders, spatial):
            temporal = enc.refine(t, f.shape[-1] // t.shape[-1])
            y = enc.reduce(torch.cat([f, temporal], dim=1))
            scales.append(enc.out(enc.drop(enc.conv2(enc.csam(enc.conv1(y))))))
        return self.head(self.fusion(*scales))


register_rewrite(stmenet.ConvBN)(conv_bn_act)
register_rewrite(stmenet.CSAM)(lambda m, o: FastCSAM(m))
register_rewrite(stmenet.RepBlock)(lambda m, o: FastRepBlock(m, o["channels_last"]))
register_rewrite(stmenet.STMENet)(lambda m, o: FastSTMENet(rewrite_children(m, o)))
