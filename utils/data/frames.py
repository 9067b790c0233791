"""Frame discovery, decoding and caching shared by the COCO-video and NUDT-MIRSDT loaders.

Frames are named by their integer index within the sequence folder (`0.bmp`, `17.bmp`, `00017.png`; any
of IMAGE_EXTS, extension of any length). Decoding errors become one-line DataErrors naming the file.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.boxes import letterbox_params
from utils.errors import DataError

IMAGE_EXTS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS


def frame_number(path: str | Path) -> int | None:
    """Integer index of a frame file (`12.bmp`, `00012.png` -> 12), None if the stem is not an integer."""
    stem = os.path.splitext(os.path.basename(str(path)))[0]
    return int(stem) if stem.isdigit() else None


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image; a missing, truncated or unknown file raises a one-line DataError."""
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError as err:
        raise DataError(f"{path}: image not found") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read image ({msg})") from err


def read_grey(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Grey frame as uint8 [H, W] (first channel of a colour image), optionally resized to size=(H, W)
    with PIL bicubic (as the DeepPro authors resize NUDT-MIRSDT frames)."""
    img = open_image(path)
    if img.mode not in ("L", "RGB", "RGBA", "I", "F"):
        img = img.convert("L") if img.mode in ("1", "P", "LA", "CMYK", "YCbCr") else img.convert("F")
    if size is not None:
        img = img.resize((size[1], size[0]), Image.BICUBIC)
    arr = np.asarray(img)
    return arr[..., 0] if arr.ndim == 3 else arr


def letterbox_rgb(path: str | Path, dst_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a frame as RGB (grey frames replicated) and letterbox it into dst_hw the authors' way.

    Bicubic resize to (nh, nw) from utils.boxes.letterbox_params, pasted at (dx, dy) on grey 128.
    Returns (uint8 [H, W, 3], original (ih, iw)).
    """
    img = open_image(path).convert("RGB")
    return letterbox_image(img, dst_hw), (img.size[1], img.size[0])


def letterbox_image(img: Image.Image, dst_hw: tuple[int, int]) -> np.ndarray:
    """An RGB PIL image -> letterboxed uint8 [dst_h, dst_w, 3]: bicubic resize to (nh, nw) from
    utils.boxes.letterbox_params, pasted at (dx, dy) on grey 128 (the authors' way)."""
    iw, ih = img.size
    H, W = dst_hw
    _, nw, nh, dx, dy = letterbox_params((ih, iw), (H, W))
    if (nw, nh) != (iw, ih):
        img = img.resize((nw, nh), Image.BICUBIC)
    if (nw, nh, dx, dy) == (W, H, 0, 0):
        return np.asarray(img)
    canvas = Image.new("RGB", (W, H), (128, 128, 128))
    canvas.paste(img, (dx, dy))
    return np.asarray(canvas)


_LUT = ((np.arange(256, dtype=np.float32)[None, :] * np.float32(1 / 255) - IMAGENET_MEAN[:, None])
        / IMAGENET_STD[:, None])  # [3, 256]: grey level -> normalised value per channel


def normalise_frame(frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W]: /255 then ImageNet mean/std (one table lookup per pixel)."""
    if out is None:
        out = np.empty((3,) + frame.shape[:2], np.float32)
    for c in range(3):
        np.take(_LUT[c], frame[..., c], out=out[c])
    return out


def normalise_clip(frames: list[np.ndarray]) -> np.ndarray:
    """T uint8 [H, W, 3] frames -> float32 [3, T, H, W]: /255 then ImageNet mean/std."""
    h, w = frames[0].shape[:2]
    out = np.empty((3, len(frames), h, w), np.float32)
    for t, f in enumerate(frames):
        normalise_frame(f, out[:, t])
    return out


class LRUCache:
    """A tiny least-recently-used cache (capacity 0 disables it)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._data: OrderedDict = OrderedDict()

    def get(self, key):
        val = self._data.get(key)
        if val is not None:
            self._data.move_to_end(key)
        return val

    def put(self, key, value) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class FrameIndex:
    """Integer-indexed frames of sequence folders, each folder listed once.

    `clip_paths(key_path, T)` gives the T frames max(i - T + 1, first) .. i of the key frame's folder,
    oldest first: frame i - d is used when it exists, else the nearest earlier frame, and the folder's
    first frame is repeated at the start of the sequence (for 0-based names this is the authors'
    max(i - d, 0)).
    """

    def __init__(self) -> None:
        self._folders: dict[str, tuple[dict[int, str], np.ndarray]] = {}

    def folder(self, folder: str) -> tuple[dict[int, str], np.ndarray]:
        """(index -> path, sorted indices) of a folder."""
        got = self._folders.get(folder)
        if got is None:
            if not os.path.isdir(folder):
                raise DataError(f"{folder}: sequence folder not found")
            frames: dict[int, str] = {}
            for entry in os.scandir(folder):
                if not is_image(entry.name):
                    continue
                num = frame_number(entry.name)
                if num is None:
                    continue
                if num in frames:
                    other = os.path.basename(frames[num])
                    raise DataError(f"{entry.path}: two frames with index {num} ({other})")
                frames[num] = entry.path
            got = (frames, np.array(sorted(frames), dtype=np.int64))
            self._folders[folder] = got
        return got

    def contains(self, path: str) -> bool:
        num = frame_number(path)
        frames, _ = self.folder(os.path.dirname(path))
        return num is not None and num in frames

    def clip_paths(self, key_path: str, num_frames: int) -> list[str]:
        folder = os.path.dirname(key_path)
        num = frame_number(key_path)
        if num is None:
            raise DataError(f"{key_path}: frame name is not an integer index")
        frames, order = self.folder(folder)
        if num not in frames:
            raise DataError(f"{key_path}: frame not found")
        paths = []
        for d in range(num_frames - 1, -1, -1):
            want = num - d
            got = frames.get(want)
            if got is None:
                pos = int(np.searchsorted(order, want, side="right")) - 1
                got = frames[int(order[max(pos, 0)])]
            paths.append(got)
        return paths
