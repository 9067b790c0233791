"""Streaming inference for prediction and demos: frame sources, model loading, per-frame predictors.

Sources yield `Frame` records one at a time (a frame folder, a video file through OpenCV, or a synthetic
sequence rendered in memory), with truth when the source has it. Predictors take frames in order and give
back finished frames with their predictions, holding only what the model needs:

- `DetectorStream` (STMENet): the last T frames, letterboxed; clips of T frames ending at each frame
  (the first frame repeated at the start), batched, decoded, NMS, boxes mapped back to image pixels.
- `SegmenterStream` (DeepPro / DeepPro-Plus): clips of `seqlen` frames with stride 36, the last clip
  aligned to the end of the stream, probabilities stitched by an element-wise max over overlaps (the test
  protocol of utils.segmentation) at native resolution; at most seqlen + stride frames are held. A stream
  shorter than seqlen is zero-padded (in normalised space) before its first frame.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from utils.bridge import masks_to_boxes
from utils.data.frames import (
    DEFAULT_BIT_DEPTH_RULE,
    IMAGE_EXTS,
    frame_number,
    letterbox_image,
    normalise_frame,
    open_image,
    read_frame,
)
from utils.data.nudt import mask_centroids, normalise_nudt
from utils.errors import ConfigError, DataError
from utils.postprocess import model_stride, postprocess

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".gif")


# ----------------------------------------------------------------------------------------------------
# Frames and sources
# ----------------------------------------------------------------------------------------------------


@dataclass
class Truth:
    """What a source knows about one frame (any part may be None)."""

    boxes: np.ndarray | None = None  # float [K, 4] xyxy, image pixels (x2 exclusive)
    mask: np.ndarray | None = None  # bool [H, W]
    centroids: np.ndarray | None = None  # bool [H, W]

    def box_truth(self) -> np.ndarray | None:
        """Boxes, else the tight boxes of the mask components."""
        if self.boxes is not None:
            return self.boxes
        if self.mask is not None:
            return masks_to_boxes(self.mask.astype(np.float32), 0.5)[:, :4].numpy()
        return None


@dataclass
class Frame:
    index: int  # position in the stream (0-based)
    name: str  # file name or "frame <i>"
    rgb: np.ndarray  # uint8 [H, W, 3] (grey frames replicated)
    grey: np.ndarray  # uint8 [H, W]
    truth: Truth | None = None

    @property
    def hw(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]


def _natural_key(name: str) -> tuple:
    num = frame_number(name)
    return (0, num, name) if num is not None else (1, 0, name)


def list_frames(folder: str | Path) -> list[Path]:
    """Image files of a folder, ordered by integer frame index when the names are integers, else by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: frame folder not found")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTS)})")
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_rgb(path: Path, bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE) -> tuple[np.ndarray, np.ndarray]:
    rgb = read_frame(path, bit_depth_rule, rgb=True)  # uint8 [H, W, 3] on the 8-bit scale
    return rgb, np.ascontiguousarray(rgb[..., 0])


class FolderSource:
    """Frames of a folder. A NUDT-MIRSDT sequence folder (`images/`, `masks/`, `masks_centroid/`) or its
    `images/` folder gives mask truth (paired by sorted file name); `gt` maps a frame's resolved path to
    truth boxes (from a COCO json, see `coco_truth`)."""

    def __init__(self, folder: str | Path, gt: dict[str, np.ndarray] | None = None,
                 bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE):
        self.bit_depth_rule = bit_depth_rule  # frames with more than 8 bits: see utils.data.frames
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: frame folder not found")
        seq = folder if (folder / "images").is_dir() else folder.parent if folder.name == "images" else None
        self.frames_dir = seq / "images" if seq is not None else folder
        self.paths = list_frames(self.frames_dir)
        self.name = (seq or folder).resolve().name
        self.masks = self.centroids = None
        if seq is not None and (seq / "masks").is_dir():
            self.masks = list_frames(seq / "masks")
            if len(self.masks) != len(self.paths):
                raise DataError(f"{seq / 'masks'}: {len(self.masks)} masks for {len(self.paths)} frames")
            if (seq / "masks_centroid").is_dir():
                self.centroids = list_frames(seq / "masks_centroid")
                if len(self.centroids) != len(self.paths):
                    raise DataError(f"{seq / 'masks_centroid'}: {len(self.centroids)} centroid masks for "
                                    f"{len(self.paths)} frames")
        self.gt = gt
        # frames that the truth json knows (0 for a json of another split or root: the caller warns)
        self.gt_matched = None if gt is None else sum(os.path.realpath(p) in gt for p in self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            rgb, grey = _read_rgb(path, self.bit_depth_rule)
            truth = None
            if self.masks is not None:
                mask = np.asarray(open_image(self.masks[i]).convert("L")) > 0
                if self.centroids:
                    cents = np.asarray(open_image(self.centroids[i]).convert("L")) > 0
                else:
                    cents = mask_centroids(mask)
                truth = Truth(mask=mask, centroids=cents)
            if self.gt is not None:
                boxes = self.gt.get(os.path.realpath(path), np.zeros((0, 4)))
                truth = Truth(boxes=boxes) if truth is None else Truth(boxes, truth.mask, truth.centroids)
            yield Frame(i, path.name, rgb, grey, truth)


class VideoSource:
    """Frames of a video file decoded by OpenCV one at a time (no truth)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: video file not found")
        cap = cv2.VideoCapture(str(self.path))
        ok = cap.isOpened()
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        if not ok:
            raise DataError(f"{self.path}: OpenCV cannot open this video")
        self.length = count if count > 0 else None
        self.name = self.path.stem

    def __len__(self) -> int:
        return self.length or 0

    def __iter__(self) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                if bgr.ndim == 2:
                    bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
                yield Frame(i, f"frame {i}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                            cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
                i += 1
            if i == 0:
                raise DataError(f"{self.path}: no frame could be decoded")
        finally:
            cap.release()


class SyntheticSource:
    """One synthetic sequence of a style (nudt, itsdt, irdst, daub), rendered in memory with its truth."""

    def __init__(self, style: str = "nudt", seed: int = 0, frames: int | None = None,
                 size: tuple[int, int] | None = None, snr: float | None = None, targets: int | None = None):
        from utils.synth import STYLES, render_sequence

        if style not in STYLES:
            raise ConfigError(f"synthetic style must be one of {', '.join(STYLES)}, got {style!r}")
        st = STYLES[style]
        n = int(frames or st.frames)
        if n < 1:
            raise ConfigError(f"synthetic source needs >= 1 frame, got {n}")
        snr = float(snr if snr is not None else sum(st.snr) / 2)
        k = int(targets if targets is not None else min(max(st.targets[0], 2), st.targets[1]))
        self.rendered = render_sequence(seed, st, 1, tuple(size or st.size), n, snr, k)
        self.name = f"synthetic {style} (seed {seed})"

    def __len__(self) -> int:
        return len(self.rendered.frames)

    def __iter__(self) -> Iterator[Frame]:
        r = self.rendered
        for t, grey in enumerate(r.frames):
            boxes = r.boxes[r.present[:, t], t].astype(np.float64)
            yield Frame(t, f"frame {t}", np.repeat(grey[:, :, None], 3, 2), grey,
                        Truth(boxes, r.masks[t], r.centroids[t]))


def coco_truth(json_path: str | Path, data_root: str | Path | None = None) -> dict[str, np.ndarray]:
    """Resolved image path -> float [K, 4] xyxy boxes of a COCO json (file names relative to `data_root`,
    default the json's folder); images without boxes map to an empty array."""
    from utils_coco.coco_to_txt import load_coco

    coco = load_coco(json_path)
    root = Path(data_root) if data_root else Path(json_path).resolve().parent
    boxes: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        boxes.setdefault(int(a["image_id"]), []).append([x, y, x + w, y + h])
    return {os.path.realpath(root / im["file_name"]): np.asarray(boxes.get(int(im["id"]), []),
                                                                 np.float64).reshape(-1, 4)
            for im in coco["images"]}


def open_source(spec: str, gt_json: str | None = None, data_root: str | None = None, seed: int = 0,
                frames: int | None = None, bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE):
    """`spec`: a frame folder, a video file, or `synth[:STYLE]` (STYLE nudt, itsdt, irdst, daub)."""
    if spec == "synth" or spec.startswith("synth:"):
        return SyntheticSource(spec.partition(":")[2] or "nudt", seed, frames)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, coco_truth(gt_json, data_root) if gt_json else None, bit_depth_rule)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTS:
            raise DataError(f"{path}: not a video file ({', '.join(VIDEO_EXTS)}); pass a frame folder")
        return VideoSource(path)
    raise DataError(f"{path}: source not found (a frame folder, a video file or synth[:STYLE])")


# ----------------------------------------------------------------------------------------------------
# Streaming predictors
# ----------------------------------------------------------------------------------------------------


def letterbox_array(rgb: np.ndarray, dst_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> letterboxed uint8 [dst_h, dst_w, 3] the authors' way (bicubic, grey 128): the
    frames of a stream go through the same code as the evaluation loader's files."""
    return letterbox_image(Image.fromarray(rgb), dst_hw)


class DetectorStream:
    """STMENet over a frame stream. `push(frame)` / `flush()` return finished `(frame, dets)` pairs in
    order, dets float32 `[K, 6]` (x1, y1, x2, y2, score = obj * cls, cls) in image pixels."""

    def __init__(self, model: nn.Module, input_size: int = 512, num_frames: int = 5, conf_thres: float = 0.5,
                 nms_thres: float = 0.3, batch_size: int = 4, device: torch.device | str = "cpu",
                 box_mapping: str = "authors"):
        if input_size % 32 or input_size < 32:
            raise ConfigError(f"input size must be a positive multiple of 32, got {input_size}")
        self.model = model.eval()
        self.device = torch.device(device)
        self.input_hw = (input_size, input_size)
        self.num_frames = int(num_frames)
        self.conf_thres, self.nms_thres = conf_thres, nms_thres
        self.batch_size = max(1, int(batch_size))
        self.box_mapping = box_mapping  # utils.boxes.undo_letterbox mode
        self.stride = model_stride(model)
        self._history: deque[np.ndarray] = deque(maxlen=self.num_frames)
        self._pending: list[tuple[Frame, np.ndarray]] = []
        self._hw: tuple[int, int] | None = None

    def push(self, frame: Frame) -> list[tuple[Frame, np.ndarray]]:
        if self._hw is None:
            self._hw = frame.hw
        elif frame.hw != self._hw:
            raise DataError(f"{frame.name}: frame size {frame.hw[1]}x{frame.hw[0]} differs from the stream's "
                            f"{self._hw[1]}x{self._hw[0]}")
        self._history.append(normalise_frame(letterbox_array(frame.rgb, self.input_hw)))
        hist = list(self._history)
        clip = np.stack([hist[0]] * (self.num_frames - len(hist)) + hist, 1)  # [3, T, H, W]
        self._pending.append((frame, clip))
        return self._run() if len(self._pending) >= self.batch_size else []

    def flush(self) -> list[tuple[Frame, np.ndarray]]:
        return self._run() if self._pending else []

    @torch.no_grad()
    def _run(self) -> list[tuple[Frame, np.ndarray]]:
        frames = [f for f, _ in self._pending]
        x = torch.from_numpy(np.stack([c for _, c in self._pending])).to(self.device)
        self._pending = []
        dets = postprocess(self.model(x), self.stride, self.input_hw, [f.hw for f in frames], self.conf_thres,
                           self.nms_thres, box_mapping=self.box_mapping)
        return [(f, torch.cat((d[:, :4], (d[:, 4] * d[:, 5])[:, None], d[:, 6:7]), 1).numpy())
                for f, d in zip(frames, dets)]


class SegmenterStream:
    """DeepPro / DeepPro-Plus over a frame stream (see the module docstring). `push(frame)` / `flush()`
    return finished `(frame, prob float32 [H, W])` pairs in order."""

    def __init__(self, model: nn.Module, seqlen: int = 40, stride: int = 36,
                 device: torch.device | str = "cpu"):
        if not 0 < stride <= seqlen:
            raise ConfigError(f"clip stride must be in 1..{seqlen}, got {stride}")
        self.model = model.eval()
        self.device = torch.device(device)
        self.seqlen, self.stride = int(seqlen), int(stride)
        self._frames: list[Frame] = []  # frames base .. count - 1
        self._inputs: list[np.ndarray] = []  # their normalised grey frames
        self._probs: list[np.ndarray | None] = []
        self._base = 0  # stream index of self._frames[0]
        self._count = 0
        self._next_start = 0
        self._last_end = 0  # end of the last clip run

    def push(self, frame: Frame) -> list[tuple[Frame, np.ndarray]]:
        if self._frames and frame.hw != self._frames[0].hw:
            raise DataError(f"{frame.name}: frame size {frame.hw[1]}x{frame.hw[0]} differs from the stream's "
                            f"{self._frames[0].hw[1]}x{self._frames[0].hw[0]}")
        self._frames.append(frame)
        self._inputs.append(normalise_nudt(frame.grey))
        self._probs.append(None)
        self._count += 1
        if self._count - self.seqlen == self._next_start:
            start = self._next_start
            self._run_clip(start)
            self._next_start += self.stride
            return self._emit(start)  # no later clip reaches before `start`
        return []

    def flush(self) -> list[tuple[Frame, np.ndarray]]:
        if self._count and self._last_end < self._count:
            self._run_clip(self._count - self.seqlen)
        return self._emit(self._count)

    @torch.no_grad()
    def _run_clip(self, start: int) -> None:
        """Run the clip of frames [start, start + seqlen) (negative start: zero frames before frame 0)."""
        pad = max(0, -start)
        lo = max(start, 0) - self._base
        frames = self._inputs[lo:lo + self.seqlen - pad]
        if pad:
            frames = [np.zeros_like(frames[0])] * pad + frames
        x = torch.from_numpy(np.stack(frames))[None, None].to(self.device)  # [1, 1, L, H, W]
        prob = torch.sigmoid(self.model(x).float())[0].cpu().numpy()[pad:]
        for k, p in enumerate(prob):
            old = self._probs[lo + k]
            self._probs[lo + k] = p if old is None else np.maximum(old, p)
        self._last_end = start + self.seqlen

    def _emit(self, upto: int) -> list[tuple[Frame, np.ndarray]]:
        n = max(0, upto - self._base)
        out = list(zip(self._frames[:n], self._probs[:n]))
        del self._frames[:n], self._inputs[:n], self._probs[:n]
        self._base += n
        return out


__all__ = [
    "DetectorStream", "FolderSource", "Frame", "SegmenterStream", "SyntheticSource", "Truth", "VideoSource",
    "coco_truth", "letterbox_array", "list_frames", "open_source",
]
