"""Segmenter test protocol as a library: clips, stitching, Pd / Fa / AUC / IoU scoring of sequences.

    >>> probs = predict_sequence(model.eval(), frames)      # normalised [N, H, W] -> stitched [N, H, W]
    >>> scorer = evaluate_sequences(model, sequences, LOW_SNR_SEQUENCES)
    >>> summary(scorer.results(), 0.5)["all"]["pd"]

Protocol (the DeepPro authors' test.py): each test sequence of N frames is cut into clips of `seqlen` (40)
frames with stride 36 (4 frames of overlap), the last clip aligned to the end of the sequence (N = 100:
[0, 40), [36, 76), [60, 100)); the per-frame probabilities of overlapping clips are stitched with an
element-wise max; frames keep their native size. Models with one output frame per clip (`clip_output =
"last"`, Res-UNet+DTUM) see instead, for every frame, the window of frames ending at it. Scores
(utils.metrics): Pd / Fa at the 27 thresholds (or the DTUM protocol's 50) per sequence, pooled over the
low-SNR sequences (chosen by name), the others (high SNR) and all, with the AUC of Pd over Fa;
IoU = sum(I) / sum(U) pooled over all sequences with prediction prob > 0.5 (strict) against the masks.
Used by test_deeppro.py, training-time validation and the cross-metric tool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.data import NUDTSequence, normalise_nudt
from utils.data.nudt import window_indices
from utils.errors import ConfigError, DataError
from utils.metrics import DEFAULT_THRESHOLDS, check_border, iou_counts, pd_fa, pool_pd_fa, value_at
from utils.timing import TimedIterator

# The authors' low-SNR (SNR <= 3) test sequences of NUDT-MIRSDT.
LOW_SNR_SEQUENCES = (47, 56, 59, 76, 92, 101, 105, 119)


def low_snr_names(values: Iterable[str | int]) -> list[str]:
    """Sequence names of a low-SNR list given as numbers (`47`) or names (`Sequence47`); `none` is skipped."""
    out = []
    for v in values:
        text = str(v).strip()
        if text and text.lower() != "none":
            out.append(f"Sequence{int(text)}" if text.isdigit() else text)
    return out


def default_stride(seqlen: int) -> int:
    """The authors' clip stride: seqlen - int(0.1 * seqlen) (36 for 40-frame clips)."""
    return seqlen - int(0.1 * seqlen)


def clip_ranges(n_frames: int, seqlen: int = 40, stride: int = 36) -> list[tuple[int, int]]:
    """Frame ranges [start, end) of the test clips of a sequence, as the authors' test loader:
    clip i ends at min(N, (i + 1) * stride + overlap) with overlap = seqlen - stride, and starts
    `seqlen` frames before its end. N = 100, 40, 36 -> [(0, 40), (36, 76), (60, 100)]."""
    if not 0 < stride <= seqlen:
        raise ConfigError(f"clip stride must be in 1..{seqlen}, got {stride}")
    if n_frames < seqlen:
        raise DataError(f"a sequence of {n_frames} frames is shorter than the {seqlen}-frame clip")
    overlap = seqlen - stride
    count = math.ceil((n_frames - overlap) / stride)
    ends = [min(n_frames, (i + 1) * stride + overlap) for i in range(count)]
    return [(e - seqlen, e) for e in ends]


def stitch_max(out: np.ndarray, start: int, probs: np.ndarray) -> None:
    """Merge a clip's probabilities `probs [T, H, W]` into `out [N, H, W]` at frame `start` in place,
    element-wise max with what is there (`out` starts at 0; probabilities are >= 0)."""
    end = start + len(probs)
    if start < 0 or end > len(out) or probs.shape[1:] != out.shape[1:]:
        raise ConfigError(f"clip [{start}, {end}) of {tuple(probs.shape[1:])} frames does not fit a sequence "
                          f"of {tuple(out.shape)}")
    np.maximum(out[start:end], probs, out=out[start:end])


def clip_output(model: nn.Module) -> str:
    """How many frames a segmenter outputs per clip: "all" (one per input frame, DeepPro; the default) or
    "last" (only the current, last frame: Res-UNet+DTUM), from the model's `clip_output` attribute."""
    kind = getattr(model, "clip_output", "all")
    if kind not in ("all", "last"):
        raise ConfigError(f"{type(model).__name__}.clip_output must be 'all' or 'last', got {kind!r}")
    return kind


def clip_length(model: nn.Module, default: int = 40) -> int:
    """Frames per clip of a segmenter: its `seqlen` (DeepPro), else its `num_frames` (Res-UNet+DTUM), else
    `default`."""
    return int(getattr(model, "seqlen", getattr(model, "num_frames", default)))


@torch.no_grad()
def predict_sequence(model: nn.Module, frames: np.ndarray | torch.Tensor, seqlen: int = 40, stride: int = 36,
                     batch_size: int = 4, device: torch.device | str | None = None) -> np.ndarray:
    """Probabilities of a whole sequence: `frames [N, H, W]` (normalised) -> float32 [N, H, W].

    A model with `clip_output` "all" (DeepPro): clips from `clip_ranges` go through the model `batch_size`
    at a time (`[b, 1, seqlen, H, W]`) and overlaps are merged with `stitch_max`. A model with `clip_output`
    "last" (`[b, 1, seqlen, H, W] -> [b, 1, H, W]`): frame i is predicted from the window of `seqlen` frames
    ending at it (`window_indices`: frame 0 repeated at the start), `batch_size` windows per forward;
    `stride` is not used. The model runs as given (call `model.eval()` first).
    """
    x = torch.as_tensor(frames)
    if x.ndim != 3:
        raise ConfigError(f"frames must be [N, H, W], got {list(x.shape)}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
    n, h, w = x.shape
    out = np.zeros((n, h, w), np.float32)
    step = max(1, batch_size)
    if clip_output(model) == "last":
        for i in range(0, n, step):
            ends = range(i, min(n, i + step))
            batch = torch.stack([x[window_indices(e, seqlen)] for e in ends]).unsqueeze(1)
            logits = model(batch.to(device, torch.float32)).float()
            if logits.shape != (len(ends), 1, h, w):
                raise ConfigError(f"{type(model).__name__} (clip_output 'last') returned "
                                  f"{list(logits.shape)} for {list(batch.shape)}; expected "
                                  f"{[len(ends), 1, h, w]}")
            out[i:i + len(ends)] = torch.sigmoid(logits[:, 0]).cpu().numpy()
        return out
    ranges = clip_ranges(n, seqlen, stride)
    for i in range(0, len(ranges), step):
        chunk = ranges[i:i + step]
        batch = torch.stack([x[s:e] for s, e in chunk]).unsqueeze(1).to(device, torch.float32)
        probs = torch.sigmoid(model(batch).float()).cpu().numpy()
        if probs.shape[:2] != (len(chunk), seqlen):
            raise ConfigError(f"{type(model).__name__} returned {list(probs.shape)} for clips "
                              f"{list(batch.shape)}; a model with one output frame per clip needs "
                              "clip_output = 'last'")
        for (s, _), p in zip(chunk, probs):
            stitch_max(out, s, p)
    return out


def segment_sequence(model: nn.Module, grey: np.ndarray, stride: int = 36, device=None) -> np.ndarray:
    """Probabilities of a whole sequence from raw frames: uint8 grey `[N, H, W]` -> float32 `[N, H, W]`
    (NUDT normalisation, then the test protocol; for a DeepPro-style model a sequence shorter than the clip
    is one clip zero-padded in normalised space before its first frame, as the streaming predictor does;
    a "last"-output model needs no padding)."""
    seqlen = clip_length(model)
    norm = normalise_nudt(grey)
    if len(norm) < seqlen and clip_output(model) == "all":
        norm = np.concatenate([np.zeros((seqlen - len(norm),) + norm.shape[1:], np.float32), norm])
        return predict_sequence(model, norm, seqlen, stride, device=device)[seqlen - len(grey):]
    return predict_sequence(model, norm, seqlen, stride, device=device)


# ----------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------


class SequenceScorer:
    """Accumulates Pd / Fa per sequence and pooled IoU; `results()` gives the dict utils.report writes.

    low_snr: names of the low-SNR sequences; thresholds: the 27 default thresholds; iou_threshold: the
    strict threshold of the pooled IoU (0.5 at test time, the authors' 0.3 for model selection); border,
    detect_radius, window_radius: the Pd / Fa window rule of utils.metrics.pd_fa ("clip" or "authors").
    """

    def __init__(self, low_snr: Iterable[str] = (), thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 iou_threshold: float = 0.5, border: str = "clip", detect_radius: int = 1,
                 window_radius: int = 4):
        self.low = set(low_snr)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.iou_threshold = float(iou_threshold)
        self.border = check_border(border)
        self.detect_radius, self.window_radius = int(detect_radius), int(window_radius)
        self.per_sequence: dict[str, dict] = {}
        self.inter = self.union = 0
        self.frames = 0
        self.timing: dict[str, float] = {}

    def add(self, name: str, probs: np.ndarray, centroids: np.ndarray, masks: np.ndarray) -> dict:
        """Score one stitched sequence: probs float [N, H, W], centroids / masks bool [N, H, W]."""
        res = pd_fa(probs, centroids, self.thresholds, detect_radius=self.detect_radius,
                    window_radius=self.window_radius, border=self.border)
        i, u = iou_counts(probs, masks, self.iou_threshold)
        res["inter"], res["union"] = i, u
        self.inter += i
        self.union += u
        self.frames += len(probs)
        self.per_sequence[name] = res
        return res

    @property
    def iou(self) -> float:
        return self.inter / self.union if self.union else float("nan")

    def results(self, header: str | None = None) -> dict:
        """{"per_sequence", "low_snr", "high_snr", "all", "iou", "header", "border", "detect_radius",
        "window_radius"} (a subset without sequences is None)."""
        if not self.per_sequence:
            raise DataError("no test sequence was scored")
        low = [r for n, r in self.per_sequence.items() if n in self.low]
        high = [r for n, r in self.per_sequence.items() if n not in self.low]
        return {"per_sequence": self.per_sequence, "low_snr": pool_pd_fa(low) if low else None,
                "high_snr": pool_pd_fa(high) if high else None,
                "all": pool_pd_fa(list(self.per_sequence.values())), "iou": self.iou, "header": header,
                "border": self.border, "detect_radius": self.detect_radius,
                "window_radius": self.window_radius}


def summary(results: Mapping, threshold: float = 0.5) -> dict:
    """Pd, Fa, AUC and target counts at `threshold` for the pooled groups, plus the IoU."""
    out: dict = {}
    for key in ("low_snr", "high_snr", "all"):
        res = results.get(key)
        if res is None:
            continue
        out[key] = {"pd": value_at(res, "pd", threshold), "fa": value_at(res, "fa", threshold),
                    "auc": float(res["auc"]), "targets": int(value_at(res, "targets", threshold)),
                    "tp": int(value_at(res, "tp", threshold)),
                    "fa_pixels": int(value_at(res, "fa_pixels", threshold))}
    out["iou"] = float(results["iou"])
    out["threshold"] = float(threshold)
    return out


def evaluate_sequences(model: nn.Module, sequences: Iterable[NUDTSequence], low_snr: Iterable[str] = (),
                       seqlen: int = 40, stride: int = 36, batch_size: int = 4,
                       iou_threshold: float = 0.5, device: torch.device | str | None = None,
                       progress: bool = False, total: int | None = None, border: str = "clip",
                       detect_radius: int = 1, window_radius: int = 4,
                       thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> SequenceScorer:
    """Run the test protocol over `sequences` with `model` (put in eval mode) and score them (border and
    radii: the Pd / Fa window rule, see SequenceScorer; thresholds: DEFAULT_THRESHOLDS (the DeepPro
    protocol's 27) or e.g. utils.dtum_protocol.DTUM_THRESHOLDS).

    The returned scorer's `timing` holds the data-wait figures (utils.timing.TimedIterator.summary())."""
    scorer = SequenceScorer(low_snr, thresholds, iou_threshold=iou_threshold, border=border,
                            detect_radius=detect_radius, window_radius=window_radius)
    sequences = TimedIterator(sequences)
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(sequences, total=total, desc="test sequences", disable=not progress, dynamic_ncols=True,
                   leave=False)
        for seq in bar:
            probs = predict_sequence(model, seq.frames, seqlen, stride, batch_size, device)
            scorer.add(seq.name, probs, seq.centroids, seq.masks)
            bar.set_postfix(seq=seq.name, refresh=False)
    finally:
        model.train(was_training)
    scorer.timing = sequences.summary()
    return scorer


__all__ = ["LOW_SNR_SEQUENCES", "SequenceScorer", "clip_length", "clip_output", "clip_ranges",
           "default_stride", "evaluate_sequences", "low_snr_names", "predict_sequence", "segment_sequence",
           "stitch_max", "summary"]
