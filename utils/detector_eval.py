"""Detector evaluation for the vid_map_coco_* scripts: COCO metrics, the authors' PR file and its plot.

    python vid_map_coco_ITSDT.py --data-root /data/ITSDT-15K --weights runs/stmenet_itsdt/best.pt
    python vid_map_coco_ITSDT.py --data-root /data/ITSDT-15K --results eval_results.json   # score only

Protocol (the published numbers): for every image with at least one annotation (`--protocol all`: every
image), the clip of the T frames ending at it (clamped at the sequence's first frame) is letterboxed, run
through the model (several clips per forward), decoded, filtered by NMS (conf 0.001, IoU 0.65), mapped
back to image pixels with the authors' arithmetic (`--box-mapping exact`: the exact inverse) and scored with
COCOeval (faster-coco-eval; `--coco-backend pycocotools`: the reference). Frames are decoded once per
sequence. A single-frame detector (T = 1) sees the key frame only.

Only the best `--max-dets` (100) detections per image and class are written: COCOeval keeps exactly these
(it sorts each image's detections by score with a stable sort and cuts at maxDets 100), so the numbers are
unchanged while the results file of a weak model stays small.

Results go to `--out` (default: beside the weights, `eval_<dataset>_<json stem>_<weights stem>`); a folder
holding another evaluation's results is refused unless `--overwrite`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nets.fast import for_evaluation
from utils.coco_metrics import COCOEvaluator, coco_box_metrics, format_coco_table, read_pr_txt, write_pr_txt
from utils.config import (
    box_mapping_option,
    fast_option,
    option,
    parse_config,
)
from utils.data import CocoEvalClips
from utils.data.roots import COCO_STYLES, dataset_label, require_json, resolve_coco_root
from utils.detection import CocoDataConfig, read_results, run_inference, subset_json
from utils.distributed import resolve_device
from utils.errors import ConfigError, DataError
from utils.postprocess import CONF_THRES, NMS_THRES
from utils.report import claim_output_dir, write_json
from utils.weights import load_weights
from utils_coco.coco_to_txt import load_coco

RESULTS_JSON = "eval_results.json"
METRICS_JSON = "metrics.json"
PR_TXT = "pr_curve.txt"
PR_PNG = "pr_curve.png"


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
                  extra: Mapping | None = None, label: str = "ours") -> dict[str, Path]:
    """metrics.json, the authors' PR file and the PR plot (with published curves when given)."""
    from utils.plots import plot_pr_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / METRICS_JSON, "pr_txt": out_dir / PR_TXT, "pr_png": out_dir / PR_PNG}
    record = {"dataset": dataset, **dict(extra or {}), **metrics,
              "P_convention": "mean of the 101-point precision up to index int(R * 100) (the authors')"}
    write_json(paths["metrics"], record)
    write_pr_txt(paths["pr_txt"], metrics["precision_50"])
    ours = f"{label} (ours)" if label != "ours" else "ours"
    curves = {ours: np.asarray(metrics["precision_50"])}
    if published:
        curves.update(published_curves(published))
    plot_pr_curves(curves, paths["pr_png"], title=f"{dataset}: precision-recall at IoU 0.5 "
                   f"({metrics.get('protocol', 'annotated')} protocol)", highlight=ours)
    return paths


@dataclass
class DetectorEvalConfig(CocoDataConfig):
    """Detector evaluation options"""

    weights: str = option("", "weights to evaluate: a checkpoint of this toolbox (best.pt / last.pt) or "
                          "the authors' weights (recognised from the file)")
    results: str = option("", "score this COCO results json instead of running a model")
    out: str = option("", "output folder (empty: beside the weights, eval_<dataset>_<json>_<weights>)")
    overwrite: bool = option(False, "replace the results of another evaluation in --out")
    model: str = option("auto", "model of the authors' weights (auto: recognised from the keys)")
    variant: str = option("itsdt", "STMENet variant of the authors' weights (our checkpoints name their "
                          "own)", choices=COCO_STYLES)
    input_size: int | None = option(None, "network input side, N or NxN (multiple of 32); none = the "
                                    "checkpoint's training size, else 512", size="square")
    num_frames: int | None = option(None, "frames per clip; none = the model's")
    batch_size: int = option(8, "clips per forward pass")
    workers: int = option(2, "data-loading worker processes (sequences are shared out among them)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    protocol: str = option("annotated", "annotated: images with >= 1 box (published numbers); all: every "
                           "image", choices=("annotated", "all"))
    conf_threshold: float = option(CONF_THRES, "score threshold before NMS", aliases=("--conf-thres",))
    nms_threshold: float = option(NMS_THRES, "NMS IoU threshold", aliases=("--nms-thres",))
    max_dets: int = option(100, "detections kept per image and class (COCOeval scores the best 100; "
                           "0 = keep all)")
    max_images: int = option(0, "evaluate at most this many images, spread evenly over the sequences "
                             "(0 = all; quick checks, not comparable with published numbers)")
    ema: bool = option(True, "evaluate the EMA weights of our checkpoints when present")
    fast: str = fast_option()
    box_mapping: str = box_mapping_option()
    published: str = option("", "folder of published PR files (e.g. .../published/ITSDT) drawn beside "
                            "our curve")
    progress: bool = option(True, "show a progress bar")

    def validate(self) -> None:
        self.multiple_of(32, "input_size")
        self.at_least(1, "num_frames", "batch_size")
        self.at_least(0, "workers", "max_dets", "max_images")
        self.within(0.0, 1.0, "conf_threshold", "nms_threshold")


def default_out(weights: str, root: Path, json_path: Path) -> Path:
    """`<weights folder>/eval_<dataset>_<json stem>_<weights stem>` (results json: its own folder)."""
    w = Path(weights)
    return w.parent / f"eval_{dataset_label(root)}_{json_path.stem}_{w.stem}"


def evaluate(cfg: DetectorEvalConfig) -> dict:
    """Run (or, with `results`, only score) one evaluation; writes the reports and returns the metrics."""
    if bool(cfg.weights) == bool(cfg.results):
        raise ConfigError("give exactly one of --weights (run the model) or --results (score a results json)")
    root = resolve_coco_root(cfg.data_root, cfg.style, cfg.synthetic_dir)
    gt_path = require_json(root, cfg.test_json, "test")
    dataset = dataset_label(root)
    out_dir = Path(cfg.out) if cfg.out else default_out(cfg.weights or cfg.results, root, gt_path)
    claim_output_dir(out_dir, {"weights": cfg.weights or cfg.results, "gt_json": gt_path.resolve(),
                               "protocol": cfg.protocol, "max_images": cfg.max_images}, cfg.overwrite)
    subset = subset_json(gt_path, out_dir / "gt_subset.json", cfg.max_images, cfg.protocol)
    if subset != gt_path:
        print(f"note: scoring an evenly spread subset of {cfg.max_images} images of {gt_path} ({subset}); "
              "not comparable with published numbers")
    extra: dict = {"gt_json": str(subset)}
    label = "ours"
    if cfg.results:
        detections: str | list = cfg.results
        if subset != gt_path:  # drop the detections on images outside the subset
            keep = {im["id"] for im in load_coco(subset)["images"]}
            detections = [d for d in read_results(cfg.results) if isinstance(d, Mapping)
                          and d.get("image_id") in keep]
        metrics = coco_box_metrics(subset, detections, cfg.protocol, backend=cfg.coco_backend)
        extra["results_json"] = str(cfg.results)
        print(f"scored {cfg.results} against {subset}")
    else:
        device = resolve_device(cfg.device)
        loaded = load_weights(cfg.weights, cfg.model, task="detect", variant=cfg.variant,
                              variant_fallback=False, prefer_ema=cfg.ema, num_frames=cfg.num_frames)
        model = loaded.model.to(device).eval()
        label = loaded.name
        size = cfg.input_size or int(loaded.train_config.get("input_size") or 512)
        frames = cfg.num_frames or int(getattr(model, "num_frames", 5))
        if size % 32:
            raise ConfigError(f"input size {size} is not a multiple of 32; pass --input-size")
        model = for_evaluation(model, cfg.fast)
        print(f"weights: {cfg.weights} ({loaded.source})")
        print(f"evaluating on {device}: input {size}x{size}, {frames} frame(s) per clip, batch "
              f"{cfg.batch_size}, conf {cfg.conf_threshold}, NMS IoU {cfg.nms_threshold}")
        clips = CocoEvalClips(subset, input_size=size, num_frames=frames, data_root=root,
                              protocol=cfg.protocol, bit_depth_rule=cfg.bit_depth_rule)
        evaluator = COCOEvaluator(subset, protocol=cfg.protocol, backend=cfg.coco_backend)
        t0 = time.time()
        timing: dict = {}
        run_inference(model, clips, evaluator, batch_size=cfg.batch_size, workers=cfg.workers,
                      conf_thres=cfg.conf_threshold, nms_thres=cfg.nms_threshold, max_dets=cfg.max_dets,
                      progress=cfg.progress, desc=f"{dataset} {cfg.protocol}", timing=timing,
                      box_mapping=cfg.box_mapping)
        elapsed = time.time() - t0
        results_path = out_dir / RESULTS_JSON
        evaluator.dump(results_path)
        metrics = evaluator.evaluate()
        extra.update(model=loaded.name, weights=str(cfg.weights), weights_source=loaded.source,
                     input_size=size, num_frames=frames, box_mapping=cfg.box_mapping,
                     bit_depth_rule=cfg.bit_depth_rule, conf_thres=cfg.conf_threshold,
                     nms_thres=cfg.nms_threshold, seconds=round(elapsed, 2),
                     images_per_second=round(len(clips) / elapsed, 3) if elapsed > 0 else None,
                     workers=cfg.workers, **timing)
        print(f"{len(clips)} images in {elapsed:.1f} s ({100 * timing['data_wait_fraction']:.1f}% of it "
              f"waiting for frames, {cfg.workers} loader workers); detections written to {results_path}")
    paths = write_reports(metrics, out_dir, dataset, cfg.published, extra, label=label)
    print(f"{dataset}: " + format_coco_table(metrics))
    print(f"wrote {paths['metrics']}, {paths['pr_txt']} (the authors' PR format), {paths['pr_png']}")
    return metrics


def main(defaults: DetectorEvalConfig, argv: list[str] | None = None, description: str | None = None,
         prog: str | None = None) -> dict:
    """Parse `argv` over a script's defaults and evaluate."""
    return evaluate(parse_config(defaults, argv, description, prog))


__all__ = ["DetectorEvalConfig", "default_out", "evaluate", "main", "published_curves", "write_reports"]
