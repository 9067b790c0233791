"""Scoring throughput: COCO box metrics on a 15k-image split (both backends) and Pd / Fa on 2,000 frames.

    python bench/metrics.py                 # the issue's sizes: 15,000 images, 2,000 frames of 256x256
    python bench/metrics.py --images 2000 --frames 200   # quicker

COCO: an ITSDT-15K-sized ground truth (1-7 boxes per image, ~19x11 px) and a detector-like results list
(every truth box found with a jittered box, plus false positives; --dets-per-image in total) go through
`utils.coco_metrics.coco_box_metrics` once per backend (faster-coco-eval, pycocotools), each time from the
results list to the metrics dict (our checks and conversion, the backend's index, evaluate, accumulate,
summarize); our part (reading and checking the results) is also timed alone, and the 12 stats of the two
backends are compared. Pd / Fa: `utils.metrics.pd_fa` on random probability maps with a few targets per
frame at the 27 default thresholds. Times are wall clock, one process.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from utils.coco_metrics import COCO_BACKENDS, coco_box_metrics, load_coco_gt, resolve_backend  # noqa: E402
from utils.coco_results import check_detections, detections_from_results  # noqa: E402
from utils.config import Config, option, parse_config  # noqa: E402
from utils.metrics import DEFAULT_THRESHOLDS, pd_fa  # noqa: E402


def make_coco(n_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A ground-truth COCO dict and a results list of about `dets_per_image` boxes per image."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"images/{i // 250}/{i % 250}.bmp", "width": 640, "height": 480}
              for i in range(n_images)]
    counts = rng.integers(1, 8, n_images)
    anns, dets = [], []
    for img, k in zip(images, counts):
        xy = rng.uniform([0, 0], [615, 466], (k, 2))
        wh = rng.uniform([13, 8], [24, 13], (k, 2))
        for (x, y), (w, h) in zip(xy, wh):
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": 1, "iscrowd": 0,
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h)})
            j = rng.normal(0, 1.5, 4)
            dets.append({"image_id": img["id"], "category_id": 1, "score": float(rng.uniform(0.3, 1.0)),
                         "bbox": [float(x + j[0]), float(y + j[1]), float(w + j[2]), float(h + j[3])]})
        n_false = max(0, dets_per_image - int(k))
        fxy = rng.uniform([0, 0], [620, 468], (n_false, 2))
        for (x, y), s in zip(fxy, rng.uniform(0.001, 0.6, n_false)):
            dets.append({"image_id": img["id"], "category_id": 1, "score": float(s),
                         "bbox": [float(x), float(y), 16.0, 10.0]})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "target"}]}, dets


def make_maps(n_frames: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 probabilities [N, size, size] and a bool truth map with 1-3 single-pixel targets per frame."""
    rng = np.random.default_rng(seed)
    prob = rng.random((n_frames, size, size), dtype=np.float32) ** 8
    truth = np.zeros(prob.shape, bool)
    for t in range(n_frames):
        k = int(rng.integers(1, 4))
        ys, xs = rng.integers(0, size, k), rng.integers(0, size, k)
        truth[t, ys, xs] = True
        prob[t, ys, xs] = rng.uniform(0.3, 1.0, k)
    return prob, truth


@dataclass
class MetricsBenchConfig(Config):
    """Metric speed options"""

    images: int = option(15000, "images of the COCO split")
    dets_per_image: int = option(20, "results per image (truth + false)")
    frames: int = option(2000, "frames for Pd / Fa")
    size: int = option(256, "frame side for Pd / Fa")

    def validate(self) -> None:
        super().validate()
        self.at_least(1, "images", "dets_per_image", "frames", "size")


def main(argv: list[str] | None = None) -> dict:
    args = parse_config(MetricsBenchConfig(), argv, __doc__.split("\n\n")[0], "bench/metrics.py")

    dataset, dets = make_coco(args.images, args.dets_per_image)
    t0 = time.perf_counter()
    gt = load_coco_gt(dataset)
    gt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    check_detections(detections_from_results(dets)[0], gt, "detections")
    ours = time.perf_counter() - t0
    runs = {}
    for backend in COCO_BACKENDS:
        if resolve_backend(backend) != backend:
            continue  # faster-coco-eval missing: nothing to compare
        t0 = time.perf_counter()
        runs[backend] = (coco_box_metrics(gt, dets, backend=backend), time.perf_counter() - t0)
    print(f"COCO: {args.images} images, {len(dataset['annotations'])} boxes, {len(dets)} detections "
          f"(ground truth checked in {gt_s:.2f} s; results read and checked in {ours:.2f} s):")
    for backend, (m, secs) in runs.items():
        print(f"  {backend:>11}: {secs:6.2f} s in all, AP50 {100 * m['ap50']:.2f}, "
              f"AP50:95 {100 * m['stats'][0]:.2f}")
    ref, ref_s = runs["pycocotools"]
    out = {"coco_s": ref_s, "coco_ours_s": ours, "ap50": ref["ap50"]}
    if "faster" in runs:
        fast, fast_s = runs["faster"]
        diff = float(np.max(np.abs(np.subtract(fast["stats"], ref["stats"]))))
        diff = max(diff, float(np.max(np.abs(np.subtract(fast["precision_50"], ref["precision_50"])))))
        print(f"  faster-coco-eval is {ref_s / fast_s:.1f}x faster; largest difference in the 12 stats and "
              f"the PR curve: {diff:.1e}")
        out.update(coco_faster_s=fast_s, speedup=ref_s / fast_s, max_diff=diff)

    prob, truth = make_maps(args.frames, args.size)
    t0 = time.perf_counter()
    res = pd_fa(prob, truth, DEFAULT_THRESHOLDS)
    pd_s = time.perf_counter() - t0
    print(f"Pd / Fa: {args.frames} frames of {args.size}x{args.size} at {len(DEFAULT_THRESHOLDS)} thresholds "
          f"in {pd_s:.2f} s ({int(res['targets'][0])} targets)")
    out["pd_fa_s"] = pd_s
    return out


if __name__ == "__main__":
    main()
