"""Training DeepPro / DeepPro-Plus / Res-UNet+DTUM on NUDT-MIRSDT (or its Noise variant): each model's
authors' recipe as defaults.

    python train_NUDT.py --data-root DIR [--model deeppro|deeppro_plus|resunet_dtum] [--dataset nudt|noise
                         --mask-root M]

A model registered with a `recipe` (nets.register_model; Res-UNet+DTUM: nets.resunet_dtum.DTUM_RECIPE)
gets those option values as its defaults in place of DeepPro's below; options given on the command line
win. Res-UNet+DTUM (the DTUM authors' train.py): SoftIoU over the batch (`--loss dtum_soft_iou`), Adam
1e-3 (0.9, 0.99), no weight decay, lr x 0.5 every 3 epochs, 20 epochs of batch 1; one item per training
frame, the 5-frame window ending at it (first frame repeated at the sequence start, the current frame's
mask as the target), every frame once per epoch in a shuffled order (`--sampling all`); whole native-size
frames; validation by the DTUM protocol (`--val-protocol dtum`: 50 thresholds, their border rule; best.pt
by val_auc).

DeepPro
Recipe (the authors' train.py): SoftLoU loss; Adam (betas 0.9 / 0.999, eps 1e-8) with
coupled L2 weight decay 1e-4; lr = max(1e-3 * 0.7^(epoch // 10), 1e-5) (the floor is `--min-lr-ratio`
x `--lr`); 32 epochs of batch 4; an epoch is int(0.1 x #clips) clips drawn with replacement, probability
proportional to clip length; clips of 40 frames ending before frame i = 4 .. N-1, zero-padded after the
frames for odd positions in the epoch and before for even ones; frames resized to 256x256 (PIL bicubic,
masks > 0 afterwards; `--resize 0` keeps the native size) and cropped to 128x128, centred on a target
with probability 0.75; no EMA (`--ema` turns it on). Everything is seeded (`--seed`).

Model selection differs from the authors on purpose: they kept the epoch with the best pooled IoU
(prob > 0.3) on the TEST set. We score a validation split after every epoch with the test protocol
(40-frame clips, stride 36, max-stitched, native size): the root's `val.txt` when it exists (the synthetic
data has one), else `--val-holdout` training sequences held out (evenly spaced; the lists are written to
OUT/splits/). best.pt holds the epoch with the best validation IoU at 0.3 (`val_iou`); last.pt is kept too.
The log also records validation Pd / Fa at 0.5 and the AUC.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import nets
from nets.fast import for_evaluation
from utils.checkpoint import atomic_write_text
from utils.config import TrainConfig, bit_depth_option, build_parser, fast_option, option, parse_config
from utils.data import NUDTTestSequences, NUDTTrainDataset, read_split
from utils.data.nudt import NUDTWindowDataset
from utils.data.roots import resolve_nudt_roots
from utils.distributed import epoch_permutation, epoch_weighted_draws
from utils.dtum_protocol import DTUM_THRESHOLDS
from utils.engine import Task, TrainResult, train
from utils.errors import ConfigError, DataError
from utils.losses import dtum_soft_iou_loss, soft_lou_loss
from utils.metrics import DEFAULT_THRESHOLDS
from utils.optim import all_params_group, make_adam
from utils.segmentation import default_stride, evaluate_sequences, summary

LOSSES = {"soft_lou": soft_lou_loss, "dtum_soft_iou": dtum_soft_iou_loss}
# Validation protocols: (thresholds, Pd / Fa border rule, selection metric).
VAL_PROTOCOLS = {"deeppro": (DEFAULT_THRESHOLDS, "clip", "val_iou"),
                 "dtum": (DTUM_THRESHOLDS, "authors", "val_auc")}


@dataclass
class DeepProConfig(TrainConfig):
    """DeepPro / DeepPro-Plus options"""

    out: str = option("", "run folder: last.pt, best.pt, train_log.csv, plots, TensorBoard logs, splits/ "
                      "(empty: runs/<model>_<dataset>, the dataset named by --dataset for the synthetic "
                      "data, else by the data root's folder)")
    model: str = option("deeppro", "architecture", choices=tuple(nets.list_models("segment")))
    dataset: str = option("nudt", "nudt (NUDT-MIRSDT) or noise (NUDT-MIRSDT-Noise: pass --mask-root)",
                          choices=("nudt", "noise"))
    data_root: str = option("", "dataset root with Sequence<N>/ folders and train.txt (empty: a synthetic "
                            "NUDT-MIRSDT-style dataset generated once into data/synthetic/)")
    mask_root: str = option("", "read masks from this root (the Noise variant's masks are those of the clean "
                            "dataset); default: the data root")
    seqlen: int = option(40, "frames per clip (DeepPro's TPro is built for this length; Res-UNet+DTUM: 5)")
    resize: int = option(256, "resize training frames to N x N (PIL bicubic) as the authors; 0 = native "
                         "size", size="square")
    patch: int = option(128, "random training crop side in pixels, N or NxN (0 = whole frames)",
                        size="square")
    center_prob: float = option(0.75, "probability that a crop is centred on a target")
    sample_rate: float = option(0.1, "weighted sampling: clips drawn per epoch, as a fraction of all "
                                "training clips")
    sampling: str = option("weighted", "items per epoch: weighted (int(sample-rate x #clips) drawn with "
                           "replacement, probability proportional to clip length: DeepPro) or all (every "
                           "item once, shuffled: DTUM)", choices=("weighted", "all"))
    loss: str = option("soft_lou", "soft_lou (DeepPro: SoftLoU per sample) or dtum_soft_iou (the DTUM "
                       "authors' SoftIoU over the whole batch, smooth 1)", choices=tuple(LOSSES))
    adam_eps: float = option(1e-8, "Adam epsilon")
    val_split: str = option("auto", "validation split: auto (ROOT/val.txt when present, else held-out "
                            "training sequences), none, or a split file stem / path")
    val_holdout: int = option(8, "training sequences held out for validation when the root has no val.txt "
                              "(auto; 0 = no validation, best.pt then follows the training loss)")
    val_protocol: str = option("deeppro", "validation protocol: deeppro (27 thresholds, clipped windows; "
                               "best.pt by val_iou) or dtum (the DTUM authors' 50 thresholds and border "
                               "rule; best.pt by val_auc)", choices=tuple(VAL_PROTOCOLS))
    val_iou_threshold: float = option(0.3, "validation IoU counts prob > this (the authors' selection "
                                      "threshold)")
    val_stride: int = option(0, "validation clip stride (0 = the test protocol's seqlen - int(0.1 seqlen), "
                             "36 for 40 frames)")
    val_batch_size: int = option(4, "validation clips per forward pass", aliases=("--eval-batch-size",))
    fast: str = fast_option("validation inference", aliases=("--val-fast",))
    bit_depth_rule: str = bit_depth_option()
    cache_frames: int = option(4096, "decoded training frames kept in memory (per data worker)")

    def validate(self) -> None:
        super().validate()
        if self.seqlen < 4:
            raise ConfigError(f"--seqlen must be >= 4, got {self.seqlen}")
        for name in ("resize", "patch", "val_holdout", "cache_frames"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.patch and self.resize and self.patch > self.resize:
            raise ConfigError(f"--patch {self.patch} is larger than the --resize {self.resize} frames")
        if not 0 < self.sample_rate <= 10:
            raise ConfigError(f"--sample-rate must be in (0, 10], got {self.sample_rate}")
        if not 0 <= self.center_prob <= 1:
            raise ConfigError(f"--center-prob must be in [0, 1], got {self.center_prob}")
        self.at_least(1, "val_batch_size")
        if not 0 <= self.val_stride <= self.seqlen:
            raise ConfigError(f"--val-stride must be in 0..{self.seqlen}, got {self.val_stride}")


# The authors' recipe (train_NUDT.py's defaults).
AUTHORS_RECIPE = DeepProConfig(
    out="", epochs=32, batch_size=4, lr=1e-3, schedule="step", step_size=10, step_gamma=0.7,
    min_lr_ratio=0.01, optimizer="adam", betas=(0.9, 0.999), weight_decay=1e-4, ema=False, amp=False,
    seed=2023)


class EpochItems(Dataset):
    """NUDTTrainDataset items as the engine loads them: `epoch_item(index, position, seed)` draws the crop
    from `seed` (it differs per epoch and position) and pads after the frames for odd positions in the
    epoch, before them for even ones (the authors' rule, applied to the item's place in the epoch)."""

    def __init__(self, base: NUDTTrainDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.base[index]

    def epoch_item(self, index: int, position: int, seed: int):
        return self.base.clip(index, pad_after=position % 2 == 1, rng=np.random.default_rng(seed))


def _loss(logits: torch.Tensor, target: torch.Tensor, iou_threshold: float, loss: str = "soft_lou"):
    """The loss named by `loss` (LOSSES) plus the batch IoU at `iou_threshold` for the log (the DeepPro
    authors' training IoU). logits / target: `[B, T, H, W]` (DeepPro) or `[B, 1, H, W]` (Res-UNet+DTUM)."""
    loss = LOSSES[loss](logits, target)
    with torch.no_grad():
        pred = torch.sigmoid(logits) > iou_threshold
        truth = target > 0.5
        union = (pred | truth).sum()
        iou = (pred & truth).sum() / union if union > 0 else torch.zeros((), device=logits.device)
    return loss, {"iou": float(iou)}


def split_files(cfg: DeepProConfig, root: Path, out: Path) -> tuple[Path, Path | None, str]:
    """The training and validation split files and a description of the validation choice.

    auto: ROOT/val.txt when it exists, else `val_holdout` evenly spaced training sequences held out (both
    lists written to OUT/splits/); none: no validation; otherwise a split stem under ROOT or a path.
    """
    train_file = root / "train.txt"
    choice = cfg.val_split.strip()
    if choice == "none":
        return train_file, None, "no validation split"
    if choice != "auto":
        path = Path(choice)
        path = path if path.suffix == ".txt" and path.is_file() else root / f"{choice}.txt"
        if not path.is_file():
            raise DataError(f"{path}: --val-split file not found")
        return train_file, path, f"validation on {path}"
    if (root / "val.txt").is_file():
        return train_file, root / "val.txt", f"validation on {root / 'val.txt'}"
    if cfg.val_holdout == 0:
        return train_file, None, "no validation split (--val-holdout 0)"
    names = read_split(train_file)
    if cfg.val_holdout >= len(names):
        raise ConfigError(f"--val-holdout {cfg.val_holdout} leaves no training sequence ({len(names)} in "
                          f"{train_file})")
    picks = set(np.linspace(0, len(names) - 1, cfg.val_holdout + 2)[1:-1].round().astype(int).tolist())
    while len(picks) < cfg.val_holdout:  # tiny lists: fill with the first free positions
        picks.add(next(i for i in range(len(names)) if i not in picks))
    val = [n for i, n in enumerate(names) if i in picks]
    train_names = [n for i, n in enumerate(names) if i not in picks]
    folder = out / "splits"
    # Atomic writes: under torchrun every rank writes the same bytes and no reader sees half a file.
    atomic_write_text("".join(f"{n}/\n" for n in train_names), folder / "train.txt")
    atomic_write_text("".join(f"{n}/\n" for n in val), folder / "val.txt")
    return folder / "train.txt", folder / "val.txt", (f"validation on {len(val)} held-out training sequences "
                                                      f"({', '.join(val)}; lists in {folder})")


def _clip_output(name: str) -> str:
    """The registered model's `clip_output` class attribute ("all": DeepPro, "last": Res-UNet+DTUM)."""
    return getattr(nets.model_info(name).build, "clip_output", "all")


def make_val_evaluator(cfg: DeepProConfig, root: Path, mask_root: Path | None, val_file: Path):
    """An engine evaluator: the test protocol (`--val-protocol`: thresholds and border rule) on the
    validation sequences (decoded once, kept in memory). Returns val_iou (pooled, prob > val_iou_threshold;
    the deeppro protocol's selection metric), the pooled val_pd / val_fa at 0.5 and val_auc (the dtum
    protocol's selection metric)."""
    windows = _clip_output(cfg.model) == "last"
    ds = NUDTTestSequences(root, mask_root=mask_root, min_frames=1 if windows else cfg.seqlen,
                           split_file=val_file, bit_depth_rule=cfg.bit_depth_rule)
    sequences = [ds[i] for i in range(len(ds))]
    stride = cfg.val_stride or default_stride(cfg.seqlen)
    thresholds, border, _ = VAL_PROTOCOLS[cfg.val_protocol]

    def evaluate(model: torch.nn.Module, epoch: int) -> dict:
        device = next(model.parameters()).device
        was_training = model.training
        runner = for_evaluation(model, cfg.fast)  # a folded copy (or the model itself, in eval mode)
        model.train(was_training)
        scorer = evaluate_sequences(runner, sequences, (), cfg.seqlen, stride, cfg.val_batch_size,
                                    cfg.val_iou_threshold, device, border=border, thresholds=thresholds)
        res = scorer.results()
        s = summary(res, 0.5)
        out = {"val_iou": res["iou"], "val_pd": s["all"]["pd"], "val_fa": s["all"]["fa"],
               "val_auc": s["all"]["auc"]}
        return out

    return evaluate, len(sequences)


def build_task(cfg: DeepProConfig, root: Path, mask_root: Path | None, out: Path) -> tuple[Task, str]:
    """The engine task of a training run and a one-line description of its data. Models with one output
    frame per clip (`clip_output = "last"`) train on NUDTWindowDataset windows of `seqlen` frames."""
    windows = _clip_output(cfg.model) == "last"
    frames = getattr(nets.model_info(cfg.model).build, "num_frames", None)
    if frames is not None and cfg.seqlen != frames:
        raise ConfigError(f"--seqlen {cfg.seqlen}: {cfg.model} takes clips of {frames} frames")
    train_file, val_file, val_text = split_files(cfg, root, out)
    options = dict(seqlen=cfg.seqlen, resize=cfg.resize or None, patch=cfg.patch or None, mask_root=mask_root,
                   center_prob=cfg.center_prob, seed=cfg.seed, cache_frames=cfg.cache_frames,
                   split_file=train_file, bit_depth_rule=cfg.bit_depth_rule)
    if windows:
        base = NUDTWindowDataset(root, **options)
    else:
        base = NUDTTrainDataset(root, sample_rate=cfg.sample_rate, **options)
    dataset = base if hasattr(base, "epoch_item") else EpochItems(base)
    lengths = [end - start for _, start, end in base.clips]
    per_epoch = max(1, int(cfg.sample_rate * len(lengths))) if cfg.sampling == "weighted" else len(lengths)
    evaluate, n_val = (None, 0)
    if val_file is not None:
        evaluate, n_val = make_val_evaluator(cfg, root, mask_root, val_file)
    thr, loss = cfg.val_iou_threshold, cfg.loss
    kwargs = nets.accepted_kwargs(cfg.model, seqlen=cfg.seqlen)
    select = VAL_PROTOCOLS[cfg.val_protocol][2]
    task = Task(
        model=lambda: nets.build_model(cfg.model, **kwargs),
        model_name=cfg.model, model_kwargs=kwargs,
        loss_fn=lambda logits, target: _loss(logits, target, thr, loss),
        train_dataset=dataset,
        epoch_indices=epoch_weighted_draws(lengths, per_epoch) if cfg.sampling == "weighted"
        else epoch_permutation(len(lengths)),
        param_groups=lambda m: all_params_group(m, cfg.weight_decay),
        make_optimizer=(lambda groups: make_adam(groups, cfg.lr, cfg.betas, cfg.adam_eps, cfg.weight_decay))
        if cfg.optimizer == "adam" else None,
        evaluate=evaluate,
        select_metric=select if evaluate is not None else "train_loss",
        select_mode="max" if evaluate is not None else "min",
    )
    size = f"{cfg.resize}x{cfg.resize}" if cfg.resize else "native-size"
    crop = f"{cfg.patch}x{cfg.patch} crops" if cfg.patch else "whole frames"
    items = (f"{len(lengths)} windows of {cfg.seqlen} frames (one per frame)" if windows
             else f"{len(lengths)} clips of {cfg.seqlen} frames")
    drawn = f"{per_epoch} drawn per epoch" if cfg.sampling == "weighted" else "each once per epoch, shuffled"
    val_info = f" [{n_val} sequences, {cfg.val_protocol} protocol]" if n_val else ""
    text = (f"{len(base.sequences)} training sequences, {items}, {drawn} ({size} frames, {crop}; "
            f"{cfg.loss} loss); {val_text}{val_info}")
    return task, text


def run(cfg: DeepProConfig) -> TrainResult:
    """Train with `cfg` (see the module docstring); returns the engine's TrainResult."""
    root, mask_root = resolve_nudt_roots(cfg.data_root, cfg.mask_root, cfg.dataset)
    if cfg.dataset == "noise" and mask_root is None:
        print("note: --dataset noise without --mask-root reads the masks from the data root itself")
    if not cfg.out:
        label = cfg.dataset if not cfg.data_root else Path(cfg.data_root).resolve().name.lower()
        cfg = dataclasses.replace(cfg, out=f"runs/{cfg.model}_{label}")
    out = Path(cfg.out)
    task, text = build_task(cfg, root, mask_root, out)
    print(f"{cfg.model} on {root}" + (f" (masks from {mask_root})" if mask_root else "") + f": {text}")
    t0 = time.time()
    result = train(cfg, task)
    minutes = (time.time() - t0) / 60
    best = (f"best.pt: epoch {result.best_epoch}, {task.select_metric} {result.best_value:.4f}"
            if result.best is not None else "no best.pt")
    print(f"done in {minutes:.1f} min; {best}; last.pt: epoch {cfg.epochs} -> {result.run_dir}")
    weights = result.best or result.last
    print(f"test it: python test_deeppro.py --weights {weights}"
          + (f" --data-root {cfg.data_root}" if cfg.data_root else "")
          + (f" --mask-root {cfg.mask_root}" if cfg.mask_root else "")
          + (" --dataset noise" if cfg.dataset == "noise" and not cfg.data_root else ""))
    return result


def recipe_defaults(defaults: DeepProConfig, argv: Sequence[str] | None = None) -> DeepProConfig:
    """`defaults` with the recipe of the model that `argv` selects (`--model`, else the defaults' model)
    applied: nets.register_model(..., recipe={option: value}). Options given in `argv` still win, since
    they are parsed over the result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    probe = [a for a in argv if a not in ("-h", "--help")]
    parser = build_parser(defaults)
    parser.exit_on_error = False

    def refuse(message: str):
        raise argparse.ArgumentError(None, message)

    parser.error = refuse  # silent here: the real parse reports a bad value once
    try:
        name = vars(parser.parse_known_args(probe)[0]).get("model", defaults.model)
    except argparse.ArgumentError:
        return defaults
    recipe = nets.model_info(name).recipe
    unknown = sorted(set(recipe) - {f.name for f in dataclasses.fields(defaults)})
    if unknown:
        raise ConfigError(f"model {name!r}: its recipe sets unknown options {unknown}")
    return dataclasses.replace(defaults, **recipe)


def main(defaults: DeepProConfig | None = None, argv: Sequence[str] | None = None,
         description: str | None = None, prog: str | None = None) -> TrainResult:
    """Parse `argv` over `defaults` (the DeepPro authors' recipe, replaced by the chosen model's own recipe
    where it has one, see `recipe_defaults`) and train."""
    defaults = recipe_defaults(defaults or AUTHORS_RECIPE, argv)
    cfg = parse_config(defaults, argv, description or __doc__.split("\n\n")[0], prog)
    return run(cfg)


__all__ = ["AUTHORS_RECIPE", "LOSSES", "VAL_PROTOCOLS", "DeepProConfig", "EpochItems", "build_task", "main",
           "make_val_evaluator", "recipe_defaults", "run", "split_files"]
