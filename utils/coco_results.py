"""COCO detection results as arrays, read and checked (vectorised) before scoring.

`detections_from_results` turns a results json path or a list of dicts into `Detections`; every entry is
checked at once (keys, types, finite values, non-negative sizes), and `check_detections` checks them against
the ground truth (image and category ids). A bad entry is named in a one-line DataError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.errors import DataError

if TYPE_CHECKING:
    from utils.coco_metrics import CocoGroundTruth

_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def read_json(path: str | Path, what: str) -> Any:
    """A json file's contents; DataError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: malformed json ({err})") from None


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
        detections = read_json(detections, "results json")
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


__all__ = ["Detections", "check_detections", "detections_from_results", "read_json"]
