"""The DTUM authors' evaluation protocol: thresholds, their ROC file, and the published row recomputed."""

from __future__ import annotations

import numpy as np
import pytest

from utils.dtum_protocol import (
    DTUM_GROUPS,
    DTUM_HIGH_SNR,
    DTUM_LOW_SNR,
    DTUM_THRESHOLDS,
    DTUM_THRESHOLDS_INTERMEDIATE,
    dtum_scores,
    read_dtum_roc,
)
from utils.errors import ConfigError, DataError
from utils.metrics import value_at


def _roc_path(ref_dir):
    return ref_dir / "baselines" / "resunet_dtum" / "Epoch20_ROC_ShootingRules.txt"


def _line(th, tp, targets, false, pixels):
    pd = tp / targets if targets else float("nan")
    return f"Th_Seg = {th:e}:\tPD:[{tp}/{targets}, {pd:.5f}]\tFA:[{false}, {false / pixels:e}]\n"


def test_thresholds_and_groups():
    assert len(DTUM_THRESHOLDS) == 50 and len(set(DTUM_THRESHOLDS)) == 50
    assert DTUM_THRESHOLDS[:4] == (0.0, 1e-30, 1e-20, 1e-19) and DTUM_THRESHOLDS[-4:] == (0.99999, 0.999999,
                                                                                            0.9999999, 1.0)
    assert list(DTUM_THRESHOLDS) == sorted(DTUM_THRESHOLDS) and DTUM_THRESHOLDS[29] == 0.5
    assert DTUM_THRESHOLDS[21:24] == (0.1, 0.15, 0.2)
    assert len(DTUM_THRESHOLDS_INTERMEDIATE) == 16
    assert set(DTUM_THRESHOLDS_INTERMEDIATE) <= set(DTUM_THRESHOLDS)
    assert DTUM_LOW_SNR == (47, 56, 59, 76, 92, 101, 105, 119)
    assert DTUM_HIGH_SNR == (85, 86, 87, 88, 89, 90, 91, 93, 94, 95, 96, 97)
    assert len(DTUM_GROUPS["all"]) == 20 and set(DTUM_GROUPS["all"]) == set(DTUM_LOW_SNR) | set(DTUM_HIGH_SNR)


def test_published_row_recomputed_from_the_counts(ref_dir):
    roc = read_dtum_roc(_roc_path(ref_dir))
    assert np.array_equal(roc["thresholds"], DTUM_THRESHOLDS)
    assert list(roc["per_sequence"]) == list(DTUM_GROUPS["all"])
    scores = dtum_scores(roc["per_sequence"])
    published = {  # Pd, Fa, AUC at threshold 0.5 (Epoch20 file; baselines README)
        "all": (0.97455, 2.999e-5, 0.99665),
        "low_snr": (0.91682, 2.369e-5, 0.99212),
        "high_snr": (1.0, 3.415e-5, 0.99876),
    }
    for group, (pd, fa, auc) in published.items():
        res = scores[group]
        assert round(value_at(res, "pd", 0.5), 5) == pd, group
        assert float(f"{value_at(res, 'fa', 0.5):.3e}") == fa, group
        assert round(res["auc"], 5) == auc == roc["published"][group]["auc"], group
        # the pooled counts are the file's group block, the recomputed rates its printed ones
        for key in ("tp", "targets", "fa_pixels"):
            assert np.array_equal(res[key], roc["published"][group][key]), (group, key)
        assert np.allclose(res["fa"], roc["published"][group]["fa"], rtol=1e-6, atol=0)
    all_ = scores["all"]
    assert (value_at(all_, "tp", 0.5), value_at(all_, "targets", 0.5), value_at(all_, "fa_pixels", 0.5)) == (
        1685, 1729, 3968)
    # pixels per sequence are recovered exactly: 100 frames each (Seq47 is 256x320, Seq85 6,000,000 px)
    assert roc["per_sequence"][47]["pixels"][0] == 100 * 256 * 320
    assert roc["per_sequence"][85]["pixels"][0] == 6_000_000
    assert all(int(r["pixels"][0]) % 100 == 0 for r in roc["per_sequence"].values())


def test_hand_made_file(tmp_path):
    """Two sequences, three thresholds; Pd / Fa / AUC by hand."""
    thr = (0.0, 0.5, 1.0)
    text = "Seq1results:\n" + _line(0.0, 2, 2, 1000, 1000) + _line(0.5, 1, 2, 10, 1000)
    text += _line(1.0, 0, 2, 0, 1000)
    text += "Seq2results:\n" + _line(0.0, 1, 1, 3000, 3000) + _line(0.5, 1, 1, 30, 3000)
    text += _line(1.0, 1, 1, 6, 3000) + "\nFinal results:\tAUC:0.50000\n"
    text += _line(0.0, 3, 3, 4000, 4000) + _line(0.5, 2, 3, 40, 4000) + _line(1.0, 1, 3, 6, 4000)
    path = tmp_path / "roc.txt"
    path.write_text(text)
    roc = read_dtum_roc(path)
    assert roc["thresholds"].tolist() == list(thr)
    assert roc["per_sequence"][1]["pixels"].tolist() == [1000] * 3
    assert roc["per_sequence"][2]["pixels"].tolist() == [3000] * 3
    assert roc["published"]["all"]["auc"] == 0.5 and set(roc["published"]) == {"all"}
    res = dtum_scores(roc["per_sequence"], groups={"all": (1, 2), "one": (2,)})
    assert res["all"]["pd"].tolist() == [1.0, 2 / 3, 1 / 3]
    assert res["all"]["fa"].tolist() == [1.0, 40 / 4000, 6 / 4000]
    # trapezoids over Fa (decreasing): (1 - 0.01) * (1 + 2/3) / 2 + (0.01 - 0.0015) * (2/3 + 1/3) / 2
    assert res["all"]["auc"] == pytest.approx(0.99 * (5 / 3) / 2 + 0.0085 / 2, rel=1e-12)
    assert res["one"]["pd"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match=r"needs sequences \[47"):
        dtum_scores(roc["per_sequence"])


@pytest.mark.parametrize("text, match", [
    ("Seq1results:\nTh_Seg = 0.5 PD 1/2\n", r"line 2: not a line of the DTUM ROC layout"),
    ("Final results:\tAUC:0.9\n" + _line(0.5, 1, 2, 10, 1000), "no 'SeqNresults:' block"),
    ("Seq1results:\n", "the Seq1 block has no Th_Seg lines"),
    ("Seq1results:\n" + _line(0.0, 1, 2, 10, 1000) + "Seq2results:\n" + _line(0.1, 1, 2, 10, 1000),
     "Seq2 block has other thresholds"),
    ("Seq1results:\n" + _line(0.0, 1, 2, 10, 1000) + _line(0.5, 1, 3, 5, 1000), "changes its number of"),
    ("Seq1results:\n" + _line(0.0, 1, 2, 10, 1000) + _line(0.5, 1, 2, 5, 999), "do not fit one pixel count"),
    ("Seq1results:\n" + _line(0.0, 1, 2, 0, 1000), "no false-alarm pixels"),
    ("Seq1results:\n" + _line(0.0, 3, 2, 10, 1000), "3 detected targets out of 2"),
    ("Seq1results:\n" + _line(0.0, 1, 2, 10, 1000) + "Seq1results:\n" + _line(0.0, 1, 2, 10, 1000), "twice"),
])  # fmt: skip
def test_bad_content_is_one_line_naming_the_file(tmp_path, text, match):
    path = tmp_path / "bad_roc.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as err:
        read_dtum_roc(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_binary_file_is_a_data_error(tmp_path):
    path = tmp_path / "roc.txt"
    path.write_bytes(b"Seq1results:\n\xff\xfe\x00")
    with pytest.raises(DataError, match="not a text file"):
        read_dtum_roc(path)
