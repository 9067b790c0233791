"""Convert a COCO json into the authors' txt list (one line per image) for the STMENet training loader.

    python utils_coco/coco_to_txt.py --json D/instances_train2017.json --root D/ --out D/coco_train_ITSDT.txt

Line format: `<root><file_name> x1,y1,x2,y2,cls x1,y1,x2,y2,cls ...` with x1 = int(x), y1 = int(y),
x2 = x1 + int(w), y2 = y1 + int(h), cls = category_id - 1 (COCO bbox [x, y, w, h]), boxes in annotation order,
every line ending in a newline. Root and file_name are joined by plain concatenation, as in the authors'
lists (`/home/public/DAUB/` + `images/train/data5/0.bmp`); a root that does not end in `/` gets one, and an
empty root writes the file_name as is (paths relative to the dataset root, which the loader accepts).

Line order: images with annotations are ordered by the position of their first annotation (this equals
json order for the real files); an image without annotations follows the nearest annotated image before
it in json order (images before any annotated image come first, in json order).

Differences from the authors' script:
- images without annotations are written as a bare path (the authors' ITSDT lists hold such lines; their
  script dropped those images);
- it runs in linear time: annotations are grouped by image_id once (theirs scans all images per
  annotation, quadratic), and the ordering above is a bucket sort;
- the json, the root and the output are command-line arguments, not constants in the source;
- bad input (no `images` or `annotations`, an annotation whose image_id is not in `images`, a box that is
  not four numbers, an empty `images` list) raises utils.errors.DataError with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import DataError  # noqa: E402


def join_root(root: str, file_name: str) -> str:
    """The authors' join: plain concatenation, with a `/` added to a non-empty root that lacks one."""
    if root and not root.endswith("/"):
        root += "/"
    return root + file_name


def load_coco(path: str | Path) -> dict:
    """Read a COCO json and check the keys the converter and loaders need (one-line DataError)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: COCO json not found")
    try:
        coco = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable json file ({str(err).splitlines()[0]})") from err
    check_coco(coco, str(path))
    return coco


def check_coco(coco: object, name: str = "<json>") -> None:
    if not isinstance(coco, dict):
        raise DataError(f"{name}: a COCO json must be an object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{name}: COCO json has no '{key}' list")
    if not coco["images"]:
        raise DataError(f"{name}: COCO json lists no images (empty split)")


def coco_to_lines(coco: dict, root: str = "", name: str = "<json>") -> list[str]:
    """The authors' txt lines (without newlines) for a COCO dict, in the order described above."""
    check_coco(coco, name)
    images = coco["images"]
    pos_of: dict[object, int] = {}
    for j, img in enumerate(images):
        try:
            pos_of[img["id"]] = j
            str(img["file_name"])
        except (KeyError, TypeError) as err:
            raise DataError(f"{name}: image entry {j} lacks 'id' or 'file_name'") from err
    boxes: list[list[str]] = [[] for _ in images]
    first: list[int] = [-1] * len(images)
    for a_idx, ann in enumerate(coco["annotations"]):
        try:
            image_id, bbox, cat = ann["image_id"], ann["bbox"], ann["category_id"]
        except (KeyError, TypeError) as err:
            raise DataError(f"{name}: annotation {a_idx} lacks 'image_id', 'bbox' or 'category_id'") from err
        try:
            j = pos_of.get(image_id)
        except TypeError:  # an unhashable id (a list, an object)
            j = None
        if j is None:
            raise DataError(f"{name}: annotation {a_idx} points at image_id {image_id!r}, "
                            "which is not in 'images'")
        try:
            x, y, w, h = (float(v) for v in bbox)
            x1, y1 = int(x), int(y)
            boxes[j].append(f"{x1},{y1},{x1 + int(w)},{y1 + int(h)},{int(cat) - 1}")
        except (TypeError, ValueError, OverflowError) as err:
            raise DataError(f"{name}: annotation {a_idx} has a malformed bbox {bbox!r}") from err
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
