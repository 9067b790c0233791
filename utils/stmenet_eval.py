"""STMENet evaluation: clips of a COCO json -> detections -> COCO metrics, the PR file and its plot.

    python vid_map_coco_ITSDT.py --data-root /data/ITSDT-15K --weights runs/stmenet_itsdt/best.pt
    python vid_map_coco_ITSDT.py --data-root /data/ITSDT-15K --results runs/eval_itsdt/eval_results.json

Protocol (the published numbers): for every image with at least one annotation (`--protocol all`: every
image), the clip of the T frames ending at it (clamped at the sequence's first frame) is letterboxed, run
through the model (several clips per forward), decoded, filtered by NMS (conf 0.001, IoU 0.65), mapped
back to image pixels and scored with pycocotools. Frames are decoded once per sequence.

Only the best `--max-dets` (100) detections per image and class are written: COCOeval keeps exactly these
(it sorts each image's detections by score with a stable sort and cuts at maxDets 100), so the numbers are
unchanged while the results file of a weak model stays small.

The same pieces serve training: `DetectionValidator` scores the EMA model on the validation json (mAP50
and the validation loss in one pass), and `resolve_root` / `find_json` find or generate the dataset.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import nets
from nets.fast import FAST_MODES, for_evaluation
from utils.boxes import decode_outputs, non_max_suppression, undo_letterbox
from utils.checkpoint import (
    FORMAT,
    atomic_write_text,
    describe_identity,
    load_state_strict,
    model_weights,
    read_checkpoint,
)
from utils.config import option, parse_config
from utils.data import CocoEvalClips, eval_collate, frame_number, letterbox_boxes
from utils.distributed import resolve_device
from utils.errors import CheckpointError, ConfigError, DataError
from utils.metrics import COCOEvaluator, coco_box_metrics, format_coco_table, read_pr_txt, write_pr_txt
from utils.report import write_json
from utils.timing import TimedIterator

CONF_THRES = 0.001  # mAP evaluation thresholds of the authors
NMS_THRES = 0.65
VARIANTS = ("itsdt", "daub", "irdst")
RESULTS_JSON = "eval_results.json"
METRICS_JSON = "metrics.json"
PR_TXT = "pr_curve.txt"
PR_PNG = "pr_curve.png"


# ----------------------------------------------------------------------------------------------------
# Dataset roots and json files
# ----------------------------------------------------------------------------------------------------


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def synthetic_root(style: str, folder: str = "") -> Path:
    """The default folder of the generated synthetic set of a style: `data/synthetic/<style>`."""
    return Path(folder) if folder else Path("data") / "synthetic" / style


def ensure_synthetic(style: str, folder: str = "", wait_s: float = 600.0) -> Path:
    """Generate the default synthetic COCO-video set of `style` once (`synth_meta.json` marks a finished
    one) and return its root. Under torchrun only rank 0 writes; the others wait for it."""
    root = synthetic_root(style, folder)
    marker = root / "synth_meta.json"
    if marker.is_file():
        print(f"no --data-root: using the synthetic {style}-style dataset in {root}")
        return root
    if not _is_main_rank():
        deadline = time.time() + wait_s
        while not marker.is_file():
            if time.time() > deadline:
                raise DataError(f"{root}: rank 0 did not finish writing the synthetic dataset")
            time.sleep(1.0)
        return root
    from utils.synth import SynthConfig, generate

    print(f"no --data-root: generating a small synthetic {style}-style dataset into {root} (once; "
          f"python make_synthetic.py --format coco --style {style} --out {root} does the same)")
    t0 = time.time()
    meta = generate(SynthConfig(format="coco", style=style, out=str(root)))
    frames = sum(s["frames"] for s in meta["sequences"])
    print(f"  wrote {len(meta['sequences'])} sequences, {frames} frames in {time.time() - t0:.1f} s")
    return root


def resolve_root(data_root: str, style: str, synthetic_dir: str = "") -> Path:
    """`--data-root` when given (must exist), else the synthetic set of `style` (generated once)."""
    if data_root:
        root = Path(data_root)
        if not root.is_dir():
            raise DataError(f"{root}: data root not found")
        return root
    return ensure_synthetic(style, synthetic_dir)


def find_json(root: Path, name: str) -> Path | None:
    """A json named relative to the dataset root, also looked up under `annotations/` (IRDST keeps its
    files there) and at the root by its base name; an absolute path is taken as is. None when absent."""
    if not name:
        return None
    path = Path(name)
    if path.is_absolute():
        return path if path.is_file() else None
    for cand in (root / path, root / "annotations" / path.name, root / path.name):
        if cand.is_file():
            return cand
    return None


def require_json(root: Path, name: str, what: str) -> Path:
    found = find_json(root, name)
    if found is None:
        raise DataError(f"{root / name}: {what} json not found (also looked in {root / 'annotations'}); "
                        f"pass --{what}-json relative to the data root")
    return found


def _read_coco(path: Path) -> dict:
    from utils_coco.coco_to_txt import load_coco

    return load_coco(path)


def _read_results(path: str | os.PathLike) -> list:
    """A COCO results json (a list); DataError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: results json not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: malformed json ({str(err).splitlines()[0]})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: COCO results must be a list of dicts")
    return data


def subset_json(json_path: Path, out_path: Path, max_images: int, protocol: str = "annotated") -> Path:
    """Write a copy of a COCO json restricted to at most `max_images` images of the protocol, spread evenly
    over the sequences (ordered by folder, then frame index), and return its path; returns `json_path`
    itself when it holds no more than `max_images` such images (or `max_images` is 0)."""
    coco = _read_coco(json_path)
    annotated = {a["image_id"] for a in coco["annotations"]}
    images = [im for im in coco["images"] if protocol == "all" or im["id"] in annotated]
    if not images:
        raise DataError(f"{json_path}: no images to evaluate under protocol {protocol!r} (empty split)")

    def key(im: dict) -> tuple:
        name = str(im["file_name"])
        num = frame_number(name)
        return os.path.dirname(name), -1 if num is None else num, name

    if not 0 < max_images < len(images):
        return Path(json_path)
    images.sort(key=key)
    picks = np.unique(np.linspace(0, len(images) - 1, max_images).round().astype(int))
    images = [images[i] for i in picks]
    keep = {im["id"] for im in images}
    out = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    out.setdefault("categories", [{"id": 1, "name": "target", "supercategory": "none"}])
    out["images"] = images
    out["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    atomic_write_text(json.dumps(out), out_path)
    return out_path


# ----------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------


@dataclass
class LoadedDetector:
    """A model ready for evaluation and where it came from."""

    model: nn.Module
    source: str  # "toolbox checkpoint (EMA)", "the authors' state dict", ...
    train_config: dict  # the training options of our checkpoints ({} for the authors' weights)


def load_detector(weights: str | os.PathLike, variant: str = "itsdt", num_frames: int = 5,
                  prefer_ema: bool = True) -> LoadedDetector:
    """Build STMENet and load `weights`: a checkpoint of this toolbox (its EMA weights when present, the
    architecture from the checkpoint's identity), else the authors' state dict through
    `nets.load_official` into `build_model("stmenet", variant=variant, num_frames=num_frames)`."""
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        obj = read_checkpoint(path)
    except CheckpointError:
        obj = None  # not readable by our loader; the official loader may still read it
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        identity = obj.get("identity") or {}
        if identity.get("name") != "stmenet":
            raise CheckpointError(f"{path}: checkpoint is for {describe_identity(identity)}, not STMENet")
        kwargs = dict(identity.get("kwargs") or {})
        model = nets.build_model("stmenet", **kwargs)
        use_ema = prefer_ema and bool(obj.get("ema"))
        load_state_strict(model, model_weights(obj, prefer_ema), path, "EMA" if use_ema else "model")
        epoch = obj.get("epoch")
        source = f"toolbox checkpoint, {'EMA' if use_ema else 'raw'} weights, epoch {epoch}, " \
                 f"{describe_identity(identity)}"
        return LoadedDetector(model, source, dict(obj.get("config") or {}))
    model = nets.build_model("stmenet", variant=variant, num_frames=num_frames)
    try:
        nets.load_official(model, path)
    except ValueError as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        prefix = f"{path}: "
        msg = msg[len(prefix):] if msg.startswith(prefix) else msg
        raise CheckpointError(f"{path}: neither a checkpoint of this toolbox nor the authors' STMENet "
                              f"({variant} variant) weights: {msg}") from None
    return LoadedDetector(model, f"the authors' state dict, STMENet {variant} variant", {})


# ----------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------


def cap_per_class(dets: torch.Tensor, max_dets: int) -> torch.Tensor:
    """Score-sorted NMS rows `[K, 7]` -> the first `max_dets` rows of each class, order kept (0 = all)."""
    if max_dets <= 0 or dets.shape[0] <= max_dets:
        return dets
    cls = dets[:, 6]
    keep = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    for c in cls.unique():
        keep[torch.nonzero(cls == c).squeeze(1)[:max_dets]] = True
    return dets[keep]


def gt_targets(coco: dict) -> dict[int, np.ndarray]:
    """image_id -> int64 [N, 5] (x1, y1, x2, y2, cls) of a checked COCO dict as the authors' txt lists hold
    them (x1 = int(x), x2 = x1 + int(w), cls = utils_coco.coco_to_txt.category_index), for the validation
    loss."""
    from utils_coco.coco_to_txt import category_index

    classes = category_index(coco)
    out: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        x1, y1 = int(x), int(y)
        out.setdefault(int(a["image_id"]), []).append([x1, y1, x1 + int(w), y1 + int(h),
                                                       classes[a["category_id"]]])
    return {k: np.asarray(v, np.int64).reshape(-1, 5) for k, v in out.items()}


@torch.no_grad()
def run_inference(model: nn.Module, clips: CocoEvalClips, evaluator: COCOEvaluator, *, batch_size: int = 8,
                  workers: int = 2, conf_thres: float = CONF_THRES, nms_thres: float = NMS_THRES,
                  max_dets: int = 100, loss_fn=None, targets: Mapping[int, np.ndarray] | None = None,
                  progress: bool = True, desc: str = "evaluating",
                  timing: dict | None = None) -> float | None:
    """Run `model` over every clip of `clips`, feed the detections (image pixels) to `evaluator`.

    With `loss_fn` and `targets` (image_id -> int [N, 5] boxes, see `gt_targets`) also returns the mean
    loss per image on the same forward passes (None otherwise). The model is put in eval mode. A `timing`
    dict is filled with the data-wait figures of utils.timing.TimedIterator.summary().
    """
    model.eval()
    device = next(model.parameters()).device
    stride = int(getattr(model, "stride", 8))
    input_hw = clips.input_size
    loader = TimedIterator(DataLoader(clips, batch_size=batch_size, num_workers=workers,
                                      collate_fn=eval_collate, pin_memory=device.type == "cuda"))
    loss_sum, counted = 0.0, 0
    with tqdm(total=len(clips), desc=desc, unit="img", leave=False, dynamic_ncols=True,
              disable=not progress, mininterval=0.5) as bar:
        for ids, x, sizes in loader:
            out = model(x.to(device, non_blocking=True))
            if loss_fn is not None and targets is not None:
                empty = np.zeros((0, 5), np.int64)
                tg = [torch.from_numpy(letterbox_boxes(targets.get(int(i), empty), (int(s[0]), int(s[1])),
                                                       input_hw)).to(device) for i, s in zip(ids, sizes)]
                loss, _ = loss_fn(out.float(), tg)
                loss_sum += float(loss) * len(ids)
                counted += len(ids)
            dets = non_max_suppression(decode_outputs(out, stride), conf_thres, nms_thres)
            per_image = []
            for d, (ih, iw) in zip(dets, sizes.tolist()):
                d = cap_per_class(d, max_dets).float().cpu()
                per_image.append(torch.cat((undo_letterbox(d[:, :4], input_hw, (ih, iw)), d[:, 4:]), 1))
            evaluator.process(ids.tolist(), per_image)
            bar.update(len(ids))
    if timing is not None:
        timing.update(loader.summary())
    return loss_sum / counted if counted else None


class DetectionValidator:
    """Scores a model on a COCO json during training: `validator(model, epoch) -> {map50, map50_95,
    recall50, val_loss}` (AP50 etc. as fractions; val_loss = the training loss on these clips).

    `max_images` > 0 evaluates an evenly spread subset (written to `work_dir/val_subset.json`).
    """

    def __init__(self, json_path: Path, data_root: Path, input_size: int, num_frames: int, *,
                 protocol: str = "annotated", max_images: int = 0, work_dir: Path | None = None,
                 batch_size: int = 8, workers: int = 2, loss_fn=None, progress: bool = True,
                 conf_thres: float = CONF_THRES, nms_thres: float = NMS_THRES, max_dets: int = 100):
        self.source_json = Path(json_path)
        work = Path(work_dir) if work_dir is not None else Path(".")
        json_used = subset_json(self.source_json, work / "val_subset.json", max_images, protocol)
        self.json_path = json_used
        self.clips = CocoEvalClips(json_used, input_size=input_size, num_frames=num_frames,
                                   data_root=data_root, protocol=protocol)
        self.evaluator = COCOEvaluator(json_used, protocol=protocol)
        self.targets = gt_targets(self.evaluator.gt.dataset) if loss_fn is not None else None
        self.loss_fn = loss_fn
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.conf_thres, self.nms_thres, self.max_dets = conf_thres, nms_thres, max_dets

    def __len__(self) -> int:
        return len(self.clips)

    def __call__(self, model: nn.Module, epoch: int | None = None) -> dict[str, float]:
        self.evaluator.reset()
        desc = "validating" if epoch is None else f"validating epoch {epoch + 1}"
        val_loss = run_inference(model, self.clips, self.evaluator, batch_size=self.batch_size,
                                 workers=self.workers, conf_thres=self.conf_thres, nms_thres=self.nms_thres,
                                 max_dets=self.max_dets, loss_fn=self.loss_fn, targets=self.targets,
                                 progress=self.progress, desc=desc)
        m = self.evaluator.evaluate()
        out = {"map50": m["ap50"], "map50_95": m["stats"][0], "recall50": m["R"]}
        if val_loss is not None:
            out["val_loss"] = val_loss
        return out


# ----------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------


def published_curves(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every PR file (*.txt) of a folder such as published/ITSDT, labelled by file stem; the authors'
    STMENet curve is labelled "STMENet (published)"."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: --published folder not found")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder}: no PR *.txt files in the --published folder")
    return {(f"{f.stem} (published)" if f.stem.lower() == "stmenet" else f.stem): read_pr_txt(f)
            for f in files}


def write_reports(metrics: dict, out_dir: Path, dataset: str, published: str = "",
                  extra: Mapping | None = None) -> dict[str, Path]:
    """metrics.json, the authors' PR file and the PR plot (with published curves when given)."""
    from utils.plots import plot_pr_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / METRICS_JSON, "pr_txt": out_dir / PR_TXT, "pr_png": out_dir / PR_PNG}
    record = {"dataset": dataset, **dict(extra or {}), **metrics,
              "P_convention": "mean of the 101-point precision up to index int(R * 100) (the authors')"}
    write_json(paths["metrics"], record)
    write_pr_txt(paths["pr_txt"], metrics["precision_50"])
    ours = "STMENet (ours)"
    curves = {ours: np.asarray(metrics["precision_50"])}
    if published:
        curves.update(published_curves(published))
    plot_pr_curves(curves, paths["pr_png"], title=f"{dataset}: precision-recall at IoU 0.5 "
                   f"({metrics.get('protocol', 'annotated')} protocol)", highlight=ours)
    return paths


# ----------------------------------------------------------------------------------------------------
# The vid_map_coco_* scripts
# ----------------------------------------------------------------------------------------------------


@dataclass
class STMEEvalConfig:
    """STMENet evaluation options"""

    data_root: str = option("", "dataset root (images/ + COCO json files); empty = the synthetic set of "
                            "this dataset's style, generated once into --synthetic-dir")
    test_json: str = option("instances_test2017.json", "ground-truth json relative to the data root "
                            "(also looked up under annotations/)")
    weights: str = option("", "weights to evaluate: a checkpoint of this toolbox (best.pt / last.pt) or "
                          "the authors' state dict (detected automatically)")
    results: str = option("", "score this COCO results json instead of running a model")
    out: str = option("runs/eval", "output folder: eval_results.json, metrics.json, pr_curve.txt / .png")
    variant: str = option("itsdt", "STMENet variant for the authors' weights (our checkpoints name their "
                          "own)", choices=VARIANTS)
    input_size: int | None = option(None, "network input side (multiple of 32); none = the checkpoint's "
                                    "training size, else 512")
    num_frames: int | None = option(None, "frames per clip; none = the checkpoint's, else 5")
    batch_size: int = option(8, "clips per forward pass")
    workers: int = option(2, "data-loading worker processes (sequences are shared out among them)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    protocol: str = option("annotated", "annotated: images with >= 1 box (published numbers); all: every "
                           "image", choices=("annotated", "all"))
    conf_thres: float = option(CONF_THRES, "score threshold before NMS")
    nms_thres: float = option(NMS_THRES, "NMS IoU threshold")
    max_dets: int = option(100, "detections kept per image and class (COCOeval scores the best 100; "
                           "0 = keep all)")
    max_images: int = option(0, "evaluate at most this many images, spread evenly over the sequences "
                             "(0 = all; quick checks, not comparable with published numbers)")
    ema: bool = option(True, "evaluate the EMA weights of our checkpoints when present")
    fast: str = option("auto", "inference path: the fast one (nets.fast: BN folded, fused convs; same "
                       "outputs within ~1e-7) or the eager model; auto = fast on the CPU, eager elsewhere",
                       choices=FAST_MODES)
    published: str = option("", "folder of published PR files (e.g. .../published/ITSDT) drawn beside "
                            "our curve")
    synthetic_dir: str = option("", "where the synthetic set lives when no --data-root "
                                "(default data/synthetic/<style>)")
    progress: bool = option(True, "show a progress bar")
    dataset: str = option("ITSDT", "dataset name for titles", cli=False)
    style: str = option("itsdt", "synthetic style of this dataset", cli=False)

    def __post_init__(self) -> None:
        if self.input_size is not None and (self.input_size < 32 or self.input_size % 32):
            raise ConfigError(f"--input-size must be a positive multiple of 32, got {self.input_size}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ConfigError(f"--num-frames must be >= 1, got {self.num_frames}")
        for name in ("batch_size",):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "max_dets", "max_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.conf_thres <= 1.0 or not 0.0 <= self.nms_thres <= 1.0:
            raise ConfigError("--conf-thres and --nms-thres must lie in [0, 1]")


def evaluate(cfg: STMEEvalConfig) -> dict:
    """Run (or, with `results`, only score) one evaluation; writes the reports and returns the metrics."""
    if bool(cfg.weights) == bool(cfg.results):
        raise ConfigError("give exactly one of --weights (run the model) or --results (score a results json)")
    root = resolve_root(cfg.data_root, cfg.style, cfg.synthetic_dir)
    gt_path = require_json(root, cfg.test_json, "test")
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    subset = subset_json(gt_path, out_dir / "gt_subset.json", cfg.max_images, cfg.protocol)
    if subset != gt_path:
        print(f"note: scoring an evenly spread subset of {cfg.max_images} images of {gt_path} ({subset}); "
              "not comparable with published numbers")
    extra: dict = {"gt_json": str(subset)}
    if cfg.results:
        detections: str | list = cfg.results
        if subset != gt_path:  # drop the detections on images outside the subset
            keep = {im["id"] for im in _read_coco(subset)["images"]}
            detections = [d for d in _read_results(cfg.results) if isinstance(d, Mapping)
                          and d.get("image_id") in keep]
        metrics = coco_box_metrics(subset, detections, cfg.protocol)
        extra["results_json"] = str(cfg.results)
        print(f"scored {cfg.results} against {subset}")
    else:
        device = resolve_device(cfg.device)
        det = load_detector(cfg.weights, cfg.variant, cfg.num_frames or 5, cfg.ema)
        model = det.model.to(device).eval()
        size = cfg.input_size or int(det.train_config.get("input_size") or 512)
        frames = cfg.num_frames or int(getattr(model, "num_frames", 5))
        if size % 32:
            raise ConfigError(f"input size {size} is not a multiple of 32; pass --input-size")
        model = for_evaluation(model, cfg.fast)
        print(f"weights: {cfg.weights} ({det.source})")
        print(f"evaluating on {device}: input {size}x{size}, {frames} frames per clip, batch "
              f"{cfg.batch_size}, conf {cfg.conf_thres}, NMS IoU {cfg.nms_thres}")
        clips = CocoEvalClips(subset, input_size=size, num_frames=frames, data_root=root,
                              protocol=cfg.protocol)
        evaluator = COCOEvaluator(subset, protocol=cfg.protocol)
        t0 = time.time()
        timing: dict = {}
        run_inference(model, clips, evaluator, batch_size=cfg.batch_size, workers=cfg.workers,
                      conf_thres=cfg.conf_thres, nms_thres=cfg.nms_thres, max_dets=cfg.max_dets,
                      progress=cfg.progress, desc=f"{cfg.dataset} {cfg.protocol}", timing=timing)
        elapsed = time.time() - t0
        results_path = out_dir / RESULTS_JSON
        evaluator.dump(results_path)
        metrics = evaluator.evaluate()
        extra.update(weights=str(cfg.weights), weights_source=det.source, input_size=size, num_frames=frames,
                     conf_thres=cfg.conf_thres, nms_thres=cfg.nms_thres, seconds=round(elapsed, 2),
                     images_per_second=round(len(clips) / elapsed, 3) if elapsed > 0 else None,
                     workers=cfg.workers, **timing)
        print(f"{len(clips)} images in {elapsed:.1f} s ({100 * timing['data_wait_fraction']:.1f}% of it "
              f"waiting for frames, {cfg.workers} loader workers); detections written to {results_path}")
    paths = write_reports(metrics, out_dir, cfg.dataset, cfg.published, extra)
    print(f"{cfg.dataset}: " + format_coco_table(metrics))
    print(f"wrote {paths['metrics']}, {paths['pr_txt']} (the authors' PR format), {paths['pr_png']}")
    return metrics


def main(defaults: STMEEvalConfig, argv: list[str] | None = None, description: str | None = None,
         prog: str | None = None) -> dict:
    """Parse `argv` over a script's defaults and evaluate."""
    cfg = parse_config(defaults, argv, description, prog)
    return evaluate(cfg)


__all__ = [
    "CONF_THRES", "DetectionValidator", "LoadedDetector", "NMS_THRES", "STMEEvalConfig", "cap_per_class",
    "ensure_synthetic", "evaluate", "find_json", "gt_targets", "load_detector", "main", "published_curves",
    "require_json", "resolve_root", "run_inference", "subset_json", "synthetic_root", "write_reports",
]
