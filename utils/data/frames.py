"""Frame discovery, decoding and caching shared by the COCO-video and NUDT-MIRSDT loaders.

Frames are named by their integer index within the sequence folder (`0.bmp`, `17.bmp`, `00017.png`; any
of IMAGE_EXTS, extension of any length). Decoding errors become one-line DataErrors naming the file.

Bit depth. Frames are read with their real sample depth: 8-bit images (L, P, LA, RGB, ...), 16-bit PNG and
TIFF (PIL modes I;16, I;16B, and 16-bit colour, re-read with OpenCV because PIL keeps only the high byte),
32-bit integer (I) and float (F) TIFF, and `.mat` files holding one 2-D array. The models were trained on
8-bit frames, so every frame is brought to the 8-bit scale by ONE rule, `bit_depth_rule` (BIT_DEPTH_RULES):
8-bit frames pass unchanged under every rule, as do float frames whose values all lie in [0, 255] (rounded);
anything else (16 / 32-bit samples, float frames outside [0, 255]) follows the rule, and the default
"refuse" raises a DataError that names the file and the rules to choose from. Nothing is ever clipped to
255 silently. Masks only need nonzero / zero and ignore the rule (`read_mask`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.boxes import letterbox_params
from utils.errors import DataError

IMAGE_EXTS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".mat")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# A frame claiming more pixels than this (e.g. a corrupt 100000x100000 header) is refused before decoding.
MAX_FRAME_PIXELS = 1 << 26
BIT_DEPTH_RULES = {
    "refuse": "frames with more than 8 bits per sample raise a DataError (the default)",
    "shift": "keep the top 8 bits of integer samples: value >> (bits - 8), bits = the file's sample depth "
             "(16 for 16-bit PNG / TIFF)",
    "minmax-per-sequence": "stretch linearly so that the lowest value of the sequence (the frame's folder, "
                           "or the stack given) becomes 0 and the highest 255, rounded",
    "scale-65535": "value * 255 / 65535, rounded: the full 16-bit range onto 8 bits (values must be in "
                   "0..65535)",
}
DEFAULT_BIT_DEPTH_RULE = "refuse"
_RULE_CHOICES = " | ".join(r for r in BIT_DEPTH_RULES if r != "refuse")
_EIGHT_BIT_MODES = ("1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
                    "HSV")


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS


def frame_number(path: str | Path) -> int | None:
    """Integer index of a frame file (`12.bmp`, `00012.png` -> 12), None if the stem is not an integer."""
    stem = os.path.splitext(os.path.basename(str(path)))[0]
    return int(stem) if stem.isdigit() else None


def check_bit_depth_rule(rule: str) -> str:
    """`rule` if it is one of BIT_DEPTH_RULES, else a one-line DataError."""
    if rule not in BIT_DEPTH_RULES:
        raise DataError(f"bit_depth_rule must be one of {', '.join(BIT_DEPTH_RULES)}, got {rule!r}")
    return rule


def _mat_array(path: str | Path) -> np.ndarray:
    """The one 2-D numeric array of a `.mat` frame; anything else is a one-line DataError saying how to
    export the frames."""
    from scipy.io import loadmat

    how = ("export one 2-D frame per file (MATLAB: imwrite(uint16(X(:,:,k)), sprintf('%05d.png', k)); "
           "Python: one scipy.io.savemat(f, {'frame': X[:, :, k]}) per frame)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: image not found")
    try:
        data = loadmat(path)
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not read; save with -v7, or "
                        f"{how}") from None
    except Exception as err:  # scipy raises ValueError, IndexError, OSError... for corrupt files
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read .mat file ({msg})") from None
    arrays = {k: v for k, v in data.items() if not k.startswith("__") and isinstance(v, np.ndarray)
              and v.dtype.kind in "buif"}
    if len(arrays) != 1:
        names = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items()) or "no numeric array"
        raise DataError(f"{path}: a .mat frame must hold exactly one 2-D array, found {names}; {how}")
    (key, arr), = arrays.items()
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise DataError(f"{path}: '{key}' is a {arr.ndim}-D array {list(arr.shape)}, not one 2-D frame; "
                        f"{how}")
    if arr.size > MAX_FRAME_PIXELS:
        raise DataError(f"{path}: a {arr.shape[1]}x{arr.shape[0]} frame is larger than {MAX_FRAME_PIXELS} "
                        "pixels")
    return arr


def _mat_image(path: str | Path) -> Image.Image:
    """A `.mat` frame as a PIL image; info["toolbox_bits"] keeps the sample depth of integer arrays."""
    arr = _mat_array(path)
    bits = None
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    elif arr.dtype not in (np.uint8, np.uint16):
        if arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max:
            raise DataError(f"{path}: integer values outside the 32-bit range")
        bits = 16 if arr.dtype.itemsize <= 2 else 32
        arr = arr.astype(np.int32)
    img = Image.fromarray(np.ascontiguousarray(arr))
    img.info["toolbox_bits"] = bits
    return img


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image (`.mat`: its 2-D array as a PIL image); a missing, truncated, unknown
    or absurdly large file raises a one-line DataError."""
    if str(path).lower().endswith(".mat"):
        return _mat_image(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w < 1 or h < 1 or w * h > MAX_FRAME_PIXELS:
                raise DataError(f"{path}: the header claims a {w}x{h} image (corrupt file, or larger than "
                                f"{MAX_FRAME_PIXELS} pixels)")
            high = img.mode in _EIGHT_BIT_MODES and any(";16" in str(t.args) for t in img.tile)
            img.load()
            img.info["toolbox_16bit_colour"] = high
            return img
    except FileNotFoundError as err:
        raise DataError(f"{path}: image not found") from err
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: the header claims an image too large to decode ({err})") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, DataError):
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read image ({msg})") from err


def _read_16bit_colour(path: str | Path) -> np.ndarray:
    """A 16-bit colour PNG / TIFF as uint16 [H, W, 3] RGB (OpenCV keeps the 16 bits that PIL drops)."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise DataError(f"{path}: cannot read this 16-bit colour image; save it as a 16-bit grey PNG or TIFF")
    return np.ascontiguousarray(arr[..., 2::-1])


def decode_samples(path: str | Path, rgb: bool = False) -> tuple[np.ndarray, int | None]:
    """A frame's samples at their real depth: (array, bits).

    Grey (rgb=False): [H, W], the first channel of a colour image (palette, CMYK, YCbCr images: their PIL
    luminance). rgb=True: [H, W, 3] for colour images, [H, W] for grey ones. bits is 8 (uint8), 16 (uint16),
    32 (int32) or None for float32 samples."""
    img = open_image(path)
    mode = img.mode
    if img.info.get("toolbox_16bit_colour"):
        arr = _read_16bit_colour(path)
        return (arr if rgb else np.ascontiguousarray(arr[..., 0])), 16
    if mode in _EIGHT_BIT_MODES:
        if rgb:
            return (np.asarray(img.convert("L")) if mode in ("1", "L", "LA", "La") else
                    np.asarray(img.convert("RGB"))), 8
        if mode == "L":
            return np.asarray(img), 8
        if mode in ("RGB", "RGBA", "RGBa", "RGBX"):
            return np.ascontiguousarray(np.asarray(img)[..., 0]), 8
        return np.asarray(img.convert("L")), 8
    arr = np.asarray(img)
    if mode.startswith("I;16"):
        return arr.astype(np.uint16 if arr.dtype.kind == "u" else np.int32), 16
    if mode == "I":
        depth = img.info.get("toolbox_bits") or (img.tag_v2.get(258) if hasattr(img, "tag_v2") else None)
        depth = depth[0] if isinstance(depth, tuple) else depth
        if img.format == "PNG":  # older Pillow opens 16-bit grey PNG (at most 16 bits) as mode I
            depth = 16
        return arr.astype(np.int32), 16 if depth == 16 else 32
    if mode == "F":
        return arr.astype(np.float32), None
    raise DataError(f"{path}: unsupported image mode {mode}; save the frames as 8- or 16-bit grey PNG")


def _describe(arr: np.ndarray, bits: int | None) -> str:
    kind = f"{bits}-bit" if bits else "float"
    return f"{kind} frame (values {arr.min():g}..{arr.max():g})"


def to_uint8(arr: np.ndarray, bits: int | None, rule: str = DEFAULT_BIT_DEPTH_RULE, name: str = "frame",
             value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Samples at `bits` (8, 16, 32; None = float) -> uint8 of the same shape, by `rule` (BIT_DEPTH_RULES).

    value_range: (lo, hi) of the whole sequence for "minmax-per-sequence" (default: this array's own range).
    `name` (the file) goes into the one-line DataError of a frame the rule refuses."""
    check_bit_depth_rule(rule)
    if bits == 8 and arr.dtype == np.uint8:
        return arr
    if bits is None:
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{name}: float frame holds NaN or infinite values")
        if arr.size and arr.min() >= 0 and arr.max() <= 255:
            return np.rint(arr).astype(np.uint8)
    if rule == "refuse":
        raise DataError(f"{name}: {_describe(arr, bits)} has more than 8 bits; choose how to bring it to "
                        f"the models' 8-bit scale with --bit-depth-rule {_RULE_CHOICES}")
    if rule == "shift":
        if bits is None:
            raise DataError(f"{name}: {_describe(arr, bits)}: 'shift' needs integer samples; use "
                            "--bit-depth-rule minmax-per-sequence")
        if arr.min() < 0:
            raise DataError(f"{name}: {_describe(arr, bits)} holds negative values; 'shift' needs unsigned "
                            "samples, use --bit-depth-rule minmax-per-sequence")
        return (arr.astype(np.int64) >> (bits - 8)).astype(np.uint8)
    if rule == "scale-65535":
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{name}: {_describe(arr, bits)} is outside 0..65535; 'scale-65535' is for "
                            "16-bit data, use --bit-depth-rule minmax-per-sequence")
        return np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    lo, hi = (float(arr.min()), float(arr.max())) if value_range is None else map(float, value_range)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    out = np.rint((arr.astype(np.float64) - lo) * (255.0 / (hi - lo)))
    return np.clip(out, 0, 255).astype(np.uint8)


_RANGES: OrderedDict = OrderedDict()  # folder -> (lo, hi) of its high-bit frames, for minmax-per-sequence


def sequence_value_range(folder: str | Path) -> tuple[float, float]:
    """(lowest, highest) sample value over the frames of a sequence folder (every image file in it, decoded
    once per process and cached): the range "minmax-per-sequence" stretches to 0..255."""
    key = os.path.realpath(folder)
    got = _RANGES.get(key)
    if got is None:
        lo, hi = np.inf, -np.inf
        names = sorted(n for n in os.listdir(key) if is_image(n)) if os.path.isdir(key) else []
        if not names:
            raise DataError(f"{folder}: no frames to take the value range of")
        for n in names:
            arr, _ = decode_samples(os.path.join(key, n))
            lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
        got = (lo, hi)
        _RANGES[key] = got
        while len(_RANGES) > 256:
            _RANGES.popitem(last=False)
    return got


def read_frame(path: str | Path, bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE,
               rgb: bool = False) -> np.ndarray:
    """A frame on the 8-bit scale: uint8 [H, W] (grey), or [H, W, 3] with rgb=True (grey replicated).
    Frames with more than 8 bits follow `bit_depth_rule` (see the module docstring)."""
    check_bit_depth_rule(bit_depth_rule)
    arr, bits = decode_samples(path, rgb)
    vrange = None
    if bit_depth_rule == "minmax-per-sequence" and bits != 8:
        vrange = sequence_value_range(os.path.dirname(os.path.abspath(path)))
    out = to_uint8(arr, bits, bit_depth_rule, str(path), vrange)
    if rgb and out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out


def read_grey(path: str | Path, size: tuple[int, int] | None = None,
              bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE) -> np.ndarray:
    """Grey frame as uint8 [H, W] (first channel of a colour image) on the 8-bit scale (`read_frame`),
    optionally resized to size=(H, W) with PIL bicubic (as the DeepPro authors resize NUDT-MIRSDT frames)."""
    arr = read_frame(path, bit_depth_rule)
    if size is not None:
        arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.BICUBIC))
    return arr


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask as bool [H, W]: nonzero samples of any bit depth (first channel), optionally resized like
    `read_grey` (8-bit masks resize their own values, deeper ones 0 / 255) and then > 0."""
    arr, bits = decode_samples(path)
    if size is None:
        return arr != 0
    arr8 = arr if bits == 8 else (arr != 0).astype(np.uint8) * 255
    return np.asarray(Image.fromarray(arr8).resize((size[1], size[0]), Image.BICUBIC)) > 0


def letterbox_rgb(path: str | Path, dst_hw: tuple[int, int],
                  bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a frame as RGB (grey frames replicated, on the 8-bit scale by `bit_depth_rule`) and letterbox
    it into dst_hw the authors' way.

    Bicubic resize to (nh, nw) from utils.boxes.letterbox_params, pasted at (dx, dy) on grey 128.
    Returns (uint8 [H, W, 3], original (ih, iw)).
    """
    rgb = read_frame(path, bit_depth_rule, rgb=True)
    return letterbox_image(Image.fromarray(rgb), dst_hw), rgb.shape[:2]


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
