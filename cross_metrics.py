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
  components of prob >= --threshold become boxes scored by their peak probability (--min-box widens
  small ones).

Bridged numbers depend on these choices and are not comparable with either family's published tables; the
table marks them. Writes OUT/cross_metrics.md, OUT/cross_metrics.json, OUT/pr.png and OUT/roc.png.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from utils.checkpoint import atomic_write_text
from utils.cli import run_main
from utils.config import REQUIRED, Config, coco_backend_option, fast_option, option, parse_config
from utils.cross_eval import coco_dataset, format_table, nudt_dataset, score_detector, score_segmenter
from utils.data.roots import COCO_STYLES, check_layout, find_json
from utils.distributed import resolve_device
from utils.errors import DataError
from utils.metrics import DEFAULT_THRESHOLDS
from utils.plots import plot_pr_curves, plot_roc
from utils.weights import load_weights


@dataclass
class CrossMetricsConfig(Config):
    """Cross-metric options"""

    data_root: str = option(REQUIRED, "dataset root", required=True)
    format: str = option(REQUIRED, "dataset layout", choices=("nudt", "coco"), required=True)
    weights: list[str] = option([], "models to score, [LABEL=]PATH each (our checkpoints or the authors' "
                                "weights)", required=True)
    out: str = option("runs/cross_metrics", "output folder")
    split: str = option("test", "nudt: split file stem")
    test_json: str = option("instances_test2017.json", "coco: truth json (relative to the data root, or a "
                            "path)")
    protocol: str = option("annotated", "COCO protocol: images with >= 1 box (published) or every image",
                           choices=("annotated", "all"))
    max_seqs: int = option(0, "score only the first N sequences (0 = all)")
    variant: str = option("itsdt", "STMENet variant tried first for the authors' weights",
                          choices=COCO_STYLES)
    input_size: int | None = option(None, "detector input side, N or NxN (none: the checkpoint's, else "
                                    "512)", size="square")
    batch_size: int = option(4, "detector clips per forward pass")
    conf_threshold: float = option(0.001, "detector score threshold", aliases=("--conf-thres",))
    nms_threshold: float = option(0.65, "detector NMS IoU threshold", aliases=("--nms-thres",))
    fill: str = option("centre", "detector -> Pd/Fa: paint each box's centre pixel or the whole box",
                       choices=("centre", "box"))
    threshold: float = option(0.5, "segmenter -> boxes: components of prob >= this",
                              aliases=("--mask-threshold",))
    min_box: float = option(0.0, "segmenter -> boxes: widen boxes to this size")
    stride: int = option(36, "segmenter clip stride")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    fast: str = fast_option()
    coco_backend: str = coco_backend_option()
    progress: bool = option(True, "show progress bars")

    def validate(self) -> None:
        self.at_least(0, "max_seqs", "min_box")
        self.at_least(1, "batch_size", "stride")


def main(argv: list[str] | None = None) -> dict:
    args = parse_config(CrossMetricsConfig(), argv, __doc__.split("\n\n")[0], "cross_metrics.py")
    root = Path(args.data_root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found")
    check_layout(root, args.format)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if args.format == "nudt":
        gt_json, seqs = nudt_dataset(root, args.split, out, args.max_seqs)
        dataset = f"{root.name} ({args.split} split, NUDT-MIRSDT layout)"
    else:
        gt_json = find_json(root, args.test_json) or root / args.test_json
        gt_json, seqs = coco_dataset(root, gt_json, out, args.max_seqs)
        dataset = f"{root.name} ({gt_json.name}, COCO layout)"
    print(f"{dataset}: {len(seqs)} sequences, {sum(len(s.paths) for s in seqs)} frames; box truth {gt_json}")
    rows = []
    for spec in args.weights:
        label, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        loaded = load_weights(path, variant=args.variant)
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
    settings = {k: getattr(args, k) for k in ("protocol", "conf_threshold", "nms_threshold", "fill",
                                              "threshold", "min_box", "stride")}
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
