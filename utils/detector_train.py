"""Detector training (STMENet and the single-frame baselines): the authors' recipe as defaults, the
dataset wiring, and `main` for train_ITSDT.py / train_IRDST.py / train_DAUB.py.

    python train_ITSDT.py --data-root /data/ITSDT-15K
    python train_ITSDT.py                   # no dataset: a synthetic ITSDT-style set in data/synthetic/itsdt

Recipe (the authors' defaults, the same for DAUB, ITSDT-15K and IRDST): 512x512 input, T = 5 frames,
batch 4, 100 epochs that each sample a random fifth of the training clips, SGD momentum 0.937 Nesterov,
lr = 1e-2 x batch / 64 = 6.25e-4 (scale it yourself when changing the batch), minimum lr 1% of it,
quadratic warm-up (3 epochs from 10% of the lr) then cosine, the minimum for the last 5 epochs, set once
per epoch; weight decay 5e-4 on conv weights only; EMA of the weights (evaluated and saved); seed 2023;
no augmentation; initialisation N(0, 0.02) (nets.stmenet.init_weights). AMP on CUDA (engine).

Data: `--data-root` holds images/ and the COCO json files. Training reads the authors' txt list: `--train-txt`
when given, else `coco_train_<DATASET>.txt` at the root when present, else one made from `--train-json` by
utils_coco.coco_to_txt into the run folder. Validation uses `--val-json` when present, else the test json
(with a note). Without `--data-root` a small synthetic set of the dataset's style is generated once.

Model selection: every `--eval-period` epochs the EMA weights are scored on the validation json (an evenly
spread subset of `--val-max-images` images) in one pass that gives both mAP50 and the validation loss;
best.pt keeps the best by `--select map50` (default) or `--select val_loss` (the authors' choice: lowest
validation loss); last.pt is always kept.

Differences from the authors' code (fixes): CSAM's gamma is trained (they never gave it to the optimiser,
so it stayed 0) and BatchNorm3d weights get no weight decay; no pretrained weights are loaded (their
`pre_trained.pth` is not public), so training starts from scratch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import nets
from nets.fast import for_evaluation
from nets.stmenet import param_groups
from utils.checkpoint import atomic_write_text
from utils.config import TrainConfig, fast_option, option, parse_config
from utils.data import CocoClipDataset, clip_collate, coco_list_name
from utils.data.roots import COCO_STYLES, find_json, require_json, resolve_coco_root
from utils.detection import CocoDataConfig, DetectionValidator
from utils.distributed import epoch_fraction
from utils.engine import Task, TrainResult, train
from utils.errors import DataError
from utils.losses import YOLOXLoss
from utils.postprocess import model_stride

AUTHORS_LR = 1e-2 * 4 / 64  # 1e-2 x batch / 64 at the authors' batch of 4


@dataclass
class DetectorConfig(TrainConfig, CocoDataConfig):
    """Detector data, model and validation options"""

    out: str = option("", "run folder: last.pt, best.pt, train_log.csv, plots, TensorBoard logs "
                      "(empty: runs/<model>_<dataset>)")
    lr: float = option(AUTHORS_LR, "base learning rate: the authors' 1e-2 x batch / 64 (6.25e-4 at batch 4; "
                       "scale it with --batch-size)")
    train_json: str = option("instances_train2017.json", "training json relative to the data root (also "
                             "looked up under annotations/); converted to a txt list when there is none")
    val_json: str = option("instances_val2017.json", "validation json relative to the data root; when absent "
                           "the test json validates (with a note)")
    train_txt: str = option("", "training txt list in the authors' format (empty: coco_train_<DATASET>.txt "
                            "at the root, else made from --train-json into the run folder)")
    list_root: str = option("", "path prefix the txt list was written with, replaced by --data-root "
                            "(empty: everything before images/)")
    model: str = option("stmenet", "detector to train (single-frame models see the key frame only)",
                        choices=tuple(nets.list_models("detect")))
    variant: str = option("itsdt", "STMENet variant (itsdt and daub share one architecture)",
                          choices=COCO_STYLES)
    num_classes: int = option(1, "number of classes")
    input_size: int = option(512, "network input side in pixels, N or NxN (multiple of 32); frames are "
                             "letterboxed", size="square")
    num_frames: int = option(5, "frames per clip (key frame last; single-frame models use 1)")
    epoch_fraction: float = option(0.2, "fraction of the training clips sampled per epoch (the authors' 1/5)")
    select: str = option("map50", "best.pt by validation mAP50 (max) or validation loss (min, the authors')",
                         choices=("map50", "val_loss"))
    val_max_images: int = option(1000, "validate on at most this many images, spread evenly over the "
                                 "sequences (0 = all)")
    val_batch_size: int = option(8, "clips per forward pass when validating", aliases=("--eval-batch-size",))
    fast: str = fast_option("validation inference", aliases=("--val-fast",))
    val_protocol: str = option("annotated", "validation images: with >= 1 box (annotated) or all",
                               choices=("annotated", "all"))
    cache_frames: int = option(128, "decoded frames kept per data worker (LRU)")

    def validate(self) -> None:
        super().validate()
        self.multiple_of(32, "input_size")
        self.at_least(1, "num_frames", "num_classes", "val_batch_size")
        self.require(0.0 < self.epoch_fraction <= 1.0,
                     f"--epoch-fraction must lie in (0, 1], got {self.epoch_fraction}")
        self.at_least(0, "val_max_images", "cache_frames")


# ----------------------------------------------------------------------------------------------------
# Dataset wiring
# ----------------------------------------------------------------------------------------------------


def training_list(cfg: DetectorConfig, root: Path) -> Path:
    """The txt list to train on (see the module docstring); prints where it comes from."""
    if cfg.train_txt:
        path = Path(cfg.train_txt)
        if not path.is_absolute() and not path.is_file() and (root / path).is_file():
            path = root / path
        if not path.is_file():
            raise DataError(f"{cfg.train_txt}: --train-txt list not found")
        print(f"training list: {path}")
        return path
    at_root = root / coco_list_name(cfg.style, "train")
    if at_root.is_file():
        print(f"training list: {at_root}")
        return at_root
    from utils_coco.coco_to_txt import coco_to_lines, load_coco

    json_path = require_json(root, cfg.train_json, "train")
    lines = coco_to_lines(load_coco(json_path), "", str(json_path))
    out = Path(cfg.out) / coco_list_name(cfg.style, "train")
    atomic_write_text("".join(line + "\n" for line in lines), out)
    print(f"training list: {out} ({len(lines)} lines, made from {json_path} by utils_coco.coco_to_txt)")
    return out


def validation_json(cfg: DetectorConfig, root: Path) -> Path:
    found = find_json(root, cfg.val_json)
    if found is not None:
        return found
    test = require_json(root, cfg.test_json, "test")
    print(f"note: no validation json {cfg.val_json} under {root}; validating (model selection) on the test "
          f"json {test}")
    return test


def check_classes(ds: CocoClipDataset, num_classes: int) -> None:
    """DataError when the list holds a class index outside 0..num_classes-1."""
    for entry in ds.entries:
        cls = entry.boxes[:, 4]
        bad = cls[(cls < 0) | (cls >= num_classes)]
        if bad.size:
            raise DataError(f"{ds.list_path}: class index {int(bad[0])} at {entry.path} is outside "
                            f"0..{num_classes - 1} (pass --num-classes)")


def build_task(cfg: DetectorConfig, root: Path) -> tuple[Task, DetectionValidator]:
    """The engine Task for `cfg` on the dataset at `root`, and its validator."""
    kwargs = nets.accepted_kwargs(cfg.model, variant=cfg.variant, num_classes=cfg.num_classes,
                                  num_frames=cfg.num_frames)
    probe = nets.build_model(cfg.model, **kwargs)  # its clip length and stride; the engine builds it seeded
    frames = int(getattr(probe, "num_frames", cfg.num_frames))
    list_path = training_list(cfg, root)
    ds = CocoClipDataset(list_path, input_size=cfg.input_size, num_frames=frames, data_root=root,
                         list_root=cfg.list_root or None, cache_frames=cfg.cache_frames,
                         bit_depth_rule=cfg.bit_depth_rule)
    check_classes(ds, cfg.num_classes)
    n_boxes = int(sum(len(e.boxes) for e in ds.entries))
    per_epoch = max(1, int(len(ds) * cfg.epoch_fraction))
    print(f"training clips: {len(ds)} ({n_boxes} boxes), {per_epoch} sampled per epoch "
          f"({per_epoch // cfg.batch_size} iterations of batch {cfg.batch_size})")
    loss_fn = YOLOXLoss(num_classes=cfg.num_classes, stride=model_stride(probe))
    validator = DetectionValidator(validation_json(cfg, root), root, cfg.input_size, frames,
                                   protocol=cfg.val_protocol, max_images=cfg.val_max_images,
                                   work_dir=Path(cfg.out), batch_size=cfg.val_batch_size, workers=cfg.workers,
                                   loss_fn=loss_fn, progress=cfg.progress,
                                   prepare=lambda m: for_evaluation(m, cfg.fast),
                                   bit_depth_rule=cfg.bit_depth_rule, coco_backend=cfg.coco_backend)
    print(f"validation: {len(validator)} images of {validator.source_json} every {cfg.eval_period} epoch(s), "
          f"best.pt by {cfg.select}")
    task = Task(
        model=lambda: nets.build_model(cfg.model, **kwargs),
        model_name=cfg.model,
        model_kwargs=kwargs,
        loss_fn=loss_fn,
        train_dataset=ds,
        collate_fn=clip_collate,
        epoch_indices=epoch_fraction(len(ds), cfg.epoch_fraction),
        param_groups=lambda m: param_groups(m, cfg.weight_decay),
        evaluate=validator,
        select_metric=cfg.select,
        select_mode="max" if cfg.select == "map50" else "min",
    )
    return task, validator


def run(cfg: DetectorConfig) -> TrainResult:
    """Train the detector as configured; prints a summary and the evaluation command."""
    if not cfg.out:
        cfg = dataclasses.replace(cfg, out=f"runs/{cfg.model}_{cfg.style}")
    root = resolve_coco_root(cfg.data_root, cfg.style, cfg.synthetic_dir)
    task, _ = build_task(cfg, root)
    result = train(cfg, task)
    rows = [r for r in result.history if "map50" in r]
    if rows:
        first, last = rows[0], rows[-1]
        print(f"validation mAP50: {100 * first['map50']:.2f} after epoch {first['epoch']} -> "
              f"{100 * last['map50']:.2f} after epoch {last['epoch']}")
    if result.best is not None:
        value = result.best_value
        shown = f"{100 * value:.2f}" if cfg.select == "map50" else f"{value:.4g}"
        print(f"best {cfg.select} {shown} at epoch {result.best_epoch}: {result.best}")
    print(f"last: {result.last}")
    data_arg = f" --data-root {cfg.data_root}" if cfg.data_root else \
        (f" --synthetic-dir {cfg.synthetic_dir}" if cfg.synthetic_dir else "")
    weights = result.best or result.last
    print(f"evaluate: python vid_map_coco_{cfg.style.upper()}.py{data_arg} --weights {weights}")
    return result


def main(defaults: DetectorConfig, argv: list[str] | None = None, description: str | None = None,
         prog: str | None = None) -> TrainResult:
    """Parse `argv` over a script's defaults and train."""
    cfg = parse_config(defaults, argv, description, prog)
    return run(cfg)


__all__ = ["AUTHORS_LR", "DetectorConfig", "build_task", "check_classes", "main", "run",
           "training_list", "validation_json"]
