"""COCO box metrics (the STMENet datasets): `coco_box_metrics` scores COCO results with faster-coco-eval
(default; same numbers as pycocotools, several times faster) or pycocotools (`backend`, the reference) and
adds the authors' numbers at IoU 0.5 (AP50 as the mean of the 101-point precision curve, R, their
non-standard P and F1); `COCOEvaluator` accumulates per-image detections as arrays (reset / process /
evaluate); `write_pr_txt` / `read_pr_txt` handle the authors' PR file format. Ground truth is read and
checked by `utils_coco.coco_to_txt.load_coco` (the reader used for conversion and training too) and class
index c means the category `category_index` gives index c. Results are checked by utils.coco_results.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from utils.coco_results import Detections, check_detections, detections_from_results
from utils.errors import ConfigError, DataError, read_text
from utils_coco.coco_to_txt import category_index, check_coco, load_coco

# --------------------------------------------------------------------------------------------------------
# COCO box metrics
# --------------------------------------------------------------------------------------------------------

COCO_STAT_NAMES = (
    "AP @[IoU=0.50:0.95 | area=all    | maxDets=100]",
    "AP @[IoU=0.50      | area=all    | maxDets=100]",
    "AP @[IoU=0.75      | area=all    | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=small  | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=large  | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=all    | maxDets=  1]",
    "AR @[IoU=0.50:0.95 | area=all    | maxDets= 10]",
    "AR @[IoU=0.50:0.95 | area=all    | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=small  | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=large  | maxDets=100]",
)
PROTOCOLS = {
    "annotated": "only images with >= 1 ground-truth box are scored (published protocol)",
    "all": "every image of the json is scored (false positives on empty frames count)",
}
COCO_BACKENDS = ("faster", "pycocotools")  # faster-coco-eval (default) or pycocotools (the reference)
_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")
_fallback_noted = False


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Swallow the scorers' prints unless `verbose`."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def resolve_backend(backend: str) -> str:
    """The scorer that will run for `backend` (one of COCO_BACKENDS): "faster" falls back to "pycocotools"
    with a one-line note (once per process) when faster-coco-eval is not installed."""
    global _fallback_noted
    if backend not in COCO_BACKENDS:
        raise ConfigError(f"COCO backend must be one of {', '.join(COCO_BACKENDS)}, got {backend!r}")
    if backend == "faster":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            if not _fallback_noted:
                print("note: faster-coco-eval is not installed; scoring with pycocotools (same numbers, "
                      "slower; pip install 'faster-coco-eval>=1.6')", file=sys.stderr)
                _fallback_noted = True
            return "pycocotools"
    return backend


class CocoGroundTruth:
    """A checked, normalised COCO instances dict (`utils_coco.coco_to_txt.check_coco`) and what scoring
    needs: `dataset`, `name` (for messages), `cat_ids` (category id of class 0, 1, ...), `image_ids`
    (sorted), `annotated_ids` (sorted ids of images with >= 1 annotation). Each backend's index of it is
    built once, on first use."""

    def __init__(self, dataset: dict, name: str):
        self.dataset = dataset
        self.name = name
        index = category_index(dataset)
        self.cat_ids = sorted(index, key=index.get)
        self.image_ids = sorted(im["id"] for im in dataset["images"])
        # From the annotation list, not an index's imgToAnns (a defaultdict that gains keys when queried).
        self.annotated_ids = sorted({a["image_id"] for a in dataset["annotations"]})
        self._index: dict[str, Any] = {}

    def ids_for(self, protocol: str) -> list[int]:
        return self.annotated_ids if protocol == "annotated" else self.image_ids

    def index(self, backend: str) -> Any:
        """The backend's COCO object over `dataset` (cached)."""
        if backend not in self._index:
            if backend == "faster":
                from faster_coco_eval import COCO as FasterCOCO

                gt = FasterCOCO()
            else:
                gt = COCO()
            gt.dataset = self.dataset
            with _quiet(False):
                gt.createIndex()
            self._index[backend] = gt
        return self._index[backend]


def load_coco_gt(gt: str | Path | Mapping | Any) -> CocoGroundTruth:
    """A ground truth for scoring from a COCO instances json path, a COCO dict, a COCO object of either
    library (its `.dataset`) or a CocoGroundTruth (returned as is); one-line DataError on bad input."""
    if isinstance(gt, CocoGroundTruth):
        return gt
    if isinstance(gt, (str, Path)):
        return CocoGroundTruth(load_coco(gt), str(gt))
    data = gt.dataset if hasattr(gt, "dataset") else gt
    return CocoGroundTruth(check_coco(data, "the ground-truth json"), "the ground-truth json")


def _empty_results(gt: COCO) -> COCO:
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                  "annotations": []}
    with _quiet(False):
        dt.createIndex()
    return dt


def _faster_results(gt: Any, dets: Detections) -> Any:
    """faster-coco-eval's results object built straight from the arrays: the fields its loadRes would set
    for boxes (id 1..N, area w * h, iscrowd 0), without its per-result Python pass."""
    from faster_coco_eval import COCO as FasterCOCO

    area = (dets.bbox[:, 2] * dets.bbox[:, 3]).tolist()
    cols = zip(range(1, len(dets) + 1), dets.image_id.tolist(), dets.category_id.tolist(), dets.bbox.tolist(),
               dets.score.tolist(), area)
    anns = [{"id": k, "image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "iscrowd": 0}
            for k, i, c, b, s, a in cols]
    dt = FasterCOCO()
    dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": anns}
    dt.createIndex()
    return dt


def _cocoeval(gt: CocoGroundTruth, dets: Detections, img_ids: list[int], backend: str,
              verbose: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the backend's COCOeval (bbox) -> (12 stats, precision [T, R, K, A, M], recall [T, K, A, M])."""
    index = gt.index(backend)
    with _quiet(verbose):
        if backend == "faster":
            from faster_coco_eval import COCOeval_faster

            ev = COCOeval_faster(index, _faster_results(index, dets), "bbox",
                                 print_function=print if verbose else (lambda *a, **k: None))
        else:
            dt = index.loadRes(dets.to_results()) if len(dets) else _empty_results(index)
            ev = COCOeval(index, dt, "bbox")
        ev.params.imgIds = list(img_ids)
        ev.params.catIds = list(gt.cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], np.float64), np.asarray(ev.eval["precision"]), \
        np.asarray(ev.eval["recall"])


def score_detections(gt: CocoGroundTruth, dets: Detections, protocol: str = "annotated",
                     verbose: bool = False, backend: str = "faster", source: str = "detections") -> dict:
    """`coco_box_metrics` on a loaded ground truth and Detections (checked here)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    used = resolve_backend(backend)
    check_detections(dets, gt, source)
    img_ids = gt.ids_for(protocol)
    if not img_ids:
        raise DataError(f"{gt.name}: no images to score under protocol {protocol!r}")
    if not gt.cat_ids:
        raise DataError(f"{gt.name}: 'categories' lists no category to score")
    # COCOeval only reads the detections of the scored images: drop the others before the conversion.
    scored = dets.take(np.isin(dets.image_id, img_ids)) if protocol == "annotated" else dets
    stats, precision, recall = _cocoeval(gt, scored, img_ids, used, verbose)
    prec = precision[0, :, :, 0, -1]  # IoU 0.5, [101 recall points, K], area all, maxDets 100
    rec = recall[0, :, 0, -1]  # [K]
    valid = rec > -1
    if valid.any():
        precision_50 = np.clip(prec[:, valid], 0.0, None).mean(axis=1)
        recall_50 = float(rec[valid].mean())
    else:
        precision_50, recall_50 = np.zeros(prec.shape[0]), 0.0
    n = int(recall_50 * 100)
    p = float(np.mean(precision_50[:n])) if n > 0 else 0.0
    f1 = 2 * p * recall_50 / (p + recall_50) if p + recall_50 > 0 else 0.0
    return {"protocol": protocol, "backend": used, "stats": [float(s) for s in stats],
            "ap50": float(precision_50.mean()), "precision_50": [float(v) for v in precision_50],
            "recall_50": recall_50, "R": recall_50, "P": p, "F1": f1,
            "num_images": len(img_ids), "num_detections": len(dets)}


def coco_box_metrics(gt_json_path: str | Path | Mapping | CocoGroundTruth | Any,
                     detections: str | Path | Sequence[Mapping] | Detections, protocol: str = "annotated",
                     verbose: bool = False, backend: str = "faster") -> dict:
    """COCO bbox evaluation plus the authors' numbers at IoU 0.5 (area all, maxDets 100).

    gt_json_path: a COCO instances json (or its dict, a COCO object of either library, a CocoGroundTruth).
    detections: a results-json path, a list of dicts {image_id, category_id, bbox [x, y, w, h], score} or
    Detections; may be empty. protocol: "annotated" scores only images with >= 1 annotation, "all" scores
    every image. backend: "faster" (faster-coco-eval; pycocotools when it is missing) or "pycocotools".
    Returns {protocol, backend (the one that ran), stats (12 COCO numbers), ap50 (mean of the 101-point
    precision, -1 -> 0), precision_50 (101 floats), recall_50, R (= recall_50), P, F1, num_images,
    num_detections}. P = mean(precision_50[:int(R * 100)]) is the authors' non-standard convention, not a
    COCO number. With several classes the curves are averaged over the classes that have ground truth.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    resolve_backend(backend)
    gt = load_coco_gt(gt_json_path)
    if isinstance(detections, Detections):
        dets, source = detections, "detections"
    else:
        dets, source = detections_from_results(detections)
    return score_detections(gt, dets, protocol, verbose, backend, source)


def boxes_to_detections(image_id: int, boxes: Any, cat_ids: Sequence[int]) -> Detections:
    """Per-image detections [K, 6] (x1, y1, x2, y2, score, cls) or NMS rows [K, 7]
    (x1, y1, x2, y2, obj, cls_conf, cls; score = obj * cls_conf), in original image pixels, -> Detections.
    Class index c maps to category id cat_ids[c] (`CocoGroundTruth.cat_ids`)."""
    if boxes is None:
        return Detections.empty()
    arr = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes, dtype=np.float64)
    if arr.size == 0:
        return Detections.empty()
    if arr.ndim != 2 or arr.shape[1] not in (6, 7):
        raise ConfigError(f"detections for image {image_id} must be [K, 6] or [K, 7], got {list(arr.shape)}")
    score = arr[:, 4] * arr[:, 5] if arr.shape[1] == 7 else arr[:, 4]
    cls = arr[:, -1]
    if not np.isfinite(cls).all() or cls.min() < 0 or cls.max() >= len(cat_ids):
        raise ConfigError(f"class index out of range 0..{len(cat_ids) - 1} for image {image_id}")
    xywh = np.concatenate([arr[:, :2], arr[:, 2:4] - arr[:, :2]], axis=1)
    return Detections(np.full(arr.shape[0], int(image_id), np.int64),
                      np.asarray(cat_ids, np.int64)[cls.astype(np.int64)], xywh, score)


def boxes_to_coco_results(image_id: int, boxes: Any, cat_ids: Sequence[int]) -> list[dict]:
    """`boxes_to_detections` as a list of COCO result dicts."""
    return boxes_to_detections(image_id, boxes, cat_ids).to_results()


class COCOEvaluator:
    """Accumulates detections image by image, then scores them with `coco_box_metrics`.

    evaluator.reset(); evaluator.process(image_ids, detections_per_image) per batch (each item [K, 6] or
    [K, 7] in original image pixels, or None); evaluator.evaluate() -> the metrics dict. Detections are kept
    as arrays; `results` gives them as COCO result dicts.
    """

    def __init__(self, gt_json_path: str | Path, protocol: str = "annotated", verbose: bool = False,
                 backend: str = "faster"):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        resolve_backend(backend)
        self.gt_json_path = Path(gt_json_path)
        self.protocol = protocol
        self.verbose = verbose
        self.backend = backend
        self.gt = load_coco_gt(gt_json_path)
        self.cat_ids = self.gt.cat_ids
        self._parts: list[Detections] = []

    @property
    def image_ids(self) -> list[int]:
        """The image ids to run inference on under this protocol."""
        return list(self.gt.ids_for(self.protocol))

    @property
    def detections(self) -> Detections:
        return Detections.concat(self._parts)

    @property
    def results(self) -> list[dict]:
        return self.detections.to_results()

    def reset(self) -> None:
        self._parts = []

    def process(self, image_ids: Iterable[int], detections_per_image: Iterable[Any]) -> None:
        for image_id, boxes in zip(image_ids, detections_per_image):
            part = boxes_to_detections(int(image_id), boxes, self.cat_ids)
            if len(part):
                self._parts.append(part)

    def dump(self, path: str | Path) -> None:
        """Write the accumulated results as a COCO results json (atomically)."""
        from utils.checkpoint import atomic_write_text

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(self.results), path)

    def evaluate(self) -> dict:
        return score_detections(self.gt, self.detections, self.protocol, self.verbose, self.backend)


def format_coco_table(metrics: Mapping) -> str:
    """Human-readable table of a `coco_box_metrics` result."""
    protocol = metrics.get("protocol", "annotated")
    scorer = f" (scored by {metrics['backend']})" if metrics.get("backend") else ""
    lines = [f"COCO bbox metrics, protocol '{protocol}': {PROTOCOLS.get(protocol, '')}{scorer}",
             f"  {metrics.get('num_images', '?')} images scored, "
             f"{metrics.get('num_detections', '?')} detections"]
    lines += [f"  {name} = {value:.4f}" for name, value in zip(COCO_STAT_NAMES, metrics["stats"])]
    lines += [
        f"  AP50 = {100 * metrics['ap50']:.2f}  (mean of the 101-point precision at IoU 0.5)",
        f"  R    = {100 * metrics['R']:.2f}  (COCO recall at IoU 0.5, maxDets 100)",
        f"  P    = {100 * metrics['P']:.2f}  (authors' non-standard convention: mean precision up to R)",
        f"  F1   = {100 * metrics['F1']:.2f}  (2PR / (P + R))",
    ]
    return "\n".join(lines)


def write_pr_txt(path: str | Path, precision: Sequence[float]) -> None:
    """Write the 101 precision values as the authors' PR file: tab-separated, trailing tab, no newline."""
    values = np.asarray(precision, dtype=np.float64).ravel()
    if values.size != 101:
        raise ConfigError(f"{path}: a PR curve has 101 precision values, got {values.size}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{float(max(v, 0.0))!r}\t" for v in values), encoding="utf-8")


def read_pr_txt(path: str | Path) -> np.ndarray:
    """Read an authors'-format PR file -> float64 [101] precision at recall 0, 0.01, ..., 1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: PR file not found")
    fields = read_text(path).split()
    try:
        values = np.array([float(v) for v in fields], dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: PR file holds a field that is not a number") from None
    if values.size != 101:
        raise DataError(f"{path}: PR file must hold 101 tab-separated values, found {values.size}")
    return values
