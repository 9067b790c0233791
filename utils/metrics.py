"""Pixel metrics of the segmentation protocol: Pd / Fa at many thresholds, their pooling and AUC, IoU.

`pd_fa` scores one sequence at many thresholds at once, `pool_pd_fa` pools sequences and adds the AUC. By
default (border="clip") windows are clipped at the image border, so targets touching row or column 0, or
within 4 px of the top / left border, are scored correctly; border="authors" reproduces the authors'
ShootingRules slicing, which leaves those windows empty. COCO box metrics are utils.coco_metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from utils.errors import ConfigError

# --------------------------------------------------------------------------------------------------------
# Pd / Fa / AUC
# --------------------------------------------------------------------------------------------------------

DEFAULT_THRESHOLDS = (0.0, 1e-20, 1e-10, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.2, 0.3, 0.35, 0.4,
                      0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
_COUNT_KEYS = ("tp", "targets", "fa_pixels", "pixels")


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_frames(x: Any, name: str) -> np.ndarray:
    """`x` as a numpy stack of frames [N, H, W] ([H, W] becomes one frame); `name` goes into the error."""
    arr = to_numpy(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ConfigError(f"{name} must be [N, H, W] or [H, W], got shape {list(arr.shape)}")
    return arr


def _ceil_to_dtype(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Smallest value of `dtype` >= each threshold, so `p >= t` is exact for p of that dtype."""
    t = thresholds.astype(dtype)
    low = t.astype(np.float64) < thresholds
    t[low] = np.nextafter(t[low], np.array(np.inf, dtype=dtype))
    return t


def _count_at_least(values: np.ndarray, edges: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """#(values >= e) for each threshold e. Cache-sized chunks, one vectorised comparison per threshold
    (faster than a sort- or search-based histogram for the few dozen thresholds used here)."""
    counts = np.zeros(edges.size, dtype=np.int64)
    for start in range(0, values.size, chunk):
        block = values[start:start + chunk]
        counts += [np.count_nonzero(block >= e) for e in edges]
    return counts


def _offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    return dy.ravel(), dx.ravel()


BORDER_RULES = {
    "clip": "windows clipped at the image border",
    "authors": "the authors' ShootingRules slices [r-k:r+k+1]: a negative start leaves the window empty "
               "near the top / left border",
}


def check_border(border: str) -> str:
    """`border` if it is one of BORDER_RULES, else a one-line ConfigError."""
    if border not in BORDER_RULES:
        raise ConfigError(f"border must be one of {', '.join(BORDER_RULES)}, got {border!r}")
    return border


def _slice_bounds(centre: np.ndarray, radius: int, size: int, border: str) -> tuple[np.ndarray, np.ndarray]:
    """[start, stop) of the window rows (or columns) around each centre.

    "clip": [max(c - k, 0), min(c + k + 1, size)). "authors": what numpy makes of the slice
    [c - k : c + k + 1]: a negative start counts from the end (start + size, then clamped at 0), so for
    size > 2k the window near the top / left border is empty; the stop is clamped at size."""
    stop = np.minimum(centre + radius + 1, size)
    start = centre - radius
    if border == "authors":
        start = np.where(start < 0, np.maximum(start + size, 0), start)
    else:
        start = np.maximum(start, 0)
    return start, stop


def _window_indices(f: np.ndarray, y: np.ndarray, x: np.ndarray, shape: tuple[int, int, int],
                    radius: int, border: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    """Flat indices [P, (2r+1)^2] of the (2r+1)^2 window around each pixel (f, y, x), and which of them
    belong to the window under the border rule (bool [P, (2r+1)^2]).

    Every index is inside the image (coordinates are clipped before flattening), so a gather is safe;
    entries marked False must be ignored. Under "authors" a window that numpy's slice would wrap (images
    of at most 2r rows or columns) keeps the rows the slice holds, which all lie within r of the pixel."""
    _, h, w = shape
    dy, dx = _offsets(radius)
    yy = y[:, None] + dy
    xx = x[:, None] + dx
    y0, y1 = _slice_bounds(y, radius, h, border)
    x0, x1 = _slice_bounds(x, radius, w, border)
    valid = (yy >= y0[:, None]) & (yy < y1[:, None]) & (xx >= x0[:, None]) & (xx < x1[:, None])
    idx = (f[:, None] * h + np.clip(yy, 0, h - 1)) * w + np.clip(xx, 0, w - 1)
    return idx, valid


def _target_labels(lin: np.ndarray, f: np.ndarray, y: np.ndarray, x: np.ndarray,
                   shape: tuple[int, int, int]) -> tuple[int, np.ndarray]:
    """8-connected components (within each frame) of the sparse truth pixels at sorted flat indices `lin`."""
    _, h, w = shape
    rows, cols = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # forward half of the 8-neighbourhood
        ny, nx = y + dy, x + dx
        inside = (ny < h) & (nx >= 0) & (nx < w)
        nlin = (f * h + ny) * w + nx
        pos = np.minimum(np.searchsorted(lin, nlin), lin.size - 1)
        hit = inside & (lin[pos] == nlin)
        rows.append(np.flatnonzero(hit))
        cols.append(pos[hit])
    i, j = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(lin.size, lin.size))
    return connected_components(graph, directed=False)


def pd_fa(prob: Any, truth: Any, thresholds: Sequence[float] | None = None, *, detect_radius: int = 1,
          window_radius: int = 4, border: str = "clip") -> dict:
    """Pd / Fa counts of one sequence at every threshold (DeepPro protocol).

    prob [N, H, W] (or [H, W]) float probabilities; truth [N, H, W] centroid (or mask) map, nonzero = target.
    Per frame and threshold t, B = prob >= t. Targets are the 8-connected components of truth in each
    frame; a target is detected if B is positive within `detect_radius` (3x3) of any of its pixels. False
    alarms are the positive pixels of B outside the union of the (2 * window_radius + 1)^2 (9x9) windows
    around every target pixel.
    border: "clip" (default) clips the windows at the image border; "authors" reproduces the authors'
    ShootingRules: windows are the numpy slices [r-k : r+k+1], so for a target pixel within k px of the top
    or left border the slice start is negative and the window is empty (no protection window; with the
    3x3 window empty, a target pixel on row or column 0 is not detected by itself), and negative
    probabilities count as positive at t <= 0 (their binarisation sets p < t to 0, then 0 >= t to 1).
    Both rules take targets as the 8-connected components of nonzero truth (the authors label equal-valued
    regions of their binary centroid maps, the same thing) and compare p >= t exactly in float64.
    Returns arrays over thresholds (in the given order): thresholds, tp, targets, fa_pixels, pixels (int64),
    pd = tp / targets (NaN without targets), fa = fa_pixels / pixels, and border (the rule used).
    Cost: one counting pass over prob per threshold plus work proportional to the number of truth pixels
    (about 1 s for 2,000 frames of 256x256 at 27 thresholds on one core).
    """
    check_border(border)
    prob, truth = as_frames(prob, "prob"), as_frames(truth, "truth")
    if prob.shape != truth.shape:
        raise ConfigError(f"prob {list(prob.shape)} and truth {list(truth.shape)} must have the same shape")
    if prob.dtype not in (np.float32, np.float64):
        prob = prob.astype(np.float32)
    if border == "authors" and prob.size and prob.min() < 0:
        prob = np.maximum(prob, 0)  # p < t -> 0 happens before 0 >= t -> 1: at t <= 0 every pixel is positive
    thr = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, dtype=np.float64).ravel()
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ConfigError("thresholds must be a non-empty list of finite numbers")
    shape = prob.shape
    flat = prob.reshape(-1)
    edges, where = np.unique(_ceil_to_dtype(thr, prob.dtype), return_inverse=True)

    lin = np.flatnonzero(truth)  # sorted flat indices of target pixels
    f, rem = np.divmod(lin, shape[1] * shape[2])
    y, x = np.divmod(rem, shape[2])
    if lin.size:
        n_targets, labels = _target_labels(lin, f, y, x, shape)
        idx, valid = _window_indices(f, y, x, shape, detect_radius, border)
        pixel_score = np.where(valid, flat[idx], -np.inf).max(axis=1)
        target_score = np.full(n_targets, -np.inf, dtype=np.float64)
        np.maximum.at(target_score, labels, pixel_score)
        tp = n_targets - np.searchsorted(np.sort(target_score), edges, side="left")
        idx, valid = _window_indices(f, y, x, shape, window_radius, border)
        near = np.sort(idx[valid])
        if near.size:
            near = near[np.r_[True, near[1:] != near[:-1]]]  # unique (faster than np.unique's hash here)
        fa_pixels = _count_at_least(flat, edges) - _count_at_least(flat[near], edges)
    else:
        n_targets, tp = 0, np.zeros(edges.size, dtype=np.int64)
        fa_pixels = _count_at_least(flat, edges)
    out = {"thresholds": thr, "tp": tp[where].astype(np.int64),
           "targets": np.full(thr.size, n_targets, dtype=np.int64), "fa_pixels": fa_pixels[where],
           "pixels": np.full(thr.size, flat.size, dtype=np.int64)}
    out = _with_rates(out)
    out["border"] = border
    return out


def _with_rates(counts: dict) -> dict:
    with np.errstate(divide="ignore", invalid="ignore"):
        pd = counts["tp"] / np.maximum(counts["targets"], 1)
        counts["pd"] = np.where(counts["targets"] > 0, pd, np.nan)
    counts["fa"] = counts["fa_pixels"] / np.maximum(counts["pixels"], 1)
    return counts


def auc(x: Sequence[float], y: Sequence[float]) -> float:
    """Trapezoidal area under y(x) for monotonic x (either direction), as sklearn.metrics.auc."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.shape != y.shape:
        raise ConfigError(f"auc needs >= 2 points and equal shapes, got {x.shape} and {y.shape}")
    dx = np.diff(x)
    direction = 1.0
    if np.any(dx < 0):
        if not np.all(dx <= 0):
            raise ConfigError("auc: x is neither increasing nor decreasing")
        direction = -1.0
    return float(direction * np.sum(dx * (y[1:] + y[:-1]) / 2.0))


def value_at(res: Mapping, key: str, threshold: float) -> float:
    """`res[key]` of a `pd_fa` / `pool_pd_fa` result at `threshold`, which must be one of its thresholds."""
    thr = np.asarray(res["thresholds"], dtype=np.float64)
    idx = np.flatnonzero(np.isclose(thr, threshold, rtol=0, atol=1e-12))
    if idx.size == 0:
        raise ConfigError(f"threshold {threshold} is not one of the scored thresholds {thr.tolist()}")
    return float(np.broadcast_to(res[key], thr.shape)[idx[0]])


def pool_pd_fa(results: Sequence[Mapping]) -> dict:
    """Pool `pd_fa` results of several sequences: counts summed, pd / fa recomputed, `auc` of pd over fa
    (and `border` when the results name their border rule; mixing rules is an error)."""
    results = list(results)
    if not results:
        raise ConfigError("pool_pd_fa needs at least one pd_fa result")
    borders = {r["border"] for r in results if "border" in r}
    if len(borders) > 1:
        raise ConfigError(f"pool_pd_fa: the results were computed with different border rules "
                          f"{sorted(borders)}")
    thr = np.asarray(results[0]["thresholds"], dtype=np.float64)
    for r in results[1:]:
        if not np.array_equal(np.asarray(r["thresholds"], dtype=np.float64), thr):
            raise ConfigError("pool_pd_fa: the results were computed at different thresholds")
    out = {"thresholds": thr.copy()}
    for key in _COUNT_KEYS:
        out[key] = np.sum([np.broadcast_to(np.asarray(r[key], dtype=np.int64), thr.shape) for r in results],
                          axis=0)
    out = _with_rates(out)
    out["auc"] = auc(out["fa"], out["pd"]) if thr.size > 1 else float("nan")
    if borders:
        out["border"] = borders.pop()
    return out


def iou_counts(prob: Any, mask: Any, thr: float = 0.5) -> tuple[int, int]:
    """(intersection, union) pixel counts of (prob > thr, strict as the authors) and mask, for pooled IoU."""
    prob, mask = to_numpy(prob), to_numpy(mask).astype(bool)
    if prob.shape != mask.shape:
        raise ConfigError(f"prob {list(prob.shape)} and mask {list(mask.shape)} must have the same shape")
    pred = prob > thr
    return int(np.count_nonzero(pred & mask)), int(np.count_nonzero(pred | mask))
