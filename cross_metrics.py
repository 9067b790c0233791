"""Score detectors and segmenters on one dataset with both metric families, side by side.

    python cross_metrics.py --data-root data/nudt --format nudt \
        --weights runs/deeppro_nudt/best.pt --weights runs/stmenet_itsdt/best.pt --out runs/cross
    python cross_metrics.py --data-root data/itsdt --format coco --test-json instances_test2017.json \
        --weights stmenet=runs/stmenet_itsdt/best.pt --weights deeppro=best_model.pth --out runs/cross

Every model is scored with COCO box metrics (AP50, P, R, F1 at IoU 0.5) and with the DeepPro protocol
(Pd, Fa at threshold 0.5, AUC over the 27 thresholds), one family natively and the other through the
bridge of utils/bridge.py:

- truth: a NUDT-MIRSDT dataset gives masks and centroid maps; its box truth is the tight box of every
  mask component (written to OUT/gt_boxes.json). A COCO dataset gives boxes; its centroid truth is the
  pixel holding each box centre.
- STMENet: clips of the T frames ending at every frame (conf 0.001, NMS 0.65: the mAP protocol), boxes
  scored with COCOeval; for Pd / Fa each box becomes its centre pixel holding its score (--fill box: the
  whole box).
- DeepPro: the test protocol (40-frame clips, stride 36, max-stitched, native size; a sequence shorter
  than 40 frames is one clip zero-padded before its first frame); for box metrics the 8-connected
  components of prob >= --mask-threshold become boxes scored by their peak probability (--min-box widens
  small ones).

Bridged numbers depend on these choices and are not comparable with either family's published tables; the
table marks them. Writes OUT/cross_metrics.md, OUT/cross_metrics.json, OUT/pr.png and OUT/roc.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nets.fast import FAST_MODES, for_evaluation
from utils.bridge import (
    boxes_to_centroid_maps,
    detections_to_prob_maps,
    masks_to_coco_gt,
    prob_maps_to_coco_results,
)
from utils.checkpoint import atomic_write_text
from utils.cli import run_main
from utils.data import frame_number, mask_centroids, normalise_nudt, read_grey, read_split
from utils.data.nudt import sequence_files
from utils.distributed import resolve_device
from utils.errors import ConfigError, DataError
from utils.inference import Frame, LoadedModel, SegmenterStream, load_model
from utils.metrics import DEFAULT_THRESHOLDS, coco_box_metrics, pd_fa, pool_pd_fa
from utils.plots import plot_pr_curves, plot_roc

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


def score_detector(loaded: LoadedModel, gt_json: Path, root: Path, seqs: list[Sequence],
                   args: argparse.Namespace, device) -> tuple[dict, dict]:
    """STMENet: COCO metrics natively, Pd / Fa through box centres (or filled boxes)."""
    from utils.data import CocoEvalClips
    from utils.metrics import COCOEvaluator
    from utils.stmenet_eval import run_inference

    model = loaded.model.to(device).eval()
    size = args.input_size or int(loaded.train_config.get("input_size") or 512)
    frames = int(getattr(model, "num_frames", 5))
    model = for_evaluation(model, args.fast)
    clips = CocoEvalClips(gt_json, input_size=size, num_frames=frames, data_root=root, protocol="all")
    evaluator = COCOEvaluator(gt_json, protocol=args.protocol)
    run_inference(model, clips, evaluator, batch_size=args.batch_size, workers=0, conf_thres=args.conf_thres,
                  nms_thres=args.nms_thres, progress=not args.no_progress, desc=f"{loaded.name} clips")
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
        prob = detections_to_prob_maps(dets, hw, args.fill)
        parts.append(pd_fa(prob, seq.centroids(hw), DEFAULT_THRESHOLDS))
    return coco, _pd_fa_summary(pool_pd_fa(parts))


def segment_sequence(model, grey: np.ndarray, stride: int = 36, device=None) -> np.ndarray:
    """DeepPro probabilities of a whole sequence: uint8 grey frames [N, H, W] -> float32 [N, H, W] (the
    test protocol of utils.deeppro_eval; a sequence shorter than the clip is one zero-padded clip)."""
    from utils.deeppro_eval import predict_sequence

    seqlen = int(getattr(model, "seqlen", 40))
    if len(grey) >= seqlen:
        norm = normalise_nudt(grey)
        return predict_sequence(model, norm, seqlen, stride, device=device)
    stream = SegmenterStream(model, seqlen, stride, device or "cpu")
    for i, g in enumerate(grey):
        stream.push(Frame(i, str(i), g[:, :, None], g))
    return np.stack([p for _, p in stream.flush()])


def score_segmenter(loaded: LoadedModel, gt_json: Path, seqs: list[Sequence], args: argparse.Namespace,
                    device) -> tuple[dict, dict]:
    """DeepPro: Pd / Fa natively, COCO metrics through mask components."""
    model = for_evaluation(loaded.model.to(device), args.fast)
    results, parts = [], []
    for seq in tqdm(seqs, desc=f"{loaded.name} sequences", disable=args.no_progress, leave=False):
        prob = segment_sequence(model, np.stack([read_grey(p) for p in seq.paths]), args.stride, device)
        parts.append(pd_fa(prob, seq.centroids(prob.shape[1:]), DEFAULT_THRESHOLDS))
        results += prob_maps_to_coco_results(prob, seq.image_ids, args.mask_threshold, min_size=args.min_box)
    return coco_box_metrics(gt_json, results, args.protocol), _pd_fa_summary(pool_pd_fa(parts))


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cross_metrics.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="dataset root")
    p.add_argument("--format", required=True, choices=("nudt", "coco"), help="dataset layout")
    p.add_argument("--weights", action="append", required=True, metavar="[LABEL=]PATH",
                   help="a model to score (our checkpoint or the authors' weights); repeatable")
    p.add_argument("--out", default="runs/cross_metrics", help="output folder")
    p.add_argument("--split", default="test", help="nudt: split file stem")
    p.add_argument("--test-json", default="instances_test2017.json", help="coco: truth json (relative to the "
                                                                          "data root, or a path)")
    p.add_argument("--protocol", default="annotated", choices=("annotated", "all"),
                   help="COCO protocol: images with >= 1 box (published) or every image")
    p.add_argument("--max-seqs", type=int, default=0, help="score only the first N sequences (0 = all)")
    p.add_argument("--variant", default="itsdt", choices=("itsdt", "daub", "irdst"),
                   help="STMENet variant tried first for the authors' weights")
    p.add_argument("--input-size", type=int, default=None, help="STMENet input side (default: the "
                                                                 "checkpoint's, else 512)")
    p.add_argument("--batch-size", type=int, default=4, help="STMENet clips per forward pass")
    p.add_argument("--conf-thres", type=float, default=0.001, help="STMENet score threshold")
    p.add_argument("--nms-thres", type=float, default=0.65, help="STMENet NMS IoU threshold")
    p.add_argument("--fill", default="centre", choices=("centre", "box"),
                   help="STMENet -> Pd/Fa: paint each box's centre pixel or the whole box")
    p.add_argument("--mask-threshold", type=float, default=0.5,
                   help="DeepPro -> boxes: components of prob >= this")
    p.add_argument("--min-box", type=float, default=0.0, help="DeepPro -> boxes: widen boxes to this size")
    p.add_argument("--stride", type=int, default=36, help="DeepPro clip stride")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--fast", choices=FAST_MODES, default="auto",
                   help="inference path: fast (nets.fast, same outputs within ~1e-7) or eager; auto = fast "
                        "on the CPU, eager elsewhere")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.max_seqs < 0 or args.batch_size < 1 or args.min_box < 0:
        raise ConfigError("--max-seqs and --min-box must be >= 0, --batch-size >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    root = Path(args.data_root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if args.format == "nudt":
        gt_json, seqs = nudt_dataset(root, args.split, out, args.max_seqs)
        dataset = f"{root.name} ({args.split} split, NUDT-MIRSDT layout)"
    else:
        gt_json = Path(args.test_json) if Path(args.test_json).is_absolute() else root / args.test_json
        gt_json, seqs = coco_dataset(root, gt_json, out, args.max_seqs)
        dataset = f"{root.name} ({gt_json.name}, COCO layout)"
    print(f"{dataset}: {len(seqs)} sequences, {sum(len(s.paths) for s in seqs)} frames; box truth {gt_json}")
    rows = []
    for spec in args.weights:
        label, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        loaded = load_model(path, variant=args.variant)
        label = label or f"{loaded.name} ({Path(path).stem})"
        t0 = time.perf_counter()
        if loaded.is_detector:
            coco, pdfa = score_detector(loaded, gt_json, root, seqs, args, device)
        else:
            coco, pdfa = score_segmenter(loaded, gt_json, seqs, args, device)
        rows.append({"label": label, "model": loaded.name, "weights": path, "weights_source": loaded.source,
                     "family": "detector" if loaded.is_detector else "segmenter", "coco": coco, "pd_fa": pdfa,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  {label}: AP50 {100 * coco['ap50']:.2f}, Pd {100 * pdfa['pd']:.2f}%, "
              f"Fa {1e5 * pdfa['fa']:.3f}e-5, AUC {pdfa['auc']:.4f} ({rows[-1]['seconds']} s)")
    table = format_table(rows, dataset, args.protocol)
    settings = {k: getattr(args, k) for k in ("protocol", "conf_thres", "nms_thres", "fill", "mask_threshold",
                                              "min_box", "stride")}
    record = {"dataset": dataset, "box_truth": str(gt_json), "settings": settings,
              "thresholds": list(DEFAULT_THRESHOLDS), "rows": rows}
    atomic_write_text(json.dumps(record, indent=1), out / "cross_metrics.json")
    atomic_write_text(table + "\n", out / "cross_metrics.md")
    plot_pr_curves({r["label"]: r["coco"]["precision_50"] for r in rows}, out / "pr.png",
                   title=f"{root.name}: precision-recall at IoU 0.5")
    plot_roc({r["label"]: (r["pd_fa"]["fa_curve"], r["pd_fa"]["pd_curve"]) for r in rows}, out / "roc.png",
             title=f"{root.name}: Pd-Fa", auc={r["label"]: r["pd_fa"]["auc"] for r in rows})
    print(table)
    print(f"wrote {out / 'cross_metrics.md'}, {out / 'cross_metrics.json'}, {out / 'pr.png'}, "
          f"{out / 'roc.png'}")
    return record


if __name__ == "__main__":
    run_main(main)
