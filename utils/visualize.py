"""Drawing detections on frames, streaming MP4 (H.264) / GIF writers and contact sheets.

Images are RGB uint8 `[H, W, 3]`. Small infrared frames are enlarged by an integer factor (nearest, so
pixels stay visible) before drawing; coordinates passed in are always original-frame pixels (a box covering
pixel column i spans [i, i + 1), a centroid pixel (y, x) is drawn at its centre (x + 0.5, y + 0.5)).

Colours: predictions green, truth magenta, text yellow. Lines are drawn without anti-aliasing, so a frame
holds only grey levels and these few exact colours (the GIF writer relies on it for a lossless palette).
Text is sized by the image width (`text_px`), so it stays readable (>= 11 px) on contact-sheet tiles.
Videos and sheets are written to a temp file beside the target and moved over it when complete.

    with VideoWriter("out.mp4", fps=10) as video:        # or out.gif; one frame in memory at a time
        for frame, boxes in stream:
            video.write(annotate(frame, boxes=boxes, scale=3))
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from fractions import Fraction
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


def _temp_beside(path: Path) -> Path:
    """Temp file name next to `path` (the pattern utils.checkpoint.remove_stale_temps cleans up)."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


class GifStreamWriter:
    """Animated GIF written frame by frame: each frame is encoded alone by Pillow (fixed palette of the
    drawing colours plus grey levels, no dithering) and appended, so memory does not grow with length.
    Written to a temp file that replaces `path` on `close` (`abort` drops it)."""

    def __init__(self, path: str | Path, fps: float = 10.0, loop: int = 0):
        self.path = Path(path)
        self.delay = max(2, int(round(100.0 / max(fps, 1e-3))))  # 1/100 s; < 2 is played slowly by browsers
        self.loop = loop
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_beside(self.path)
        self._file = open(self._tmp, "wb")

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
        """Finish the file and move it over `path`; with no frames written, no file (not a broken one)."""
        if self._file.closed:
            return
        if not self.frames:
            self.abort()
            return
        self._file.write(b"\x3b")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop what was written; `path` keeps its previous content."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


_CODEC_ALIASES = {"avc1": "h264", "h264": "h264", "x264": "h264", "libx264": "h264", "mp4v": "mpeg4"}
_H264_ENCODERS = ("libx264", "libopenh264", "h264")


def video_encoder(codec: str = "h264") -> str | None:
    """The PyAV encoder that writes `codec` ("h264", or any FFmpeg encoder name; OpenCV fourccs "avc1" and
    "mp4v" are read as h264 and mpeg4), or None when PyAV or such an encoder is missing."""
    try:
        import av
    except ImportError:
        return None
    wanted = _CODEC_ALIASES.get(codec.lower(), codec)
    for name in _H264_ENCODERS if wanted == "h264" else (wanted,):
        try:
            return av.codec.Codec(name, "w").name
        except ValueError:  # av.codec.codec.UnknownCodecError
            continue
    return None


class Mp4Writer:
    """MP4 through PyAV, frame by frame: H.264 (by default), yuv420p, "faststart" (index first), the form
    that web browsers and notebooks play. Odd frame sizes are padded to even with black. Written to a temp
    file that replaces `path` on `close` (`abort` drops it)."""

    def __init__(self, path: str | Path, fps: float = 10.0, codec: str = "h264", crf: int = 18):
        encoder = video_encoder(codec)
        if encoder is None:
            raise ConfigError(f"{path}: no {codec!r} video encoder here (PyAV missing or built without it)")
        self.path = Path(path)
        self.fps = Fraction(float(fps)).limit_denominator(1001)
        self.encoder, self.crf = encoder, crf
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._container = self._stream = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_beside(self.path)

    def _open(self, size: tuple[int, int]) -> None:
        import av

        fmt = "mov" if self.path.suffix.lower() == ".mov" else "mp4"
        self._container = av.open(str(self._tmp), "w", format=fmt, options={"movflags": "+faststart"})
        stream = self._container.add_stream(self.encoder, rate=self.fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if self.encoder == "libx264":
            stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._stream = stream

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        size = (w + w % 2, h + h % 2)
        if self._container is None:
            self.size = size
            self._open(size)
        if size != self.size:
            raise ConfigError(f"{self.path}: frame {self.frames} is {w}x{h}, the video is "
                              f"{self.size[0]}x{self.size[1]}")
        if w % 2 or h % 2:
            rgb = cv2.copyMakeBorder(rgb, 0, h % 2, 0, w % 2, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = self.frames
        frame.time_base = 1 / self.fps
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and move it over `path` (no frames: no file)."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException:
            self._container = None
            self._tmp.unlink(missing_ok=True)
            raise
        self._container = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop what was written; `path` keeps its previous content."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the partial file is deleted either way
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)


class VideoWriter:
    """An MP4 or GIF writer chosen by the file suffix; use as a context manager (an exception inside the
    block drops the partial file). `write(rgb [H, W, 3])`. MP4 is H.264 through PyAV; where PyAV or its
    H.264 encoder is missing, a GIF is written beside it instead (`path` then ends in .gif) with a note."""

    def __init__(self, path: str | Path, fps: float = 10.0, codec: str = "h264"):
        path = Path(path)
        suffix = path.suffix.lower()
        if fps <= 0:
            raise ConfigError(f"{path}: fps must be > 0, got {fps}")
        if suffix not in (".gif", ".mp4", ".m4v", ".mov"):
            raise ConfigError(f"{path}: video output must end in .mp4 or .gif")
        if suffix != ".gif" and video_encoder(codec) is None:
            gif = path.with_suffix(".gif")
            print(f"note: no {codec} encoder (PyAV missing or built without it); writing {gif} instead of "
                  f"{path}")
            path, suffix = gif, ".gif"
        self._impl: GifStreamWriter | Mp4Writer = (GifStreamWriter(path, fps) if suffix == ".gif"
                                                   else Mp4Writer(path, fps, codec))
        self.path = path

    @property
    def frames(self) -> int:
        return self._impl.frames

    def write(self, rgb: np.ndarray) -> None:
        self._impl.write(to_rgb(rgb))

    def close(self) -> None:
        self._impl.close()

    def abort(self) -> None:
        self._impl.abort()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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
    "ContactSheet", "GifStreamWriter", "Mp4Writer", "VideoWriter", "annotate", "auto_scale",
    "centroid_points", "draw_boxes", "draw_mask_outline", "draw_points", "enlarge", "legend_band",
    "line_px", "put_caption", "text_px", "text_size", "to_rgb", "video_encoder",
]
