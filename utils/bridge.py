"""Metric bridge: score a segmenter (DeepPro) with box mAP and a detector (STMENet) with Pd / Fa.

Segmenter -> boxes: the 8-connected components of `prob >= threshold` in each frame become tight boxes
(x2 = last column + 1) whose score is the highest probability in the component (`masks_to_boxes`).
Detector -> maps: every box becomes its centre pixel painted with its score (`boxes_to_prob_map`), or, with
`fill="box"`, its whole (pixel-rounded) box; truth boxes become centroid maps (`boxes_to_centroid_map`).

Both directions lose something and the numbers are not those of the other family's papers: a component
box is as tight as the mask (real COCO boxes are often larger, so IoU 0.5 can fail; `min_size` widens small
boxes around their centre), and a box centre may sit more than 1 px from the mask centroid (Pd then misses
it). Say which bridge produced a number when you report it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from utils.boxes import boxes_to_centroid_map, boxes_to_prob_map, masks_to_boxes
from utils.errors import ConfigError
from utils.metrics import as_frames, to_numpy

__all__ = [
    "boxes_to_centroid_map", "boxes_to_centroid_maps", "boxes_to_prob_map", "detection_scores",
    "detections_to_prob_maps", "masks_to_boxes", "masks_to_coco_gt", "prob_map_components",
    "prob_maps_to_coco_results", "prob_maps_to_detections",
]


def _widen(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Widen boxes `[K, 4+]` narrower (or lower) than `min_size` symmetrically around their centre."""
    if min_size <= 0 or boxes.numel() == 0:
        return boxes
    out = boxes.clone()
    for lo, hi in ((0, 2), (1, 3)):
        size = out[:, hi] - out[:, lo]
        grow = (min_size - size).clamp(min=0) / 2
        out[:, lo] -= grow
        out[:, hi] += grow
    return out


def prob_maps_to_detections(prob: Any, threshold: float = 0.5, min_size: float = 0.0) -> list[torch.Tensor]:
    """Probability maps `[N, H, W]` (or `[H, W]`) -> per frame float32 `[K, 6]` (x1, y1, x2, y2, score, 0).

    Boxes of the 8-connected components of prob >= threshold, score = max probability in the component,
    sorted by decreasing score; boxes smaller than `min_size` px a side are widened around their centre.
    The rows are what `utils.coco_metrics.boxes_to_coco_results` and `COCOEvaluator.process` take.
    """
    if not np.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite number, got {threshold}")
    out = []
    for boxes in masks_to_boxes(as_frames(prob, "prob"), threshold):
        boxes = _widen(boxes, min_size)
        boxes = boxes[torch.argsort(boxes[:, 4], descending=True, stable=True)]
        out.append(torch.cat((boxes, boxes.new_zeros(boxes.shape[0], 1)), 1))
    return out


def prob_map_components(prob: Any, threshold: float = 0.5) -> list[dict]:
    """One probability map `[H, W]` -> its 8-connected components of prob >= threshold as
    [{bbox [x1, y1, x2, y2] (x2, y2 exclusive), score (max prob), centroid [x, y] (mean pixel column / row),
    pixels}], sorted by decreasing score (the per-frame detections predict.py writes for DeepPro)."""
    p = to_numpy(prob).astype(np.float32, copy=False)
    if p.ndim != 2:
        raise ConfigError(f"prob_map_components: expected [H, W], got shape {list(p.shape)}")
    labels, n = ndimage.label(p >= threshold, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    ones = np.ones_like(p)
    peaks = ndimage.maximum(p, labels, index)
    cents = ndimage.center_of_mass(ones, labels, index)
    sizes = ndimage.sum_labels(ones, labels, index)
    out = [{"bbox": [xs.start, ys.start, xs.stop, ys.stop], "score": round(float(peak), 6),
            "centroid": [round(float(cx), 3), round(float(cy), 3)], "pixels": int(size)}
           for (ys, xs), peak, (cy, cx), size in zip(ndimage.find_objects(labels), peaks, cents, sizes)]
    return sorted(out, key=lambda d: -d["score"])


def prob_maps_to_coco_results(prob: Any, image_ids: Sequence[int], threshold: float = 0.5,
                              category_id: int = 1, min_size: float = 0.0,
                              max_dets: int = 100) -> list[dict]:
    """Probability maps `[N, H, W]` of N images -> COCO results {image_id, category_id, bbox [x, y, w, h],
    score}, one per component of prob >= threshold (see `prob_maps_to_detections`), at most `max_dets`
    per image (the best; COCOeval keeps 100). `image_ids[i]` is the id of frame i."""
    dets = prob_maps_to_detections(prob, threshold, min_size)
    if len(image_ids) != len(dets):
        raise ConfigError(f"{len(image_ids)} image ids for {len(dets)} probability maps")
    results = []
    for image_id, d in zip(image_ids, dets):
        for x1, y1, x2, y2, score, _ in d[:max_dets if max_dets > 0 else None].tolist():
            results.append({"image_id": int(image_id), "category_id": int(category_id),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


def detection_scores(dets: Any) -> np.ndarray:
    """Scores of detection rows: `[K, 5]` / `[K, 6]` (score in column 4) or NMS rows `[K, 7]`
    (x1, y1, x2, y2, obj, cls_conf, cls; score = obj * cls_conf) -> float32 `[K]`."""
    d = to_numpy(dets).astype(np.float32)
    if d.size == 0:
        return np.zeros(0, np.float32)
    if d.ndim != 2 or d.shape[1] not in (5, 6, 7):
        raise ConfigError(f"detections: expected [K, 5], [K, 6] or [K, 7] rows, got shape {list(d.shape)}")
    return d[:, 4] * d[:, 5] if d.shape[1] == 7 else d[:, 4]


def _paint_boxes(boxes: np.ndarray, scores: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Fill each box's pixels (columns floor(x1)..ceil(x2) - 1, clipped) with the max score covering them."""
    out = np.zeros(hw, np.float32)
    h, w = hw
    for (x1, y1, x2, y2), s in zip(boxes, scores):
        c1, r1 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        c2, r2 = min(max(int(np.ceil(x2)), c1 + 1), w), min(max(int(np.ceil(y2)), r1 + 1), h)
        if c1 < c2 and r1 < r2:
            np.maximum(out[r1:r2, c1:c2], s, out=out[r1:r2, c1:c2])
    return out


def detections_to_prob_maps(detections: Iterable[Any], hw: tuple[int, int],
                            fill: str = "centre") -> np.ndarray:
    """Per-frame detections (rows as in `detection_scores`, xyxy in image pixels) -> float32 `[N, H, W]`.

    fill="centre": each box's centre pixel (floor of the centre) holds its score, the highest where
    centres share a pixel (a detector scored as points); fill="box": every
    pixel of the box holds it. Everything else is 0. Feed the result to `utils.metrics.pd_fa`.
    """
    if fill not in ("centre", "box"):
        raise ConfigError(f"fill must be 'centre' or 'box', got {fill!r}")
    maps = []
    for dets in detections:
        d = to_numpy(dets).astype(np.float32)
        d = d.reshape(0, 5) if d.size == 0 else d
        scores = detection_scores(d)
        if fill == "centre":
            maps.append(boxes_to_prob_map(np.concatenate((d[:, :4], scores[:, None]), 1), hw).numpy())
        else:
            maps.append(_paint_boxes(d[:, :4], scores, hw))
    return np.stack(maps) if maps else np.zeros((0, *hw), np.float32)


def boxes_to_centroid_maps(boxes: Iterable[Any], hw: tuple[int, int]) -> np.ndarray:
    """Per-frame truth boxes `[K, 4+]` xyxy -> bool `[N, H, W]` centroid maps (the pixel holding each box
    centre), the truth that `utils.metrics.pd_fa` takes."""
    maps = [boxes_to_centroid_map(b, hw).numpy() for b in boxes]
    return np.stack(maps) if maps else np.zeros((0, *hw), bool)


def masks_to_coco_gt(masks: Iterable[Any], file_names: Sequence[str] | None = None, first_image_id: int = 1,
                     category: str = "target") -> dict:
    """Truth masks (an iterable of `[H, W]`, sizes may differ) -> a COCO instances dict whose boxes are the
    tight boxes of the 8-connected mask components, so a mask dataset can be scored with box mAP.
    Image i gets id first_image_id + i and file name file_names[i] (default "<i>.png")."""
    images, annotations = [], []
    for i, mask in enumerate(masks):
        m = to_numpy(mask)
        if m.ndim != 2:
            raise ConfigError(f"masks_to_coco_gt: mask {i} must be [H, W], got shape {list(m.shape)}")
        image_id = first_image_id + i
        name = file_names[i] if file_names is not None else f"{i}.png"
        images.append({"id": image_id, "file_name": str(name), "height": int(m.shape[0]),
                       "width": int(m.shape[1])})
        for x1, y1, x2, y2, _ in masks_to_boxes(m.astype(np.float32), 0.5).tolist():
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    if file_names is not None and len(file_names) != len(images):
        raise ConfigError(f"masks_to_coco_gt: {len(file_names)} file names for {len(images)} masks")
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": category, "supercategory": "none"}]}
