"""Evaluation metrics: COCO box metrics (STMENet datasets) and Pd / Fa / AUC (DeepPro protocol).

COCO part: `coco_box_metrics` scores COCO results with faster-coco-eval (default; same numbers as
pycocotools, several times faster) or pycocotools (`backend`, the reference) and adds the authors' numbers at
IoU 0.5 (AP50 as the mean of the 101-point precision curve, R, their non-standard P and F1); `COCOEvaluator`
accumulates per-image detections as arrays; `write_pr_txt` / `read_pr_txt` handle the authors' PR file
format. Ground truth is read and checked by `utils_coco.coco_to_txt.load_coco` (the reader used for
conversion and training too) and class index c means the category `category_index` gives index c.

Pd / Fa part: `pd_fa` scores one sequence at many thresholds at once, `pool_pd_fa` pools sequences and adds
the AUC. Unlike the authors' code, windows are clipped at the image border, so targets touching row or
column 0, or within 4 px of the top / left border, are scored correctly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: malformed json ({err})") from None


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


@dataclass
class Detections:
    """COCO results as arrays: image_id, category_id int64 [N], bbox float64 [N, 4] (x, y, w, h),
    score float64 [N]."""

    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray
    score: np.ndarray

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))

    @staticmethod
    def concat(parts: Sequence[Detections]) -> Detections:
        if not parts:
            return Detections.empty()
        return Detections(*(np.concatenate([getattr(p, k) for p in parts])
                            for k in ("image_id", "category_id", "bbox", "score")))

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def take(self, keep: np.ndarray) -> Detections:
        return Detections(self.image_id[keep], self.category_id[keep], self.bbox[keep], self.score[keep])

    def to_results(self) -> list[dict]:
        """Fresh COCO result dicts {image_id, category_id, bbox, score} (plain Python numbers)."""
        cols = zip(self.image_id.tolist(), self.category_id.tolist(), self.bbox.tolist(), self.score.tolist())
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in cols]


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _bad_entry(items: Sequence, ok, source: str, what: str) -> DataError:
    """The error for the first item that fails `ok` (the slow path, run once a vectorised check failed)."""
    for i, item in enumerate(items):
        if not ok(item):
            return DataError(f"{source}: entry {i} {what}")
    return DataError(f"{source}: {what.split(',')[0]} (some entry)")


def _is_id(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and -2**63 <= v < 2**63


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_box(v: object) -> bool:
    return hasattr(v, "__len__") and len(v) == 4 and all(_is_num(x) for x in v)


def _column(dets: Sequence, values: list, key: str, kinds: tuple, ok, what: str, source: str) -> np.ndarray:
    """One results column as a float64 / int64 array. The type check runs over the set of the values' types
    (a C-level map, so bools and strings are caught without a Python loop); the slow walk only names the
    first bad entry."""
    types = set(map(type, values))
    if all(issubclass(t, kinds) and not issubclass(t, (bool, np.bool_)) for t in types):
        try:
            return np.asarray(values, np.int64 if key != "score" else np.float64)
        except OverflowError:
            pass
    raise _bad_entry(dets, lambda d: ok(d[key]), source, what)


def detections_from_results(detections: str | Path | Sequence[Mapping]) -> tuple[Detections, str]:
    """A results-json path or list of result dicts -> (Detections, source name for messages). Vectorised:
    the columns are gathered with C-level maps and checked as arrays; only a failing check walks the list
    to name the first bad entry. Values are checked by `check_detections`."""
    source = str(detections) if isinstance(detections, (str, Path)) else "detections"
    if isinstance(detections, (str, Path)):
        detections = _read_json(detections, "results json")
    if not isinstance(detections, (list, tuple)):
        raise DataError(f"{source}: COCO results must be a list of dicts")
    if not detections:
        return Detections.empty(), source
    try:
        cols = {k: list(map(itemgetter(k), detections)) for k in _RESULT_KEYS}
    except (KeyError, TypeError, IndexError):
        raise _bad_entry(detections, lambda d: isinstance(d, Mapping) and all(k in d for k in _RESULT_KEYS),
                         source, f"needs keys {', '.join(_RESULT_KEYS)}") from None
    ids = (int, np.integer)
    image_id = _column(detections, cols["image_id"], "image_id", ids, _is_id, "needs an integer image_id",
                       source)
    category_id = _column(detections, cols["category_id"], "category_id", ids, _is_id,
                          "needs an integer category_id", source)
    score = _column(detections, cols["score"], "score", (int, float, np.integer, np.floating), _is_num,
                    "needs a numeric score", source)
    try:
        bbox = np.asarray(cols["bbox"])
        ok = bbox.ndim == 2 and bbox.shape[1] == 4 and bbox.dtype.kind in "iuf"
    except ValueError:  # ragged
        ok = False
    if not ok:
        raise _bad_entry(detections, lambda d: _is_box(d["bbox"]), source,
                         "bbox must be [x, y, w, h] (four numbers)") from None
    return Detections(image_id, category_id, bbox.astype(np.float64), score), source


def check_detections(dets: Detections, gt: CocoGroundTruth, source: str) -> None:
    """DataError naming the first bad entry: a NaN / inf score or box, a negative width or height, an image
    id not in the ground truth or a category id that is not one of its classes (all vectorised)."""
    if not len(dets):
        return
    bad = ~np.isfinite(dets.score)
    if bad.any():
        i = _first(bad)
        raise DataError(f"{source}: entry {i} has a non-finite score {float(dets.score[i])}")
    bad = ~np.isfinite(dets.bbox).all(axis=1)
    if bad.any():
        i = _first(bad)
        raise DataError(f"{source}: entry {i} has a non-finite bbox {dets.bbox[i].tolist()}")
    bad = (dets.bbox[:, 2:] < 0).any(axis=1)
    if bad.any():
        i = _first(bad)
        raise DataError(f"{source}: entry {i} bbox {dets.bbox[i].tolist()} has a negative width or height")
    bad = ~np.isin(dets.image_id, gt.image_ids)
    if bad.any():
        unknown = np.unique(dets.image_id[bad]).tolist()
        raise DataError(f"{source}: detections on {len(unknown)} image ids not in {gt.name} "
                        f"(e.g. {unknown[:5]}; first at entry {_first(bad)})")
    bad = ~np.isin(dets.category_id, gt.cat_ids)
    if bad.any():
        unknown = np.unique(dets.category_id[bad]).tolist()
        raise DataError(f"{source}: category ids {unknown[:5]} are not in {gt.name} (its classes have ids "
                        f"{gt.cat_ids[:5]}; first at entry {_first(bad)})")


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


# --------------------------------------------------------------------------------------------------------
# Pd / Fa / AUC
# --------------------------------------------------------------------------------------------------------

DEFAULT_THRESHOLDS = (0.0, 1e-20, 1e-10, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.2, 0.3, 0.35, 0.4,
                      0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
_COUNT_KEYS = ("tp", "targets", "fa_pixels", "pixels")


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_frames(x: Any, name: str) -> np.ndarray:
    """`x` as a numpy stack of frames [N, H, W] ([H, W] becomes one frame); `name` goes into the error."""
    arr = to_numpy(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ConfigError(f"{name} must be [N, H, W] or [H, W], got shape {list(arr.shape)}")
    return arr


def _ceil_to_dtype(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Smallest value of `dtype` >= each threshold, so `p >= t` is exact for p of that dtype."""
    t = thresholds.astype(dtype)
    low = t.astype(np.float64) < thresholds
    t[low] = np.nextafter(t[low], np.array(np.inf, dtype=dtype))
    return t


def _count_at_least(values: np.ndarray, edges: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """#(values >= e) for each threshold e. Cache-sized chunks, one vectorised comparison per threshold
    (faster than a sort- or search-based histogram for the few dozen thresholds used here)."""
    counts = np.zeros(edges.size, dtype=np.int64)
    for start in range(0, values.size, chunk):
        block = values[start:start + chunk]
        counts += [np.count_nonzero(block >= e) for e in edges]
    return counts


def _offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    return dy.ravel(), dx.ravel()


def _window_indices(f: np.ndarray, y: np.ndarray, x: np.ndarray, shape: tuple[int, int, int],
                    radius: int) -> np.ndarray:
    """Flat indices [P, (2r+1)^2] of the clipped (2r+1)^2 window around each pixel (f, y, x).

    Clipping a coordinate to the border lands on a pixel that is still inside the window, so the set of
    indices equals the window cut at the border, and a max over it is the border-correct max."""
    _, h, w = shape
    dy, dx = _offsets(radius)
    yy = np.clip(y[:, None] + dy, 0, h - 1)
    xx = np.clip(x[:, None] + dx, 0, w - 1)
    return (f[:, None] * h + yy) * w + xx


def _target_labels(lin: np.ndarray, f: np.ndarray, y: np.ndarray, x: np.ndarray,
                   shape: tuple[int, int, int]) -> tuple[int, np.ndarray]:
    """8-connected components (within each frame) of the sparse truth pixels at sorted flat indices `lin`."""
    _, h, w = shape
    rows, cols = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # forward half of the 8-neighbourhood
        ny, nx = y + dy, x + dx
        inside = (ny < h) & (nx >= 0) & (nx < w)
        nlin = (f * h + ny) * w + nx
        pos = np.minimum(np.searchsorted(lin, nlin), lin.size - 1)
        hit = inside & (lin[pos] == nlin)
        rows.append(np.flatnonzero(hit))
        cols.append(pos[hit])
    i, j = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(lin.size, lin.size))
    return connected_components(graph, directed=False)


def pd_fa(prob: Any, truth: Any, thresholds: Sequence[float] | None = None, *, detect_radius: int = 1,
          window_radius: int = 4) -> dict:
    """Pd / Fa counts of one sequence at every threshold (DeepPro protocol, border-correct).

    prob [N, H, W] (or [H, W]) float probabilities; truth [N, H, W] centroid (or mask) map, nonzero = target.
    Per frame and threshold t, B = prob >= t. Targets are the 8-connected components of truth in each
    frame; a target is detected if B is positive within `detect_radius` (3x3) of any of its pixels. False
    alarms are the positive pixels of B outside the union of the (2 * window_radius + 1)^2 (9x9) windows
    around every target pixel. Windows are clipped at the image border.
    Returns arrays over thresholds (in the given order): thresholds, tp, targets, fa_pixels, pixels (int64),
    pd = tp / targets (NaN without targets), fa = fa_pixels / pixels.
    Cost: one counting pass over prob per threshold plus work proportional to the number of truth pixels
    (about 1 s for 2,000 frames of 256x256 at 27 thresholds on one core).
    """
    prob, truth = as_frames(prob, "prob"), as_frames(truth, "truth")
    if prob.shape != truth.shape:
        raise ConfigError(f"prob {list(prob.shape)} and truth {list(truth.shape)} must have the same shape")
    if prob.dtype not in (np.float32, np.float64):
        prob = prob.astype(np.float32)
    thr = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, dtype=np.float64).ravel()
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ConfigError("thresholds must be a non-empty list of finite numbers")
    shape = prob.shape
    flat = prob.reshape(-1)
    edges, where = np.unique(_ceil_to_dtype(thr, prob.dtype), return_inverse=True)

    lin = np.flatnonzero(truth)  # sorted flat indices of target pixels
    f, rem = np.divmod(lin, shape[1] * shape[2])
    y, x = np.divmod(rem, shape[2])
    if lin.size:
        n_targets, labels = _target_labels(lin, f, y, x, shape)
        pixel_score = flat[_window_indices(f, y, x, shape, detect_radius)].max(axis=1)
        target_score = np.full(n_targets, -np.inf, dtype=prob.dtype)
        np.maximum.at(target_score, labels, pixel_score)
        tp = n_targets - np.searchsorted(np.sort(target_score), edges, side="left")
        near = np.sort(_window_indices(f, y, x, shape, window_radius), axis=None)
        near = near[np.r_[True, near[1:] != near[:-1]]]  # unique (faster than np.unique's hash here)
        fa_pixels = _count_at_least(flat, edges) - _count_at_least(flat[near], edges)
    else:
        n_targets, tp = 0, np.zeros(edges.size, dtype=np.int64)
        fa_pixels = _count_at_least(flat, edges)
    out = {"thresholds": thr, "tp": tp[where].astype(np.int64),
           "targets": np.full(thr.size, n_targets, dtype=np.int64), "fa_pixels": fa_pixels[where],
           "pixels": np.full(thr.size, flat.size, dtype=np.int64)}
    return _with_rates(out)


def _with_rates(counts: dict) -> dict:
    with np.errstate(divide="ignore", invalid="ignore"):
        pd = counts["tp"] / np.maximum(counts["targets"], 1)
        counts["pd"] = np.where(counts["targets"] > 0, pd, np.nan)
    counts["fa"] = counts["fa_pixels"] / np.maximum(counts["pixels"], 1)
    return counts


def auc(x: Sequence[float], y: Sequence[float]) -> float:
    """Trapezoidal area under y(x) for monotonic x (either direction), as sklearn.metrics.auc."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.shape != y.shape:
        raise ConfigError(f"auc needs >= 2 points and equal shapes, got {x.shape} and {y.shape}")
    dx = np.diff(x)
    direction = 1.0
    if np.any(dx < 0):
        if not np.all(dx <= 0):
            raise ConfigError("auc: x is neither increasing nor decreasing")
        direction = -1.0
    return float(direction * np.sum(dx * (y[1:] + y[:-1]) / 2.0))


def value_at(res: Mapping, key: str, threshold: float) -> float:
    """`res[key]` of a `pd_fa` / `pool_pd_fa` result at `threshold`, which must be one of its thresholds."""
    thr = np.asarray(res["thresholds"], dtype=np.float64)
    idx = np.flatnonzero(np.isclose(thr, threshold, rtol=0, atol=1e-12))
    if idx.size == 0:
        raise ConfigError(f"threshold {threshold} is not one of the scored thresholds {thr.tolist()}")
    return float(np.broadcast_to(res[key], thr.shape)[idx[0]])


def pool_pd_fa(results: Sequence[Mapping]) -> dict:
    """Pool `pd_fa` results of several sequences: counts summed, pd / fa recomputed, `auc` of pd over fa."""
    results = list(results)
    if not results:
        raise ConfigError("pool_pd_fa needs at least one pd_fa result")
    thr = np.asarray(results[0]["thresholds"], dtype=np.float64)
    for r in results[1:]:
        if not np.array_equal(np.asarray(r["thresholds"], dtype=np.float64), thr):
            raise ConfigError("pool_pd_fa: the results were computed at different thresholds")
    out = {"thresholds": thr.copy()}
    for key in _COUNT_KEYS:
        out[key] = np.sum([np.broadcast_to(np.asarray(r[key], dtype=np.int64), thr.shape) for r in results],
                          axis=0)
    out = _with_rates(out)
    out["auc"] = auc(out["fa"], out["pd"]) if thr.size > 1 else float("nan")
    return out


def iou_counts(prob: Any, mask: Any, thr: float = 0.5) -> tuple[int, int]:
    """(intersection, union) pixel counts of (prob > thr, strict as the authors) and mask, for pooled IoU."""
    prob, mask = to_numpy(prob), to_numpy(mask).astype(bool)
    if prob.shape != mask.shape:
        raise ConfigError(f"prob {list(prob.shape)} and mask {list(mask.shape)} must have the same shape")
    pred = prob > thr
    return int(np.count_nonzero(pred & mask)), int(np.count_nonzero(pred | mask))
