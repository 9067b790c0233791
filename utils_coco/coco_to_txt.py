"""Convert a COCO json into the authors' txt list (one line per image) for the STMENet training loader.

    python utils_coco/coco_to_txt.py --json D/instances_train2017.json --root D/ --out D/coco_train_ITSDT.txt

This module is also the one reader of COCO instances jsons for conversion, training and evaluation:
`load_coco` reads and checks a json (`check_coco`), `category_index` maps its categories to class indices.

Line format: `<root><file_name> x1,y1,x2,y2,cls x1,y1,x2,y2,cls ...` with x1 = int(x), y1 = int(y),
x2 = x1 + int(w), y2 = y1 + int(h), cls = the class index of the category (`category_index`; for the authors'
jsons, one category with id 1, this is category_id - 1) (COCO bbox [x, y, w, h]), boxes in annotation order,
every line ending in a newline. Root and file_name are joined by plain concatenation, as in the authors'
lists (`/home/public/DAUB/` + `images/train/data5/0.bmp`); a root that does not end in `/` gets one, and an
empty root writes the file_name as is (paths relative to the dataset root, which the loader accepts).

Line order: images with annotations are ordered by the position of their first annotation (this equals
json order for the real files); an image without annotations follows the nearest annotated image before
it in json order (images before any annotated image come first, in json order).

Classes (`category_index`, the same rule in conversion, training and evaluation): the categories sorted by
id are the classes 0, 1, 2, ..., except a category that no annotation uses and whose name is the
supercategory of another category (the parent entry Roboflow and others write). So ids may start at 0
(Label Studio), at 1 (the authors, CVAT) or have gaps; a category absent from one split keeps its index.

What `check_coco` rejects (one-line DataError naming the json and the entry) and repairs:
- no `images` / `annotations` / `categories` list, no images (empty split);
- an image without an integer `id` or a non-empty string `file_name`, a repeated image id, a width or
  height that is not a number >= 0 (0 or absent = unknown);
- a category without an integer `id`, a repeated category id;
- an annotation that is not an object, lacks `image_id`, `bbox` or `category_id`, points at an image or a
  category not in the json, has a bbox that is not four finite numbers, a width or height <= 0, or a box
  that leaves its image by more than 1 px (`OUTSIDE_TOLERANCE`; checked where the image size is known);
- repaired: annotation ids are set to 1..N in list order (COCOeval reads id 0 as "no match", so repeated
  or zero ids would corrupt the scores), a missing `area` becomes w * h, a missing `iscrowd` becomes 0.
The converter also rejects file names (and roots) holding whitespace, which the txt format cannot hold.

Differences from the authors' script:
- images without annotations are written as a bare path (the authors' ITSDT lists hold such lines; their
  script dropped those images);
- it runs in linear time: annotations are grouped by image_id once (theirs scans all images per
  annotation, quadratic), and the ordering above is a bucket sort;
- the json, the root and the output are command-line arguments, not constants in the source;
- classes follow `category_index` instead of category_id - 1 (the same for the authors' jsons);
- bad input raises utils.errors.DataError with a one-line message (see above).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import DataError  # noqa: E402

OUTSIDE_TOLERANCE = 1.0  # px a box may reach past the image border (tools that store the exclusive end)


def join_root(root: str, file_name: str) -> str:
    """The authors' join: plain concatenation, with a `/` added to a non-empty root that lacks one."""
    if root and not root.endswith("/"):
        root += "/"
    return root + file_name


def load_coco(path: str | Path) -> dict:
    """Read a COCO instances json -> the checked, normalised dict of `check_coco` (one-line DataError)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: COCO json not found")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable json file ({str(err).splitlines()[0]})") from err
    return check_coco(coco, str(path))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: object) -> bool:
    try:
        return _is_number(v) and math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _check_images(images: list, name: str) -> dict[int, tuple[float, float]]:
    """image id -> (width, height) (0 = unknown); DataError on a broken entry or a repeated id."""
    sizes: dict[int, tuple[float, float]] = {}
    first: dict[int, int] = {}
    for j, img in enumerate(images):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DataError(f"{name}: image entry {j} lacks 'id' or 'file_name'")
        image_id, file_name = img["id"], img["file_name"]
        if not _is_int(image_id):
            raise DataError(f"{name}: image entry {j} has id {image_id!r}; image ids are integers")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{name}: image entry {j} has file_name {file_name!r}; want a relative path")
        if image_id in first:
            raise DataError(f"{name}: image id {image_id} is repeated (image entries {first[image_id]} "
                            f"and {j})")
        first[image_id] = j
        wh = [img.get(k, 0) for k in ("width", "height")]
        if not all(_finite(v) and v >= 0 for v in wh):
            raise DataError(f"{name}: image entry {j} has width {img.get('width')!r}, height "
                            f"{img.get('height')!r}; want numbers (0 or absent = unknown)")
        sizes[image_id] = (float(wh[0]), float(wh[1]))
    return sizes


def _check_categories(categories: list, name: str) -> None:
    first: dict[int, int] = {}
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise DataError(f"{name}: category entry {k} lacks an integer 'id'")
        if cat["id"] in first:
            raise DataError(f"{name}: category id {cat['id']} is repeated (category entries "
                            f"{first[cat['id']]} and {k})")
        first[cat["id"]] = k


def _checked_annotation(i: int, ann: object, sizes: dict, cat_ids: set, name: str) -> dict:
    """One annotation checked -> a new dict with id i + 1 and `area`, `iscrowd` filled in."""
    if not isinstance(ann, dict):
        raise DataError(f"{name}: annotation {i} is not an object")
    if any(k not in ann for k in ("image_id", "bbox", "category_id")):
        raise DataError(f"{name}: annotation {i} lacks 'image_id', 'bbox' or 'category_id'")
    image_id, bbox, cat = ann["image_id"], ann["bbox"], ann["category_id"]
    if not _is_int(image_id) or image_id not in sizes:
        raise DataError(f"{name}: annotation {i} points at image_id {image_id!r}, which is not in 'images'")
    if not _is_int(cat) or cat not in cat_ids:
        raise DataError(f"{name}: annotation {i} has category_id {cat!r}, which is not in 'categories'")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_finite(v) for v in bbox):
        raise DataError(f"{name}: annotation {i} has a malformed bbox {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise DataError(f"{name}: annotation {i} has a box of non-positive size {bbox!r} (want w, h > 0)")
    iw, ih = sizes[image_id]
    t = OUTSIDE_TOLERANCE
    if (iw and (x < -t or x + w > iw + t)) or (ih and (y < -t or y + h > ih + t)):
        raise DataError(f"{name}: annotation {i} box {bbox!r} lies outside its {iw:g}x{ih:g} image "
                        f"(image_id {image_id})")
    area, crowd = ann.get("area", w * h), ann.get("iscrowd", 0)
    if not _finite(area) or area < 0 or crowd not in (0, 1):
        raise DataError(f"{name}: annotation {i} has area {area!r}, iscrowd {crowd!r}; want a number >= 0 "
                        "and 0 or 1")
    return {**ann, "id": i + 1, "area": area, "iscrowd": int(crowd)}


def _ints(values: Iterable) -> bool:
    return all(issubclass(t, int) and t is not bool for t in set(map(type, values)))


def _numbers(values: Iterable) -> bool:
    return all(issubclass(t, (int, float)) and t is not bool for t in set(map(type, values)))


def _checked_annotations(anns: list, sizes: dict, cat_ids: set, name: str) -> list[dict]:
    """`_checked_annotation` of every entry. The columns are checked at once (C-level maps, numpy); only when
    a check fails does the per-entry walk run, to name the first bad entry."""
    if not anns:
        return []
    try:
        if not all(issubclass(t, dict) for t in set(map(type, anns))):
            raise ValueError
        image_ids = list(map(itemgetter("image_id"), anns))
        cats = list(map(itemgetter("category_id"), anns))
        boxes = list(map(itemgetter("bbox"), anns))
        if not _numbers(chain.from_iterable(boxes)):
            raise ValueError
        box = np.asarray(boxes)
        area = list(map(dict.get, anns, repeat("area"), repeat(None)))
        crowd = list(map(dict.get, anns, repeat("iscrowd"), repeat(0)))
        if not (_ints(image_ids) and _ints(cats) and set(image_ids) <= sizes.keys() and set(cats) <= cat_ids
                and box.ndim == 2 and box.shape[1] == 4 and box.dtype.kind in "iuf" and set(crowd) <= {0, 1}):
            raise ValueError
        box = box.astype(np.float64)
        wh = np.array([sizes[i] for i in image_ids], np.float64).reshape(-1, 2)
        t = OUTSIDE_TOLERANCE
        x2, y2 = box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]
        outside = ((wh[:, 0] > 0) & ((box[:, 0] < -t) | (x2 > wh[:, 0] + t))) | \
                  ((wh[:, 1] > 0) & ((box[:, 1] < -t) | (y2 > wh[:, 1] + t)))
        known = [a is not None for a in area]
        given = [a for a in area if a is not None]
        if not _numbers(given):
            raise ValueError
        area_ok = np.asarray(given)
        if not (np.isfinite(box).all() and (box[:, 2:] > 0).all() and not outside.any()
                and (not area_ok.size or (area_ok.dtype.kind in "iuf" and np.isfinite(area_ok).all()
                                          and (area_ok >= 0).all()))):
            raise ValueError
    except (KeyError, TypeError, ValueError, OverflowError):
        return [_checked_annotation(i, a, sizes, cat_ids, name) for i, a in enumerate(anns)]
    # Entries that already hold id k + 1, an area and an integer iscrowd are kept as they are (no copy).
    ids = list(map(dict.get, anns, repeat("id"), repeat(None)))
    same = [i == k and has and type(c) is int and "iscrowd" in a
            for k, i, has, c, a in zip(range(1, len(anns) + 1), ids, known, crowd, anns)]
    if all(same):
        return list(anns)
    filled = (box[:, 2] * box[:, 3]).tolist()
    return [a if ok else {**a, "id": k + 1, "area": ar if has else fill, "iscrowd": int(c)}
            for k, (a, ok, ar, has, fill, c) in enumerate(zip(anns, same, area, known, filled, crowd))]


def check_coco(coco: object, name: str = "<json>") -> dict:
    """Check a COCO instances dict (see the module docstring) -> a normalised shallow copy: the same images
    and categories, annotations with ids 1..N and `area` / `iscrowd` filled in (an entry that needs a change
    is a new dict: the input is left unchanged)."""
    if not isinstance(coco, dict):
        raise DataError(f"{name}: a COCO json must be an object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{name}: COCO json has no '{key}' list")
    if not coco["images"]:
        raise DataError(f"{name}: COCO json lists no images (empty split)")
    if not isinstance(coco.get("categories"), list):
        raise DataError(f"{name}: COCO json has no 'categories' list (want [{{\"id\": 1, \"name\": ...}}])")
    sizes = _check_images(coco["images"], name)
    _check_categories(coco["categories"], name)
    cat_ids = {c["id"] for c in coco["categories"]}
    anns = _checked_annotations(coco["annotations"], sizes, cat_ids, name)
    return {**coco, "annotations": anns}


def category_index(coco: dict) -> dict[int, int]:
    """{category_id: class index} of a checked COCO dict (the rule of the module docstring): categories
    sorted by id, without unused entries that are the supercategory of another category."""
    cats = coco["categories"]
    used = {a["category_id"] for a in coco["annotations"]}
    parents = {c.get("supercategory") for c in cats if c.get("supercategory") != c.get("name")}
    ids = sorted(c["id"] for c in cats if c["id"] in used or c.get("name") not in parents)
    return {cat_id: k for k, cat_id in enumerate(ids)}


def coco_to_lines(coco: dict, root: str = "", name: str = "<json>") -> list[str]:
    """The authors' txt lines (without newlines) for a COCO dict, in the order described above."""
    coco = check_coco(coco, name)
    if any(c.isspace() for c in root):
        raise DataError(f"{name}: the root {root!r} holds whitespace, which the txt list cannot hold")
    images = coco["images"]
    pos_of = {img["id"]: j for j, img in enumerate(images)}
    for j, img in enumerate(images):
        if any(c.isspace() for c in img["file_name"]):
            raise DataError(f"{name}: image entry {j} file_name {img['file_name']!r} holds whitespace, which "
                            "the txt list cannot hold (rename the file)")
    classes = category_index(coco)
    boxes: list[list[str]] = [[] for _ in images]
    first: list[int] = [-1] * len(images)
    for a_idx, ann in enumerate(coco["annotations"]):
        j = pos_of[ann["image_id"]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, y1 = int(x), int(y)
        boxes[j].append(f"{x1},{y1},{x1 + int(w)},{y1 + int(h)},{classes[ann['category_id']]}")
        if first[j] < 0:
            first[j] = a_idx
    # Bucket sort: bucket 0 holds the images before any annotated one; bucket a+1 the image whose first
    # annotation is a, followed by the unannotated images after it in json order.
    buckets: list[list[int]] = [[] for _ in range(len(coco["annotations"]) + 1)]
    current = 0
    for j in range(len(images)):
        if first[j] >= 0:
            current = first[j] + 1
        buckets[current].append(j)
    lines = []
    for bucket in buckets:
        for j in bucket:
            path = join_root(root, str(images[j]["file_name"]))
            lines.append(" ".join([path, *boxes[j]]))
    return lines


def convert(json_path: str | Path, root: str, out: str | Path) -> int:
    """Write the txt list for `json_path`; returns the number of lines."""
    lines = coco_to_lines(load_coco(json_path), root, str(json_path))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="COCO json (images, annotations)")
    p.add_argument("--root", required=True, help="dataset root prepended to every file_name ('' = relative)")
    p.add_argument("--out", required=True, help="txt list to write")
    a = p.parse_args(argv)
    n = convert(a.json, a.root, a.out)
    print(f"wrote {n} lines to {a.out}")


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
