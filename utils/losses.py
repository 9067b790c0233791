"""Training losses: the YOLOX loss with SimOTA assignment (STMENet), SoftLoU (DeepPro) and the batch-pooled
soft IoU loss of the DTUM authors (Res-UNet+DTUM).

All compute in fp32 with autocast disabled, so they are safe to call inside an AMP region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.boxes import grid_xy
from utils.errors import ConfigError

_BCE_LOG_FLOOR = -100.0  # torch's binary_cross_entropy clamps each log term at -100


def _iou_cxcywh(a: torch.Tensor, b: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Element-wise (broadcast) IoU of (cx, cy, w, h) boxes `a [..., 4]`, `b [..., 4]`."""
    tl = torch.maximum(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
    br = torch.minimum(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
    inter = (br - tl).clamp(min=0).prod(-1)
    union = a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter
    return inter / (union + eps)


def _strictly_inside(x, y, left, top, right, bottom) -> torch.Tensor:
    """Points strictly inside boxes, tested as the authors' deltas (x - left > 0, ...) for equal floats."""
    return (x - left > 0) & (right - x > 0) & (y - top > 0) & (bottom - y > 0)


class YOLOXLoss:
    """YOLOX loss for one stride level, SimOTA assignment, no L1 term (the authors' STMENet recipe).

    `loss_fn(outputs [B, 5+C, h, w], targets)` with raw head channels (dx, dy, log w, log h, obj, cls...)
    and `targets` a list of B tensors `[N_i, 5]` (cx, cy, w, h, cls) in input pixels (N_i may be 0).
    Returns `(loss, parts)`: loss = (5 * sum(1 - IoU^2) + sum BCE(obj) + sum BCE(cls, IoU * onehot)) / num_fg,
    num_fg = max(#positive anchors in the batch, 1); `parts` holds the three terms (detached, already
    weighted and divided, so they add up to the loss) and `num_fg` (int).

    Assignment per image, without gradients: candidates are anchors whose centre ((grid + 0.5) * stride)
    lies strictly inside some GT box or within 2.5 * stride of some GT centre; cost = BCE(sqrt(sig(cls) *
    sig(obj)), onehot) + 3 * -log(IoU + 1e-8) + 1e5 * (anchor not both inside that GT and near its centre);
    each GT takes its dynamic_k = max(1, int(sum of its top-min(10, #candidates) IoUs)) cheapest
    candidates; an anchor taken by several GTs goes to the GT of lowest cost.
    """

    def __init__(self, num_classes: int = 1, stride: int = 8, center_radius: float = 2.5):
        self.num_classes = num_classes
        self.stride = stride
        self.center_radius = center_radius
        self.reg_weight = 5.0

    def __call__(
        self, outputs: torch.Tensor, targets: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | int]]:
        c = self.num_classes
        if outputs.ndim != 4 or outputs.shape[1] != 5 + c:
            raise ConfigError(f"YOLOXLoss: expected outputs [B, {5 + c}, h, w], got {tuple(outputs.shape)}")
        if len(targets) != outputs.shape[0]:
            raise ConfigError(f"YOLOXLoss: {outputs.shape[0]} images but {len(targets)} target tensors")
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            return self._loss(outputs.float(), targets)

    def _loss(self, outputs: torch.Tensor, targets: list[torch.Tensor]):
        _, _, h, w = outputs.shape
        dev = outputs.device
        raw = outputs.flatten(2).transpose(1, 2)  # [B, A, 5+C]
        grid = grid_xy(h, w, device=dev)
        boxes = torch.cat(((raw[..., :2] + grid) * self.stride, torch.exp(raw[..., 2:4]) * self.stride), -1)
        obj_logits, cls_logits = raw[..., 4], raw[..., 5:]
        centres = (grid + 0.5) * self.stride  # [A, 2] anchor centres for the candidate test

        obj_target = torch.zeros_like(obj_logits)
        fg_boxes, fg_cls, box_targets, cls_targets = [], [], [], []
        for i, tgt in enumerate(targets):
            tgt = torch.as_tensor(tgt)
            if tgt.numel() == 0:
                continue
            if tgt.ndim != 2 or tgt.shape[1] != 5:
                raise ConfigError(
                    f"YOLOXLoss: targets[{i}] must be [N, 5] (cx, cy, w, h, cls), not {list(tgt.shape)}"
                )
            tgt = tgt.to(device=dev, dtype=torch.float32)
            if bool(((tgt[:, 4] < 0) | (tgt[:, 4] >= self.num_classes)).any()):
                raise ConfigError(f"YOLOXLoss: targets[{i}] has a class id outside [0, {self.num_classes})")
            fg, gt_idx, ious = self.assign(
                tgt[:, :4], tgt[:, 4].long(), boxes[i].detach(), obj_logits[i].detach(),
                cls_logits[i].detach(), centres,
            )  # fmt: skip
            if fg.numel() == 0:
                continue
            obj_target[i, fg] = 1.0
            fg_boxes.append(boxes[i, fg])
            fg_cls.append(cls_logits[i, fg])
            box_targets.append(tgt[gt_idx, :4])
            cls_targets.append(F.one_hot(tgt[gt_idx, 4].long(), self.num_classes).float() * ious[:, None])

        num_fg = sum(len(b) for b in fg_boxes)
        loss_obj = F.binary_cross_entropy_with_logits(obj_logits, obj_target, reduction="sum")
        if num_fg:
            iou = _iou_cxcywh(torch.cat(fg_boxes), torch.cat(box_targets), eps=1e-16)
            loss_iou = (1.0 - iou**2).sum()
            loss_cls = F.binary_cross_entropy_with_logits(
                torch.cat(fg_cls), torch.cat(cls_targets), reduction="sum"
            )
        else:
            loss_iou = loss_cls = outputs.new_zeros(())
        denom = max(num_fg, 1)
        iou_part, obj_part, cls_part = self.reg_weight * loss_iou / denom, loss_obj / denom, loss_cls / denom
        parts: dict[str, torch.Tensor | int] = {
            k: v.detach() for k, v in (("iou", iou_part), ("obj", obj_part), ("cls", cls_part))
        }
        parts["num_fg"] = num_fg
        return iou_part + obj_part + cls_part, parts

    @torch.no_grad()
    def assign(
        self,
        gt_boxes: torch.Tensor,
        gt_classes: torch.Tensor,
        pred_boxes: torch.Tensor,
        obj_logits: torch.Tensor,
        cls_logits: torch.Tensor,
        centres: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SimOTA for one image.

        gt_boxes `[G, 4]` cxcywh, gt_classes `[G]`, pred_boxes `[A, 4]` cxcywh, obj_logits `[A]`,
        cls_logits `[A, C]`, centres `[A, 2]` -> (positive anchor indices `[P]` ascending,
        their GT indices `[P]`, their IoU with that GT `[P]`).
        """
        radius = self.center_radius * self.stride
        ax, ay = centres[:, 0][None], centres[:, 1][None]  # [1, A]
        gx, gy, gw, gh = (v[:, None] for v in gt_boxes.unbind(1))  # [G, 1]
        in_box = _strictly_inside(
            ax, ay, gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh
        )  # [G, A]
        in_centre = _strictly_inside(ax, ay, gx - radius, gy - radius, gx + radius, gy + radius)
        cand = torch.nonzero((in_box | in_centre).any(0)).squeeze(1)  # [M] candidate anchors (any GT)
        empty = torch.zeros(0, dtype=torch.long, device=pred_boxes.device)
        if cand.numel() == 0:
            return empty, empty, pred_boxes.new_zeros(0)
        both = in_box[:, cand] & in_centre[:, cand]  # [G, M]

        ious = _iou_cxcywh(gt_boxes[:, None, :], pred_boxes[cand][None, :, :])  # [G, M]
        p = (torch.sigmoid(cls_logits[cand]) * torch.sigmoid(obj_logits[cand])[:, None]).sqrt()  # [M, C]
        neg = -torch.log1p(-p).clamp(min=_BCE_LOG_FLOOR)  # BCE against 0, per class
        pos = -torch.log(p).clamp(min=_BCE_LOG_FLOOR)  # BCE against 1
        cls_cost = neg.sum(1)[None, :] + (pos - neg)[:, gt_classes].t()  # [G, M]
        cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~both).float()

        g, m = cost.shape
        top_ious = torch.topk(ious, min(10, m), dim=1).values
        dynamic_k = top_ious.sum(1).int().clamp(min=1)  # [G]
        rank = torch.empty_like(cost, dtype=torch.long)
        order = torch.argsort(cost, dim=1, stable=True)
        rank.scatter_(1, order, torch.arange(m, device=cost.device).expand(g, m))
        matching = rank < dynamic_k[:, None]  # [G, M]: the dynamic_k cheapest candidates of each GT

        shared = matching.sum(0) > 1
        if shared.any():
            best = cost[:, shared].argmin(0)
            matching[:, shared] = False
            matching[best, torch.nonzero(shared).squeeze(1)] = True
        fg = matching.any(0)
        gt_idx = matching[:, fg].float().argmax(0)
        return cand[fg], gt_idx, ious[gt_idx, torch.nonzero(fg).squeeze(1)]


def soft_lou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SoftLoU (DeepPro): `logits [B, T, H, W]`, `target [B, T, H, W]` in [0, 1] -> scalar.

    loss = 1 - mean_b(sum p*y / (sum p + sum y - sum p*y)), sums per sample over (T, H, W), p = sigmoid,
    no smoothing (the authors'). A sample without targets gives 0 / sum(p) = 0 (no gradient); only the
    0 / 0 case (every probability underflows to 0 and no target) is guarded, giving ratio 0 instead of NaN.
    """
    if logits.shape != target.shape or logits.ndim < 2:
        raise ConfigError(
            f"soft_lou_loss: logits {list(logits.shape)} and target {list(target.shape)} must match"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = torch.sigmoid(logits.float()).flatten(1)
        y = target.float().flatten(1)
        inter = (p * y).sum(1)
        union = p.sum(1) + y.sum(1) - inter
        # union == 0 means no target and p == 0 everywhere, so inter == 0 too: ratio 0 instead of 0 / 0
        return 1.0 - (inter / union.masked_fill(union <= 0, 1.0)).mean()


def dtum_soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The DTUM authors' `SoftIoULoss` (loss_func 'fullySup'): `logits`, `target` of one shape (e.g.
    `[B, 1, H, W]`, target in [0, 1]) -> scalar.

    loss = 1 - (sum p*y + smooth) / (sum p + sum y - sum p*y + smooth), p = sigmoid(logits), the sums over
    the whole batch at once (not per sample, unlike `soft_lou_loss`), smooth 1 as the authors'. A batch
    without targets gives 1 - 1 / (sum p + 1): it still pushes every probability down.
    """
    if logits.shape != target.shape or logits.ndim < 1:
        raise ConfigError(
            f"dtum_soft_iou_loss: logits {list(logits.shape)} and target {list(target.shape)} must match"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = torch.sigmoid(logits.float())
        y = target.float()
        inter = (p * y).sum()
        return 1.0 - (inter + smooth) / (p.sum() + y.sum() - inter + smooth)
