"""Box utilities: formats, IoU, decoding, NMS (against a brute-force reference and the authors' output),
letterbox undo, boxes <-> masks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import utils.boxes as boxes_mod
from utils.boxes import (
    box_iou,
    boxes_to_centroid_map,
    boxes_to_prob_map,
    cxcywh_to_xyxy,
    decode_outputs,
    letterbox_params,
    masks_to_boxes,
    nms,
    non_max_suppression,
    undo_letterbox,
    xyxy_to_cxcywh,
)
from utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------
# Brute-force references (pure Python)
# ---------------------------------------------------------------------------------------------------


def _iou_py(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_py(boxes, scores, thr, labels=None) -> list[int]:
    """Textbook greedy NMS: visit by decreasing score, drop a box overlapping a kept one (same label)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(
            not (_iou_py(boxes[i], boxes[k]) > thr and (labels is None or labels[i] == labels[k]))
            for k in kept
        ):
            kept.append(i)
    return kept


def _random_boxes(rng: random.Random, n: int, extent: float = 60.0, size: float = 25.0):
    out = []
    for _ in range(n):
        x, y = rng.uniform(0, extent), rng.uniform(0, extent)
        out.append([x, y, x + rng.uniform(0.5, size), y + rng.uniform(0.5, size)])
    return out


# ---------------------------------------------------------------------------------------------------
# Formats and IoU
# ---------------------------------------------------------------------------------------------------


def test_box_format_round_trip_and_iou_values():
    xyxy = torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 3.0, 5.0]])
    cxcywh = xyxy_to_cxcywh(xyxy)
    assert torch.allclose(cxcywh, torch.tensor([[2.0, 1.0, 4.0, 2.0], [2.0, 3.0, 2.0, 4.0]]))
    assert torch.allclose(cxcywh_to_xyxy(cxcywh), xyxy)
    iou = box_iou(xyxy, xyxy)
    # overlap [1, 3] x [1, 2] = 2; union 8 + 8 - 2 = 14
    assert torch.allclose(iou, torch.tensor([[1.0, 2 / 14], [2 / 14, 1.0]]))
    # disjoint boxes, touching edges and empty boxes give 0, never NaN
    other = torch.tensor([[4.0, 0.0, 6.0, 2.0], [10.0, 10.0, 10.0, 10.0]])
    assert torch.equal(box_iou(xyxy[:1], other), torch.zeros(1, 2))
    assert torch.equal(box_iou(other[1:], other[1:]), torch.zeros(1, 1))


# ---------------------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------------------


def test_decode_outputs_hand_values():
    out = torch.zeros(1, 6, 2, 3)
    out[0, 0, 1, 2] = 0.25  # dx at row 1, col 2
    out[0, 1, 1, 2] = -0.5  # dy
    out[0, 2, 1, 2] = np.log(2.0)  # w = 2 * stride
    out[0, 4, 1, 2] = 2.0  # obj logit
    dec = decode_outputs(out, stride=8)
    assert dec.shape == (1, 6, 6)
    k = 1 * 3 + 2  # row-major anchor index
    assert torch.allclose(dec[0, k, :4], torch.tensor([(2 + 0.25) * 8, (1 - 0.5) * 8, 16.0, 8.0]))
    assert torch.allclose(dec[0, k, 4], torch.sigmoid(torch.tensor(2.0)))
    assert torch.allclose(dec[0, 0], torch.tensor([0.0, 0.0, 8.0, 8.0, 0.5, 0.5]))
    assert out[0, 0, 1, 2] == 0.25  # input untouched
    with pytest.raises(ConfigError):
        decode_outputs(torch.zeros(1, 6, 4))


# ---------------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("class_aware", [False, True])
def test_nms_matches_brute_force(class_aware):
    mismatches = []
    for seed in range(80):
        rng = random.Random(seed)
        n = rng.randint(0, 70)
        b = _random_boxes(rng, n)
        s = [rng.random() for _ in range(n)]  # distinct scores: no ties
        lab = [rng.randint(0, 2) for _ in range(n)] if class_aware else None
        thr = rng.choice([0.1, 0.3, 0.5, 0.65])
        got = nms(
            torch.tensor(b).reshape(-1, 4),
            torch.tensor(s),
            thr,
            torch.tensor(lab, dtype=torch.long) if lab is not None else None,
        ).tolist()
        if got != _nms_py(b, s, thr, lab):
            mismatches.append(seed)
    assert not mismatches


def test_nms_long_chain_uses_exact_sequential_pass(monkeypatch):
    # boxes shifted by 1 px: each suppresses the next, so the kept set alternates (a chain of length n)
    n = 120
    x = torch.arange(n, dtype=torch.float32)
    b = torch.stack((x, torch.zeros(n), x + 4, torch.full((n,), 4.0)), 1)
    s = 1 - x / n
    expected = _nms_py(b.tolist(), s.tolist(), 0.5)
    assert expected == list(range(0, n, 2))
    assert nms(b, s, 0.5).tolist() == expected
    monkeypatch.setattr(boxes_mod, "_NMS_SWEEPS", 3)  # force the fallback
    assert nms(b, s, 0.5).tolist() == expected
    monkeypatch.setattr(boxes_mod, "_PAIR_CHUNK", 7)  # many small pair chunks
    assert nms(b, s, 0.5).tolist() == expected


def test_non_max_suppression_columns_threshold_and_classes():
    # two classes, two overlapping boxes each; anchor-free decoded layout [B, A, 5 + C]
    dec = torch.tensor(
        [
            [
                [10.0, 10.0, 8.0, 8.0, 0.9, 0.9, 0.1],  # class 0, score 0.81
                [11.0, 10.0, 8.0, 8.0, 0.8, 0.8, 0.2],  # class 0, overlaps the first: suppressed
                [11.0, 11.0, 8.0, 8.0, 0.9, 0.2, 0.7],  # class 1, score 0.63: kept (other class)
                [50.0, 50.0, 4.0, 4.0, 0.1, 0.5, 0.05],  # score 0.05: below conf_thres
            ]
        ]
    )
    (out,) = non_max_suppression(dec, conf_thres=0.1, nms_thres=0.5)
    assert out.shape == (2, 7)
    assert torch.allclose(out[0], torch.tensor([6.0, 6.0, 14.0, 14.0, 0.9, 0.9, 0.0]))
    assert torch.allclose(out[1], torch.tensor([7.0, 7.0, 15.0, 15.0, 0.9, 0.7, 1.0]))
    (agnostic,) = non_max_suppression(dec, conf_thres=0.1, nms_thres=0.5, class_agnostic=True)
    assert agnostic.shape == (1, 7)
    (low,) = non_max_suppression(dec, conf_thres=0.01, nms_thres=0.5)
    assert low.shape == (3, 7) and low[-1, 6] == 0
    (none,) = non_max_suppression(dec, conf_thres=0.99, nms_thres=0.5)
    assert none.shape == (0, 7)


def test_decode_and_nms_match_authors_reference(ref_dir):
    head = torch.load(ref_dir / "stmenet" / "STME_scaledinit_outputs_b.pt")["head_outputs"][0]
    ref = torch.load(ref_dir / "stmenet" / "STME_scaledinit_decoded_b.pt", weights_only=False)
    ih, iw = ref["image_shape"]
    assert (ih, iw) == (256, 320) and head.shape == (1, 6, 32, 40)

    dec = decode_outputs(head, stride=8)
    # the authors' decoded boxes are normalised by the input size
    norm = torch.tensor([iw, ih, iw, ih], dtype=torch.float32)
    assert torch.allclose(dec[..., :4] / norm, ref["decoded"][..., :4], atol=1e-5, rtol=1e-5)
    assert torch.allclose(dec[..., 4:], ref["decoded"][..., 4:], atol=1e-6)

    (dets,) = non_max_suppression(dec, ref["conf_thres"], ref["nms_iou"])
    want = ref["dets_after_nms"]  # y1, x1, y2, x2 in image pixels, obj, cls_conf, cls; by decreasing score
    assert dets.shape == want.shape == (980, 7)
    # image size == input size: undoing the letterbox is the identity
    xyxy = undo_letterbox(dets[:, :4], (ih, iw), (ih, iw))
    assert torch.allclose(xyxy, want[:, [1, 0, 3, 2]], atol=2e-3, rtol=1e-5)
    assert torch.allclose(dets[:, 4:], want[:, 4:], atol=1e-6)


def test_nms_keeps_a_box_whose_iou_equals_the_threshold():
    # [0, 3] x [0, 1] and [1, 4] x [0, 1]: intersection 2, union 4, IoU exactly 0.5 in binary floating point.
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])
    assert float(box_iou(boxes[:1], boxes[1:])) == 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]  # suppressed only above the threshold, as torchvision
    assert nms(boxes, scores, float(np.nextafter(0.5, 0))).tolist() == [0]
    assert nms(boxes.double(), scores.double(), 0.5).tolist() == [0, 1]
    dec = torch.tensor([[[1.5, 0.5, 3.0, 1.0, 0.9, 1.0], [2.5, 0.5, 3.0, 1.0, 0.8, 1.0]]])  # cx, cy, w, h
    (out,) = non_max_suppression(dec, conf_thres=0.1, nms_thres=0.5)
    assert out.shape[0] == 2
    (out,) = non_max_suppression(dec, conf_thres=0.1, nms_thres=0.49)
    assert out.shape[0] == 1


def test_nms_is_fast_for_thousands_of_boxes():
    import time

    g = torch.Generator().manual_seed(0)
    centres = boxes_mod.grid_xy(64, 64) * 8 + 4
    wh = 8 + 24 * torch.rand(4096, 2, generator=g)
    b = torch.cat((centres - wh / 2, centres + wh / 2), 1)
    s = torch.rand(4096, generator=g)
    t = time.perf_counter()
    keep = nms(b, s, 0.3)
    assert time.perf_counter() - t < 15.0  # about 0.05 s on one idle core: catches a blow-up, not jitter
    assert 0 < keep.numel() < 4096


# ---------------------------------------------------------------------------------------------------
# Letterbox undo
# ---------------------------------------------------------------------------------------------------


def test_undo_letterbox_inverts_the_letterbox():
    image_hw, input_hw = (100, 200), (512, 512)
    scale, nw, nh, dx, dy = letterbox_params(image_hw, input_hw)
    assert (nw, nh, dx, dy) == (512, 256, 0, 128)
    boxes_img = torch.tensor([[0.0, 0.0, 200.0, 100.0], [10.0, 20.0, 30.5, 41.0], [-5.0, -5.0, 250.0, 120.0]])
    fwd = boxes_img * torch.tensor([nw / 200, nh / 100, nw / 200, nh / 100]) + torch.tensor([dx, dy, dx, dy])
    assert torch.allclose(fwd[0], torch.tensor([0.0, 128.0, 512.0, 384.0]))
    back = undo_letterbox(fwd, input_hw, image_hw)
    assert torch.allclose(back, boxes_img, atol=1e-4)  # not clipped to the image
    # odd sizes: offsets are floored, the scale per axis follows the integer resize
    image_hw = (37, 91)
    _, nw, nh, dx, dy = letterbox_params(image_hw, (64, 64))
    corner = torch.tensor([[dx, dy, dx + nw, dy + nh]], dtype=torch.float32)
    back = undo_letterbox(corner, (64, 64), image_hw, mode="exact")
    assert torch.allclose(back, torch.tensor([[0.0, 0.0, 91.0, 37.0]]))


def _authors_correct_boxes(boxes_xyxy: np.ndarray, input_hw, image_hw) -> np.ndarray:
    """The authors' pipeline written out from reading STME utils/utils_bbox.py: decode_outputs divides
    the boxes by the input size, non_max_suppression turns corners into (centre, size), and
    yolo_correct_boxes works in (y, x) order on normalised coordinates, then multiplies by the image size."""
    inp, img = np.array(input_hw, np.float64), np.array(image_hw, np.float64)
    b = boxes_xyxy.astype(np.float64) / np.array([inp[1], inp[0], inp[1], inp[0]])
    yx = ((b[:, 0:2] + b[:, 2:4]) / 2)[:, ::-1]
    hw = (b[:, 2:4] - b[:, 0:2])[:, ::-1]
    new_shape = np.round(img * np.min(inp / img))
    offset = (inp - new_shape) / 2.0 / inp
    scale = inp / new_shape
    yx = (yx - offset) * scale
    hw = hw * scale
    mins, maxes = yx - hw / 2, yx + hw / 2
    out = np.concatenate([mins, maxes], 1) * np.concatenate([img, img])  # y1, x1, y2, x2
    return out[:, [1, 0, 3, 2]]


@pytest.mark.parametrize("image_hw", [(512, 640), (480, 720), (37, 91), (256, 320), (300, 301)])
def test_undo_letterbox_default_is_the_authors_arithmetic(image_hw):
    input_hw = (512, 512)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(64, 2, generator=g) * 500
    boxes = torch.cat((xy, xy + 1 + torch.rand(64, 2, generator=g) * 40), 1).double()
    want = _authors_correct_boxes(boxes.numpy(), input_hw, image_hw)
    got = undo_letterbox(boxes, input_hw, image_hw)
    assert np.abs(got.numpy() - want).max() < 1e-3
    assert torch.equal(got, undo_letterbox(boxes, input_hw, image_hw, mode="authors"))


def test_undo_letterbox_modes_differ_where_the_resize_is_not_integral():
    # 640x512 frames at 512: scale 0.8, nh = int(409.6) = 409 rows pasted at dy = 51; the authors map
    # back with round(409.6) = 410 rows and an offset of 51.0, so boxes near the bottom move by ~1 px.
    image_hw, input_hw = (512, 640), (512, 512)
    assert letterbox_params(image_hw, input_hw)[1:] == (512, 409, 0, 51)
    bottom = torch.tensor([[100.0, 450.0, 110.0, 460.0]], dtype=torch.float64)
    exact = undo_letterbox(bottom, input_hw, image_hw, mode="exact")
    authors = undo_letterbox(bottom, input_hw, image_hw)
    assert torch.allclose(exact[0, 1], torch.tensor((450.0 - 51) * 512 / 409, dtype=torch.float64))
    assert torch.allclose(authors[0, 1], torch.tensor((450.0 - 51) * 512 / 410, dtype=torch.float64))
    assert 1.2 < float(exact[0, 3] - authors[0, 3]) < 1.3
    assert torch.allclose(exact[:, [0, 2]], authors[:, [0, 2]])  # the width is resized exactly
    with pytest.raises(ConfigError, match="mode"):
        undo_letterbox(bottom, input_hw, image_hw, mode="floor")


@pytest.mark.parametrize("image_hw", [(512, 640), (37, 91), (100, 200), (511, 3), (1080, 1920)])
def test_undo_letterbox_exact_inverts_letterbox_params(image_hw):
    input_hw = (512, 512)
    _, nw, nh, dx, dy = letterbox_params(image_hw, input_hw)
    ih, iw = image_hw
    g = torch.Generator().manual_seed(2)
    boxes_img = torch.rand(32, 4, generator=g, dtype=torch.float64) * torch.tensor([iw, ih, iw, ih])
    fwd = boxes_img * torch.tensor([nw / iw, nh / ih, nw / iw, nh / ih]) + torch.tensor([dx, dy, dx, dy])
    back = undo_letterbox(fwd, input_hw, image_hw, mode="exact")
    assert torch.allclose(back, boxes_img, atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# Boxes <-> masks
# ---------------------------------------------------------------------------------------------------


def test_masks_to_boxes_components_scores_and_tight_boxes():
    prob = np.zeros((8, 10), dtype=np.float32)
    prob[2, 3] = 0.7  # a one-pixel component
    prob[5, 5], prob[6, 6], prob[7, 7] = 0.6, 0.9, 0.5  # diagonal: one 8-connected component
    prob[0, 8], prob[0, 9], prob[1, 9] = 0.55, 0.95, 0.8  # L shape
    prob[4, 0] = 0.49  # below the threshold
    got = masks_to_boxes(prob, threshold=0.5)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    want = [[3, 2, 4, 3, 0.7], [5, 5, 8, 8, 0.9], [8, 0, 10, 2, 0.95]]
    assert np.allclose(sorted(got.tolist()), want)
    # the threshold is inclusive and tensors are accepted
    assert masks_to_boxes(torch.from_numpy(prob), threshold=0.49).shape == (4, 5)
    assert masks_to_boxes(np.zeros((4, 4)), 0.5).shape == (0, 5)


def test_masks_to_boxes_per_frame_never_joins_frames():
    prob = np.zeros((3, 5, 5), dtype=np.float32)
    prob[0, 1, 1] = 1.0
    prob[1, 1, 1] = 0.8  # same pixel in the next frame: separate frame, separate box
    prob[1, 3:5, 3:5] = 0.6
    out = masks_to_boxes(prob)
    assert [len(b) for b in out] == [1, 2, 0]
    assert out[0].tolist() == [[1.0, 1.0, 2.0, 2.0, 1.0]]
    assert np.allclose(sorted(out[1].tolist()), [[1, 1, 2, 2, 0.8], [3, 3, 5, 5, 0.6]])
    with pytest.raises(ConfigError):
        masks_to_boxes(np.zeros(5))


def test_boxes_to_centroid_and_prob_maps():
    boxes = torch.tensor(
        [
            [3.0, 2.0, 4.0, 3.0, 0.7],  # 1-px box at row 2, col 3
            [5.0, 5.0, 8.0, 8.0, 0.9],  # 3x3 box: centre (6.5, 6.5) -> pixel (6, 6)
            [5.9, 5.9, 7.0, 7.0, 0.3],  # same centre pixel, lower score
            [20.0, 20.0, 22.0, 22.0, 0.8],  # centre outside the 8 x 10 image: dropped
        ]
    )
    cmap = boxes_to_centroid_map(boxes, (8, 10))
    assert cmap.dtype == torch.bool and cmap.shape == (8, 10)
    assert sorted(map(tuple, torch.nonzero(cmap).tolist())) == [(2, 3), (6, 6)]
    pmap = boxes_to_prob_map(boxes, (8, 10))
    assert pmap.dtype == torch.float32
    assert pmap[2, 3] == pytest.approx(0.7) and pmap[6, 6] == pytest.approx(0.9)
    assert pmap.sum() == pytest.approx(1.6)
    assert not boxes_to_centroid_map(torch.zeros(0, 4), (3, 3)).any()
    assert boxes_to_prob_map(np.zeros((0, 5)), (3, 3)).sum() == 0
    with pytest.raises(ConfigError):
        boxes_to_prob_map(torch.zeros(2, 4), (3, 3))


def test_mask_box_round_trip():
    rng = np.random.default_rng(0)
    prob = np.zeros((32, 32), dtype=np.float32)
    centres = [(4, 5), (12, 20), (25, 8), (28, 28)]
    for r, c in centres:  # 3x3 blobs, peak in the middle
        prob[r - 1 : r + 2, c - 1 : c + 2] = 0.6
        prob[r, c] = 0.8 + 0.1 * rng.random()
    boxes = masks_to_boxes(prob)
    assert len(boxes) == 4
    assert torch.allclose(boxes[:, 2] - boxes[:, 0], torch.full((4,), 3.0))
    cmap = boxes_to_centroid_map(boxes, prob.shape)
    assert sorted(map(tuple, np.argwhere(cmap.numpy()).tolist())) == sorted(centres)
    pmap = boxes_to_prob_map(boxes, prob.shape)
    for r, c in centres:
        assert pmap[r, c] == pytest.approx(prob[r, c])
