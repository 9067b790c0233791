"""Box geometry: letterbox parameters, decoding, NMS, letterbox undo, boxes <-> masks.

Boxes are `xyxy` (x1, y1, x2, y2) or `cxcywh` (cx, cy, w, h) in pixels, with x2 = x1 + w (a box that
covers exactly pixel column i spans [i, i + 1)).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from utils.errors import ConfigError

# NMS tests candidate box pairs in chunks of about this many pairs (bounded memory).
_PAIR_CHUNK = 1 << 16
# Sweeps of the vectorised greedy NMS before falling back to the sequential pass (long suppression chains).
_NMS_SWEEPS = 32


def letterbox_params(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[float, int, int, int, int]:
    """Letterbox of an image of size `src_hw` = (ih, iw) into `dst_hw` = (H, W), as the authors do it.

    Returns (scale, nw, nh, dx, dy): the image is resized to (nh, nw) with scale = min(W/iw, H/ih),
    nw = int(iw * scale), nh = int(ih * scale), and pasted at offset dx = (W - nw) // 2, dy = (H - nh) // 2.
    """
    ih, iw = src_hw
    H, W = dst_hw
    scale = min(W / iw, H / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    return scale, nw, nh, (W - nw) // 2, (H - nh) // 2


# ----------------------------------------------------------------------------------------------------
# Box formats and overlap
# ----------------------------------------------------------------------------------------------------


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """`[..., 4]` (x1, y1, x2, y2) -> `[..., 4]` (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """`[..., 4]` (cx, cy, w, h) -> `[..., 4]` (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise (broadcast) IoU of xyxy boxes `a [..., 4]`, `b [..., 4]`; 0 where the union is empty."""
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    union = area_a + area_b - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: `a [N, 4]`, `b [M, 4]` -> `[N, M]` (0 where the union is empty)."""
    return _iou(a[:, None, :], b[None, :, :])


# ----------------------------------------------------------------------------------------------------
# Decoding and NMS
# ----------------------------------------------------------------------------------------------------


def grid_xy(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Cell indices of an `h x w` map in row-major order -> `[h*w, 2]` (x, y)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys), -1).reshape(-1, 2)


def decode_outputs(outputs: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Raw head map `[B, 5+C, h, w]` -> `[B, h*w, 5+C]` (cx, cy, w, h in input pixels, obj prob, class probs).

    xy = (raw_xy + grid) * stride, wh = exp(raw_wh) * stride, probabilities by sigmoid; computed in fp32.
    """
    if outputs.ndim != 4 or outputs.shape[1] < 6:
        raise ConfigError(f"decode_outputs: expected a head map [B, 5+C, h, w], got {tuple(outputs.shape)}")
    _, _, h, w = outputs.shape
    out = outputs.float().flatten(2).transpose(1, 2)  # [B, h*w, 5+C]
    grid = grid_xy(h, w, device=out.device)
    xy = (out[..., :2] + grid) * stride
    wh = torch.exp(out[..., 2:4]) * stride
    return torch.cat((xy, wh, torch.sigmoid(out[..., 4:])), -1)


def _floor_to_dtype(value: float, dtype: torch.dtype) -> float:
    """Largest number of `dtype` <= value: for x of that dtype, x > result exactly when x > value (a plain
    cast could round the threshold up, e.g. just below 0.5 to 0.5 in float32)."""
    t = torch.tensor(value, dtype=dtype)
    if float(t) > value:
        t = torch.nextafter(t, torch.tensor(-float("inf"), dtype=dtype))
    return float(t)


def _overlap_edges(
    boxes: torch.Tensor, labels: torch.Tensor | None, iou_thres: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-sorted boxes `[N, 4]` -> edges (u, v) `[E]` with u < v, same label and IoU(u, v) > iou_thres.

    Sweep and prune: with the boxes ordered by x1, box p can only overlap the boxes q > p whose x1 lies
    before p's x2, so only those pairs are tested (all pairs in the worst case, few for spread-out boxes).
    """
    n, dev = boxes.shape[0], boxes.device
    thr = _floor_to_dtype(iou_thres, boxes.dtype)
    by_x = torch.sort(boxes[:, 0], stable=True).indices
    x1 = boxes[by_x, 0].contiguous()
    reach = torch.searchsorted(x1, boxes[by_x, 2].contiguous())  # boxes starting before each box ends
    counts = (reach - torch.arange(1, n + 1, device=dev)).clamp(min=0)
    ends = counts.cumsum(0).cpu()
    cols = boxes.t().contiguous()  # [4, N]: gathers give contiguous coordinate rows
    area = (cols[2] - cols[0]).clamp(min=0) * (cols[3] - cols[1]).clamp(min=0)
    us, vs = [], []
    start = 0
    while start < n:
        base = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, base + _PAIR_CHUNK, right=True)), start + 1)
        c = counts[start:stop]
        p = torch.repeat_interleave(torch.arange(start, stop, device=dev), c)
        if p.numel():
            q = p + 1 + torch.arange(p.numel(), device=dev) - torch.repeat_interleave(c.cumsum(0) - c, c)
            a, b = by_x[p], by_x[q]
            ax1, ay1, ax2, ay2 = cols[:, a]
            bx1, by1, bx2, by2 = cols[:, b]
            inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
            inter *= (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
            hit = inter / (area[a] + area[b] - inter) > thr  # 0 / 0 is NaN: no hit
            if labels is not None:
                hit &= labels[a] == labels[b]
            a, b = a[hit], b[hit]
            us.append(torch.minimum(a, b))
            vs.append(torch.maximum(a, b))
        start = stop
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    return (torch.cat(us), torch.cat(vs)) if us else (empty, empty)


def _greedy_keep(n: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Greedy NMS over `n` score-sorted boxes with suppression edges u -> v (u < v) -> keep `[n]` bool.

    Box v is kept iff no kept box u has an edge to it. The vectorised sweep "v is suppressed by a
    currently kept u" reaches that unique fixed point after (longest suppression chain + 1) sweeps,
    usually a handful; very long chains finish with the exact sequential pass.
    """
    keep = torch.ones(n, dtype=torch.bool, device=u.device)
    for _ in range(_NMS_SWEEPS):
        new = torch.ones_like(keep)
        new[v[keep[u]]] = False
        if torch.equal(new, keep):
            return keep
        keep = new
    order = torch.argsort(u, stable=True)
    u_np, v_np = u[order].cpu().numpy(), v[order].cpu().numpy()
    bounds = np.searchsorted(u_np, np.arange(n + 1))
    removed = np.zeros(n, dtype=bool)
    for i in range(n):
        if not removed[i]:
            removed[v_np[bounds[i] : bounds[i + 1]]] = True
    kept = np.ones(n, dtype=bool)
    kept[removed] = False
    return torch.from_numpy(kept).to(u.device)


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy NMS (per label when `labels` is given): `boxes [N, 4]` xyxy, `scores [N]` -> kept indices `[K]`.

    Boxes are visited by decreasing score (stable for ties); a box is dropped when its IoU with a kept box
    of the same label is > iou_thres (strictly, as torchvision: an IoU equal to the threshold is kept; the
    IoU is computed in float32 and compared with the exact threshold). The result is sorted by decreasing
    score.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    lab = labels[order] if labels is not None else None
    u, v = _overlap_edges(boxes[order].float(), lab, iou_thres)
    return order[_greedy_keep(order.numel(), u, v)]


def non_max_suppression(
    decoded: torch.Tensor, conf_thres: float = 0.5, nms_thres: float = 0.3, class_agnostic: bool = False
) -> list[torch.Tensor]:
    """Decoded predictions `[B, A, 5+C]` (see `decode_outputs`) -> per image `[K, 7]`.

    Columns (x1, y1, x2, y2, obj, cls_conf, cls) in input pixels, sorted by decreasing obj * cls_conf.
    A box is a candidate when obj * max class prob >= conf_thres; NMS is per class unless
    `class_agnostic`. No cap on the number of boxes (COCOeval keeps the best 100 per image).
    """
    if decoded.ndim != 3 or decoded.shape[-1] < 6:
        raise ConfigError(f"non_max_suppression: expected [B, A, 5+C], got {tuple(decoded.shape)}")
    results = []
    for pred in decoded:
        cls_conf, cls = pred[:, 5:].max(1)
        score = pred[:, 4] * cls_conf
        mask = score >= conf_thres
        dets = torch.cat(
            (
                cxcywh_to_xyxy(pred[mask, :4]),
                pred[mask, 4:5],
                cls_conf[mask, None],
                cls[mask, None].to(pred.dtype),
            ),
            1,
        )
        keep = nms(dets[:, :4], score[mask], nms_thres, None if class_agnostic else cls[mask])
        results.append(dets[keep])
    return results


LETTERBOX_UNDO_MODES = {
    "authors": "the authors' yolo_correct_boxes: resized size round(side * scale), paste offset "
               "(input - resized) / 2 not floored",
    "exact": "the exact inverse of letterbox_params: resized size int(side * scale), offset "
             "(input - resized) // 2",
}


def undo_letterbox(
    boxes_xyxy: torch.Tensor, input_hw: tuple[int, int], image_hw: tuple[int, int], mode: str = "authors"
) -> torch.Tensor:
    """Boxes `[K, 4]` xyxy in letterboxed input pixels -> original image pixels (not clipped).

    mode "authors" (default, the published numbers): the authors' `yolo_correct_boxes` arithmetic, which
    takes the resized size as round(ih * scale), round(iw * scale) and the offset as half the padding
    without flooring; x -> (x - (W - nw') / 2) * iw / nw'. mode "exact": the geometric inverse of
    `letterbox_params(image_hw, input_hw)` (offset dx = (W - nw) // 2, nw = int(iw * scale)). The two
    differ by up to about a pixel where iw * scale is not an integer (640x512 frames at 512: nh 409 vs 410).
    """
    ih, iw = image_hw
    if mode == "exact":
        _, nw, nh, dx, dy = letterbox_params(image_hw, input_hw)
        ox, oy = float(dx), float(dy)
    elif mode == "authors":
        H, W = input_hw
        scale = min(H / ih, W / iw)
        nh, nw = round(ih * scale), round(iw * scale)  # np.round: half to even, as Python's round
        ox, oy = (W - nw) / 2, (H - nh) / 2
    else:
        raise ConfigError(f"undo_letterbox mode must be one of {', '.join(LETTERBOX_UNDO_MODES)}, "
                          f"got {mode!r}")
    offset = boxes_xyxy.new_tensor([ox, oy, ox, oy])
    scale_xy = boxes_xyxy.new_tensor([iw / nw, ih / nh, iw / nw, ih / nh])
    return (boxes_xyxy - offset) * scale_xy


# ----------------------------------------------------------------------------------------------------
# Boxes <-> masks (score a segmenter with box mAP, a detector with Pd / Fa)
# ----------------------------------------------------------------------------------------------------


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def masks_to_boxes(prob, threshold: float = 0.5) -> torch.Tensor | list[torch.Tensor]:
    """Probability map(s) `[H, W]` or `[N, H, W]` -> boxes of the 8-connected components of prob >= threshold.

    Each box is (x1, y1, x2, y2, score) float32 with x2 = last column + 1 (a one-pixel component has w = 1)
    and score = the highest probability in the component. A `[H, W]` input gives one `[K, 5]` tensor, an
    `[N, H, W]` input a list of N such tensors. Components never join across frames.
    """
    p = _as_numpy(prob).astype(np.float32, copy=False)
    if p.ndim not in (2, 3):
        raise ConfigError(f"masks_to_boxes: expected [H, W] or [N, H, W], got shape {p.shape}")
    single = p.ndim == 2
    p3 = p[None] if single else p
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a frame, never across frames
    labels, n = ndimage.label(p3 >= threshold, structure=structure)
    per_frame: list[list[list[float]]] = [[] for _ in range(p3.shape[0])]
    if n:
        peaks = ndimage.maximum(p3, labels, index=np.arange(1, n + 1))
        for sl, peak in zip(ndimage.find_objects(labels), peaks):
            f, ys, xs = sl
            per_frame[f.start].append([xs.start, ys.start, xs.stop, ys.stop, float(peak)])
    out = [torch.tensor(b, dtype=torch.float32).reshape(-1, 5) for b in per_frame]
    return out[0] if single else out


def _centre_pixels(boxes, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel (row, col) that holds each box centre, and which boxes fall inside the image."""
    b = _as_numpy(boxes).astype(np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] < 4:
        raise ConfigError(f"boxes: expected [K, 4+] xyxy, got shape {b.shape}")
    col = np.floor((b[:, 0] + b[:, 2]) / 2).astype(np.int64)
    row = np.floor((b[:, 1] + b[:, 3]) / 2).astype(np.int64)
    inside = (row >= 0) & (row < hw[0]) & (col >= 0) & (col < hw[1])
    return row, col, inside


def boxes_to_centroid_map(boxes, hw: tuple[int, int]) -> torch.Tensor:
    """Boxes `[K, 4+]` xyxy -> bool `[H, W]` with the pixel holding each box centre set.

    The centre pixel is (floor((y1 + y2) / 2), floor((x1 + x2) / 2)); centres outside the image are dropped.
    """
    row, col, inside = _centre_pixels(boxes, hw)
    out = np.zeros(hw, dtype=bool)
    out[row[inside], col[inside]] = True
    return torch.from_numpy(out)


def boxes_to_prob_map(boxes, hw: tuple[int, int]) -> torch.Tensor:
    """Scored boxes `[K, 5]` (x1, y1, x2, y2, score) -> float32 `[H, W]`, centre pixels painted by score.

    Where centres share a pixel the highest score wins; everything else is 0. Feed it to Pd / Fa scoring.
    """
    b = _as_numpy(boxes).astype(np.float32)
    if b.size == 0:
        b = b.reshape(0, 5)
    if b.ndim != 2 or b.shape[1] < 5:
        raise ConfigError(f"boxes_to_prob_map: expected [K, 5] (x1, y1, x2, y2, score), got shape {b.shape}")
    row, col, inside = _centre_pixels(b, hw)
    out = np.zeros(hw, dtype=np.float32)
    np.maximum.at(out, (row[inside], col[inside]), b[inside, 4])
    return torch.from_numpy(out)
