"""Drawing detections on frames, streaming MP4 / GIF writers and contact sheets.

Images are RGB uint8 `[H, W, 3]`. Small infrared frames are enlarged by an integer factor (nearest, so
pixels stay visible) before drawing; coordinates passed in are always original-frame pixels (a box covering
pixel column i spans [i, i + 1), a centroid pixel (y, x) is drawn at its centre (x + 0.5, y + 0.5)).

Colours: predictions green, truth magenta, text yellow. Lines are drawn without anti-aliasing, so a frame
holds only grey levels and these few exact colours (the GIF writer relies on it for a lossless palette).

    with VideoWriter("out.mp4", fps=10) as video:        # or out.gif; one frame in memory at a time
        for frame, boxes in stream:
            video.write(annotate(frame, boxes=boxes, scale=3))
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from utils.errors import ConfigError

PRED_COLOR = (0, 255, 0)
TRUTH_COLOR = (255, 0, 255)
TEXT_COLOR = (255, 255, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


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


def _text(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int],
          font_scale: float = 0.4) -> None:
    """Text in one solid colour (OpenCV anti-aliases glyphs: draw them on a mask and threshold it)."""
    (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, 1)
    x0, y0 = org[0] - 1, org[1] - th - 1  # the text's box on `img`, one pixel of margin
    layer = np.zeros((th + base + 3, tw + 2), np.uint8)
    cv2.putText(layer, text, (1, th + 1), _FONT, font_scale, 255, 1, cv2.LINE_8)
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


def draw_boxes(img: np.ndarray, boxes: Any, color: tuple[int, int, int], scale: int = 1,
               scores: Any = None, thickness: int = 1) -> np.ndarray:
    """Rectangles for xyxy boxes `[K, 4+]` (original pixels) on `img` (enlarged by `scale`), in place,
    with the score above each box when `scores` is given. Returns `img`."""
    b = _as_boxes(boxes)
    s = None if scores is None else _numpy(scores).reshape(-1)
    h, w = img.shape[:2]
    for k, (x1, y1, x2, y2) in enumerate(b[:, :4]):
        p1 = (int(math.floor(x1 * scale)) - 1, int(math.floor(y1 * scale)) - 1)  # just outside the box
        p2 = (int(math.ceil(x2 * scale)), int(math.ceil(y2 * scale)))
        cv2.rectangle(img, p1, p2, color, thickness, lineType=cv2.LINE_8)
        if s is not None:
            org = (min(max(p1[0], 0), w - 1), max(p1[1] - 3, 9))
            if p1[1] - 3 < 9:  # no room above: write below the box
                org = (org[0], min(p2[1] + 11, h - 2))
            _text(img, f"{float(s[k]):.2f}", org, color, 0.35)
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
    """One line of text in the top-left corner on a black band, in place."""
    (tw, th), base = cv2.getTextSize(text, _FONT, 0.4, 1)
    cv2.rectangle(img, (0, 0), (min(tw + 6, img.shape[1] - 1), th + base + 4), (0, 0, 0), -1)
    _text(img, text, (3, th + 3), color)
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
# Video writers (one frame in memory at a time)
# ----------------------------------------------------------------------------------------------------

# GIF palette: the drawing colours first, then 256 - len(colours) grey levels.
_GIF_COLOURS = (PRED_COLOR, TRUTH_COLOR, TEXT_COLOR, (0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 128, 255),
                (255, 128, 0))
_GIF_GREYS = np.rint(np.linspace(0, 255, 256 - len(_GIF_COLOURS))).astype(np.uint8)


_GIF_PALETTE = np.concatenate((np.array(_GIF_COLOURS, np.uint8), np.repeat(_GIF_GREYS[:, None], 3, 1)))


def gif_indices(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 `[H, W, 3]` -> uint8 `[H, W]` indices into the GIF palette: grey pixels to the nearest grey
    level (error <= 0.5 grey level), other pixels to the nearest palette colour (exact for the drawing
    colours)."""
    r, g, b = (rgb[..., c].astype(np.int32) for c in range(3))
    grey = (r == g) & (g == b)
    n_col = len(_GIF_COLOURS)
    idx = (n_col + np.rint(r * ((len(_GIF_GREYS) - 1) / 255.0))).astype(np.uint8)
    if not grey.all():
        packed = (r << 16 | g << 8 | b)[~grey]
        uniq, inverse = np.unique(packed, return_inverse=True)
        cols = np.stack((uniq >> 16, (uniq >> 8) & 255, uniq & 255), 1)
        dist = ((cols[:, None, :] - _GIF_PALETTE[None].astype(np.int32)) ** 2).sum(2)
        idx[~grey] = dist.argmin(1).astype(np.uint8)[inverse.ravel()]
    return idx


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """Position after a chain of GIF data sub-blocks starting at `pos` (ends with a zero-length block)."""
    while data[pos] != 0:
        pos += data[pos] + 1
    return pos + 1


def _gif_image_block(data: bytes) -> bytes:
    """The image of a single-frame GIF file as a self-contained block for another GIF stream: image
    descriptor with a local colour table (the file's global one moved into it), then the LZW data."""
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ValueError("not a GIF stream")
    packed = data[10]
    pos = 13
    table = b""
    if packed & 0x80:
        size = 3 * (1 << ((packed & 7) + 1))
        table, pos = data[pos:pos + size], pos + size
    while data[pos] == 0x21:  # extensions: label, then sub-blocks
        pos = _skip_sub_blocks(data, pos + 2)
    if data[pos] != 0x2C:
        raise ValueError("GIF stream without an image descriptor")
    desc = bytearray(data[pos:pos + 10])
    pos += 10
    if desc[9] & 0x80:  # already a local table
        lsize = 3 * (1 << ((desc[9] & 7) + 1))
        table, pos = data[pos:pos + lsize], pos + lsize
    elif not table:
        raise ValueError("GIF frame without a colour table")
    else:
        desc[9] = (desc[9] & 0x40) | 0x80 | (packed & 7)
    end = _skip_sub_blocks(data, pos + 1)  # LZW minimum code size, then the data sub-blocks
    return bytes(desc) + table + data[pos:end]


class GifStreamWriter:
    """Animated GIF written frame by frame: each frame is encoded alone by Pillow (fixed palette of the
    drawing colours plus grey levels, no dithering) and appended, so memory does not grow with length."""

    def __init__(self, path: str | Path, fps: float = 10.0, loop: int = 0):
        self.path = Path(path)
        self.delay = max(2, int(round(100.0 / max(fps, 1e-3))))  # 1/100 s; < 2 is played slowly by browsers
        self.loop = loop
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self.size is None:
            self.size = (w, h)
            self._file.write(b"GIF89a" + w.to_bytes(2, "little") + h.to_bytes(2, "little") + b"\x00\x00\x00")
            self._file.write(b"\x21\xff\x0bNETSCAPE2.0\x03\x01" + self.loop.to_bytes(2, "little") + b"\x00")
        elif (w, h) != self.size:
            raise ConfigError(f"{self.path}: frame {self.frames} is {w}x{h}, the video is "
                              f"{self.size[0]}x{self.size[1]}")
        img = Image.fromarray(gif_indices(rgb), "P")
        img.putpalette(_GIF_PALETTE.ravel().tolist())
        buf = io.BytesIO()
        img.save(buf, format="GIF", optimize=False)
        gce = b"\x21\xf9\x04\x04" + self.delay.to_bytes(2, "little") + b"\x00\x00"  # keep previous frame
        self._file.write(gce + _gif_image_block(buf.getvalue()))
        self.frames += 1

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.write(b"\x3b")
        self._file.close()
        if not self.frames:  # nothing was written: no file rather than a broken one
            self.path.unlink(missing_ok=True)


class Mp4Writer:
    """MP4 through OpenCV's FFmpeg backend, frame by frame. `fourcc` "mp4v" (MPEG-4 part 2) works in the
    pip wheels and plays in VLC, mpv and most desktop players; pass "avc1" where OpenCV has H.264 (needed by
    web browsers). Odd frame sizes are padded to even."""

    def __init__(self, path: str | Path, fps: float = 10.0, fourcc: str = "mp4v"):
        self.path = Path(path)
        self.fps = float(fps)
        self.fourcc = fourcc
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._writer = None
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self._writer is None:
            self.size = (w + w % 2, h + h % 2)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                           self.size)
            if not self._writer.isOpened():
                raise ConfigError(f"{self.path}: OpenCV cannot write MP4 with codec {self.fourcc!r} here "
                                  "(try --fourcc mp4v, or a .gif output)")
        if (w + w % 2, h + h % 2) != self.size:
            raise ConfigError(f"{self.path}: frame {self.frames} is {w}x{h}, the video is "
                              f"{self.size[0]}x{self.size[1]}")
        if w % 2 or h % 2:
            rgb = cv2.copyMakeBorder(rgb, 0, h % 2, 0, w % 2, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class VideoWriter:
    """An MP4 or GIF writer chosen by the file suffix; use as a context manager. `write(rgb [H, W, 3])`."""

    def __init__(self, path: str | Path, fps: float = 10.0, fourcc: str = "mp4v"):
        suffix = Path(path).suffix.lower()
        if fps <= 0:
            raise ConfigError(f"{path}: fps must be > 0, got {fps}")
        if suffix == ".gif":
            self._impl: GifStreamWriter | Mp4Writer = GifStreamWriter(path, fps)
        elif suffix in (".mp4", ".m4v", ".mov"):
            self._impl = Mp4Writer(path, fps, fourcc)
        else:
            raise ConfigError(f"{path}: video output must end in .mp4 or .gif")
        self.path = Path(path)

    @property
    def frames(self) -> int:
        return self._impl.frames

    def write(self, rgb: np.ndarray) -> None:
        self._impl.write(to_rgb(rgb))

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------
# Contact sheet
# ----------------------------------------------------------------------------------------------------


class ContactSheet:
    """Keeps about `count` evenly spaced frames of a stream of unknown length and tiles them into a PNG.

    Frames are offered in order; every `stride`-th is kept as a thumbnail (`tile_width` px wide). When
    2 x count are held, every other one is dropped and the stride doubles, so memory stays bounded and the
    kept frames stay evenly spaced. `save` tiles `count` of them, spread over the whole stream.
    """

    def __init__(self, count: int = 8, tile_width: int = 320, columns: int = 4):
        if count < 1:
            raise ConfigError(f"a contact sheet needs at least 1 frame, got {count}")
        self.count, self.tile_width, self.columns = count, tile_width, max(1, columns)
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.image()).save(path, optimize=True)
        return path


__all__ = [
    "PRED_COLOR", "TEXT_COLOR", "TRUTH_COLOR", "ContactSheet", "GifStreamWriter", "Mp4Writer", "VideoWriter",
    "annotate", "auto_scale", "centroid_points", "draw_boxes", "draw_mask_outline", "draw_points", "enlarge",
    "put_caption", "to_rgb",
]
