"""STMENet data: clips over the authors' txt lists (training) and over a COCO json (evaluation).

Training item: `(clip float32 [3, T, H, W], targets float32 [N, 5])`, frames oldest -> newest (key frame
last), each read as RGB, letterboxed (bicubic, grey 128), /255 and ImageNet-normalised; targets are
(cx, cy, w, h, cls) in letterboxed pixels. Boxes are mapped as the authors do: the int box array gets
x * nw / iw + dx (truncated), x1, y1 clipped at 0, x2 at W, y2 at H, boxes kept where w > 1 and h > 1.

Paths in a list may be relative (to `data_root`, default the list's folder) or absolute; absolute paths
written for another machine (e.g. `/home/public/DAUB/images/...`) are remapped onto `data_root` by
replacing `list_root`, by default everything before the first `images/` component.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Subset, get_worker_info

from utils.boxes import letterbox_params
from utils.data.frames import (
    DEFAULT_BIT_DEPTH_RULE,
    FrameIndex,
    LRUCache,
    check_bit_depth_rule,
    frame_number,
    letterbox_rgb,
    normalise_clip,
    normalise_frame,
)
from utils.errors import DataError, read_text


@dataclass
class ListEntry:
    path: str  # resolved key-frame path
    boxes: np.ndarray  # int64 [N, 5] (x1, y1, x2, y2, cls) in original pixels


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def remap_path(path: str, data_root: str | None, list_root: str | None, base: str) -> str:
    """Resolve one list path (see the module docstring)."""
    if not os.path.isabs(path):
        return os.path.join(data_root or base, path)
    if data_root is None:
        return path
    if list_root:
        prefix = list_root if list_root.endswith("/") else list_root + "/"
        if not path.startswith(prefix):
            raise DataError(f"{path}: does not start with the list root {prefix}")
        return os.path.join(data_root, path[len(prefix):])
    cut = path.find("/images/")
    if cut < 0:
        raise DataError(f"{path}: cannot remap onto the data root (no images/ folder); give the list root")
    return os.path.join(data_root, path[cut + 1:])


def read_txt_list(list_path: str | Path, data_root: str | Path | None = None,
                  list_root: str | None = None) -> list[ListEntry]:
    """Parse the authors' txt list `path x1,y1,x2,y2,cls ...` (blank lines skipped)."""
    list_path = str(list_path)
    if not os.path.isfile(list_path):
        raise DataError(f"{list_path}: list file not found")
    if data_root is not None:
        data_root = str(data_root)
        if not os.path.isdir(data_root):
            raise DataError(f"{data_root}: data root not found")
    base = os.path.dirname(os.path.abspath(list_path))
    entries = []
    for lineno, line in enumerate(read_text(list_path).split("\n"), 1):
        parts = line.split()
        if not parts:
            continue
        boxes = []
        for part in parts[1:]:
            vals = part.split(",")
            try:
                if len(vals) != 5:
                    raise ValueError
                box = [int(v) for v in vals]
                if any(abs(v) >= 2**31 for v in box):
                    raise ValueError
            except ValueError as err:
                msg = f"{list_path}:{lineno}: malformed box {part!r} (want x1,y1,x2,y2,cls)"
                raise DataError(msg) from err
            if box[4] < 0:
                raise DataError(f"{list_path}:{lineno}: box {part!r} has a negative class")
            if box[2] < box[0] or box[3] < box[1]:
                raise DataError(f"{list_path}:{lineno}: box {part!r} has x2 < x1 or y2 < y1")
            boxes.append(box)
        arr = np.array(boxes, np.int64).reshape(-1, 5)
        entries.append(ListEntry(remap_path(parts[0], data_root, list_root, base), arr))
    if not entries:
        raise DataError(f"{list_path}: the list is empty (empty split)")
    return entries


def letterbox_boxes(boxes: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """int [N, 5] (x1, y1, x2, y2, cls) in the original image -> float32 [M, 5] (cx, cy, w, h, cls)."""
    ih, iw = src_hw
    H, W = dst_hw
    _, nw, nh, dx, dy = letterbox_params((ih, iw), (H, W))
    b = np.array(boxes, np.int64).reshape(-1, 5)
    b[:, [0, 2]] = np.trunc(b[:, [0, 2]] * nw / iw + dx).astype(np.int64)
    b[:, [1, 3]] = np.trunc(b[:, [1, 3]] * nh / ih + dy).astype(np.int64)
    b[:, 0:2] = np.maximum(b[:, 0:2], 0)
    b[:, 2] = np.minimum(b[:, 2], W)
    b[:, 3] = np.minimum(b[:, 3], H)
    b = b[((b[:, 2] - b[:, 0]) > 1) & ((b[:, 3] - b[:, 1]) > 1)].astype(np.float32)
    b[:, 2:4] -= b[:, 0:2]
    b[:, 0:2] += b[:, 2:4] / 2
    return b


class _ClipReader:
    """Decode letterboxed frames once (LRU) and assemble [3, T, H, W] clips.

    normalised=False caches uint8 frames (4x smaller; training), True caches normalised float32 frames
    (each frame normalised once; evaluation, where the cache only spans a clip)."""

    def __init__(self, input_size: tuple[int, int], num_frames: int, cache_frames: int,
                 normalised: bool = False, index: FrameIndex | None = None,
                 bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE):
        self.input_size = input_size
        self.bit_depth_rule = bit_depth_rule
        self.num_frames = num_frames
        self.normalised = normalised
        self.index = index or FrameIndex()
        self.cache = LRUCache(cache_frames)

    def frame(self, path: str) -> tuple[np.ndarray, tuple[int, int]]:
        got = self.cache.get(path)
        if got is None:
            img, hw = letterbox_rgb(path, self.input_size, self.bit_depth_rule)
            got = (normalise_frame(img) if self.normalised else img, hw)
            self.cache.put(path, got)
        return got

    def clip(self, key_path: str) -> tuple[np.ndarray, tuple[int, int]]:
        paths = self.index.clip_paths(key_path, self.num_frames)
        frames = [self.frame(p) for p in paths]
        hw = frames[-1][1]
        for p, (_, size) in zip(paths, frames):
            if size != hw:
                raise DataError(f"{p}: frame size {size[1]}x{size[0]} differs from the key frame's "
                                f"{hw[1]}x{hw[0]} ({os.path.basename(key_path)})")
        if self.normalised:
            return np.stack([f for f, _ in frames], 1), hw
        return normalise_clip([f for f, _ in frames]), hw


class CocoClipDataset(Dataset):
    """Training clips over an authors' txt list.

    list_path: the txt list; input_size: (H, W) or int; num_frames: T (5); data_root / list_root: see the
    module docstring; cache_frames: LRU size in decoded frames (per worker); bit_depth_rule: how frames
    with more than 8 bits reach the 8-bit scale (utils.data.frames).
    Item: (clip float32 [3, T, H, W], targets float32 [N, 5] (cx, cy, w, h, cls)).
    """

    def __init__(self, list_path: str | Path, input_size: int | tuple[int, int] = 512, num_frames: int = 5,
                 data_root: str | Path | None = None, list_root: str | None = None, cache_frames: int = 128,
                 bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE):
        check_bit_depth_rule(bit_depth_rule)
        self.list_path = str(list_path)
        self.entries = read_txt_list(list_path, data_root, list_root)
        self.input_size = _size2(input_size)
        self.num_frames = int(num_frames)
        if self.num_frames < 1:
            raise DataError(f"{self.list_path}: num_frames must be >= 1")
        self._reader = _ClipReader(self.input_size, self.num_frames, cache_frames,
                                   bit_depth_rule=bit_depth_rule)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.entries[idx]
        clip, hw = self._reader.clip(entry.path)
        targets = letterbox_boxes(entry.boxes, hw, self.input_size)
        return torch.from_numpy(clip), torch.from_numpy(targets)

    def epoch_indices(self, epoch: int, seed: int = 0, fraction: float = 0.2) -> list[int]:
        """The clips of one epoch: a random `fraction` of the list without replacement (the authors train
        on a random fifth per epoch), in random order, seeded by (seed, epoch)."""
        n = max(1, int(len(self) * fraction))
        rng = np.random.default_rng([int(seed), int(epoch)])
        return rng.permutation(len(self))[:n].tolist()

    def epoch_view(self, epoch: int, seed: int = 0, fraction: float = 0.2) -> Subset:
        """A Dataset over `epoch_indices(epoch, seed, fraction)`, for a plain (unshuffled) DataLoader."""
        return Subset(self, self.epoch_indices(epoch, seed, fraction))


def clip_collate(batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """[(clip [3, T, H, W], targets [N_i, 5])] -> (images [B, 3, T, H, W], list of B tensors [N_i, 5])."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


@dataclass
class EvalImage:
    image_id: int
    path: str
    hw: tuple[int, int]  # (height, width) from the json


class CocoEvalClips(IterableDataset):
    """Evaluation clips over a COCO json, decoding every frame once per sequence.

    Yields (image_id, clip float32 [3, T, H, W], original (ih, iw) as int64 [2]) for the json's images
    (protocol 'annotated': only images with >= 1 annotation; 'all': every image), grouped by sequence
    folder, frames in index order. With DataLoader workers, sequences are sharded over the workers (each
    worker decodes its own sequences), so use batch_size > 1 and num_workers > 0 freely; order across
    workers is interleaved, so match results by image_id. bit_depth_rule: how frames with more than 8 bits
    reach the 8-bit scale (utils.data.frames).
    """

    def __init__(self, json_path: str | Path, input_size: int | tuple[int, int] = 512, num_frames: int = 5,
                 data_root: str | Path | None = None, protocol: str = "annotated",
                 bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE):
        from utils_coco.coco_to_txt import load_coco

        if protocol not in ("annotated", "all"):
            raise DataError(f"protocol must be 'annotated' or 'all', got {protocol!r}")
        self.json_path = str(json_path)
        self.bit_depth_rule = check_bit_depth_rule(bit_depth_rule)
        coco = load_coco(json_path)
        root = str(data_root) if data_root is not None else os.path.dirname(os.path.abspath(json_path))
        if not os.path.isdir(root):
            raise DataError(f"{root}: data root not found")
        self.input_size = _size2(input_size)
        self.num_frames = int(num_frames)
        annotated = set()
        ids = set()
        for j, img in enumerate(coco["images"]):
            if not isinstance(img, dict) or not isinstance(img.get("id"), int):
                raise DataError(f"{self.json_path}: image entry {j} is not an object with an integer 'id'")
            ids.add(img["id"])
        for i, ann in enumerate(coco["annotations"]):
            if not isinstance(ann, dict):
                raise DataError(f"{self.json_path}: annotation {i} is not an object")
            if not isinstance(ann.get("image_id"), int) or ann["image_id"] not in ids:
                raise DataError(f"{self.json_path}: annotation {i} points at image_id "
                                f"{ann.get('image_id')!r}, which is not in 'images'")
            annotated.add(ann["image_id"])
        index = FrameIndex()
        groups: dict[str, list[tuple[int, EvalImage]]] = {}
        for j, img in enumerate(coco["images"]):
            try:
                image_id, file_name = int(img["id"]), str(img["file_name"])
                hw = (int(img.get("height", 0)), int(img.get("width", 0)))
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"{self.json_path}: image entry {j} lacks 'id' or 'file_name'") from err
            if protocol == "annotated" and image_id not in annotated:
                continue
            path = os.path.join(root, file_name)
            num = frame_number(path)
            if num is None:
                raise DataError(f"{self.json_path}: {file_name} is not named by an integer frame index")
            if not index.contains(path):
                raise DataError(f"{path}: image listed in {os.path.basename(self.json_path)} not found")
            groups.setdefault(os.path.dirname(path), []).append((num, EvalImage(image_id, path, hw)))
        if not groups:
            raise DataError(f"{self.json_path}: no images to evaluate (protocol {protocol!r}; empty split)")
        self.sequences: list[list[EvalImage]] = [[e for _, e in sorted(g, key=lambda t: t[0])]
                                                 for g in groups.values()]
        self._index = index

    def __len__(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def images(self) -> list[EvalImage]:
        return [e for s in self.sequences for e in s]

    def __iter__(self):
        info = get_worker_info()
        shard = self.sequences if info is None else self.sequences[info.id::info.num_workers]
        for seq in shard:
            reader = _ClipReader(self.input_size, self.num_frames, self.num_frames + 2, True, self._index,
                                 self.bit_depth_rule)
            for e in seq:
                clip, hw = reader.clip(e.path)
                if e.hw[0] and e.hw[1] and hw != e.hw:
                    raise DataError(f"{e.path}: image is {hw[1]}x{hw[0]} but "
                                    f"{os.path.basename(self.json_path)} says {e.hw[1]}x{e.hw[0]}")
                yield e.image_id, torch.from_numpy(clip), torch.tensor(hw, dtype=torch.int64)


def eval_collate(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(image_id, clip, (ih, iw))] -> (ids int64 [B], clips [B, 3, T, H, W], sizes int64 [B, 2])."""
    ids = torch.tensor([b[0] for b in batch], dtype=torch.int64)
    return ids, torch.stack([b[1] for b in batch]), torch.stack([b[2] for b in batch])

