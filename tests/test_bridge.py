"""The metric bridge, both ways, on hand-made cases: masks / probabilities -> scored boxes -> COCO AP50,
and boxes -> centroid maps -> Pd / Fa."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.bridge import (
    boxes_to_centroid_maps,
    detection_scores,
    detections_to_prob_maps,
    masks_to_coco_gt,
    prob_map_components,
    prob_maps_to_coco_results,
    prob_maps_to_detections,
)
from utils.coco_metrics import coco_box_metrics
from utils.errors import ConfigError
from utils.metrics import pd_fa


def _probs() -> np.ndarray:
    p = np.zeros((2, 12, 16), np.float32)
    p[0, 2, 3] = 0.6  # a diagonal pair: one 8-connected component, box x 3..5, y 2..4, peak 0.8
    p[0, 3, 4] = 0.8
    p[0, 8:10, 10:13] = 0.5  # exactly at the threshold: included, box (10, 8, 13, 10)
    p[0, 8, 14] = 0.45  # below the threshold
    p[1, 0, 0] = 0.99  # corner pixel of the second frame
    return p


def test_prob_maps_to_detections_components_scores_and_order():
    dets = prob_maps_to_detections(_probs(), threshold=0.5)
    assert len(dets) == 2
    assert dets[0].shape == (2, 6) and dets[1].shape == (1, 6)
    # Sorted by decreasing score; x2 / y2 exclusive; score = max probability; class 0.
    np.testing.assert_allclose(dets[0], [[3, 2, 5, 4, 0.8, 0], [10, 8, 13, 10, 0.5, 0]], rtol=1e-6)
    np.testing.assert_allclose(dets[1], [[0, 0, 1, 1, 0.99, 0]], rtol=1e-6)
    # A single frame [H, W] works too, and nothing is found above every probability.
    np.testing.assert_allclose(prob_maps_to_detections(_probs()[1])[0], [[0, 0, 1, 1, 0.99, 0]], rtol=1e-6)
    assert prob_maps_to_detections(_probs(), threshold=0.995)[0].shape == (0, 6)


def test_prob_map_components_centroids_and_sizes():
    comps = prob_map_components(_probs()[0], threshold=0.5)
    assert comps == [{"bbox": [3, 2, 5, 4], "score": pytest.approx(0.8), "centroid": [3.5, 2.5], "pixels": 2},
                     {"bbox": [10, 8, 13, 10], "score": 0.5, "centroid": [11.0, 8.5], "pixels": 6}]
    assert prob_map_components(np.zeros((4, 4)), 0.5) == []
    with pytest.raises(ConfigError):
        prob_map_components(_probs(), 0.5)


def test_min_size_widens_small_boxes_around_their_centre():
    dets = prob_maps_to_detections(_probs()[1], threshold=0.5, min_size=5.0)[0]
    assert dets[0, :4].tolist() == pytest.approx([-2, -2, 3, 3])  # centre (0.5, 0.5) kept, 5 px a side
    wide = prob_maps_to_detections(_probs()[0], threshold=0.5, min_size=2.0)[0]
    assert wide[1, :4].tolist() == pytest.approx([10, 8, 13, 10])  # already 3 x 2: unchanged


def test_masks_to_coco_gt_boxes_are_the_tight_component_boxes():
    masks = _probs() > 0.4
    gt = masks_to_coco_gt(list(masks), ["a/0.png", "a/1.png"], first_image_id=7)
    assert [im["id"] for im in gt["images"]] == [7, 8]
    assert gt["images"][0] == {"id": 7, "file_name": "a/0.png", "height": 12, "width": 16}
    boxes = sorted((a["image_id"], *a["bbox"]) for a in gt["annotations"])
    assert boxes == [(7, 3, 2, 2, 2), (7, 10, 8, 3, 2), (7, 14, 8, 1, 1), (8, 0, 0, 1, 1)]
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3, 4]
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in gt["annotations"])


def test_segmenter_scored_with_coco_ap50(tmp_path):
    """Truth: two targets in frame 0, one in frame 1. A perfect segmenter scores AP50 = 1; false alarms and
    misses move AP50 and recall by the amounts the 101-point COCO curve gives."""
    truth = np.zeros((2, 20, 20), bool)
    truth[0, 2:4, 2:5] = True
    truth[0, 10:13, 14:16] = True
    truth[1, 5, 5:7] = True
    gt = masks_to_coco_gt(list(truth), ["0.png", "1.png"])
    perfect = truth * np.float32(0.9)
    res = prob_maps_to_coco_results(perfect, [1, 2])
    assert len(res) == 3 and all(r["score"] == pytest.approx(0.9) for r in res)
    assert coco_box_metrics(gt_json_path=_write(tmp_path, gt), detections=res)["ap50"] == pytest.approx(1.0)

    # A false alarm with a lower score than every target: precision stays 1 up to recall 1.
    low_fa = perfect.copy()
    low_fa[1, 15, 15] = 0.6
    m = coco_box_metrics(_write(tmp_path, gt), prob_maps_to_coco_results(low_fa, [1, 2]))
    assert m["ap50"] == pytest.approx(1.0) and m["R"] == pytest.approx(1.0)

    # The false alarm ranked first: precisions 0/1, 1/2, 2/3, 3/4 -> interpolated 0.75 at every recall.
    high_fa = perfect.copy()
    high_fa[1, 15, 15] = 0.95
    m = coco_box_metrics(_write(tmp_path, gt), prob_maps_to_coco_results(high_fa, [1, 2]))
    assert m["ap50"] == pytest.approx(0.75, abs=1e-9)

    # Missing one target (component below the threshold): recall 2/3.
    weak = perfect.copy()
    weak[1] *= 0.5
    m = coco_box_metrics(_write(tmp_path, gt), prob_maps_to_coco_results(weak, [1, 2]))
    assert m["R"] == pytest.approx(2 / 3) and m["ap50"] == pytest.approx(67 / 101)


def _write(tmp_path, gt: dict):
    import json

    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_detection_scores_of_every_row_layout():
    assert detection_scores(np.array([[0, 0, 1, 1, 0.7]])).tolist() == pytest.approx([0.7])
    assert detection_scores(np.array([[0, 0, 1, 1, 0.7, 0]])).tolist() == pytest.approx([0.7])
    assert detection_scores(torch.tensor([[0, 0, 1, 1, 0.5, 0.8, 0]])).tolist() == pytest.approx([0.4])
    assert detection_scores(np.zeros((0, 7))).shape == (0,)
    with pytest.raises(ConfigError):
        detection_scores(np.zeros((2, 4)))


def test_detections_to_prob_maps_centre_and_box():
    hw = (10, 12)
    dets = [np.array([[2, 2, 6, 4, 0.5, 0.8, 0],  # centre (4, 3), score 0.4
                      [3, 2, 5, 4, 0.9, 1.0, 0],  # same centre pixel, higher score 0.9
                      [10, 8, 14, 12, 0.9, 0.9, 0]], np.float32),  # centre (12, 10): outside, dropped
            np.zeros((0, 7), np.float32)]
    centre = detections_to_prob_maps(dets, hw)
    assert centre.shape == (2, 10, 12) and centre.dtype == np.float32
    expected = np.zeros((2, 10, 12), np.float32)
    expected[0, 3, 4] = 0.9
    np.testing.assert_array_equal(centre, expected)
    box = detections_to_prob_maps(dets, hw, fill="box")
    assert box[0, 2:4, 2:6].min() == pytest.approx(0.4) and box[0, 2:4, 3:5].min() == pytest.approx(0.9)
    assert box[0, 8:10, 10:12].min() == pytest.approx(0.81)  # clipped at the border
    assert np.count_nonzero(box[0]) == 2 * 4 + 2 * 2 and not box[1].any()
    with pytest.raises(ConfigError):
        detections_to_prob_maps(dets, hw, fill="ring")


def test_detector_scored_with_pd_fa():
    """Truth: one target per frame. Frame 0: found (score 0.9) plus a false alarm (0.7) far from it and a
    weak one (0.3); frame 1: the box centre lands 1 px from the centroid (detected), score 0.6."""
    hw = (32, 32)
    truth_boxes = [np.array([[8, 8, 13, 13]]), np.array([[20, 4, 23, 7]])]
    truth = boxes_to_centroid_maps(truth_boxes, hw)
    assert truth.dtype == bool and np.argwhere(truth).tolist() == [[0, 10, 10], [1, 5, 21]]
    dets = [np.array([[8, 8, 13, 13, 0.9], [24, 24, 27, 27, 0.7], [2, 26, 5, 29, 0.3]], np.float32),
            np.array([[21, 5, 24, 8, 0.6]], np.float32)]  # centre pixel (6, 22): within 1 px of (5, 21)
    prob = detections_to_prob_maps(dets, hw)
    res = pd_fa(prob, truth, thresholds=[0.25, 0.5, 0.65, 0.8, 0.95])
    assert res["targets"].tolist() == [2] * 5
    assert res["tp"].tolist() == [2, 2, 1, 1, 0]
    assert res["fa_pixels"].tolist() == [2, 1, 1, 0, 0]
    assert res["fa"][1] == pytest.approx(1 / (2 * 32 * 32))


def test_both_directions_agree_on_a_blob():
    """A symmetric blob: its component box's centre pixel is its centroid, so going mask -> box -> point
    finds the target at every threshold below its peak."""
    prob = np.zeros((1, 24, 24), np.float32)
    yy, xx = np.mgrid[:24, :24]
    prob[0] = np.exp(-((yy - 12) ** 2 + (xx - 7) ** 2) / 4.0)
    truth = np.zeros((1, 24, 24), bool)
    truth[0, 12, 7] = True
    boxes = prob_maps_to_detections(prob, threshold=0.3)
    assert len(boxes[0]) == 1
    back = detections_to_prob_maps(boxes, (24, 24))
    assert np.argwhere(back[0]).tolist() == [[12, 7]] and back[0, 12, 7] == pytest.approx(1.0)
    assert pd_fa(back, truth, thresholds=[0.5])["tp"].tolist() == [1]


def test_cross_metrics_with_oracle_models(tmp_path, monkeypatch):
    """cross_metrics.py end to end with both model families replaced by oracles that output the truth:
    the segmenter's masks give AP50 = 1 through the bridge, the detector's truth boxes give Pd ~ 1 and no
    false alarm through box centres."""
    import cross_metrics
    import utils.cross_eval
    from utils.data import read_grey
    from utils.synth import SynthConfig, generate
    from utils.weights import LoadedModel

    root = tmp_path / "nudt"
    generate(SynthConfig(format="nudt", out=str(root), num_seqs=(0, 0, 2), frames=12, size=(32, 40),
                         targets=(2, 2)))
    truth = {}  # first frame's bytes -> the sequence's masks
    for seq in ("Sequence47", "Sequence85"):
        frames = sorted((root / seq / "images").iterdir())
        masks = sorted((root / seq / "masks").iterdir())
        truth[read_grey(frames[0]).tobytes()] = np.stack([read_grey(p) > 0 for p in masks])

    def oracle_segmenter(model, grey, *args, **kwargs):
        return truth[grey[0].tobytes()].astype(np.float32)

    def oracle_detector(model, clips, evaluator, **kwargs):
        boxes: dict = {}
        for a in evaluator.gt.dataset["annotations"]:
            x, y, w, h = a["bbox"]
            boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h, 0.9, 0])
        ids = [e.image_id for e in clips.images]
        evaluator.process(ids, [np.array(boxes.get(i, []), np.float32).reshape(-1, 6) for i in ids])

    def load(path, **kwargs):
        name = "stmenet" if "det" in str(path) else "deeppro"
        return LoadedModel(torch.nn.Linear(1, 1), name, "oracle", {"input_size": 64})

    monkeypatch.setattr(cross_metrics, "load_weights", load)
    monkeypatch.setattr(utils.cross_eval, "segment_sequence", oracle_segmenter)
    monkeypatch.setattr(utils.detection, "run_inference", oracle_detector)
    out = tmp_path / "out"
    record = cross_metrics.main(["--data-root", str(root), "--format", "nudt", "--weights", "seg=seg.pt",
                                 "--weights", "det=det.pt", "--out", str(out), "--no-progress"])
    seg, det = record["rows"]
    assert seg["family"] == "segmenter" and det["family"] == "detector"
    assert seg["coco"]["ap50"] == pytest.approx(1.0) and seg["pd_fa"]["pd"] == 1.0 and seg["pd_fa"]["fa"] == 0
    assert det["coco"]["ap50"] == pytest.approx(1.0) and det["pd_fa"]["fa"] == 0
    assert det["pd_fa"]["pd"] >= 0.9 and det["pd_fa"]["targets"] == seg["pd_fa"]["targets"] > 20
    table = (out / "cross_metrics.md").read_text()
    assert "| seg | 100.00† |" in table and "| det | 100.00 |" in table
    assert (out / "roc.png").is_file() and (out / "pr.png").is_file() and (out / "gt_boxes.json").is_file()


def test_segment_sequence_pads_short_sequences():
    """The cross-metric tool runs DeepPro on sequences shorter than the clip as one zero-padded clip."""
    from utils.segmentation import segment_sequence

    class Identity(torch.nn.Module):
        seqlen = 40

        def forward(self, x):
            return x[:, 0] * 0 + torch.arange(40.0)[None, :, None, None]  # logit = position in the clip

    grey = np.zeros((5, 3, 4), np.uint8)
    prob = segment_sequence(Identity(), grey)
    np.testing.assert_allclose(prob[:, 0, 0], torch.sigmoid(torch.arange(35.0, 40.0)).numpy())
