"""Scoring detectors and segmenters with both metric families on one dataset (the cross-metric table).

The pieces of cross_metrics.py: the dataset as sequences with box and centroid truth (`nudt_dataset`,
`coco_dataset`), `score_detector` / `score_segmenter` (each model natively and through the bridge of
utils.bridge), and the markdown table. See cross_metrics.py for the choices behind the bridged numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nets.fast import for_evaluation
from utils import detection
from utils.bridge import (
    boxes_to_centroid_maps,
    detections_to_prob_maps,
    masks_to_coco_gt,
    prob_maps_to_coco_results,
)
from utils.checkpoint import atomic_write_text
from utils.coco_metrics import COCOEvaluator, coco_box_metrics
from utils.data import CocoEvalClips, frame_number, mask_centroids, read_grey, read_split
from utils.data.nudt import sequence_files
from utils.errors import DataError
from utils.metrics import DEFAULT_THRESHOLDS, pd_fa, pool_pd_fa
from utils.segmentation import segment_sequence
from utils.weights import LoadedModel

PD_FA_THRESHOLD = 0.5


@dataclass
class Sequence:
    """One test sequence: frames in order, their image ids in the box truth, and the centroid truth."""

    name: str
    paths: list[str]
    image_ids: list[int]
    boxes: list[np.ndarray] | None = None  # COCO: truth boxes per frame (xyxy)
    centroid_paths: list[str] | None = None  # NUDT: masks_centroid files
    mask_paths: list[str] = field(default_factory=list)  # NUDT: masks (centroids when no centroid files)

    def centroids(self, hw: tuple[int, int]) -> np.ndarray:
        """bool [N, H, W] centroid truth."""
        if self.boxes is not None:
            return boxes_to_centroid_maps(self.boxes, hw)
        if self.centroid_paths:
            return np.stack([read_grey(p) > 0 for p in self.centroid_paths])
        return np.stack([mask_centroids(read_grey(p) > 0) for p in self.mask_paths])


def nudt_dataset(root: Path, split: str, out: Path, max_seqs: int = 0) -> tuple[Path, list[Sequence]]:
    """A NUDT-MIRSDT split -> (box truth json written to OUT/gt_boxes.json, sequences)."""
    names = read_split(root / f"{split}.txt")
    if max_seqs:
        names = names[:max_seqs]
    seqs, masks, files = [], [], []
    for name in names:
        sf = sequence_files(str(root), name)
        first = len(files) + 1
        seqs.append(Sequence(name, sf.frames, list(range(first, first + len(sf.frames))),
                             centroid_paths=sf.centroids, mask_paths=sf.masks))
        files += [os.path.relpath(p, root) for p in sf.frames]
        masks += sf.masks
    gt = masks_to_coco_gt((read_grey(p) > 0 for p in masks), files)
    path = out / "gt_boxes.json"
    atomic_write_text(json.dumps(gt), path)
    return path, seqs


def coco_dataset(root: Path, json_path: Path, out: Path, max_seqs: int = 0) -> tuple[Path, list[Sequence]]:
    """The images of a COCO json grouped into sequences (by folder, in frame order), with their boxes.
    With `max_seqs`, the json of the kept sequences is written to OUT/gt_subset.json and returned."""
    from utils_coco.coco_to_txt import load_coco

    coco = load_coco(json_path)
    boxes: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        boxes.setdefault(int(a["image_id"]), []).append([x, y, x + w, y + h])
    groups: dict[str, list] = {}
    for im in coco["images"]:
        num = frame_number(im["file_name"])
        if num is None:
            raise DataError(f"{json_path}: {im['file_name']} is not named by an integer frame index")
        groups.setdefault(os.path.dirname(im["file_name"]), []).append((num, im))
    seqs = []
    for folder, items in sorted(groups.items())[:max_seqs or None]:
        items.sort(key=lambda t: t[0])
        ims = [im for _, im in items]
        ids = [int(im["id"]) for im in ims]
        seqs.append(Sequence(folder, [str(root / im["file_name"]) for im in ims], ids,
                             boxes=[np.asarray(boxes.get(i, []), np.float64).reshape(-1, 4) for i in ids]))
    if max_seqs and len(seqs) < len(groups):
        keep = {i for s in seqs for i in s.image_ids}
        subset = {**coco, "images": [im for im in coco["images"] if int(im["id"]) in keep],
                  "annotations": [a for a in coco["annotations"] if int(a["image_id"]) in keep]}
        json_path = out / "gt_subset.json"
        atomic_write_text(json.dumps(subset), json_path)
    return json_path, seqs


def _pd_fa_summary(pooled: dict) -> dict:
    thr = np.asarray(pooled["thresholds"])
    i = int(np.flatnonzero(np.isclose(thr, PD_FA_THRESHOLD))[0])
    return {"pd": float(pooled["pd"][i]), "fa": float(pooled["fa"][i]), "auc": float(pooled["auc"]),
            "targets": int(pooled["targets"][i]), "tp": int(pooled["tp"][i]),
            "fa_pixels": int(pooled["fa_pixels"][i]), "pd_curve": [float(v) for v in pooled["pd"]],
            "fa_curve": [float(v) for v in pooled["fa"]]}


def score_detector(loaded: LoadedModel, gt_json: Path, root: Path, seqs: list[Sequence], opts,
                   device) -> tuple[dict, dict]:
    """A detector: COCO metrics natively, Pd / Fa through box centres (or filled boxes). `opts`: the
    cross-metric options (input_size, batch_size, conf_threshold, nms_threshold, fill, protocol, fast,
    progress)."""
    model = loaded.model.to(device).eval()
    size = opts.input_size or int(loaded.train_config.get("input_size") or 512)
    frames = int(getattr(model, "num_frames", 5))
    model = for_evaluation(model, opts.fast)
    clips = CocoEvalClips(gt_json, input_size=size, num_frames=frames, data_root=root, protocol="all")
    evaluator = COCOEvaluator(gt_json, protocol=opts.protocol, backend=opts.coco_backend)
    detection.run_inference(model, clips, evaluator, batch_size=opts.batch_size, workers=0,
                            conf_thres=opts.conf_threshold, nms_thres=opts.nms_threshold,
                            progress=opts.progress, desc=f"{loaded.name} clips")
    results = evaluator.results
    coco = evaluator.evaluate()
    per_image: dict[int, list] = {}
    for r in results:
        x, y, w, h = r["bbox"]
        per_image.setdefault(r["image_id"], []).append([x, y, x + w, y + h, r["score"]])
    parts = []
    for seq in seqs:
        hw = read_grey(seq.paths[0]).shape
        dets = [np.asarray(per_image.get(i, []), np.float32).reshape(-1, 5) for i in seq.image_ids]
        prob = detections_to_prob_maps(dets, hw, opts.fill)
        parts.append(pd_fa(prob, seq.centroids(hw), DEFAULT_THRESHOLDS))
    return coco, _pd_fa_summary(pool_pd_fa(parts))


def score_segmenter(loaded: LoadedModel, gt_json: Path, seqs: list[Sequence], opts,
                    device) -> tuple[dict, dict]:
    """A segmenter: Pd / Fa natively, COCO metrics through mask components. `opts`: the cross-metric
    options (stride, threshold, min_box, protocol, fast, progress)."""
    model = for_evaluation(loaded.model.to(device), opts.fast)
    results, parts = [], []
    for seq in tqdm(seqs, desc=f"{loaded.name} sequences", disable=not opts.progress, leave=False):
        prob = segment_sequence(model, np.stack([read_grey(p) for p in seq.paths]), opts.stride, device)
        parts.append(pd_fa(prob, seq.centroids(prob.shape[1:]), DEFAULT_THRESHOLDS))
        results += prob_maps_to_coco_results(prob, seq.image_ids, opts.threshold, min_size=opts.min_box)
    return (coco_box_metrics(gt_json, results, opts.protocol, backend=opts.coco_backend),
            _pd_fa_summary(pool_pd_fa(parts)))


def format_table(rows: list[dict], dataset: str, protocol: str) -> str:
    """Markdown table; bridged numbers carry a dagger."""
    lines = [f"Cross-metric table on {dataset} (COCO protocol '{protocol}'; Pd / Fa at threshold "
             f"{PD_FA_THRESHOLD}, Fa in 1e-5; † = scored through the bridge, not the model's own metric)", "",
             "| model | AP50 | P | R | F1 | Pd | Fa (1e-5) | AUC |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, p = r["coco"], r["pd_fa"]
        box_mark, pd_mark = ("", "†") if r["family"] == "detector" else ("†", "")
        box = [f"{100 * c[k]:.2f}{box_mark}" for k in ("ap50", "P", "R", "F1")]
        pix = [f"{100 * p['pd']:.2f}{pd_mark}", f"{1e5 * p['fa']:.3f}{pd_mark}", f"{p['auc']:.4f}{pd_mark}"]
        lines.append(f"| {r['label']} | " + " | ".join(box + pix) + " |")
    return "\n".join(lines)


__all__ = ["PD_FA_THRESHOLD", "Sequence", "coco_dataset", "format_table", "nudt_dataset", "score_detector",
           "score_segmenter"]
