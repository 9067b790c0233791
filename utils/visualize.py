"""Drawing detections on frames and contact sheets (the video writers are utils.video).

Images are RGB uint8 `[H, W, 3]`. Small infrared frames are enlarged by an integer factor (nearest, so
pixels stay visible) before drawing; coordinates passed in are always original-frame pixels (a box covering
pixel column i spans [i, i + 1), a centroid pixel (y, x) is drawn at its centre (x + 0.5, y + 0.5)).

Colours: predictions green, truth magenta, text yellow. Lines are drawn without anti-aliasing, so a frame
holds only grey levels and these few exact colours (the GIF writer relies on it for a lossless palette).
Text is sized by the image width (`text_px`), so it stays readable (>= 11 px) on contact-sheet tiles.
Videos and sheets are written to a temp file beside the target and moved over it when complete.

    img = annotate(frame, boxes=boxes, scores=scores, scale=3, truth_boxes=truth)
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from utils.checkpoint import atomic_write
from utils.errors import ConfigError

PRED_COLOR = (0, 255, 0)
TRUTH_COLOR = (255, 0, 255)
TEXT_COLOR = (255, 255, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK_PER_SCALE = 21.0  # height in px of a digit drawn at font scale 1
MIN_TEXT_PX = 11


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ----------------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------------


def to_rgb(frame: Any) -> np.ndarray:
    """Grey `[H, W]` or colour `[H, W, 3]` frame (uint8, or float in grey levels) -> RGB uint8 `[H, W, 3]`."""
    arr = _numpy(frame)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32)), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    raise ConfigError(f"a frame must be [H, W] or [H, W, 3], got shape {list(arr.shape)}")


def auto_scale(hw: tuple[int, int], min_side: int = 360, max_scale: int = 4) -> int:
    """Integer enlargement that brings the shorter side to at least `min_side` (1 to max_scale)."""
    return int(min(max(1, math.ceil(min_side / max(1, min(hw)))), max_scale))


def enlarge(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor."""
    if scale == 1:
        return img
    return cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def text_px(width: int) -> int:
    """Digit height (px) of text on an image `width` px wide: width / 28, at least MIN_TEXT_PX, so text on
    a frame shrunk to a contact-sheet tile of 320 px still stands >= 11 px tall."""
    return max(MIN_TEXT_PX, int(round(width / 28)))


def _font(height_px: float) -> tuple[float, int]:
    """(font scale, stroke thickness) of text with digits `height_px` tall."""
    return height_px / _INK_PER_SCALE, max(1, int(round(height_px / 11)))


def text_size(text: str, height_px: float) -> tuple[int, int]:
    """(width, height) in px of `text` drawn `height_px` tall (height from the baseline up)."""
    scale, thick = _font(height_px)
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
    return tw, th


def _text(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int],
          height_px: float) -> None:
    """Text in one solid colour, baseline-left at `org`, digits `height_px` tall (OpenCV anti-aliases
    glyphs: draw them on a mask and threshold it)."""
    scale, thick = _font(height_px)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = thick + 1
    x0, y0 = org[0] - pad, org[1] - th - pad  # the text's box on `img`, with a margin
    layer = np.zeros((th + base + 2 * pad + 1, tw + 2 * pad), np.uint8)
    cv2.putText(layer, text, (pad, th + pad), _FONT, scale, 255, thick, cv2.LINE_8)
    ys, xs = np.nonzero(layer > 127)
    ys, xs = ys + y0, xs + x0
    inside = (ys >= 0) & (ys < img.shape[0]) & (xs >= 0) & (xs < img.shape[1])
    img[ys[inside], xs[inside]] = color


def _as_boxes(boxes: Any) -> np.ndarray:
    b = _numpy(boxes).astype(np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] < 4:
        raise ConfigError(f"boxes must be [K, 4+] (x1, y1, x2, y2, ...), got shape {list(b.shape)}")
    return b


def line_px(width: int) -> int:
    """Box line width (px) on an image `width` px wide: 1 per 320 px, so a line survives the shrink to a
    contact-sheet tile."""
    return max(1, int(round(width / 320)))


def draw_boxes(img: np.ndarray, boxes: Any, color: tuple[int, int, int], scale: int = 1,
               scores: Any = None, thickness: int | None = None) -> np.ndarray:
    """Rectangles for xyxy boxes `[K, 4+]` (original pixels) on `img` (enlarged by `scale`), in place,
    lines `thickness` px (default `line_px`) growing outwards from the box, with the score above each box
    (below it at the top edge) when `scores` is given, `text_px` tall. Returns `img`."""
    b = _as_boxes(boxes)
    s = None if scores is None else _numpy(scores).reshape(-1)
    h, w = img.shape[:2]
    px = text_px(w)
    lines = line_px(w) if thickness is None else max(1, thickness)
    for k, (x1, y1, x2, y2) in enumerate(b[:, :4]):
        p1 = (int(math.floor(x1 * scale)) - 1, int(math.floor(y1 * scale)) - 1)  # just outside the box
        p2 = (int(math.ceil(x2 * scale)), int(math.ceil(y2 * scale)))
        for d in range(lines):
            cv2.rectangle(img, (p1[0] - d, p1[1] - d), (p2[0] + d, p2[1] + d), color, 1, lineType=cv2.LINE_8)
        p1, p2 = (p1[0] - lines + 1, p1[1] - lines + 1), (p2[0] + lines - 1, p2[1] + lines - 1)
        if s is not None:
            text = f"{float(s[k]):.2f}"
            tw, th = text_size(text, px)
            gap = max(2, px // 4)
            y = p1[1] - gap if p1[1] - gap - th >= 0 else min(p2[1] + gap + th, h - 2)  # above, else below
            _text(img, text, (min(max(p1[0], 0), max(w - tw - 1, 0)), y), color, px)
    return img


def draw_mask_outline(img: np.ndarray, mask: Any, color: tuple[int, int, int], scale: int = 1) -> np.ndarray:
    """Outline (the pixels just outside) of a bool mask `[H, W]` (original pixels) on `img`, in place; the
    masked pixels themselves stay visible."""
    m = _numpy(mask).astype(bool)
    if not m.any():
        return img
    big = enlarge(m.astype(np.uint8), scale)
    if big.shape[:2] != img.shape[:2]:
        raise ConfigError(f"mask {list(m.shape)} x{scale} does not match the image {list(img.shape[:2])}")
    ring = cv2.dilate(big, np.ones((3, 3), np.uint8)) > big
    img[ring] = color
    return img


def centroid_points(centroid_map: Any) -> np.ndarray:
    """Bool map `[H, W]` -> float `[K, 2]` (x, y) pixel centres of its nonzero pixels."""
    ys, xs = np.nonzero(_numpy(centroid_map))
    return np.stack((xs + 0.5, ys + 0.5), 1).astype(np.float64)


def draw_points(img: np.ndarray, points: Any, color: tuple[int, int, int], scale: int = 1,
                marker: str = "cross", size: int = 6) -> np.ndarray:
    """Markers at `[K, 2]` (x, y) original-pixel positions on `img`, in place. marker: "cross" (centred,
    with a gap so the target stays visible) or "circle"."""
    pts = _numpy(points).reshape(-1, 2)
    for x, y in pts:
        cx, cy = int(round(x * scale)), int(round(y * scale))
        if marker == "circle":
            cv2.circle(img, (cx, cy), size, color, 1, lineType=cv2.LINE_8)
        elif marker == "cross":
            gap = 2 * scale + 2
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                end = gap + size
                cv2.line(img, (cx + dx * gap, cy + dy * gap), (cx + dx * end, cy + dy * end), color, 1,
                         lineType=cv2.LINE_8)
        else:
            raise ConfigError(f"marker must be 'cross' or 'circle', got {marker!r}")
    return img


def put_caption(img: np.ndarray, text: str, color: tuple[int, int, int] = TEXT_COLOR) -> np.ndarray:
    """One line of text in the top-left corner on a black band, in place: `text_px` tall, smaller where
    the line would not fit the width."""
    w = img.shape[1]
    px = float(text_px(w))
    tw, _ = text_size(text, px)
    if tw + 8 > w:
        px = max(px * (w - 8) / tw, 4.0)
    tw, th = text_size(text, px)
    pad = max(3, int(px // 4))
    cv2.rectangle(img, (0, 0), (min(tw + 2 * pad, w - 1), th + 2 * pad + int(px // 3)), (0, 0, 0), -1)
    _text(img, text, (pad, th + pad), color, px)
    return img


def annotate(frame: Any, *, scale: int = 1, boxes: Any = None, scores: Any = None, mask: Any = None,
             points: Any = None, truth_boxes: Any = None, truth_mask: Any = None, truth_points: Any = None,
             caption: str | None = None) -> np.ndarray:
    """A frame with predictions (green) and truth (magenta) drawn on it -> RGB uint8 enlarged by `scale`.

    boxes `[K, 4+]` xyxy with optional scores `[K]` (detector); mask bool `[H, W]` drawn as an outline and
    points `[K, 2]` (x, y) as crosses (segmenter); truth_boxes, truth_mask (outline) and truth_points
    (circles) likewise. Everything in original-frame pixels.
    """
    img = enlarge(to_rgb(frame), scale)
    if truth_mask is not None:
        draw_mask_outline(img, truth_mask, TRUTH_COLOR, scale)
    if truth_boxes is not None:
        draw_boxes(img, truth_boxes, TRUTH_COLOR, scale)
    if truth_points is not None:
        draw_points(img, truth_points, TRUTH_COLOR, scale, marker="circle", size=4 * scale + 6)
    if mask is not None:
        draw_mask_outline(img, mask, PRED_COLOR, scale)
    if boxes is not None:
        draw_boxes(img, boxes, PRED_COLOR, scale, scores)
    if points is not None:
        draw_points(img, points, PRED_COLOR, scale, size=2 * scale + 2)
    if caption:
        put_caption(img, caption)
    return img


# ----------------------------------------------------------------------------------------------------
# Contact sheet
# ----------------------------------------------------------------------------------------------------

# What the colours of `annotate` mean, for the legend band under a contact sheet: (colour, text) entries.
LEGEND = ((PRED_COLOR, "prediction: box with its score, or mask outline and centroid cross"),
          (TRUTH_COLOR, "truth: box, mask outline or centroid circle"))
DETECTOR_LEGEND = ((PRED_COLOR, "prediction: box, score written above it"), (TRUTH_COLOR, "truth: box"))
SEGMENTER_LEGEND = ((PRED_COLOR, "prediction: mask outline (prob >= threshold), centroid cross"),
                    (TRUTH_COLOR, "truth: centroid circle, or mask outline and box"))
LEGEND_TEXT_PX = 13


def _wrap(text: str, width: int, px: float) -> list[str]:
    """Words of `text` in lines no wider than `width` px (a longer single word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_size(f"{lines[-1]} {word}", px)[0] <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def legend_band(width: int, entries: Sequence[tuple[tuple[int, int, int], str]],
                px: int = LEGEND_TEXT_PX) -> np.ndarray:
    """RGB uint8 `[h, width, 3]` black band: per entry a swatch in its colour and the text in light grey,
    wrapped to the width."""
    pad, sw = px // 2 + 2, px
    line_h = int(px * 1.7)
    rows: list[tuple[tuple[int, int, int] | None, str]] = []
    for color, text in entries:
        for i, line in enumerate(_wrap(text, max(width - 3 * pad - sw, px), px)):
            rows.append((color if i == 0 else None, line))
    band = np.zeros((2 * pad + line_h * len(rows), width, 3), np.uint8)
    for r, (color, line) in enumerate(rows):
        base = pad + r * line_h + (line_h + px) // 2
        if color is not None:
            cv2.rectangle(band, (pad, base - sw), (pad + sw, base), color, -1)
        _text(band, line, (2 * pad + sw, base), (230, 230, 230), px)
    return band


class ContactSheet:
    """Keeps about `count` evenly spaced frames of a stream of unknown length and tiles them into a PNG.

    Frames are offered in order; every `stride`-th is kept as a thumbnail (`tile_width` px wide). When
    2 x count are held, every other one is dropped and the stride doubles, so memory stays bounded and the
    kept frames stay evenly spaced. `save` tiles `count` of them, spread over the whole stream, above a
    band that says what the colours mean (`legend`: (colour, text) entries, e.g. DETECTOR_LEGEND).
    """

    def __init__(self, count: int = 8, tile_width: int = 320, columns: int = 4,
                 legend: Sequence[tuple[tuple[int, int, int], str]] = LEGEND):
        if count < 1:
            raise ConfigError(f"a contact sheet needs at least 1 frame, got {count}")
        self.count, self.tile_width, self.columns = count, tile_width, max(1, columns)
        self.legend = tuple(legend)
        self.stride = 1
        self.kept: list[tuple[int, np.ndarray]] = []

    def wants(self, index: int) -> bool:
        """Whether frame `index` would be kept (lets the caller skip drawing the others)."""
        return index % self.stride == 0

    def offer(self, index: int, image: np.ndarray, label: str | None = None) -> None:
        """Keep frame `index` (an RGB image) if it falls on the stride; `label` is written on the tile."""
        if not self.wants(index):
            return
        h, w = image.shape[:2]
        tw = min(self.tile_width, w)
        th = max(1, int(round(h * tw / w)))
        tile = image if tw == w else cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        tile = np.ascontiguousarray(tile)
        if label:
            put_caption(tile, label)
        self.kept.append((index, tile))
        if len(self.kept) >= 2 * self.count:
            self.stride *= 2
            self.kept = [(i, t) for i, t in self.kept if i % self.stride == 0]

    def image(self) -> np.ndarray:
        """The sheet as RGB uint8 (tiles of different sizes are padded to the largest)."""
        if not self.kept:
            raise ConfigError("contact sheet: no frames were offered")
        n = len(self.kept)
        picks = np.unique(np.linspace(0, n - 1, min(self.count, n)).round().astype(int))
        tiles = [self.kept[i][1] for i in picks]
        th = max(t.shape[0] for t in tiles)
        tw = max(t.shape[1] for t in tiles)
        cols = min(self.columns, len(tiles))
        rows = math.ceil(len(tiles) / cols)
        gap = 4
        sheet = np.full((rows * th + (rows + 1) * gap, cols * tw + (cols + 1) * gap, 3), 255, np.uint8)
        for k, t in enumerate(tiles):
            r, c = divmod(k, cols)
            y, x = gap + r * (th + gap), gap + c * (tw + gap)
            sheet[y:y + t.shape[0], x:x + t.shape[1]] = t
        return sheet

    def save(self, path: str | Path) -> Path:
        """The tiles over the colour legend, written as PNG atomically."""
        sheet = self.image()
        if self.legend:
            sheet = np.concatenate((sheet, legend_band(sheet.shape[1], self.legend)))
        buf = io.BytesIO()
        Image.fromarray(sheet).save(buf, format="PNG", optimize=True)
        return atomic_write(path, lambda f: f.write(buf.getvalue()))


__all__ = [
    "DETECTOR_LEGEND", "LEGEND", "MIN_TEXT_PX", "PRED_COLOR", "SEGMENTER_LEGEND", "TEXT_COLOR", "TRUTH_COLOR",
    "ContactSheet", "annotate", "auto_scale",
    "centroid_points", "draw_boxes", "draw_mask_outline", "draw_points", "enlarge", "legend_band",
    "line_px", "put_caption", "text_px", "text_size", "to_rgb",
]
