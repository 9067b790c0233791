"""DeepPro data: NUDT-MIRSDT training clips and whole test sequences.

Layout: `<root>/Sequence<N>/{images,masks,masks_centroid}/` (frames and masks paired by sorted file name)
and split files `<root>/{train,val,test}.txt` whose lines look like `Sequence85/Mix/00001.mat`; only the
first path component of a line is used. Frames are read on the 8-bit scale (`bit_depth_rule`, see
utils.data.frames) and normalised by `normalise_nudt`: `(grey - 105.4025) / 26.6452`. For the Noise
variant pass `mask_root` (the clean dataset root): masks and centroids are then read from there.

Training: clips of frames [max(0, i - L), i) for i = int(0.1 L) .. N - 1 (the authors'
range: the last frame is never used), zero-padded in normalised space to L frames after the frames for an
odd item index and before for an even one (labels likewise); frames optionally resized to 256x256 with PIL
bicubic (masks too, then > 0 -> 1); random crops centred with probability 0.75 on a target of the middle
real frame (jitter +-patch/6, corner clamped to [0, size - patch - 1]). An epoch holds int(0.1 * #clips)
items drawn with replacement with probability proportional to clip length: `epoch_view(epoch)`.
Models with one output frame per clip (Res-UNet+DTUM) train on `NUDTWindowDataset`: per frame the window
of L frames ending at it, the first frame repeated at the sequence start, and the current frame's mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from utils.data.frames import (
    DEFAULT_BIT_DEPTH_RULE,
    LRUCache,
    check_bit_depth_rule,
    is_image,
    read_grey,
    read_mask,
    to_uint8,
)
from utils.distributed import epoch_permutation
from utils.errors import ConfigError, DataError, read_text

NUDT_MEAN = 105.4025
NUDT_STD = 26.6452
_EIGHT = np.ones((3, 3), bool)


def normalise_nudt(frames, bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE, name: str = "frames") -> np.ndarray:
    """Frames on the 8-bit scale -> float32 `(frames - NUDT_MEAN) / NUDT_STD`, any shape ([N, H, W], [H, W]).

    uint8 frames, and float frames whose values all lie in [0, 255], are used as they are; deeper samples
    (uint16 / int32 arrays, float frames outside [0, 255]) are first brought to 8 bits by `bit_depth_rule`
    (utils.data.frames.to_uint8; "minmax-per-sequence" stretches over the whole array given), so 16-bit
    data are never normalised with the 8-bit constants. `name` goes into the error of a refused array."""
    x = np.asarray(frames)
    if x.dtype != np.uint8 and not (x.dtype.kind == "f" and x.size and np.all(np.isfinite(x))
                                    and x.min() >= 0 and x.max() <= 255):
        if x.dtype.kind == "b":
            x = x.astype(np.uint8)
        else:
            bits = None if x.dtype.kind == "f" else 8 * x.dtype.itemsize
            x = to_uint8(x if x.dtype.kind == "f" else x.astype(np.int64), bits, bit_depth_rule, name)
    return (x.astype(np.float32) - np.float32(NUDT_MEAN)) / np.float32(NUDT_STD)


def read_split(path: str | Path) -> list[str]:
    """Sequence names of a split file, in first-appearance order (first path component of each line)."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: split file not found")
    names: dict[str, None] = {}
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        first = line.replace("\\", "/").split("/")[0]
        if not first or " " in first or first in (".", ".."):
            raise DataError(f"{path}:{lineno}: malformed line {line!r} (want Sequence<N>/...)")
        names[first] = None
    if not names:
        raise DataError(f"{path}: the split file lists no sequences (empty split)")
    return list(names)


def _list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: folder not found")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if is_image(n)]


@dataclass
class SequenceFiles:
    name: str
    frames: list[str]
    masks: list[str]
    centroids: list[str] | None  # None when masks_centroid is absent


def sequence_files(root: str, name: str, mask_root: str | None = None,
                   need_masks: bool = True) -> SequenceFiles:
    """Frame, mask and centroid paths of one sequence, paired by sorted file name."""
    frames = _list_images(os.path.join(root, name, "images"))
    if not frames:
        raise DataError(f"{os.path.join(root, name, 'images')}: no frames")
    mroot = mask_root or root
    masks: list[str] = []
    cents = None
    if need_masks:
        masks = _list_images(os.path.join(mroot, name, "masks"))
        if len(masks) != len(frames):
            mdir = os.path.join(mroot, name, "masks")
            raise DataError(f"{mdir}: {len(masks)} masks for {len(frames)} frames")
        cdir = os.path.join(mroot, name, "masks_centroid")
        if os.path.isdir(cdir):
            cents = _list_images(cdir)
            if len(cents) != len(frames):
                raise DataError(f"{cdir}: {len(cents)} centroid masks for {len(frames)} frames")
    return SequenceFiles(name, frames, masks, cents)


def _open_root(ds, root: str | Path, split: str, split_file: str | Path | None, mask_root: str | Path | None,
               bit_depth_rule: str) -> str:
    """Check and set a dataset's `root`, `mask_root` and `bit_depth_rule`; returns the split file path."""
    ds.bit_depth_rule = check_bit_depth_rule(bit_depth_rule)
    ds.root = str(root)
    if not os.path.isdir(ds.root):
        raise DataError(f"{ds.root}: data root not found")
    ds.mask_root = str(mask_root) if mask_root is not None else None
    if ds.mask_root is not None and not os.path.isdir(ds.mask_root):
        raise DataError(f"{ds.mask_root}: mask root not found")
    return str(split_file) if split_file is not None else os.path.join(ds.root, f"{split}.txt")


def mask_centroids(mask: np.ndarray) -> np.ndarray:
    """One pixel per 8-connected mask component at its rounded centroid: bool [H, W]."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    out = np.zeros(mask.shape, bool)
    if n:
        cents = ndimage.center_of_mass(mask, labels, range(1, n + 1))
        for cy, cx in cents:
            out[int(round(cy)), int(round(cx))] = True
    return out


class NUDTTrainDataset(Dataset):
    """NUDT-MIRSDT training clips.

    root: dataset root; split: split file name stem ('train'); seqlen: L (40); resize: 256 (square, as the
    authors), an (H, W) pair, or None for native size; patch: crop size (128) or None; mask_root: where the
    masks live (Noise variant); sample_rate: epoch size as a fraction of the clips (0.1); center_prob: 0.75;
    seed: base seed of the crops and of `epoch_indices`; cache_frames: LRU size in decoded frames;
    bit_depth_rule: how frames with more than 8 bits reach the 8-bit scale (utils.data.frames).
    Item: (clip float32 [1, L, h, w], mask float32 [L, h, w] in {0, 1}).
    `dataset[i]` is clip i (odd i padded after, even before); train on `epoch_view(epoch)`.
    """

    def __init__(self, root: str | Path, split: str = "train", seqlen: int = 40,
                 resize: int | tuple[int, int] | None = 256, patch: int | None = 128,
                 mask_root: str | Path | None = None, sample_rate: float = 0.1, center_prob: float = 0.75,
                 seed: int = 0, cache_frames: int = 1024, split_file: str | Path | None = None,
                 bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE):
        split_path = _open_root(self, root, split, split_file, mask_root, bit_depth_rule)
        self.seqlen = int(seqlen)
        self.resize = (resize, resize) if isinstance(resize, int) else (tuple(resize) if resize else None)
        self.patch = patch
        self.sample_rate = sample_rate
        self.center_prob = center_prob
        self.seed = int(seed)
        self.sequences = [sequence_files(self.root, n, self.mask_root) for n in read_split(split_path)]
        first = max(1, int(self.seqlen * 0.1))  # 4 for L = 40 (the authors' start)
        self.clips: list[tuple[int, int, int]] = []  # (sequence, start, end) frames [start, end)
        for s, seq in enumerate(self.sequences):
            n = len(seq.frames)
            if n <= first:
                raise DataError(f"{os.path.join(self.root, seq.name)}: {n} frames, too short for training "
                                f"clips (need more than {first})")
            self.clips += [(s, max(0, i - self.seqlen), i) for i in range(first, n)]
        self._frames = LRUCache(cache_frames)
        self._masks = LRUCache(cache_frames)
        self._sizes: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.clips)

    # -- reading
    def _read(self, cache: LRUCache, path: str, is_mask: bool) -> np.ndarray:
        got = cache.get(path)
        if got is None:
            if is_mask:
                got = read_mask(path, self.resize)
            else:
                got = read_grey(path, self.resize, self.bit_depth_rule)
            cache.put(path, got)
        return got

    def _load(self, s: int, start: int, end: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Frames (uint8 [h, w]) and masks (bool [h, w]) of [start, end), decoded once (LRU)."""
        seq = self.sequences[s]
        frames = [self._read(self._frames, p, False) for p in seq.frames[start:end]]
        masks = [self._read(self._masks, p, True) for p in seq.masks[start:end]]
        ref = self._sizes.setdefault(s, frames[0].shape)
        for p, a in zip(seq.frames[start:end] + seq.masks[start:end], frames + masks):
            if a.shape != ref:
                raise DataError(f"{p}: size {a.shape[1]}x{a.shape[0]} differs from the sequence's "
                                f"{ref[1]}x{ref[0]}")
        return frames, masks

    def _crop(self, name: str, mask: np.ndarray, rng: np.random.Generator) -> tuple[slice, slice]:
        """Rows and columns of the training crop (`patch`; the whole frame without one), placed from
        `mask` (the frame the crop follows) with `rng`."""
        h, w = mask.shape
        if not self.patch:
            return slice(0, h), slice(0, w)
        p = int(self.patch)
        if h < p or w < p:
            raise ConfigError(f"{name}: frames {w}x{h} are smaller than the {p}x{p} crop; resize or use a "
                              "smaller patch")
        r0, c0 = self._crop_corner(mask, p, rng)
        return slice(r0, r0 + p), slice(c0, c0 + p)

    # -- items
    def clip(self, i: int, pad_after: bool, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip i padded after (or before) the frames, cropped with `rng`: ([1, L, h, w], [L, h, w])."""
        s, start, end = self.clips[i]
        frames, masks = self._load(s, start, end)
        t = len(frames)
        # The crop follows the middle real frame: index t // 2 of the clip, padded before or after.
        rows, cols = self._crop(self.sequences[s].name, masks[t // 2], rng)
        x = normalise_nudt(np.stack([f[rows, cols] for f in frames]))
        y = np.stack([m[rows, cols] for m in masks]).astype(np.float32)
        if t < self.seqlen:
            pad = np.zeros((self.seqlen - t,) + x.shape[1:], np.float32)
            x = np.concatenate([x, pad] if pad_after else [pad, x])
            y = np.concatenate([y, pad] if pad_after else [pad, y])
        return torch.from_numpy(x[None]), torch.from_numpy(y)

    def _crop_corner(self, label: np.ndarray, p: int, rng: np.random.Generator) -> tuple[int, int]:
        h, w = label.shape
        comps, n = ndimage.label(label > 0, structure=_EIGHT)
        if n > 0 and rng.random() < self.center_prob:
            k = int(rng.integers(1, n + 1))
            cy, cx = ndimage.center_of_mass(label > 0, comps, k)
            shake = int(p / 2 / 3)
            r0 = int(cy + (rng.random() - 0.5) * 2 * shake - p / 2)
            c0 = int(cx + (rng.random() - 0.5) * 2 * shake - p / 2)
            return min(max(r0, 0), max(h - p - 1, 0)), min(max(c0, 0), max(w - p - 1, 0))
        return int(rng.integers(0, max(h - p, 1))), int(rng.integers(0, max(w - p, 1)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clip(i, pad_after=i % 2 == 1, rng=np.random.default_rng([self.seed, 0, int(i)]))

    def epoch_indices(self, epoch: int, seed: int | None = None) -> list[int]:
        """int(sample_rate * #clips) clip indices drawn with replacement, probability ∝ clip length."""
        lengths = np.array([e - s for _, s, e in self.clips], np.float64)
        rng = np.random.default_rng([self.seed if seed is None else int(seed), 1, int(epoch)])
        n = max(1, int(len(self.clips) * self.sample_rate))
        return rng.choice(len(self.clips), size=n, replace=True, p=lengths / lengths.sum()).tolist()

    def epoch_view(self, epoch: int, seed: int | None = None) -> Dataset:
        """The epoch's items: item k is clip epoch_indices[k], padded after for odd k, crops seeded by
        (seed, epoch, k). Use with a plain DataLoader (shuffle=False: the draw is already random)."""
        seed = self.seed if seed is None else int(seed)
        return _EpochView(self, self.epoch_indices(epoch, seed), seed, epoch)


class _EpochView(Dataset):
    def __init__(self, base: NUDTTrainDataset, indices: list[int], seed: int, epoch: int):
        self.base, self.indices, self.seed, self.epoch = base, indices, seed, int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 2, self.epoch, int(k)])
        return self.base.clip(self.indices[k], pad_after=k % 2 == 1, rng=rng)


def window_indices(frame: int, length: int) -> list[int]:
    """Frame indices of the `length`-frame window ending at `frame` (current last), the missing predecessors
    at the sequence start being frame 0 repeated: window_indices(1, 5) == [0, 0, 0, 0, 1]."""
    return [max(0, frame - length + 1 + k) for k in range(length)]


class NUDTWindowDataset(NUDTTrainDataset):
    """NUDT-MIRSDT training windows for models with one output frame per clip (Res-UNet+DTUM): one item per
    training frame, the `seqlen`-frame window ending at it (`window_indices`: first frame repeated at the
    sequence start) and the current frame's mask. No padding, so whole frames of different sizes do not
    batch together (the recipe's batch is 1).

    Options as NUDTTrainDataset (resize, patch, center_prob, mask_root, cache_frames, bit_depth_rule; the
    DTUM recipe uses whole native-size frames); a crop is centred on a target of the current frame.
    Item: (clip float32 [1, L, h, w], mask float32 [1, h, w] in {0, 1}); `clips[i]` = (sequence, frame,
    frame + 1). Train on every item once per epoch (utils.distributed.epoch_permutation).
    """

    def __init__(self, root: str | Path, split: str = "train", seqlen: int = 5, **kwargs):
        super().__init__(root, split, seqlen=seqlen, **kwargs)
        self.clips = [(s, i, i + 1) for s, seq in enumerate(self.sequences) for i in range(len(seq.frames))]

    def window(self, i: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Window i (cropped with `rng` when `patch` is set): ([1, L, h, w], [1, h, w])."""
        s, frame, _ = self.clips[i]
        seq = self.sequences[s]
        frames, masks = self._load(s, frame, frame + 1)
        earlier = [self._read(self._frames, seq.frames[k], False) for k in window_indices(frame, self.seqlen)]
        for k, a in zip(window_indices(frame, self.seqlen), earlier):
            if a.shape != frames[0].shape:
                raise DataError(f"{seq.frames[k]}: size {a.shape[1]}x{a.shape[0]} differs from the "
                                f"sequence's {frames[0].shape[1]}x{frames[0].shape[0]}")
        rows, cols = self._crop(seq.name, masks[0], rng)
        x = normalise_nudt(np.stack([f[rows, cols] for f in earlier]))
        y = masks[0][rows, cols].astype(np.float32)
        return torch.from_numpy(x[None]), torch.from_numpy(y[None])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.window(i, np.random.default_rng([self.seed, 0, int(i)]))

    def epoch_item(self, index: int, position: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's item loader (utils.distributed.SeededItems): crops drawn from `seed`."""
        return self.window(index, np.random.default_rng(seed))

    def epoch_indices(self, epoch: int, seed: int | None = None) -> list[int]:
        """Every window once, in a seeded random order (utils.distributed.epoch_permutation)."""
        return epoch_permutation(len(self))(int(epoch), self.seed if seed is None else int(seed))

    def epoch_view(self, epoch: int, seed: int | None = None) -> Dataset:
        """The epoch's items: item k is window epoch_indices[k], crops seeded by (seed, epoch, k)."""
        seed = self.seed if seed is None else int(seed)
        return _WindowEpochView(self, self.epoch_indices(epoch, seed), seed, epoch)


class _WindowEpochView(_EpochView):
    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.window(self.indices[k], np.random.default_rng([self.seed, 2, self.epoch, int(k)]))


@dataclass
class NUDTSequence:
    """One whole test sequence."""

    name: str
    frames: np.ndarray  # float32 [N, H, W] normalised
    masks: np.ndarray  # bool [N, H, W]
    centroids: np.ndarray  # bool [N, H, W] (masks_centroid, or one pixel per mask component)
    paths: list[str]  # frame paths


class NUDTTestSequences(Dataset):
    """Whole sequences of a split, each frame decoded once: item i is a NUDTSequence.

    Use directly, via `iter_nudt_sequences`, or with DataLoader(ds, batch_size=None, num_workers=k,
    collate_fn=nudt_collate) to decode sequences in parallel. min_frames: sequences shorter than this
    (the 40-frame clip of the test protocol) raise a DataError. bit_depth_rule: how frames with more than
    8 bits reach the 8-bit scale (utils.data.frames; "minmax-per-sequence" spans the sequence's frames).
    """

    def __init__(self, root: str | Path, split: str = "test", mask_root: str | Path | None = None,
                 min_frames: int = 40, split_file: str | Path | None = None,
                 bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE):
        split_path = _open_root(self, root, split, split_file, mask_root, bit_depth_rule)
        self.sequences = [sequence_files(self.root, n, self.mask_root) for n in read_split(split_path)]
        for seq in self.sequences:
            if len(seq.frames) < min_frames:
                raise DataError(f"{os.path.join(self.root, seq.name)}: {len(seq.frames)} frames, shorter "
                                f"than the {min_frames}-frame clip")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> NUDTSequence:
        seq = self.sequences[i]
        frames = [read_grey(p, bit_depth_rule=self.bit_depth_rule) for p in seq.frames]
        masks = [read_mask(p) for p in seq.masks]
        if seq.centroids:
            cents = [read_mask(p) for p in seq.centroids]
        else:
            cents = [mask_centroids(m) for m in masks]
        ref = frames[0].shape
        for p, a in zip(seq.frames + seq.masks + (seq.centroids or []), frames + masks + cents):
            if a.shape != ref:
                raise DataError(f"{p}: size {a.shape[1]}x{a.shape[0]} differs from the sequence's "
                                f"{ref[1]}x{ref[0]}")
        x = normalise_nudt(np.stack(frames))
        return NUDTSequence(seq.name, x, np.stack(masks), np.stack(cents), list(seq.frames))


def nudt_collate(item: NUDTSequence) -> NUDTSequence:
    """Identity collate for DataLoader(NUDTTestSequences(...), batch_size=None)."""
    return item


def iter_nudt_sequences(root: str | Path, split: str = "test", mask_root: str | Path | None = None,
                        min_frames: int = 40, bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE):
    """Yield NUDTSequence records of a split, one sequence at a time."""
    ds = NUDTTestSequences(root, split, mask_root, min_frames, bit_depth_rule=bit_depth_rule)
    for i in range(len(ds)):
        yield ds[i]
