"""COCO jsons as labelling tools write them: one category -> class rule for conversion, training and
evaluation, annotation ids renumbered, checks of the ground truth and of results, the real DAUB json."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from utils.coco_metrics import COCO_BACKENDS, COCOEvaluator, coco_box_metrics, load_coco_gt
from utils.detection import gt_targets
from utils.errors import DataError
from utils_coco.coco_to_txt import OUTSIDE_TOLERANCE, category_index, check_coco, coco_to_lines, load_coco

# Boxes of three 64x48 frames: (image position, bbox, category position in CLASSES).
BOXES = [(0, [10, 12, 6, 5], 0), (0, [40, 30, 8, 7], 1), (1, [11.5, 12, 6, 5], 0), (2, [3, 4, 9, 9], 1)]


def _images(first_id: int) -> list[dict]:
    return [{"id": first_id + i, "file_name": f"images/seq1/{i}.png", "width": 64, "height": 48}
            for i in range(3)]


def cvat() -> dict:
    """CVAT 'COCO 1.0': ids from 1, empty supercategory, extra keys on every entry."""
    images = [dict(im, license=0, flickr_url="", coco_url="", date_captured=0) for im in _images(1)]
    cats = [{"id": 1, "name": "target", "supercategory": ""}, {"id": 2, "name": "bird", "supercategory": ""}]
    anns = [{"id": k + 1, "image_id": i + 1, "category_id": c + 1, "segmentation": [], "area": b[2] * b[3],
             "bbox": b, "iscrowd": 0, "attributes": {"occluded": False}} for k, (i, b, c) in enumerate(BOXES)]
    return {"licenses": [{"name": "", "id": 0, "url": ""}], "info": {}, "categories": cats, "images": images,
            "annotations": anns}


def label_studio() -> dict:
    """Label Studio: image, category and annotation ids from 0, no supercategory."""
    cats = [{"id": 0, "name": "target"}, {"id": 1, "name": "bird"}]
    anns = [{"id": k, "image_id": i, "category_id": c, "segmentation": [], "bbox": b, "ignore": 0,
             "iscrowd": 0, "area": b[2] * b[3]} for k, (i, b, c) in enumerate(BOXES)]
    return {"images": _images(0), "categories": cats, "annotations": anns,
            "info": {"year": 2024, "version": "1.0", "contributor": "Label Studio"}}


def roboflow() -> dict:
    """Roboflow: id 0 is the dataset's parent entry (no annotation uses it), the classes follow from 1."""
    cats = [{"id": 0, "name": "targets-x1yz", "supercategory": "none"},
            {"id": 1, "name": "target", "supercategory": "targets-x1yz"},
            {"id": 2, "name": "bird", "supercategory": "targets-x1yz"}]
    anns = [{"id": k, "image_id": i, "category_id": c + 1, "bbox": b, "area": b[2] * b[3], "segmentation": [],
             "iscrowd": 0} for k, (i, b, c) in enumerate(BOXES)]
    return {"info": {}, "licenses": [], "categories": cats, "images": _images(0), "annotations": anns}


def with_gaps() -> dict:
    """Hand-edited: category ids 3 and 9 in use, 5 declared but unused (still a class), listed unsorted;
    annotation ids all 7; no area or iscrowd."""
    cats = [{"id": 9, "name": "bird"}, {"id": 5, "name": "plane"}, {"id": 3, "name": "target"}]
    anns = [{"id": 7, "image_id": i + 10, "category_id": (3, 9)[c], "bbox": b} for i, b, c in BOXES]
    return {"images": _images(10), "categories": cats, "annotations": anns}


TOOLS = {"cvat": (cvat, {1: 0, 2: 1}), "label_studio": (label_studio, {0: 0, 1: 1}),
         "roboflow": (roboflow, {1: 0, 2: 1}), "gaps": (with_gaps, {3: 0, 5: 1, 9: 2})}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_one_class_rule_for_conversion_training_and_evaluation(tool, tmp_path):
    make, expected = TOOLS[tool]
    raw = make()
    path = tmp_path / f"{tool}.json"
    path.write_text(json.dumps(raw))
    coco = load_coco(path)
    index = category_index(coco)
    assert index == expected
    # Training: the txt list and the validation-loss targets carry the same class indices.
    targets = gt_targets(coco)
    lines = coco_to_lines(raw, "", str(path))
    first = min(im["id"] for im in raw["images"])
    for line in lines:
        name, *boxes = line.split()
        image_id = first + int(name.rsplit("/", 1)[1].split(".")[0])
        rows = [[int(v) for v in b.split(",")] for b in boxes]
        assert rows == targets.get(image_id, np.zeros((0, 5))).tolist()
    want = {(first + i, index[coco["annotations"][k]["category_id"]]) for k, (i, _, _) in enumerate(BOXES)}
    assert {(i, int(c)) for i, t in targets.items() for c in t[:, 4]} == want
    # Evaluation: detections the model would output for these targets (class index -> category) are perfect.
    for backend in COCO_BACKENDS:
        ev = COCOEvaluator(path, backend=backend)
        ids = sorted(targets)
        ev.process(ids, [np.c_[t[:, :4], np.full(len(t), 0.9), t[:, 4]] for t in map(targets.get, ids)])
        cats = sorted(a["category_id"] for a in raw["annotations"])
        assert sorted(r["category_id"] for r in ev.results) == cats
        m = ev.evaluate()
        assert m["ap50"] == pytest.approx(1.0) and m["R"] == pytest.approx(1.0), (tool, backend)
        # Exact boxes (the int targets truncate 11.5): AP at every IoU threshold is 1.
        exact = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                 for a in raw["annotations"]]
        assert coco_box_metrics(path, exact, backend=backend)["stats"][0] == pytest.approx(1.0)


def test_supercategory_rule_edges():
    base = {"images": _images(1), "annotations": [{"image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4]}]}
    # A parent entry that annotations do use is a class.
    cats = [{"id": 1, "name": "animals", "supercategory": "none"}, {"id": 2, "name": "bird",
                                                                     "supercategory": "animals"}]
    used = dict(base, categories=cats, annotations=base["annotations"] + [
        {"image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4]}])
    assert category_index(check_coco(used)) == {1: 0, 2: 1}
    assert category_index(check_coco(dict(base, categories=cats))) == {2: 0}
    # A category naming itself as its supercategory is not a parent entry.
    selfish = [{"id": 1, "name": "bird", "supercategory": "bird"}, {"id": 2, "name": "plane"}]
    assert category_index(check_coco(dict(base, categories=selfish))) == {1: 0, 2: 1}


@pytest.mark.parametrize("backend", COCO_BACKENDS)
def test_annotation_ids_zero_or_repeated_are_renumbered(tmp_path, backend):
    raw = label_studio()  # ids 0, 1, 2, 3
    for ids in ([0, 0, 0, 0], [5, 5, 2, 2], [0, 1, 2, 3]):
        for a, k in zip(raw["annotations"], ids):
            a["id"] = k
        before = copy.deepcopy(raw)
        path = tmp_path / "ids.json"
        path.write_text(json.dumps(raw))
        perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                    "score": 0.5 + 0.1 * k} for k, a in enumerate(raw["annotations"])]
        m = coco_box_metrics(path, perfect, backend=backend)
        assert m["ap50"] == pytest.approx(1.0) and m["stats"][0] == pytest.approx(1.0), ids
        gt = load_coco_gt(raw)
        assert [a["id"] for a in gt.dataset["annotations"]] == [1, 2, 3, 4]
        assert raw == before  # the caller's dict is not changed


def test_missing_area_and_iscrowd_are_filled():
    coco = check_coco(with_gaps(), "gaps.json")
    assert [a["area"] for a in coco["annotations"]] == [b[2] * b[3] for _, b, _ in BOXES]
    assert {a["iscrowd"] for a in coco["annotations"]} == {0}


def _bad(edit) -> str:
    coco = cvat()
    edit(coco)
    with pytest.raises(DataError) as err:
        coco_to_lines(coco, "/data/", "tool.json")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("tool.json: ")
    return msg


def test_ground_truth_errors_name_the_json_and_the_entry():
    assert "image id 2 is repeated (image entries 1 and 2)" in _bad(lambda c: c["images"][2].update(id=2))
    assert "image entry 0 has id True" in _bad(lambda c: c["images"][0].update(id=True))
    assert "annotation 3 has a box of non-positive size" in _bad(
        lambda c: c["annotations"][3].update(bbox=[3, 4, 9, -1]))
    assert "annotation 1 has a malformed bbox [40, 30, nan, 7]" in _bad(
        lambda c: c["annotations"][1].update(bbox=[40, 30, float("nan"), 7]))
    assert "annotation 0 box [-5, 12, 6, 5] lies outside its 64x48 image (image_id 1)" in _bad(
        lambda c: c["annotations"][0].update(bbox=[-5, 12, 6, 5]))
    assert "annotation 2 box [58.5, 12, 6.6, 5] lies outside" in _bad(
        lambda c: c["annotations"][2].update(bbox=[58.5, 12, 6.6, 5]))  # 1.1 px past the right border
    assert "annotation 1 has category_id 0, which is not in 'categories'" in _bad(
        lambda c: c["annotations"][1].update(category_id=0))
    assert "image entry 1 file_name 'images/seq1/my frame.png' holds whitespace" in _bad(
        lambda c: c["images"][1].update(file_name="images/seq1/my frame.png"))
    assert "image entry 2 has width -64" in _bad(lambda c: c["images"][2].update(width=-64))
    with pytest.raises(DataError, match="the root '/data/my set/' holds whitespace"):
        coco_to_lines(cvat(), "/data/my set/", "tool.json")


def test_boxes_may_touch_the_border_within_the_tolerance():
    coco = cvat()
    coco["annotations"][0]["bbox"] = [-OUTSIDE_TOLERANCE, 0, 64 + 2 * OUTSIDE_TOLERANCE, 48]  # 1 px each side
    assert coco_to_lines(coco, "")[0].split()[1] == "-1,0,65,48,0"
    del coco["images"][0]["width"]  # size unknown: not checked
    coco["annotations"][0]["bbox"] = [500, 0, 10, 10]
    check_coco(coco, "tool.json")


def test_results_checks_name_the_entry(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(cvat()))
    good = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in cvat()["annotations"]]
    # A results file whose boxes are all NaN used to score AP50 = 100.
    res = tmp_path / "nan_results.json"
    res.write_text(json.dumps([dict(d, bbox=[float("nan")] * 4) for d in good]))
    with pytest.raises(DataError, match=r"nan_results.json: entry 0 has a non-finite bbox \[nan, nan"):
        coco_box_metrics(gt, res)
    cases = [(dict(score=float("inf")), "entry 2 has a non-finite score inf"),
             (dict(bbox=[1, 2, 3, -4]), r"entry 2 bbox \[1.0, 2.0, 3.0, -4.0\] has a negative width"),
             (dict(bbox=[1, 2, 3]), r"entry 2 bbox must be \[x, y, w, h\]"),
             (dict(bbox="1 2 3 4"), r"entry 2 bbox must be \[x, y, w, h\]"),
             (dict(score="0.9"), "entry 2 needs a numeric score"),
             (dict(score=True), "entry 2 needs a numeric score"),
             (dict(image_id=2.0), "entry 2 needs an integer image_id"),
             (dict(category_id=None), "entry 2 needs an integer category_id"),
             (dict(image_id=99), r"1 image ids not in .*gt.json \(e.g. \[99\]; first at entry 2\)"),
             (dict(image_id=2**70), "entry 2 needs an integer image_id"),
             (dict(category_id=3), r"category ids \[3\] are not in .*first at entry 2")]
    for change, match in cases:
        dets = copy.deepcopy(good)
        dets[2].update(change)
        with pytest.raises(DataError, match=match) as err:
            coco_box_metrics(gt, dets)
        assert str(err.value).startswith("detections: entry 2") or "first at entry 2" in str(err.value)
    with pytest.raises(DataError, match="entry 1 needs keys image_id, category_id, bbox, score"):
        coco_box_metrics(gt, [good[0], {k: v for k, v in good[1].items() if k != "score"}])
    with pytest.raises(DataError, match="entry 0 needs keys"):
        coco_box_metrics(gt, [[1, 2, 3]])
    # Zero-size boxes and boxes past the border are legal results (they just do not match).
    ok = copy.deepcopy(good)
    ok[0]["bbox"] = [10, 12, 0, 0]
    ok[1]["bbox"] = [60, 40, 30, 30]
    assert coco_box_metrics(gt, ok)["R"] == pytest.approx(0.5)


def test_real_daub_json(ref_dir):
    """The authors' DAUB train json: its one category is class 0, and both backends give the same numbers
    on a detector-like result (truth boxes jittered, random scores, false positives)."""
    path = ref_dir / "annotations" / "DAUB_instances_train2017.json"
    gt = load_coco_gt(path)
    assert gt.cat_ids == [1] and len(gt.image_ids) == len(gt.annotated_ids) == 8982
    rng = np.random.default_rng(0)
    anns = gt.dataset["annotations"][::3]
    jitter = rng.normal(0, 1.0, (len(anns), 4))
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": (np.array(a["bbox"]) + j).tolist(),
             "score": float(s)} for a, j, s in zip(anns, jitter, rng.random(len(anns)))]
    dets += [{"image_id": int(i), "category_id": 1, "bbox": [float(x), float(y), 8.0, 8.0], "score": float(s)}
             for i, x, y, s in zip(rng.choice(gt.image_ids, 2000), rng.uniform(0, 248, 2000),
                                   rng.uniform(0, 248, 2000), rng.random(2000) * 0.5)]
    fast = coco_box_metrics(gt, dets, backend="faster")
    ref = coco_box_metrics(gt, dets, backend="pycocotools")
    np.testing.assert_allclose(fast["stats"], ref["stats"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast["precision_50"], ref["precision_50"], rtol=0, atol=1e-12)
    assert fast["R"] == ref["R"] and 0.2 < ref["ap50"] < 0.34  # a third of the targets, most matched
