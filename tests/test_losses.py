"""Losses: YOLOX with SimOTA (hand-made cases, a brute-force pure-Python reference), SoftLoU, DTUM SoftIoU."""

from __future__ import annotations

import math
import random

import pytest
import torch

from utils.boxes import grid_xy
from utils.errors import ConfigError
from utils.losses import YOLOXLoss, dtum_soft_iou_loss, soft_lou_loss

STRIDE = 8


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------
# Brute-force reference of the authors' YOLOX loss (pure Python, float64, loops over anchors)
# ---------------------------------------------------------------------------------------------------


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce_logits(x: float, y: float) -> float:
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def _iou_cxcywh(a, b, eps: float = 0.0) -> float:
    iw = max(0.0, min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2))
    ih = max(0.0, min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + eps)


def _ref_image(raw, h, w, gts, num_classes, radius=2.5):
    """raw: A rows of (dx, dy, lw, lh, obj, cls...) -> (preds, {anchor: (gt, iou)})."""
    preds = []
    for k, r in enumerate(raw):
        gx, gy = k % w, k // w
        preds.append(
            ((r[0] + gx) * STRIDE, (r[1] + gy) * STRIDE, math.exp(r[2]) * STRIDE, math.exp(r[3]) * STRIDE)
        )
    if not gts:
        return preds, {}
    centres = [((k % w + 0.5) * STRIDE, (k // w + 0.5) * STRIDE) for k in range(h * w)]

    def in_box(g, c):
        cx, cy, bw, bh = g[:4]
        return cx - bw / 2 < c[0] < cx + bw / 2 and cy - bh / 2 < c[1] < cy + bh / 2

    def near(g, c):
        return abs(c[0] - g[0]) < radius * STRIDE and abs(c[1] - g[1]) < radius * STRIDE

    cand = [k for k, c in enumerate(centres) if any(in_box(g, c) or near(g, c) for g in gts)]
    if not cand:
        return preds, {}
    iou, cost = {}, {}
    for gi, g in enumerate(gts):
        for k in cand:
            iou[gi, k] = _iou_cxcywh(g, preds[k])
            bce = 0.0
            for c in range(num_classes):
                p = math.sqrt(_sig(raw[k][5 + c]) * _sig(raw[k][4]))
                term = math.log(p) if c == int(g[4]) else math.log(1.0 - p)
                bce -= max(term, -100.0)
            both = in_box(g, centres[k]) and near(g, centres[k])
            cost[gi, k] = bce + 3.0 * -math.log(iou[gi, k] + 1e-8) + (0.0 if both else 1e5)
    chosen: dict[int, list[int]] = {}
    for gi in range(len(gts)):
        top = sorted((iou[gi, k] for k in cand), reverse=True)[: min(10, len(cand))]
        dyn_k = max(1, int(sum(top)))
        for k in sorted(cand, key=lambda k: (cost[gi, k], k))[:dyn_k]:
            chosen.setdefault(k, []).append(gi)
    assigned = {}
    for k, owners in chosen.items():
        gi = owners[0] if len(owners) == 1 else min(range(len(gts)), key=lambda g: (cost[g, k], g))
        assigned[k] = (gi, iou[gi, k])
    return preds, assigned


def _ref_loss(outputs: torch.Tensor, targets, num_classes: int):
    b, _, h, w = outputs.shape
    total_iou = total_obj = total_cls = 0.0
    num_fg = 0
    assignments = []
    for i in range(b):
        raw = outputs[i].double().flatten(1).t().tolist()
        gts = targets[i].double().tolist()
        preds, assigned = _ref_image(raw, h, w, gts, num_classes)
        assignments.append(assigned)
        num_fg += len(assigned)
        for k in range(h * w):
            total_obj += _bce_logits(raw[k][4], 1.0 if k in assigned else 0.0)
        for k, (gi, iou) in assigned.items():
            total_iou += 1.0 - _iou_cxcywh(preds[k], gts[gi][:4], eps=1e-16) ** 2
            for c in range(num_classes):
                total_cls += _bce_logits(raw[k][5 + c], iou if c == int(gts[gi][4]) else 0.0)
    denom = max(num_fg, 1)
    return (5.0 * total_iou + total_obj + total_cls) / denom, num_fg, assignments


def _random_case(seed: int, b=2, h=6, w=8, num_classes=2, big=False, fit=False):
    """A random head and random GT boxes (some images empty unless `big`).

    `fit`: GTs clustered together and every anchor predicting a jittered copy of one of them, so that
    dynamic_k > 1 and anchors claimed by several GTs are common.
    """
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    outputs = torch.randn(b, 5 + num_classes, h, w, generator=g)
    outputs[:, 2:4] = outputs[:, 2:4] * 0.7 + 0.5
    grid = grid_xy(h, w).t().reshape(2, h, w)
    targets = []
    for i in range(b):
        n = rng.choice([1, 2]) if big else rng.choice([2, 3, 4]) if fit else rng.choice([0, 1, 2, 3])
        rows = []
        hub = (rng.uniform(16, w * STRIDE - 16), rng.uniform(16, h * STRIDE - 16))
        for _ in range(n):
            bw, bh = (
                (rng.uniform(40, 56), rng.uniform(40, 56))
                if big
                else (rng.uniform(3, 30), rng.uniform(3, 30))
            )
            if big:
                cx, cy = rng.uniform(bw / 2, w * STRIDE - bw / 2), rng.uniform(bh / 2, h * STRIDE - bh / 2)
            elif fit:
                cx, cy = hub[0] + rng.uniform(-8, 8), hub[1] + rng.uniform(-8, 8)
            else:
                cx, cy = rng.uniform(0, w * STRIDE), rng.uniform(0, h * STRIDE)
            rows.append([cx, cy, bw, bh, rng.randrange(num_classes)])
        tgt = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
        if fit:
            pick = tgt[torch.randint(0, n, (h, w), generator=g)]  # [h, w, 5]
            jitter = torch.randn(4, h, w, generator=g)
            outputs[i, 0:2] = pick[..., :2].permute(2, 0, 1) / STRIDE - grid + 0.2 * jitter[:2]
            outputs[i, 2:4] = torch.log(pick[..., 2:4].permute(2, 0, 1) / STRIDE) + 0.15 * jitter[2:]
        targets.append(tgt)
    return outputs, targets


def _our_assignment(loss_fn: YOLOXLoss, outputs: torch.Tensor, tgt: torch.Tensor, dtype=torch.float64):
    """Run `assign` for image 0 of `outputs` in `dtype` -> {anchor: (gt, iou)}."""
    _, _, h, w = outputs.shape
    raw = outputs[0].to(dtype).flatten(1).t()
    grid = grid_xy(h, w, dtype=dtype)
    boxes = torch.cat(((raw[:, :2] + grid) * STRIDE, torch.exp(raw[:, 2:4]) * STRIDE), 1)
    fg, gt_idx, ious = loss_fn.assign(
        tgt[:, :4].to(dtype), tgt[:, 4].long(), boxes, raw[:, 4], raw[:, 5:], (grid + 0.5) * STRIDE
    )
    return {int(k): (int(g), float(v)) for k, g, v in zip(fg, gt_idx, ious)}


# ---------------------------------------------------------------------------------------------------
# YOLOX loss
# ---------------------------------------------------------------------------------------------------


def test_single_gt_candidates_and_assignment():
    # 4x4 grid (32x32 input), zero head: every prediction is an 8x8 box centred on its cell's top-left corner
    loss_fn = YOLOXLoss(num_classes=1, stride=STRIDE)
    outputs = torch.zeros(1, 6, 4, 4)
    gt = torch.tensor([[12.0, 12.0, 6.0, 6.0, 0.0]])  # box (9, 15): only anchor centre (12, 12) is inside
    loss, parts = loss_fn(outputs, [gt])
    assert parts["num_fg"] == 1
    fg = _our_assignment(loss_fn, outputs, gt)
    assert list(fg) == [1 * 4 + 1]  # anchor (row 1, col 1): the only one inside the box and near its centre
    # its prediction (8, 8, 8, 8) against the GT: overlap 3 x 3, union 64 + 36 - 9
    assert fg[5][1] == pytest.approx(9 / 91, rel=1e-6)
    # all 16 anchor centres (4..28) lie within 2.5 * 8 = 20 px of (12, 12): the loss sees 16 candidates,
    # which the brute-force reference agrees with, and the whole obj map is supervised
    ref, num_fg, _ = _ref_loss(outputs, [gt], 1)
    assert num_fg == 1 and loss.item() == pytest.approx(ref, rel=1e-5)
    expected_obj = 15 * math.log(2) + math.log(2)  # BCE(0 logit) is log 2 for every anchor
    assert parts["obj"].item() == pytest.approx(expected_obj, rel=1e-5)


def test_dynamic_k_truncates_the_iou_sum():
    # every anchor predicts a 49 x 49 box on the 48 x 48 GT's centre: IoU 48^2 / 49^2 = 0.96 everywhere, so
    # dynamic_k = int(10 * 0.96) = 9 (truncated, as the authors), taken among the 5 x 5 anchors inside the
    # box and within 20 px of its centre (anchor centres 12..44 on each axis)
    loss_fn = YOLOXLoss(num_classes=1, stride=STRIDE)
    h = w = 8
    gt = torch.tensor([[32.0, 32.0, 48.0, 48.0, 0.0]])
    outputs = torch.zeros(1, 6, h, w)
    outputs[0, 0:2] = 32.0 / STRIDE - grid_xy(h, w).t().reshape(2, h, w)
    outputs[0, 2:4] = math.log(49.0 / STRIDE)
    outputs[0, 4:6] = 3.0
    for dtype in (torch.float32, torch.float64):
        fg = _our_assignment(loss_fn, outputs, gt, dtype)
        assert len(fg) == 9
        for k, (g, iou) in fg.items():
            cx, cy = (k % w + 0.5) * STRIDE, (k // w + 0.5) * STRIDE
            assert g == 0 and 12 <= cx <= 44 and 12 <= cy <= 44
            assert iou == pytest.approx(48**2 / 49**2, rel=1e-5)
    loss, parts = loss_fn(outputs, [gt])
    assert parts["num_fg"] == 9
    assert parts["iou"].item() == pytest.approx(5 * (1 - (48**2 / 49**2) ** 2), rel=1e-4)


@pytest.mark.parametrize("fit", [False, True])
def test_assignment_matches_brute_force_reference(fit):
    loss_fn = YOLOXLoss(num_classes=2, stride=STRIDE)
    checked = 0
    for seed in range(40):
        outputs, targets = _random_case(seed, b=1, fit=fit)
        if len(targets[0]) == 0:
            continue
        _, _, (want,) = _ref_loss(outputs, targets, 2)
        got = _our_assignment(loss_fn, outputs, targets[0])  # float64: no rounding ties at 1e5
        assert got.keys() == want.keys(), seed
        for k in got:
            assert got[k][0] == want[k][0], seed
            assert got[k][1] == pytest.approx(want[k][1], rel=1e-9, abs=1e-12)
        checked += 1
    assert checked > 20


def test_loss_value_matches_brute_force_reference():
    loss_fn = YOLOXLoss(num_classes=2, stride=STRIDE)
    for seed in range(12):
        # GTs of 40+ px, fully inside the image: each has >= 16 anchors inside and near its centre, so
        # the fp32 path never meets the rounding ties of the 1e5 penalty
        outputs, targets = _random_case(seed, b=2, h=8, w=10, big=True)
        ref, ref_fg, _ = _ref_loss(outputs, targets, 2)
        loss, parts = loss_fn(outputs, targets)
        assert parts["num_fg"] == ref_fg
        assert loss.item() == pytest.approx(ref, rel=1e-4)
        assert (parts["iou"] + parts["obj"] + parts["cls"]).item() == pytest.approx(loss.item(), rel=1e-6)
    # and mixed small / empty GTs through the public fp32 call
    for seed in range(12):
        outputs, targets = _random_case(seed, b=2)
        ref, ref_fg, _ = _ref_loss(outputs, targets, 2)
        loss, parts = loss_fn(outputs, targets)
        assert parts["num_fg"] == ref_fg and loss.item() == pytest.approx(ref, rel=1e-4)


def test_empty_targets_give_obj_only_loss_and_gradient():
    loss_fn = YOLOXLoss(num_classes=1)
    outputs = torch.randn(2, 6, 4, 5, requires_grad=True)
    loss, parts = loss_fn(outputs, [torch.zeros(0, 5), torch.zeros((0, 5))])
    assert torch.isfinite(loss) and parts["num_fg"] == 0
    assert parts["iou"].item() == 0 and parts["cls"].item() == 0
    expected = torch.nn.functional.softplus(outputs[:, 4]).sum()  # BCE(x, 0) summed, num_fg clamped to 1
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    grad = outputs.grad
    assert torch.isfinite(grad).all() and grad[:, 4].abs().sum() > 0
    assert grad[:, [0, 1, 2, 3, 5]].abs().sum() == 0


def test_gradient_flows_to_every_head_channel():
    loss_fn = YOLOXLoss(num_classes=1)
    outputs, targets = _random_case(3, b=2, h=8, w=10, num_classes=1, big=True)
    outputs.requires_grad_(True)
    loss, parts = loss_fn(outputs, targets)
    loss.backward()
    assert parts["num_fg"] > 0 and torch.isfinite(outputs.grad).all()
    for ch in range(6):
        assert outputs.grad[:, ch].abs().sum() > 0, ch


def test_loss_decreases_on_a_tiny_head():
    torch.manual_seed(0)
    head = torch.nn.Conv2d(4, 6, 1)
    feats = torch.randn(2, 4, 8, 8)
    targets = [
        torch.tensor([[20.0, 24.0, 12.0, 10.0, 0.0], [44.0, 40.0, 20.0, 16.0, 0.0]]),
        torch.zeros(0, 5),
    ]
    loss_fn = YOLOXLoss(num_classes=1)
    opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss, _ = loss_fn(head(feats), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_amp_inputs_are_handled_in_fp32():
    loss_fn = YOLOXLoss(num_classes=1)
    outputs, targets = _random_case(1, b=2, h=8, w=10, num_classes=1, big=True)
    ref, _ = loss_fn(outputs, targets)
    half = outputs.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = loss_fn(half, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=0.05)
    loss.backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()


def test_gt_far_outside_the_map_has_no_positives():
    loss_fn = YOLOXLoss(num_classes=1)
    loss, parts = loss_fn(torch.zeros(1, 6, 4, 4), [torch.tensor([[500.0, 500.0, 4.0, 4.0, 0.0]])])
    assert parts["num_fg"] == 0 and torch.isfinite(loss)


def test_bad_inputs_raise():
    loss_fn = YOLOXLoss(num_classes=1)
    with pytest.raises(ConfigError):
        loss_fn(torch.zeros(1, 7, 4, 4), [torch.zeros(0, 5)])
    with pytest.raises(ConfigError):
        loss_fn(torch.zeros(2, 6, 4, 4), [torch.zeros(0, 5)])
    with pytest.raises(ConfigError):
        loss_fn(torch.zeros(1, 6, 4, 4), [torch.zeros(2, 4)])
    with pytest.raises(ConfigError):
        loss_fn(torch.zeros(1, 6, 4, 4), [torch.tensor([[8.0, 8.0, 4.0, 4.0, 1.0]])])


# ---------------------------------------------------------------------------------------------------
# SoftLoU
# ---------------------------------------------------------------------------------------------------


def test_soft_lou_hand_values():
    target = torch.zeros(2, 3, 4, 4)
    target[0, 1, 2, 2] = 1
    target[1, :, 0, :2] = 1  # 6 target pixels
    # p = 0.5 everywhere: inter = 0.5 k, union = 0.5 n + 0.5 k -> ratio k / (n + k), n = 48
    loss = soft_lou_loss(torch.zeros(2, 3, 4, 4), target)
    assert loss.item() == pytest.approx(1 - (1 / 49 + 6 / 54) / 2, rel=1e-6)
    # confident and right: ratio ~1
    logits = torch.where(target > 0, 30.0, -30.0)
    assert soft_lou_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    # the authors' expression on random values
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 6, 7, generator=g), (torch.rand(3, 5, 6, 7, generator=g) > 0.8).float()
    p = torch.sigmoid(x)
    inter = (p * y).sum((1, 2, 3))
    ref = 1 - (inter / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) - inter)).mean()
    assert soft_lou_loss(x, y).item() == pytest.approx(ref.item(), rel=1e-6)


def test_soft_lou_empty_target_and_underflow():
    logits = torch.randn(1, 2, 5, 5, requires_grad=True)
    loss = soft_lou_loss(logits, torch.zeros(1, 2, 5, 5))
    assert loss.item() == 1.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0
    # every probability underflows to exactly 0 and there is no target: 0 / 0 guarded
    logits = torch.full((2, 2, 3, 3), -1e4, requires_grad=True)
    target = torch.zeros(2, 2, 3, 3)
    target[1, 0, 1, 1] = 1  # second sample has a target: ratio 0 / 1
    loss = soft_lou_loss(logits, target)
    assert loss.item() == 1.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_soft_lou_amp_and_shape_check():
    target = (torch.rand(1, 4, 8, 8) > 0.9).float()
    x = torch.randn(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = soft_lou_loss(x.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(soft_lou_loss(x, target).item(), abs=0.02)
    with pytest.raises(ConfigError):
        soft_lou_loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 9))


def test_dtum_soft_iou_hand_values():
    # p = 0.5 on 4 pixels, one target pixel: (0.5 + 1) / (2 + 1 - 0.5 + 1) = 3 / 7
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1
    assert dtum_soft_iou_loss(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(4 / 7, rel=1e-6)
    # pooled over the batch: a second, empty sample adds 2 to sum p -> 1.5 / 5.5 (not a per-sample mean)
    two = torch.cat([target, torch.zeros(1, 1, 2, 2)])
    assert dtum_soft_iou_loss(torch.zeros(2, 1, 2, 2), two).item() == pytest.approx(8 / 11, rel=1e-6)
    # no smoothing: 0.5 / 2.5
    unsmoothed = dtum_soft_iou_loss(torch.zeros(1, 1, 2, 2), target, smooth=0.0)
    assert unsmoothed.item() == pytest.approx(0.8, rel=1e-6)
    # confident and right, and an empty batch predicted empty: 0
    logits = torch.where(target > 0, 30.0, -30.0)
    assert dtum_soft_iou_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    empty = dtum_soft_iou_loss(torch.full((2, 1, 3, 3), -30.0), torch.zeros(2, 1, 3, 3))
    assert empty.item() == pytest.approx(0.0, abs=1e-6)


def test_dtum_soft_iou_gradient_amp_and_shape_check():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 7, generator=g, requires_grad=True)
    y = (torch.rand(2, 1, 6, 7, generator=g) > 0.8).float()
    loss = dtum_soft_iou_loss(x, y)
    loss.backward()
    p = torch.sigmoid(x.detach())
    inter = (p * y).sum()
    assert loss.item() == pytest.approx(1 - ((inter + 1) / (p.sum() + y.sum() - inter + 1)).item(), rel=1e-6)
    # d loss / d p is negative on target pixels, positive elsewhere
    assert (x.grad[y > 0] < 0).all() and (x.grad[y == 0] > 0).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = dtum_soft_iou_loss(x.detach().bfloat16(), y)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(loss.item(), abs=0.02)
    with pytest.raises(ConfigError):
        dtum_soft_iou_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 1, 8, 8))
