"""Streaming video writers: H.264 MP4 through PyAV (GIF where PyAV or its encoder is missing) and GIF.

    with VideoWriter("out.mp4", fps=10) as video:        # or out.gif; one frame in memory at a time
        for frame, boxes in stream:
            video.write(annotate(frame, boxes=boxes, scale=3))

Frames are RGB uint8 `[H, W, 3]` drawn by utils.visualize (grey levels and a few exact colours, which the
GIF writer's palette holds losslessly). A video is written to a temp file beside the target and moved over
it when complete; an exception inside the `with` block (or `abort()`) leaves the old file untouched.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.errors import ConfigError
from utils.visualize import PRED_COLOR, TEXT_COLOR, TRUTH_COLOR, to_rgb

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


__all__ = ["GifStreamWriter", "Mp4Writer", "VideoWriter", "gif_indices", "video_encoder"]
