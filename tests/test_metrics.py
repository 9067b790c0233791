"""Metrics on hand-made cases: Pd/Fa counts, COCO box metrics vs. pycocotools, the authors' published AUCs."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from tests.conftest import bench_module
from utils import coco_metrics
from utils.coco_metrics import (
    COCO_BACKENDS,
    COCOEvaluator,
    _cocoeval,
    coco_box_metrics,
    format_coco_table,
    load_coco_gt,
    read_pr_txt,
    resolve_backend,
    write_pr_txt,
)
from utils.coco_results import detections_from_results
from utils.errors import ConfigError, DataError
from utils.metrics import DEFAULT_THRESHOLDS, auc, iou_counts, pd_fa, pool_pd_fa
from utils.report import eval_txt_messages, format_pd_fa_table, write_eval_txt, write_json

# ------------------------------------------------------------------------------------------------------
# Pd / Fa
# ------------------------------------------------------------------------------------------------------


def brute_pd_fa(prob, truth, thresholds, r_det=1, r_win=4):
    """Literal loop implementation of the border-correct protocol (reference for small inputs)."""
    tp, fa, targets = [], [], 0
    eight = np.ones((3, 3), bool)
    per_frame = [ndimage.label(t, structure=eight) for t in truth]
    targets = sum(k for _, k in per_frame)
    for t in thresholds:
        b = prob >= t
        n_tp = n_fa = 0
        for f, (lab, k) in enumerate(per_frame):
            near = np.zeros(lab.shape, bool)
            for i in range(1, k + 1):
                hit = False
                for y, x in zip(*np.nonzero(lab == i)):
                    near[max(y - r_win, 0):y + r_win + 1, max(x - r_win, 0):x + r_win + 1] = True
                    hit |= bool(b[f, max(y - r_det, 0):y + r_det + 1, max(x - r_det, 0):x + r_det + 1].any())
                n_tp += hit
            n_fa += int(np.count_nonzero(b[f] & ~near))
        tp.append(n_tp)
        fa.append(n_fa)
    return np.array(tp), targets, np.array(fa)


def test_target_at_corner_and_window_edges():
    # Target at (0, 0): the authors' slicing cannot see it; we clip windows at the border.
    prob = np.zeros((1, 10, 10), np.float32)
    truth = np.zeros((1, 10, 10), bool)
    truth[0, 0, 0] = True
    prob[0, 1, 1] = 0.7   # diagonal neighbour: detects the target
    prob[0, 4, 4] = 0.9   # inside the 9x9 window, not adjacent: neither a hit nor a false alarm
    prob[0, 5, 0] = 0.55  # 5 rows away: false alarm
    prob[0, 9, 9] = 0.6   # false alarm
    r = pd_fa(prob, truth, [0.5, 0.65, 0.8, 0.95])
    assert r["targets"].tolist() == [1, 1, 1, 1]
    assert r["tp"].tolist() == [1, 1, 0, 0]
    assert r["fa_pixels"].tolist() == [2, 0, 0, 0]
    assert r["pixels"].tolist() == [100] * 4
    np.testing.assert_allclose(r["pd"], [1, 1, 0, 0])
    np.testing.assert_allclose(r["fa"], [0.02, 0, 0, 0])


def test_target_in_row_zero_detected_by_its_own_pixel():
    prob = np.zeros((1, 8, 8), np.float32)
    truth = np.zeros((1, 8, 8), bool)
    truth[0, 0, 3] = True
    prob[0, 0, 3] = 0.8
    r = pd_fa(prob, truth, [0.5])
    assert (r["tp"][0], r["fa_pixels"][0]) == (1, 0)


def test_target_near_right_and_bottom_border():
    prob = np.zeros((1, 20, 20), np.float32)
    truth = np.zeros((1, 20, 20), bool)
    truth[0, 17, 18] = True
    prob[0, 19, 19] = 0.9  # 2 rows, 1 column away: inside the window, not adjacent
    prob[0, 13, 14] = 0.9  # exactly 4 px up and left: still inside the window
    prob[0, 12, 18] = 0.9  # 5 rows up: false alarm
    r = pd_fa(prob, truth, [0.5])
    assert (r["tp"][0], r["fa_pixels"][0]) == (0, 1)


def test_two_close_targets_and_connectivity():
    truth = np.zeros((2, 20, 20), bool)
    truth[0, 5, 5] = truth[0, 5, 7] = True  # one column apart: two targets
    truth[0, 10, 10] = truth[0, 11, 11] = True  # diagonal neighbours: one target
    truth[1, 10, 10] = True  # same place, next frame: a separate target
    prob = np.zeros((2, 20, 20), np.float32)
    prob[0, 5, 6] = 0.8  # between the two close targets: detects both
    prob[0, 12, 12] = 0.6  # touches the diagonal pair
    r = pd_fa(prob, truth, [0.5, 0.7])
    assert r["targets"].tolist() == [4, 4]
    assert r["tp"].tolist() == [3, 2]
    assert r["fa_pixels"].tolist() == [0, 0]


def test_empty_truth_and_empty_prediction():
    prob = np.zeros((3, 6, 7), np.float32)
    prob[1, 2, 2] = 0.5
    r = pd_fa(prob, np.zeros_like(prob, dtype=bool), [0.0, 0.5, 0.6])
    assert r["targets"].tolist() == [0, 0, 0] and r["tp"].tolist() == [0, 0, 0]
    assert r["fa_pixels"].tolist() == [126, 1, 0]
    assert np.isnan(r["pd"]).all()

    truth = np.zeros((1, 12, 12), bool)
    truth[0, 6, 6] = True
    r = pd_fa(np.zeros((1, 12, 12)), truth, [0.0, 1e-20, 0.5])
    # At t = 0 every pixel is positive (prob >= 0): the target is hit, pixels outside 9x9 are false alarms.
    assert r["tp"].tolist() == [1, 0, 0]
    assert r["fa_pixels"].tolist() == [144 - 81, 0, 0]


def test_threshold_edges_are_exact():
    truth = np.zeros((1, 30, 30), bool)
    prob = np.zeros((1, 30, 30), np.float32)
    below = np.float32(1e-20)  # float32 rounding of 1e-20 is slightly below 1e-20
    assert float(below) < 1e-20
    above = np.nextafter(below, np.float32(1))
    prob[0, 0, 0], prob[0, 0, 10], prob[0, 0, 20], prob[0, 20, 0] = below, above, 0.5, 1.0
    r = pd_fa(prob, truth, [1e-20, 0.5, 1.0])
    assert r["fa_pixels"].tolist() == [3, 2, 1]  # >= t: 0.5 counts at 0.5, 1.0 counts at 1
    # Unsorted, duplicated thresholds come back in the given order.
    r2 = pd_fa(prob, truth, [1.0, 0.5, 1.0, 1e-20])
    assert r2["fa_pixels"].tolist() == [1, 2, 1, 3]
    np.testing.assert_array_equal(r2["thresholds"], [1.0, 0.5, 1.0, 1e-20])


@pytest.mark.parametrize("seed", range(6))
def test_matches_loop_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n, h, w = 3, 15, 17
    truth = rng.random((n, h, w)) < 0.03
    truth[0, 0, :3] = True  # a target on the top border
    truth[1, h - 1, w - 1] = True  # one in the corner
    prob = (rng.random((n, h, w)) ** 3).astype(np.float32 if seed % 2 else np.float64)
    thr = [0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    tp, targets, fa = brute_pd_fa(prob, truth, thr)
    r = pd_fa(prob, truth, thr)
    assert r["targets"][0] == targets
    np.testing.assert_array_equal(r["tp"], tp)
    np.testing.assert_array_equal(r["fa_pixels"], fa)
    # Masks: a wider detection / window radius is a parameter.
    tp2, _, fa2 = brute_pd_fa(prob, truth, thr, r_det=2, r_win=5)
    r2 = pd_fa(prob, truth, thr, detect_radius=2, window_radius=5)
    np.testing.assert_array_equal(r2["tp"], tp2)
    np.testing.assert_array_equal(r2["fa_pixels"], fa2)


def test_pd_fa_accepts_2d_and_tensor_and_rejects_bad_shapes():
    torch = pytest.importorskip("torch")
    prob = torch.zeros(5, 5)
    truth = torch.zeros(5, 5)
    truth[2, 2] = 1
    prob[2, 3] = 0.9
    r = pd_fa(prob, truth, [0.5])
    assert (r["tp"][0], r["targets"][0], r["pixels"][0]) == (1, 1, 25)
    with pytest.raises(ConfigError):
        pd_fa(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ConfigError):
        pd_fa(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4)))


def test_default_thresholds_and_pooling():
    assert len(DEFAULT_THRESHOLDS) == 27 and DEFAULT_THRESHOLDS[16] == 0.5
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(3):
        truth = rng.random((4, 16, 16)) < 0.01
        seqs.append(pd_fa(rng.random((4, 16, 16)).astype(np.float32), truth))
    pooled = pool_pd_fa(seqs)
    for key in ("tp", "targets", "fa_pixels", "pixels"):
        np.testing.assert_array_equal(pooled[key], sum(s[key] for s in seqs))
    np.testing.assert_allclose(pooled["pd"], pooled["tp"] / pooled["targets"])
    np.testing.assert_allclose(pooled["fa"], pooled["fa_pixels"] / pooled["pixels"])
    x, y = pooled["fa"][::-1], pooled["pd"][::-1]
    assert pooled["auc"] == pytest.approx(float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)))
    with pytest.raises(ConfigError):
        pool_pd_fa([seqs[0], pd_fa(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), [0.5])])
    with pytest.raises(ConfigError):
        pool_pd_fa([])


def test_auc_matches_sklearn_semantics():
    assert auc([0, 0.5, 1], [0, 1, 1]) == pytest.approx(0.75)
    assert auc([1, 0.5, 0], [1, 1, 0]) == pytest.approx(0.75)  # decreasing x: same area
    with pytest.raises(ConfigError):
        auc([0, 1, 0.5], [0, 1, 1])


def test_iou_counts_strict_threshold():
    prob = np.array([[0.5, 0.6], [0.2, 0.9]])
    mask = np.array([[1, 1], [0, 0]])
    assert iou_counts(prob, mask) == (1, 3)  # 0.5 is not > 0.5


# ------------------------------------------------------------------------------------------------------
# The authors' published Pd / Fa / AUC, recomputed from their counts
# ------------------------------------------------------------------------------------------------------


def _official_results(model: dict) -> dict:
    """Rebuild pd_fa-style dicts from official_metrics.json (100 frames per test sequence)."""
    thr = np.array(model["thresholds"])
    per_seq = {}
    for name in model["test_sequence_order"]:
        s = model["per_sequence"][name]
        n = thr.size
        per_seq[name] = {"thresholds": thr, "tp": np.array(s["tp_counts"], dtype=np.int64),
                         "targets": np.full(n, s["targets"], dtype=np.int64),
                         "fa_pixels": np.array(s["fa_counts"], dtype=np.int64),
                         "pixels": np.full(n, 100 * model["image_HxW_pixels_per_frame"][name], np.int64)}
    low = model["low_snr_sequences"]
    high = [n for n in model["test_sequence_order"] if n not in low]
    return {"header": model["header"], "per_sequence": per_seq,
            "low_snr": pool_pd_fa([per_seq[n] for n in low]),
            "high_snr": pool_pd_fa([per_seq[n] for n in high]),
            "all": pool_pd_fa(list(per_seq.values())), "iou": model["mIoU_at_0.5"]}


PUBLISHED = {  # model: (SNR<=3 Pd %, Fa 1e-5, AUC), (all Pd %, Fa 1e-5, AUC) as in the DeepPro paper
    "DeepPro_NUDT-MIRSDT": ((95.84, 0.52, 0.9952), (98.50, 0.72, 0.9973)),
    "DeepPro-Plus_NUDT-MIRSDT": ((99.24, 1.65, 0.9955), (99.71, 2.69, 0.9978)),
    "DeepPro_NUDT-MIRSDT-Noise": (None, (59.17, 1.76, 0.9638)),
    "DeepPro-Plus_NUDT-MIRSDT-Noise": (None, (76.23, 1.69, 0.9171)),
}


@pytest.fixture(scope="module")
def official(ref_dir):
    with open(ref_dir / "deeppro" / "official_metrics.json") as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_auc_recomputed(official, ref_dir, name):
    model = official[name]
    res = _official_results(model)
    for key in ("low_snr", "high_snr", "all"):
        assert int(res[key]["pixels"][0]) == model[key]["pixels"]
        assert res[key]["auc"] == pytest.approx(model[key]["auc_recomputed"], abs=1e-12)
        assert round(res[key]["auc"], 5) == pytest.approx(model[key]["auc_logged"], abs=1e-9)
    log = (ref_dir / "deeppro" / f"eval_{name}.txt").read_text()
    logged = dict(re.findall(r"(Low SNR|High SNR|Final) results:\tAUC:([0-9.]+)", log))
    for key, title in (("low_snr", "Low SNR"), ("high_snr", "High SNR"), ("all", "Final")):
        assert f"{res[key]['auc']:.5f}" == logged[title]
    low, overall = PUBLISHED[name]
    for key, pub in (("low_snr", low), ("all", overall)):
        if pub is None:
            continue
        i = list(model["thresholds"]).index(0.5)
        assert round(100 * res[key]["pd"][i], 2) == pytest.approx(pub[0])
        assert round(1e5 * res[key]["fa"][i], 2) == pytest.approx(pub[1])
        # The paper rounds the logged 5-decimal AUC half up (0.91705 -> 0.9171).
        logged5 = Decimal(f"{res[key]['auc']:.5f}")
        assert float(logged5.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)) == pytest.approx(pub[2])


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_eval_txt_layout_regenerated(official, ref_dir, name, tmp_path):
    res = _official_results(official[name])
    out = tmp_path / "eval.txt"
    write_eval_txt(out, res)
    ours = out.read_text().splitlines()
    theirs = (ref_dir / "deeppro" / f"eval_{name}.txt").read_text().splitlines()
    prefix = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - Model - INFO - ")
    assert all(prefix.match(line) for line in ours if line)

    def strip(lines):
        return [prefix.sub("", line) for line in lines]

    theirs = strip(theirs)
    last_run = max(i for i, line in enumerate(theirs) if line == "PARAMETER ...")  # one log holds two runs
    assert strip(ours) == theirs[last_run:]
    assert eval_txt_messages(res)[0] == "PARAMETER ..."


def test_report_table_and_json(tmp_path):
    truth = np.zeros((2, 12, 12), bool)
    truth[:, 5, 5] = True
    prob = np.zeros((2, 12, 12), np.float32)
    prob[0, 5, 5] = 0.9
    seq = pd_fa(prob, truth)
    res = {"per_sequence": {"Sequence1": seq}, "all": pool_pd_fa([seq]), "iou": 0.5}
    table = format_pd_fa_table(res)
    assert "Sequence1" in table and "50.00" in table and "1e-5" in table
    write_json(tmp_path / "r.json", res)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["all"]["tp"][16] == 1 and back["per_sequence"]["Sequence1"]["targets"][0] == 2


# ------------------------------------------------------------------------------------------------------
# COCO box metrics
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def gt_json(tmp_path):
    """Eight 300x300 images: 1-4 with small boxes (one with two), 5-6 empty, 7 a medium box (40x40),
    8 a large box (100x110), so the small / medium / large area ranges all hold ground truth."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 300, "width": 300} for i in range(1, 9)]
    boxes = {1: [[10, 10, 8, 8]], 2: [[50, 40, 6, 5], [80, 70, 10, 10]], 3: [[5, 60, 7, 7]],
             4: [[100, 5, 9, 6]], 7: [[120, 100, 40, 40]], 8: [[150, 150, 100, 110]]}
    anns, k = [], 0
    for img, bbs in boxes.items():
        for b in bbs:
            k += 1
            anns.append({"id": k, "image_id": img, "category_id": 1, "bbox": b, "area": b[2] * b[3],
                         "iscrowd": 0})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "target"}]}))
    return path


DETS = [
    {"image_id": 1, "category_id": 1, "bbox": [10.5, 10, 8, 8], "score": 0.9},
    {"image_id": 2, "category_id": 1, "bbox": [50, 41, 6, 5], "score": 0.8},
    {"image_id": 2, "category_id": 1, "bbox": [30, 30, 6, 6], "score": 0.85},  # false positive
    {"image_id": 3, "category_id": 1, "bbox": [5, 60, 7, 7], "score": 0.4},
    {"image_id": 5, "category_id": 1, "bbox": [60, 60, 5, 5], "score": 0.95},  # FP on an empty frame
    {"image_id": 6, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.3},  # FP on an empty frame
    {"image_id": 4, "category_id": 1, "bbox": [60, 5, 9, 6], "score": 0.7},  # miss
    {"image_id": 7, "category_id": 1, "bbox": [122, 101, 40, 38], "score": 0.65},  # medium, IoU ~0.86
    {"image_id": 8, "category_id": 1, "bbox": [40, 40, 100, 100], "score": 0.6},  # large FP, misses
]


def direct(gt_path, dets, img_ids=None):
    """pycocotools itself, as its README runs it: (stats, precision [T, R, K, A, M], recall [T, K, A, M])."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.array(ev.stats), ev.eval["precision"], ev.eval["recall"]


@pytest.mark.parametrize("backend", COCO_BACKENDS)
@pytest.mark.parametrize("protocol,img_ids", [("annotated", [1, 2, 3, 4, 7, 8]), ("all", None)])
def test_coco_matches_pycocotools(gt_json, protocol, img_ids, backend):
    stats, precision, recall = direct(gt_json, DETS, img_ids)
    prec, rec = precision[0, :, 0, 0, -1], float(recall[0, 0, 0, -1])
    m = coco_box_metrics(gt_json, DETS, protocol=protocol, backend=backend)
    assert m["backend"] == backend
    np.testing.assert_allclose(m["stats"], stats, rtol=0, atol=1e-12)
    assert all(s > -1 for s in m["stats"])  # every area range holds ground truth
    np.testing.assert_allclose(m["precision_50"], prec, rtol=0, atol=1e-12)
    assert len(m["precision_50"]) == 101
    assert m["ap50"] == pytest.approx(prec.mean()) and m["ap50"] == pytest.approx(stats[1])
    assert m["recall_50"] == m["R"] == pytest.approx(rec)
    p = prec[: int(rec * 100)].mean()
    assert m["P"] == pytest.approx(p) and m["F1"] == pytest.approx(2 * p * rec / (p + rec))
    assert m["protocol"] == protocol and m["num_images"] == (6 if protocol == "annotated" else 8)
    table = format_coco_table(m)
    assert protocol in table and "non-standard" in table and f"(scored by {backend})" in table


@pytest.mark.parametrize("backend", COCO_BACKENDS)
def test_area_ranges_by_hand(tmp_path, backend):
    """One small, one medium and one large box: small and medium found exactly, the large one missed by a
    large false positive. A wrong area-range index (small / medium / large for 'all') changes the numbers."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 300, "width": 300} for i in (1, 2, 3)]
    gt_boxes = {1: [20, 20, 10, 10], 2: [50, 50, 40, 40], 3: [100, 100, 100, 100]}  # areas 100, 1600, 10^4
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, b in gt_boxes.items()]
    path = tmp_path / "areas.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1}]}))
    dets = [{"image_id": 1, "category_id": 1, "bbox": gt_boxes[1], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": gt_boxes[2], "score": 0.8},
            {"image_id": 3, "category_id": 1, "bbox": [5, 5, 100, 100], "score": 0.7}]
    m = coco_box_metrics(path, dets, backend=backend)
    ap = 67 / 101  # precision 1 up to recall 2/3 (recall points 0.00 .. 0.66), then 0
    s = m["stats"]
    np.testing.assert_allclose(s[:3], [ap, ap, ap], rtol=0, atol=1e-12)
    np.testing.assert_allclose(s[3:6], [1, 1, 0], rtol=0, atol=1e-12)  # AP small, medium, large
    np.testing.assert_allclose(s[6:9], [2 / 3] * 3, rtol=0, atol=1e-12)  # AR at 1, 10, 100 detections
    np.testing.assert_allclose(s[9:], [1, 1, 0], rtol=0, atol=1e-12)  # AR small, medium, large
    np.testing.assert_allclose(m["precision_50"], [1.0] * 67 + [0.0] * 34, rtol=0, atol=1e-12)
    assert m["ap50"] == pytest.approx(ap) and m["R"] == pytest.approx(2 / 3)
    assert m["P"] == pytest.approx(1.0) and m["F1"] == pytest.approx(0.8)


def _random_case(tmp_path, seed: int, ties: bool, n_images: int = 600):
    """A crowd-free ground truth of many images (0-6 boxes of all sizes, 2 classes) and detector-like
    results: jittered truth boxes, duplicates and false positives, scores distinct (or in 5 tied levels)."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 400, "height": 300} for i in range(n_images)]
    anns, dets = [], []
    for im in images:
        for _ in range(int(rng.integers(0, 7))):
            w, h = rng.uniform(3, 150, 2)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 300 - h)
            cat = int(rng.integers(1, 3))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat, "iscrowd": 0,
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h)})
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per box (duplicates are FPs)
                j = rng.normal(0, 0.1, 4) * [w, h, w, h]
                dets.append({"image_id": im["id"], "category_id": cat,
                             "bbox": [float(x + j[0]), float(y + j[1]), float(max(w + j[2], 1)),
                                      float(max(h + j[3], 1))]})
        for _ in range(int(rng.integers(0, 4))):
            w, h = rng.uniform(3, 150, 2)
            dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, 3)),
                         "bbox": [float(v) for v in (*rng.uniform(0, 250, 2), w, h)]})
    scores = rng.integers(1, 6, len(dets)) / 5 if ties else rng.permutation(len(dets)) / len(dets)
    for d, s in zip(dets, scores):
        d["score"] = float(s)
    path = tmp_path / f"random_{seed}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path, dets


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True)])
def test_backends_agree_on_a_large_random_case(tmp_path, seed, ties):
    path, dets = _random_case(tmp_path, seed, ties)
    gt = load_coco_gt(path)
    assert len(gt.image_ids) == 600 and len(dets) > 2500
    parsed, _ = detections_from_results(dets)
    for protocol in ("annotated", "all"):
        img_ids = gt.ids_for(protocol)
        ref_stats, ref_prec, ref_rec = direct(path, dets, img_ids)
        stats, prec, rec = _cocoeval(gt, parsed, img_ids, "faster", False)
        np.testing.assert_allclose(stats, ref_stats, rtol=0, atol=1e-6)
        np.testing.assert_allclose(prec, ref_prec, rtol=0, atol=1e-12)  # [T, R, K, A, M]: every curve
        np.testing.assert_array_equal(rec, ref_rec)
    fast = coco_box_metrics(gt, dets, "all", backend="faster")
    ref = coco_box_metrics(gt, dets, "all", backend="pycocotools")
    np.testing.assert_allclose(ref["stats"], ref_stats, rtol=0, atol=1e-12)
    assert fast.pop("backend") == "faster" and ref.pop("backend") == "pycocotools"
    for key in ("stats", "precision_50"):
        np.testing.assert_allclose(fast.pop(key), ref.pop(key), rtol=0, atol=1e-6)
    assert fast == pytest.approx(ref, abs=1e-6)
    assert 0.2 < ref["ap50"] < 0.95


def test_backend_option_and_fallback(gt_json, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="faster, pycocotools"):
        coco_box_metrics(gt_json, DETS, backend="fast")
    with pytest.raises(ConfigError, match="backend"):
        COCOEvaluator(gt_json, backend="detectron")
    ref = coco_box_metrics(gt_json, DETS, backend="pycocotools")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import faster_coco_eval -> ImportError
    monkeypatch.setattr(coco_metrics, "_fallback_noted", False)
    assert resolve_backend("faster") == "pycocotools"
    m = coco_box_metrics(gt_json, DETS)
    coco_box_metrics(gt_json, DETS)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: faster-coco-eval is not installed")
    assert m == ref


def test_protocols_differ_on_empty_frames(gt_json):
    ann = coco_box_metrics(gt_json, DETS, "annotated")
    every = coco_box_metrics(gt_json, DETS, "all")
    assert every["ap50"] < ann["ap50"]  # the false positives on frames 5-6 count only under 'all'
    assert ann["recall_50"] == every["recall_50"] == pytest.approx(4 / 7)


@pytest.mark.parametrize("backend", COCO_BACKENDS)
def test_coco_results_file_and_empty_detections(gt_json, tmp_path, backend):
    res = tmp_path / "res.json"
    res.write_text(json.dumps(DETS))
    assert coco_box_metrics(gt_json, res, backend=backend)["stats"] == \
        coco_box_metrics(gt_json, DETS, backend=backend)["stats"]
    for protocol in ("annotated", "all"):
        m = coco_box_metrics(gt_json, [], protocol, backend=backend)
        assert m["ap50"] == m["P"] == m["R"] == m["F1"] == 0.0
        assert m["precision_50"] == [0.0] * 101 and m["num_detections"] == 0


def test_coco_bad_input(gt_json, tmp_path):
    with pytest.raises(DataError, match="not in"):
        coco_box_metrics(gt_json, [dict(DETS[0], image_id=99)])
    with pytest.raises(DataError, match="category"):
        coco_box_metrics(gt_json, [dict(DETS[0], category_id=7)])
    with pytest.raises(DataError, match="needs keys"):
        coco_box_metrics(gt_json, [{"image_id": 1}])
    with pytest.raises(DataError, match="not found"):
        coco_box_metrics(tmp_path / "missing.json", [])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a readable json"):
        coco_box_metrics(bad, [])
    with pytest.raises(ConfigError):
        coco_box_metrics(gt_json, [], protocol="some")


@pytest.mark.parametrize("backend", COCO_BACKENDS)
def test_coco_evaluator_accumulates(gt_json, tmp_path, backend):
    ev = COCOEvaluator(gt_json, protocol="all", backend=backend)
    ev.process([1, 2], [np.array([[10.5, 10, 18.5, 18, 0.9, 0]]),
                        np.array([[50, 41, 56, 46, 0.8, 0], [30, 30, 36, 36, 0.85, 0]])])
    nms_rows = np.array([[5, 60, 12, 67, 0.8, 0.5, 0]])  # [K, 7]: score = obj * cls_conf = 0.4
    ev.process([3, 4, 5, 6], [nms_rows, np.array([[60, 5, 69, 11, 0.7, 0]]),
                              np.array([[60, 60, 65, 65, 0.95, 0]]), np.array([[1, 1, 6, 6, 0.3, 0]])])
    ev.process([7, 8], [np.array([[122, 101, 162, 139, 0.65, 0]]), np.array([[40, 40, 140, 140, 0.6, 0]])])
    ev.process([1], [None])
    assert len(ev.results) == 9 and ev.results[3]["score"] == pytest.approx(0.4)
    assert ev.results[0] == {"image_id": 1, "category_id": 1, "bbox": [10.5, 10.0, 8.0, 8.0], "score": 0.9}
    np.testing.assert_allclose(ev.evaluate()["stats"], coco_box_metrics(gt_json, DETS, "all")["stats"],
                               rtol=0, atol=1e-12)
    ev.dump(tmp_path / "out" / "res.json")
    assert json.loads((tmp_path / "out" / "res.json").read_text()) == ev.results
    assert ev.image_ids == [1, 2, 3, 4, 5, 6, 7, 8]
    assert COCOEvaluator(gt_json).image_ids == [1, 2, 3, 4, 7, 8]
    ev.reset()
    assert ev.results == [] and ev.evaluate()["ap50"] == 0.0
    with pytest.raises(ConfigError):
        ev.process([1], [np.array([[0, 0, 1, 1, 0.5, 3]])])
    ev.process([1], [np.array([[0, 0, np.nan, 1, 0.5, 0]])])
    with pytest.raises(DataError, match="entry 0 has a non-finite bbox"):
        ev.evaluate()


def test_pr_txt_round_trip(tmp_path, ref_dir):
    prec = np.linspace(1, 0, 101)
    prec[-3:] = -1  # "no value" entries are written as 0
    path = tmp_path / "pr.txt"
    write_pr_txt(path, prec)
    text = path.read_text()
    assert text.endswith("\t") and "\n" not in text and text.count("\t") == 101
    np.testing.assert_allclose(read_pr_txt(path), np.clip(prec, 0, None))
    ref = ref_dir / "published" / "ITSDT" / "STMENet.txt"
    write_pr_txt(tmp_path / "copy.txt", read_pr_txt(ref))
    assert (tmp_path / "copy.txt").read_text() == ref.read_text()  # byte-identical to the authors' format
    (tmp_path / "short.txt").write_text("0.5\t0.4\t")
    with pytest.raises(DataError, match="101"):
        read_pr_txt(tmp_path / "short.txt")


def test_metrics_benchmark_smoke():
    """bench/metrics.py runs end to end at tiny sizes (the timing itself is not asserted)."""
    out = bench_module("metrics").main(
        ["--images", "40", "--dets-per-image", "5", "--frames", "4", "--size", "32"])
    assert 0.3 < out["ap50"] <= 1 and out["coco_s"] >= out["coco_ours_s"] >= 0 and out["pd_fa_s"] >= 0
    assert out["max_diff"] <= 1e-6 and out["coco_faster_s"] > 0
