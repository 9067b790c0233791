"""The one detection post-process: raw head maps -> boxes in image pixels.

    >>> dets = postprocess(out, model.stride, (512, 512), [(512, 640)], conf_thres=0.001, nms_thres=0.65)
    >>> dets[0]   # float32 [K, 7]: x1, y1, x2, y2 (image pixels), obj, cls_conf, cls

decode (`utils.boxes.decode_outputs`, the model's own stride) -> score threshold and per-class NMS
(`non_max_suppression`) -> at most `max_dets` boxes per image and class -> the letterbox undone
(`undo_letterbox`). Evaluation, validation, the cross-metric tool and streaming prediction all call it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utils.boxes import decode_outputs, non_max_suppression, undo_letterbox

CONF_THRES = 0.001  # the authors' mAP evaluation thresholds
NMS_THRES = 0.65


def cap_per_class(dets: torch.Tensor, max_dets: int) -> torch.Tensor:
    """Score-sorted NMS rows `[K, 7]` -> the first `max_dets` rows of each class, order kept (0 = all)."""
    if max_dets <= 0 or dets.shape[0] <= max_dets:
        return dets
    cls = dets[:, 6]
    keep = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    for c in cls.unique():
        keep[torch.nonzero(cls == c).squeeze(1)[:max_dets]] = True
    return dets[keep]


def model_stride(model: torch.nn.Module) -> int:
    """The output stride a detector declares (`model.stride`); ValueError when it declares none."""
    stride = getattr(model, "stride", None)
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{type(model).__name__} declares no output stride (attribute `stride`)")
    return stride


def postprocess(out: torch.Tensor, stride: int, input_hw: tuple[int, int],
                image_hws: Sequence[tuple[int, int]], conf_thres: float = CONF_THRES,
                nms_thres: float = NMS_THRES, max_dets: int = 0,
                box_mapping: str = "authors") -> list[torch.Tensor]:
    """Head maps `[B, 5 + C, H/stride, W/stride]` -> per image float32 CPU `[K, 7]` in image pixels.
    `box_mapping`: the `undo_letterbox` mode, "authors" (their yolo_correct_boxes arithmetic, the
    published protocol) or "exact" (the geometric inverse of the letterbox)."""
    dets = non_max_suppression(decode_outputs(out, stride), conf_thres, nms_thres)
    results = []
    for d, hw in zip(dets, image_hws):
        d = cap_per_class(d, max_dets).float().cpu()
        boxes = undo_letterbox(d[:, :4], input_hw, (int(hw[0]), int(hw[1])), box_mapping)
        results.append(torch.cat((boxes, d[:, 4:]), 1))
    return results


__all__ = ["CONF_THRES", "NMS_THRES", "cap_per_class", "model_stride", "postprocess"]
