"""utils_coco/coco_to_txt.py: the authors' lines exactly, ordering, root joining, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.errors import DataError
from utils_coco.coco_to_txt import coco_to_lines, convert, join_root, load_coco

ROOT = Path(__file__).resolve().parents[1]


def _coco(images, anns, cat_ids=(1,)):
    imgs = [{"id": i, "file_name": f"images/s/{n}.bmp", "width": 16, "height": 16} for i, n in images]
    return {"images": imgs,
            "annotations": [{"image_id": i, "bbox": b, "category_id": c} for i, b, c in anns],
            "categories": [{"id": c, "name": f"class{c}"} for c in cat_ids]}


def test_reproduces_the_authors_daub_list(ref_dir, tmp_path):
    ann = ref_dir / "annotations"
    out = tmp_path / "coco_train_DAUB.txt"
    n = convert(ann / "DAUB_instances_train2017.json", "/home/public/DAUB/", out)
    ours = out.read_text().splitlines(keepends=True)
    theirs = (ann / "coco_train_DAUB.txt").read_text().splitlines(keepends=True)
    assert n == len(theirs) == 8982
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"line {i + 1}: {a!r} != {b!r}"
    assert out.read_bytes() == (ann / "coco_train_DAUB.txt").read_bytes()


def test_box_arithmetic_and_classes():
    # Classes are the categories sorted by id (ids 1 and 3: classes 0 and 1), not category_id - 1.
    coco = _coco([(1, 0)], [(1, [3.7, 4.2, 5.9, 2.5], 1), (1, [0, 1, 2, 3], 3)], cat_ids=(3, 1))
    assert coco_to_lines(coco, "/r/") == ["/r/images/s/0.bmp 3,4,8,6,0 0,1,2,4,1"]


def test_order_and_unannotated_images():
    # json order 0..4; annotations list image 3 first, then 1; 0, 2 and 4 have no box.
    coco = _coco([(10, 0), (11, 1), (12, 2), (13, 3), (14, 4)],
                 [(13, [1, 1, 2, 2], 1), (11, [2, 2, 2, 2], 1), (13, [5, 5, 2, 2], 1)])
    lines = coco_to_lines(coco, "")
    assert lines == ["images/s/0.bmp", "images/s/3.bmp 1,1,3,3,0 5,5,7,7,0", "images/s/4.bmp",
                     "images/s/1.bmp 2,2,4,4,0", "images/s/2.bmp"]
    # With annotations in json order the lines are in json order (the real files).
    coco = _coco([(1, 0), (2, 1), (3, 2)], [(1, [1, 1, 2, 2], 1), (3, [1, 1, 2, 2], 1)])
    assert [line.split()[0] for line in coco_to_lines(coco)] == [f"images/s/{i}.bmp" for i in range(3)]


def test_root_joining():
    assert join_root("/home/public/DAUB/", "images/a/0.bmp") == "/home/public/DAUB/images/a/0.bmp"
    assert join_root("/data/x", "images/a/0.bmp") == "/data/x/images/a/0.bmp"
    assert join_root("", "images/a/0.bmp") == "images/a/0.bmp"


def test_linear_time():
    n = 60000
    coco = _coco([(i, i) for i in range(n)], [(i, [1, 1, 2, 2], 1) for i in range(n - 1, -1, -2)])
    t0 = time.perf_counter()
    lines = coco_to_lines(coco, "")
    assert time.perf_counter() - t0 < 5.0
    assert len(lines) == n and lines[0] == "images/s/0.bmp" and lines[1].startswith(f"images/s/{n - 1}.bmp")


@pytest.mark.parametrize("coco, match", [
    ({"annotations": []}, "no 'images'"),
    ({"images": [{"id": 1, "file_name": "a/0.bmp"}]}, "no 'annotations'"),
    ({"images": [], "annotations": []}, "empty split"),
    (_coco([(1, 0)], [(2, [0, 0, 1, 1], 1)]), "image_id 2, which is not in 'images'"),
    (_coco([(1, 0)], [(1, [0, 0, 1], 1)]), "malformed bbox"),
    ([1, 2], "must be an object"),
])
def test_bad_json(tmp_path, coco, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=match) as err:
        convert(path, "", tmp_path / "out.txt")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unreadable_json_and_cli_exit_code(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a readable json"):
        load_coco(bad)
    with pytest.raises(DataError, match="not found"):
        load_coco(tmp_path / "missing.json")
    proc = subprocess.run([sys.executable, "utils_coco/coco_to_txt.py", "--json", str(bad), "--root", "",
                           "--out", str(tmp_path / "o.txt")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "broken.json" in proc.stderr
