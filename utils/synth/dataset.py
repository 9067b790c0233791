"""Synthetic datasets on disk: plan the sequences of every split, render them, write the real formats.

`--format nudt` writes the NUDT-MIRSDT layout (Sequence<N>/images, masks, masks_centroid; train / val / test
split files; the low-SNR test sequences under the authors' low-SNR names) and `--format coco --style S` the
COCO-json video layout of DAUB / ITSDT-15K / IRDST (images/<seq>/<i>.bmp, instances_*2017.json and the
authors' txt lists). `synth_meta.json` records every sequence and the realised SNR of every target.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from utils.errors import ConfigError
from utils.synth.render import render_sequence
from utils.synth.scene import (
    NUDT_LOW_SNR,
    NUDT_LOW_SNR_NUMBERS,
    NUDT_TEST_NUMBERS,
    STYLES,
    Rendered,
    Style,
    min_frame_side,
    rng_for,
)


# ------------------------------------------------------------------------------------------------ datasets
@dataclass
class SynthConfig:
    """What to write. None means the style's default."""

    format: str = "nudt"  # nudt | coco
    style: str = "itsdt"  # coco style: itsdt | irdst | daub (nudt ignores it)
    out: str = "data/synthetic"
    seed: int = 0
    num_seqs: tuple[int, int, int] | None = None  # (train, val, test)
    frames: int | None = None
    size: tuple[int, int] | None = None
    snr_range: tuple[float, float] | None = None
    low_snr_range: tuple[float, float] = NUDT_LOW_SNR
    low_snr_seqs: int | None = None  # NUDT test sequences with SNR <= 3 (default: half)
    targets: tuple[int, int] | None = None
    jitter: float | None = None  # std of the platform jitter (px)
    noise: bool = False  # NUDT: write the Noise variant
    write_masks: bool = True  # NUDT Noise variant: False reads masks from the clean root
    preview: bool = False

    def style_obj(self) -> Style:
        st = STYLES["nudt" if self.format == "nudt" else self.style]
        if self.targets is not None:
            st = replace(st, targets=self.targets, count_weights=None)
        if self.jitter is not None:
            st = replace(st, jitter=float(self.jitter))
        return st


@dataclass
class SeqPlan:
    name: str  # NUDT: "Sequence47"; COCO: folder under images/ ("3" or "train/data3")
    number: int
    split: str
    snr: float
    snr_label: str  # "low" (0, 3] or "high" (3, 10)
    n_targets: int
    size: tuple[int, int]


def plan_sequences(cfg: SynthConfig) -> list[SeqPlan]:
    """Names, splits, SNR and target counts of every sequence (deterministic from the seed)."""
    st = cfg.style_obj()
    n_train, n_val, n_test = cfg.num_seqs or st.seqs
    size = cfg.size or st.size
    lo, hi = cfg.snr_range or st.snr
    if not (0 < lo <= hi):
        raise ConfigError(f"--snr-range: need 0 < LO <= HI, got {lo} {hi}")
    rng = rng_for(cfg.seed, st.name, 0, 2)
    counts = np.arange(st.targets[0], st.targets[1] + 1)
    weights = None
    if st.count_weights is not None:
        weights = np.asarray(st.count_weights, float) / sum(st.count_weights)
    plans: list[SeqPlan] = []
    if cfg.format == "nudt":
        n_low = (n_test + 1) // 2 if cfg.low_snr_seqs is None else min(cfg.low_snr_seqs, n_test)
        low_names = list(NUDT_LOW_SNR_NUMBERS[:n_low])
        used = set(low_names)
        extra = (i for i in range(121, 10**6) if i not in used)
        low_names += [next(extra) for _ in range(n_low - len(low_names))]
        used |= set(low_names)
        high_names = [i for i in NUDT_TEST_NUMBERS if i not in used][:n_test - n_low]
        used |= set(high_names)
        high_names += [i for i in range(121, 10**6) if i not in used][:n_test - n_low - len(high_names)]
        used |= set(high_names)
        free = (i for i in range(1, 10**6) if i not in used)
        n_train_low = n_train // 4
        layout = ([("train", next(free), i < n_train_low) for i in range(n_train)]
                  + [("val", next(free), False) for _ in range(n_val)]
                  + [("test", i, True) for i in low_names] + [("test", i, False) for i in high_names])
        for split, num, low in layout:
            s = rng.uniform(*cfg.low_snr_range) if low else rng.uniform(lo, hi)
            plans.append(SeqPlan(f"Sequence{num}", num, split, float(s), "low" if low else "high",
                                 int(rng.choice(counts, p=weights)), size))
        return plans
    num = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for _ in range(n):
            num += 1
            name = f"{split}/data{num}" if st.name == "daub" else str(num)
            s = float(rng.uniform(lo, hi))
            plans.append(SeqPlan(name, num, split, s, "low" if s <= 3 else "high",
                                 int(rng.choice(counts, p=weights)), size))
    return plans


def _seq_meta(plan: SeqPlan, r: Rendered) -> dict:
    return {"name": plan.name, "split": plan.split, "size": list(plan.size), "frames": int(len(r.frames)),
            "snr_label": plan.snr_label, "snr_requested": round(plan.snr, 3),
            "frames_with_target": int(r.present.any(0).sum()), "targets": r.targets}


def write_nudt(cfg: SynthConfig, plans: list[SeqPlan], n_frames: int) -> list[dict]:
    """NUDT-MIRSDT layout: Sequence<N>/{images,masks,masks_centroid}/<00001>.png and split files."""
    from utils.data.writers import write_nudt_sequence, write_nudt_splits

    st = cfg.style_obj()
    metas, split_lines = [], {"train": [], "val": [], "test": []}
    for plan in plans:
        r = render_sequence(cfg.seed, st, plan.number, plan.size, n_frames, plan.snr, plan.n_targets,
                            noise_variant=cfg.noise)
        masks = (r.masks, r.centroids) if cfg.write_masks else (None, None)
        split_lines[plan.split] += write_nudt_sequence(cfg.out, plan.name, r.frames, *masks)
        metas.append(_seq_meta(plan, r))
    write_nudt_splits(cfg.out, split_lines)
    return metas


def write_coco(cfg: SynthConfig, plans: list[SeqPlan], n_frames: int) -> list[dict]:
    """COCO video layout: images/<seq>/<i>.bmp, instances_<split>2017.json and the authors' txt lists."""
    from utils.data.writers import CocoSplit

    st = cfg.style_obj()
    metas = []
    splits = {s: CocoSplit(f"synthetic {st.name}-style moving small targets, seed {cfg.seed}")
              for s in ("train", "val", "test")}
    for plan in plans:
        r = render_sequence(cfg.seed, st, plan.number, plan.size, n_frames, plan.snr, plan.n_targets)
        boxes = [r.boxes[r.present[:, t], t] for t in range(n_frames)]
        splits[plan.split].add_sequence(cfg.out, plan.name, r.frames, boxes)
        metas.append(_seq_meta(plan, r))
    for split, coco in splits.items():
        if coco.images:
            coco.write(cfg.out, split, st.name)
    return metas


def generate(cfg: SynthConfig) -> dict:
    """Write the dataset described by `cfg` and `synth_meta.json`; returns the metadata dict."""
    if cfg.format not in ("nudt", "coco"):
        raise ConfigError(f"--format must be nudt or coco, got {cfg.format!r}")
    if cfg.format == "coco" and cfg.style not in ("itsdt", "irdst", "daub"):
        raise ConfigError(f"--style must be itsdt, irdst or daub, got {cfg.style!r}")
    if cfg.noise and cfg.format != "nudt":
        raise ConfigError("--noise is only defined for --format nudt")
    st = cfg.style_obj()
    n_frames = cfg.frames if cfg.frames is not None else st.frames
    size = cfg.size or st.size
    if n_frames < 1 or min(size) < 16:
        raise ConfigError(f"need --frames >= 1 and --size >= 16x16, got {n_frames} frames of {size}")
    if st.targets[1] > 0 and min(size) < min_frame_side(st):
        raise ConfigError(f"--size {size[0]}x{size[1]} is too small for {st.name}-style targets: need at "
                          f"least {min_frame_side(st)} px per side (or --targets 0-0)")
    if not 0 <= st.jitter <= 2:
        raise ConfigError(f"--jitter: need 0 <= STD <= 2 px, got {st.jitter}")
    if st.targets[0] < 0 or st.targets[1] < st.targets[0]:
        raise ConfigError(f"--targets: need 0 <= A <= B, got {st.targets}")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    plans = plan_sequences(cfg)
    writer = write_nudt if cfg.format == "nudt" else write_coco
    seqs = writer(cfg, plans, n_frames)
    cfg_dict = {k: v for k, v in asdict(cfg).items() if k not in ("out", "preview")}
    meta = {"format": cfg.format, "style": st.name, "variant": "noise" if cfg.noise else "clean",
            "config": cfg_dict, "snr_definition": "mean(peak - ring mean) / mean(ring std), ring 5..15 px",
            "low_snr_sequences": [s["name"] for s in seqs
                                  if s["snr_label"] == "low" and s["split"] == "test"],
            "sequences": seqs}
    (Path(cfg.out) / "synth_meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if cfg.preview:
        from utils.data.writers import write_preview

        write_preview(cfg.out, meta)
    return meta


# ---------------------------------------------------------------------------------------------------- CLI
def _pair(text: str, kind=float) -> tuple:
    parts = text.replace("x", ",").replace("-", ",").split(",")
    vals = tuple(kind(p) for p in parts if p != "")
    if len(vals) not in (1, 2):
        raise ValueError(f"expected N or AxB, got {text!r}")
    return vals if len(vals) == 2 else (vals[0], vals[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_synthetic.py", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=["nudt", "coco"], default="nudt")
    p.add_argument("--style", choices=["itsdt", "irdst", "daub"], default="itsdt", help="COCO dataset style")
    p.add_argument("--out", required=True, help="output dataset root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-seqs", default=None,
                   help="TRAIN or TRAIN,VAL,TEST sequences (default nudt 8,1,4; coco 4,1,2)")
    p.add_argument("--frames", type=int, default=None, help="frames per sequence (default nudt 100, coco 40)")
    p.add_argument("--size", default=None, help="HxW or N (default nudt 128x160; daub 256; itsdt 240x320; "
                                                "irdst 256x320)")
    p.add_argument("--snr-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="target SNR range (nudt: the high-SNR sequences; default nudt 4 9, coco 4 10, "
                        "irdst 3 8)")
    p.add_argument("--low-snr-range", nargs=2, type=float, default=NUDT_LOW_SNR, metavar=("LO", "HI"),
                   help="nudt: SNR range of the low-SNR sequences, inside (0, 3]")
    p.add_argument("--low-snr-seqs", type=int, default=None,
                   help="nudt: how many test sequences are low-SNR (named 47, 56, 59, ...); default half")
    p.add_argument("--targets", default=None, help="targets per sequence: K or A-B")
    p.add_argument("--jitter", type=float, default=None, metavar="STD",
                   help="std of the platform jitter in px, clipped to +-2 (default: the style's; nudt 0.15)")
    p.add_argument("--noise", action="store_true",
                   help="nudt: write the Noise variant (sigma 8 + non-uniformity)")
    p.add_argument("--no-masks", action="store_true",
                   help="nudt: write images and split files only (masks are read from the clean root)")
    p.add_argument("--preview", action="store_true", help="also write <out>/preview.png")
    return p


def config_from_args(argv: list[str] | None = None) -> SynthConfig:
    a = build_parser().parse_args(argv)
    num_seqs = None
    if a.num_seqs:
        try:
            parts = [int(v) for v in a.num_seqs.split(",")]
        except ValueError as err:
            raise ConfigError(f"--num-seqs: expected TRAIN or TRAIN,VAL,TEST, got {a.num_seqs!r}") from err
        if len(parts) not in (1, 3) or min(parts) < 0:
            raise ConfigError(f"--num-seqs: expected TRAIN or TRAIN,VAL,TEST, got {a.num_seqs!r}")
        base = STYLES["nudt" if a.format == "nudt" else a.style].seqs
        num_seqs = (parts[0], base[1], base[2]) if len(parts) == 1 else tuple(parts)
    try:
        size = _pair(a.size, int) if a.size else None
        targets = _pair(a.targets, int) if a.targets else None
    except ValueError as err:
        raise ConfigError(f"bad --size or --targets: {err}") from err
    low = tuple(a.low_snr_range)
    if not (0 < low[0] <= low[1] <= 3):
        raise ConfigError(f"--low-snr-range must lie in (0, 3], got {low}")
    return SynthConfig(format=a.format, style=a.style, out=a.out, seed=a.seed, num_seqs=num_seqs,
                       frames=a.frames, size=size, snr_range=tuple(a.snr_range) if a.snr_range else None,
                       low_snr_range=low, low_snr_seqs=a.low_snr_seqs, targets=targets, noise=a.noise,
                       jitter=a.jitter, write_masks=not a.no_masks, preview=a.preview)


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(argv)
    meta = generate(cfg)
    n_seq = len(meta["sequences"])
    n_frames = sum(s["frames"] for s in meta["sequences"])
    snrs = [t["snr"] for s in meta["sequences"] for t in s["targets"] if t["snr"] is not None]
    snr_text = f"realised SNR {min(snrs):.2f}..{max(snrs):.2f}" if snrs else "no measurable target"
    print(f"wrote {n_seq} sequences, {n_frames} frames ({meta['format']}/{meta['style']}, {meta['variant']}) "
          f"to {cfg.out}; {snr_text}")
    return meta
