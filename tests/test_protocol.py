"""The authors' evaluation protocol, exactly: the DeepPro / DTUM ShootingRules border rule of Pd / Fa, how it
reaches the DeepPro scorer and its result files, and what the published counts say about the windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from utils.errors import ConfigError
from utils.metrics import BORDER_RULES, pd_fa, pool_pd_fa
from utils.report import eval_txt_messages, format_pd_fa_table
from utils.segmentation import SequenceScorer, evaluate_sequences


def shooting_rules_loop(prob, truth, thresholds, loc1=1, loc2=4):
    """The authors' ShootingRules written out as loops (from reading ShootingRules.py of the DeepPro and DTUM
    repositories): binarise with `p < th -> 0` then `p >= th -> 1`, label the 8-connected targets, zero a
    Box2_map over the slices [r-loc2 : r+loc2+1] of every target pixel, count a target when the slice
    [r-loc1 : r+loc1+1] of the binary map sums to >= 1, and count the nonzero pixels of map * Box2_map."""
    tp, fa, n_targets = [], [], 0
    for th in thresholds:
        true_num = false_num = tgt_num = 0
        for p, t in zip(prob, truth):
            out = p.astype(np.float64).copy()
            out[np.where(out < th)] = 0
            out[np.where(out >= th)] = 1
            labels, k = ndimage.label(t, structure=np.ones((3, 3), bool))
            tgt_num += k
            box2 = np.ones(out.shape)
            for i in range(1, k + 1):
                hit = 0
                for r, c in zip(*np.nonzero(labels == i)):
                    box2[r - loc2:r + loc2 + 1, c - loc2:c + loc2 + 1] = 0
                    if out[r - loc1:r + loc1 + 1, c - loc1:c + loc1 + 1].sum() >= 1:
                        hit = 1
                true_num += hit
            false_num += np.count_nonzero(out * box2)
        tp.append(true_num)
        fa.append(false_num)
        n_targets = tgt_num
    return np.array(tp), n_targets, np.array(fa)


def _frame(h, w, targets, probs):
    truth = np.zeros((1, h, w), bool)
    prob = np.zeros((1, h, w), np.float32)
    for r, c in targets:
        truth[0, r, c] = True
    for (r, c), v in probs.items():
        prob[0, r, c] = v
    return prob, truth


def test_target_on_row_zero_is_missed_and_its_pixel_is_a_false_alarm_under_the_authors_rule():
    prob, truth = _frame(20, 20, [(0, 10)], {(0, 10): 0.9})
    clip = pd_fa(prob, truth, [0.5])
    authors = pd_fa(prob, truth, [0.5], border="authors")
    assert (clip["tp"][0], clip["fa_pixels"][0]) == (1, 0)
    # slice [-1:2] of 20 rows is [19:2] = empty: no detection window, and [-4:5] leaves no protection
    assert (authors["tp"][0], authors["fa_pixels"][0]) == (0, 1)
    assert clip["border"] == "clip" and authors["border"] == "authors"


def test_target_two_rows_from_the_top_is_found_but_not_protected():
    # Row 2: the 3x3 slice [1:4] is fine, the 9x9 slice [-2:7] is empty, so the hit itself and a pixel
    # 3 px away count as false alarms under the authors' rule, not with clipped windows.
    prob, truth = _frame(20, 20, [(2, 10)], {(2, 10): 0.9, (5, 12): 0.8, (15, 15): 0.7})
    clip = pd_fa(prob, truth, [0.5, 0.75])
    authors = pd_fa(prob, truth, [0.5, 0.75], border="authors")
    assert clip["tp"].tolist() == authors["tp"].tolist() == [1, 1]
    assert clip["fa_pixels"].tolist() == [1, 0]
    assert authors["fa_pixels"].tolist() == [3, 2]


def test_left_border_and_corner():
    prob, truth = _frame(16, 16, [(8, 1), (15, 15)], {(8, 0): 0.9, (14, 14): 0.9})
    clip = pd_fa(prob, truth, [0.5])
    authors = pd_fa(prob, truth, [0.5], border="authors")
    assert (clip["tp"][0], clip["fa_pixels"][0]) == (2, 0)
    # column 1: the 3x3 slice [0:3] still holds column 0 (a hit) but the 9x9 slice [-3:6] is empty; the
    # bottom-right corner target's slices are cut at the stop, exactly as clipping does.
    assert (authors["tp"][0], authors["fa_pixels"][0]) == (2, 1)


def test_bottom_and_right_borders_agree():
    prob, truth = _frame(20, 20, [(17, 18)], {(19, 19): 0.9, (13, 14): 0.9, (12, 18): 0.9, (18, 17): 0.6})
    thr = [0.5, 0.7]
    clip, authors = pd_fa(prob, truth, thr), pd_fa(prob, truth, thr, border="authors")
    for key in ("tp", "fa_pixels", "targets"):
        np.testing.assert_array_equal(clip[key], authors[key])
    assert clip["tp"].tolist() == [1, 0] and clip["fa_pixels"].tolist() == [1, 1]


def test_tiny_frames_follow_numpy_wrapping_slices():
    # 8 rows, target at row 2, window radius 4: [-2:7] is [6:7] (a negative start counts from the end),
    # so only row 6 / column 6 is protected and (5, 5) is a false alarm; clipping protects both.
    prob, truth = _frame(8, 8, [(2, 2)], {(6, 6): 0.9, (5, 5): 0.9})
    assert pd_fa(prob, truth, [0.5])["fa_pixels"][0] == 0
    assert pd_fa(prob, truth, [0.5], border="authors")["fa_pixels"][0] == 1


def test_negative_scores_are_positive_at_threshold_zero_under_the_authors_rule():
    prob, truth = _frame(12, 12, [(6, 6)], {})
    prob[0, 0, 0] = -0.5
    clip = pd_fa(prob, truth, [0.0, 0.5])
    authors = pd_fa(prob, truth, [0.0, 0.5], border="authors")
    assert clip["fa_pixels"].tolist() == [144 - 81 - 1, 0]
    assert authors["fa_pixels"].tolist() == [144 - 81, 0]


@pytest.mark.parametrize("seed", range(8))
def test_authors_rule_equals_the_loop_on_random_frames(seed):
    rng = np.random.default_rng(seed)
    n = 3
    h, w = (int(v) for v in rng.integers(6, 24, size=2))
    truth = rng.random((n, h, w)) < 0.04
    truth[0, 0, : min(3, w)] = True  # targets on the top row, the left column and near the corners
    truth[1, : min(2, h), 0] = True
    truth[2, h - 1, w - 1] = True
    truth[2, 1, w - 2] = True
    prob = (rng.random((n, h, w)) ** 4).astype(np.float32 if seed % 2 else np.float64)
    thr = [0.0, 1e-3, 0.05, 0.2, 0.5, 0.8, 0.95, 1.0]
    for loc1, loc2 in ((1, 4), (2, 5)):  # DTUM's ShootingRules, and DeepPro's (see the published counts)
        tp, targets, fa = shooting_rules_loop(prob, truth, thr, loc1, loc2)
        got = pd_fa(prob, truth, thr, detect_radius=loc1, window_radius=loc2, border="authors")
        assert got["targets"][0] == targets
        np.testing.assert_array_equal(got["tp"], tp)
        np.testing.assert_array_equal(got["fa_pixels"], fa)


def test_border_rule_is_checked_and_pooling_keeps_it():
    prob, truth = _frame(10, 10, [(5, 5)], {(5, 5): 0.9})
    with pytest.raises(ConfigError, match="border must be one of clip, authors"):
        pd_fa(prob, truth, border="numpy")
    a, b = pd_fa(prob, truth, border="authors"), pd_fa(prob, truth, border="authors")
    assert pool_pd_fa([a, b])["border"] == "authors"
    with pytest.raises(ConfigError, match="different border rules"):
        pool_pd_fa([a, pd_fa(prob, truth)])
    assert set(BORDER_RULES) == {"clip", "authors"}


class _Echo(nn.Module):
    """A stand-in segmenter: the logit of each pixel is its (normalised) input value times 10."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return x[:, 0] * self.scale


def _sequence(name):
    from utils.data import NUDTSequence

    frames = np.full((40, 16, 16), -1.0, np.float32)
    cents = np.zeros((40, 16, 16), bool)
    cents[:, 1, 8] = True  # a target one row below the top border in every frame
    frames[:, 1, 8] = 1.0
    return NUDTSequence(name, frames, cents.copy(), cents, [f"{i}.png" for i in range(40)])


@pytest.mark.parametrize("border", ["clip", "authors"])
def test_scorer_and_evaluate_sequences_thread_the_border_rule(border):
    scorer = evaluate_sequences(_Echo(), [_sequence("Sequence1")], seqlen=40, stride=36, border=border)
    res = scorer.results(header="Namespace()")
    assert res["border"] == border and res["all"]["border"] == border
    assert (res["detect_radius"], res["window_radius"]) == (1, 4)
    i = list(res["all"]["thresholds"]).index(0.5)
    # Row 1: its 9x9 slice [-3:6] is empty under the authors' rule, so the 40 hits are also false alarms.
    assert int(res["all"]["tp"][i]) == 40
    assert int(res["all"]["fa_pixels"][i]) == (40 if border == "authors" else 0)
    msgs = eval_txt_messages(res)
    assert msgs[2] == "---- EVALUATION----"
    assert msgs[3].startswith(f"Pd / Fa windows: border={border} ({BORDER_RULES[border]})")
    assert f"border={border}" in format_pd_fa_table(res)
    wide = SequenceScorer(border=border, detect_radius=2, window_radius=5)
    wide.add("Sequence1", np.zeros((1, 16, 16), np.float32), np.zeros((1, 16, 16), bool),
             np.zeros((1, 16, 16), bool))
    assert wide.results()["window_radius"] == 5
    with pytest.raises(ConfigError, match="border"):
        SequenceScorer(border="wrap")


def test_published_counts_reveal_the_window_sizes_and_no_target_near_a_border(ref_dir):
    """At threshold 0 every pixel is positive, so the false alarms of a sequence are its pixels minus the
    protected ones. In the published evaluations that difference is exactly 121 = 11 x 11 pixels per target
    for DeepPro (both datasets: ShootingRules with LocLen2 = 5, as in the DeepPro repository) and 81 = 9 x 9
    for DeepPro-Plus (LocLen2 = 4, as in DTUM's file): the two published models were scored with different
    false-alarm windows. In every sequence no target pixel lies within 5 px of a border, so border="clip" and
    border="authors" give the same published counts. DTUM's own log shows 81 per target too."""
    import json
    import re

    official = json.loads((ref_dir / "deeppro" / "official_metrics.json").read_text())
    window = {"DeepPro_NUDT-MIRSDT": 121, "DeepPro_NUDT-MIRSDT-Noise": 121,
              "DeepPro-Plus_NUDT-MIRSDT": 81, "DeepPro-Plus_NUDT-MIRSDT-Noise": 81}
    assert sorted(official) == sorted(window)
    for key, model in official.items():
        assert model["thresholds"][0] == 0
        for name, seq in model["per_sequence"].items():
            pixels = 100 * model["image_HxW_pixels_per_frame"][name]
            assert pixels - seq["fa_counts"][0] == window[key] * seq["targets"], (key, name)
            assert seq["pd_curve"][0] == 1.0  # no target lost at t = 0: none on rows / columns 0-1
    log = (ref_dir / "baselines" / "resunet_dtum" / "Epoch20_ROC_ShootingRules.txt").read_text()
    first = re.search(r"Seq47results:\nTh_Seg = 0\.0+e\+00:\tPD:\[(\d+)/(\d+), [0-9.]+\]\tFA:\[(\d+),", log)
    targets, fa0 = int(first.group(2)), int(first.group(3))
    assert 100 * 256 * 320 - fa0 == 81 * targets  # Sequence47: 100 frames of 256x320
    # Our pd_fa reproduces both conventions on an interior target.
    prob, truth = np.zeros((1, 40, 40), np.float32), np.zeros((1, 40, 40), bool)
    truth[0, 20, 20] = True
    for radius, protected in ((4, 81), (5, 121)):
        r = pd_fa(prob, truth, [0.0], window_radius=radius, border="authors")
        assert int(r["fa_pixels"][0]) == 1600 - protected
