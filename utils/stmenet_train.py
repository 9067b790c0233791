"""STMENet training: the authors' recipe as defaults, the dataset wiring, and `main` for train_*.py.

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

from dataclasses import dataclass
from pathlib import Path

import nets
from nets.stmenet import param_groups
from utils.checkpoint import atomic_write_text
from utils.config import TrainConfig, option, parse_config
from utils.data import CocoClipDataset, clip_collate, coco_list_name
from utils.distributed import epoch_fraction
from utils.engine import Task, TrainResult, train
from utils.errors import ConfigError, DataError
from utils.losses import YOLOXLoss
from utils.stmenet_eval import VARIANTS, DetectionValidator, find_json, require_json, resolve_root

AUTHORS_LR = 1e-2 * 4 / 64  # 1e-2 x batch / 64 at the authors' batch of 4


@dataclass
class STMEConfig(TrainConfig):
    """STMENet data, model and validation options"""

    lr: float = option(AUTHORS_LR, "base learning rate: the authors' 1e-2 x batch / 64 (6.25e-4 at batch 4; "
                       "scale it with --batch-size)")
    data_root: str = option("", "dataset root (images/ + COCO json files); empty = the synthetic set of this "
                            "dataset's style, generated once into --synthetic-dir")
    train_json: str = option("instances_train2017.json", "training json relative to the data root (also "
                             "looked up under annotations/); converted to a txt list when there is none")
    val_json: str = option("instances_val2017.json", "validation json relative to the data root; when absent "
                           "the test json validates (with a note)")
    test_json: str = option("instances_test2017.json", "test json relative to the data root")
    train_txt: str = option("", "training txt list in the authors' format (default: coco_train_<DATASET>.txt "
                            "at the root, else made from --train-json into the run folder)")
    list_root: str = option("", "path prefix the txt list was written with, replaced by --data-root "
                            "(default: everything before images/)")
    variant: str = option("itsdt", "STMENet variant (itsdt and daub share one architecture)",
                          choices=VARIANTS)
    num_classes: int = option(1, "number of classes")
    input_size: int = option(512, "network input side in pixels (multiple of 32); frames are letterboxed")
    num_frames: int = option(5, "frames per clip (key frame last)")
    epoch_fraction: float = option(0.2, "fraction of the training clips sampled per epoch (the authors' 1/5)")
    select: str = option("map50", "best.pt by validation mAP50 (max) or validation loss (min, the authors')",
                         choices=("map50", "val_loss"))
    val_max_images: int = option(1000, "validate on at most this many images, spread evenly over the "
                                 "sequences (0 = all)")
    val_batch_size: int = option(8, "clips per forward pass when validating")
    val_protocol: str = option("annotated", "validation images: with >= 1 box (annotated) or all",
                               choices=("annotated", "all"))
    cache_frames: int = option(128, "decoded frames kept per data worker (LRU)")
    synthetic_dir: str = option("", "where the synthetic set is generated when no --data-root "
                                "(default data/synthetic/<style>)")
    dataset: str = option("ITSDT", "dataset name (list names, titles)", cli=False)
    style: str = option("itsdt", "synthetic style of this dataset", cli=False)

    def validate(self) -> None:
        super().validate()
        if self.input_size < 32 or self.input_size % 32:
            raise ConfigError(f"--input-size must be a positive multiple of 32, got {self.input_size}")
        if self.num_frames < 1:
            raise ConfigError(f"--num-frames must be >= 1, got {self.num_frames}")
        if self.num_classes < 1:
            raise ConfigError(f"--num-classes must be >= 1, got {self.num_classes}")
        if not 0.0 < self.epoch_fraction <= 1.0:
            raise ConfigError(f"--epoch-fraction must lie in (0, 1], got {self.epoch_fraction}")
        if self.val_max_images < 0 or self.cache_frames < 0:
            raise ConfigError("--val-max-images and --cache-frames must be >= 0")
        if self.val_batch_size < 1:
            raise ConfigError(f"--val-batch-size must be >= 1, got {self.val_batch_size}")


# ----------------------------------------------------------------------------------------------------
# Dataset wiring
# ----------------------------------------------------------------------------------------------------


def training_list(cfg: STMEConfig, root: Path) -> Path:
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


def validation_json(cfg: STMEConfig, root: Path) -> Path:
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


def build_task(cfg: STMEConfig, root: Path) -> tuple[Task, DetectionValidator]:
    """The engine Task for `cfg` on the dataset at `root`, and its validator."""
    list_path = training_list(cfg, root)
    ds = CocoClipDataset(list_path, input_size=cfg.input_size, num_frames=cfg.num_frames, data_root=root,
                         list_root=cfg.list_root or None, cache_frames=cfg.cache_frames)
    check_classes(ds, cfg.num_classes)
    n_boxes = int(sum(len(e.boxes) for e in ds.entries))
    per_epoch = max(1, int(len(ds) * cfg.epoch_fraction))
    print(f"training clips: {len(ds)} ({n_boxes} boxes), {per_epoch} sampled per epoch "
          f"({per_epoch // cfg.batch_size} iterations of batch {cfg.batch_size})")
    loss_fn = YOLOXLoss(num_classes=cfg.num_classes, stride=8)
    validator = DetectionValidator(validation_json(cfg, root), root, cfg.input_size, cfg.num_frames,
                                   protocol=cfg.val_protocol, max_images=cfg.val_max_images,
                                   work_dir=Path(cfg.out), batch_size=cfg.val_batch_size, workers=cfg.workers,
                                   loss_fn=loss_fn, progress=cfg.progress)
    print(f"validation: {len(validator)} images of {validator.source_json} every {cfg.eval_period} epoch(s), "
          f"best.pt by {cfg.select}")
    kwargs = {"variant": cfg.variant, "num_classes": cfg.num_classes, "num_frames": cfg.num_frames}
    task = Task(
        model=lambda: nets.build_model("stmenet", **kwargs),
        model_name="stmenet",
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


def run(cfg: STMEConfig) -> TrainResult:
    """Train STMENet as configured; prints a summary and the evaluation command."""
    root = resolve_root(cfg.data_root, cfg.style, cfg.synthetic_dir)
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
    print(f"evaluate: python vid_map_coco_{cfg.dataset}.py{data_arg} --weights {weights}")
    return result


def main(defaults: STMEConfig, argv: list[str] | None = None, description: str | None = None,
         prog: str | None = None) -> TrainResult:
    """Parse `argv` over a script's defaults and train."""
    cfg = parse_config(defaults, argv, description, prog)
    return run(cfg)


__all__ = ["AUTHORS_LR", "STMEConfig", "build_task", "check_classes", "main", "run",
           "training_list", "validation_json"]
