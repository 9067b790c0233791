"""DeepPro end to end on a tiny synthetic NUDT-MIRSDT-style set: clips and stitching, a short training run
that learns, the test script on official weights, result files, --help and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import nets
from tests.conftest import synthetic_set
from utils.cli import run_main
from utils.data import NUDTTestSequences
from utils.deeppro_train import AUTHORS_RECIPE, DeepProConfig, split_files
from utils.deeppro_train import main as train_main
from utils.engine import seed_everything
from utils.errors import CheckpointError
from utils.metrics import iou_counts, pd_fa
from utils.segmentation import clip_ranges, predict_sequence, stitch_max
from utils.weights import load_weights

OFFICIAL = {"deeppro": "ckpt_DeepPro_NUDT-MIRSDT_best_model.pth",
            "deeppro_plus": "ckpt_DeepPro-Plus_NUDT-MIRSDT_best_model.pth"}


@pytest.fixture(scope="module")
def nudt_root(tmp_path_factory) -> Path:
    """4 train, 1 val, 2 test sequences (Sequence47 low-SNR) of 44 frames of 32x40."""
    return synthetic_set(tmp_path_factory, "nudt", format="nudt", seed=3, num_seqs=(4, 1, 2), frames=44,
                         size=(32, 40))


@pytest.fixture(scope="module")
def trained(nudt_root, tmp_path_factory):
    """30 Adam steps of DeepPro-Plus on 16x16 crops centred on targets, through train_NUDT's main (2 epochs
    of 15 batches of 4; lr 0.05 instead of 1e-3 so that a few steps suffice)."""
    out = tmp_path_factory.mktemp("run")
    argv = ["--data-root", str(nudt_root), "--out", str(out), "--exist-ok", "--model", "deeppro_plus",
            "--resize", "0", "--patch", "16", "--center-prob", "1", "--lr", "0.05", "--epochs", "2",
            "--sample-rate", "0.375", "--eval-period", "2", "--workers", "0", "--seed", "0", "--no-progress",
            "--no-tensorboard", "--no-plot", "--device", "cpu"]
    return train_main(AUTHORS_RECIPE, argv)


def _pd_at_fa(probs: list[np.ndarray], truths: list[np.ndarray], fa: float = 1e-3) -> float:
    """Pooled Pd at the lowest threshold whose false-alarm rate (pixels outside the 9x9 windows around
    targets, over all pixels) is at most `fa`: a ranking score that does not depend on calibration."""
    background = np.sort(np.concatenate([p[~ndimage.binary_dilation(t, np.ones((1, 9, 9), bool))]
                                         for p, t in zip(probs, truths)]))
    allowed = int(fa * sum(p.size for p in probs))
    thr = float(np.nextafter(background[-allowed - 1], np.float32(2)))
    res = [pd_fa(p, t, [thr]) for p, t in zip(probs, truths)]
    assert sum(int(r["fa_pixels"][0]) for r in res) <= allowed
    return sum(int(r["tp"][0]) for r in res) / max(1, sum(int(r["targets"][0]) for r in res))


# ---------------------------------------------------------------------------------- clips and stitching


def test_clip_ranges():
    assert clip_ranges(100) == [(0, 40), (36, 76), (60, 100)]
    assert clip_ranges(40) == [(0, 40)]
    assert clip_ranges(76) == [(0, 40), (36, 76)]
    assert clip_ranges(41) == [(0, 40), (1, 41)]
    assert clip_ranges(10, seqlen=4, stride=4) == [(0, 4), (4, 8), (6, 10)]
    for n in range(40, 200):
        r = clip_ranges(n)
        covered = np.zeros(n, bool)
        for s, e in r:
            assert e - s == 40 and 0 <= s and e <= n
            covered[s:e] = True
        assert covered.all() and r[-1][1] == n
    with pytest.raises(ValueError, match="shorter"):
        clip_ranges(39)


def test_stitch_max_by_hand():
    out = np.zeros((5, 1, 2), np.float32)
    stitch_max(out, 0, np.full((3, 1, 2), 0.2, np.float32))
    stitch_max(out, 2, np.array([[[0.1, 0.9]], [[0.5, 0.5]], [[0.3, 0.3]]], np.float32))
    want = np.array([[0.2, 0.2], [0.2, 0.2], [0.2, 0.9], [0.5, 0.5], [0.3, 0.3]], np.float32)
    np.testing.assert_array_equal(out[:, 0], want)
    with pytest.raises(ValueError):
        stitch_max(out, 4, np.zeros((3, 1, 2), np.float32))


class _RampModel(torch.nn.Module):
    """logits[t] = frame[t] + 0.1 t: overlapping clips disagree, the clip that started earliest is max."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        t = torch.arange(x.shape[2], dtype=x.dtype).view(1, -1, 1, 1)
        return x[:, 0] + 0.1 * t


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_predict_sequence_stitches_by_max(batch_size):
    frames = np.random.default_rng(0).normal(size=(100, 3, 4)).astype(np.float32)
    got = predict_sequence(_RampModel(), frames, batch_size=batch_size)
    want = np.zeros_like(frames)
    for s, e in [(0, 40), (36, 76), (60, 100)]:
        clip = 1 / (1 + np.exp(-(frames[s:e] + 0.1 * np.arange(40)[:, None, None])))
        want[s:e] = np.maximum(want[s:e], clip)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # frames 36..39 come from the first clip (offsets 36..39 beat 0..3), 60..75 from the second
    np.testing.assert_allclose(got[36], 1 / (1 + np.exp(-(frames[36] + 3.6))), atol=1e-6)
    np.testing.assert_allclose(got[70], 1 / (1 + np.exp(-(frames[70] + 3.4))), atol=1e-6)


# ------------------------------------------------------------------------------------------- training


def test_training_learns(trained, nudt_root):
    assert trained.best is not None and trained.best_epoch == 2
    rows = trained.history
    assert [r["epoch"] for r in rows] == [1, 2] and "val_iou" in rows[1] and "train_iou" in rows[0]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    seqs = [s for s in NUDTTestSequences(nudt_root, "test")]
    seed_everything(0)
    untrained = nets.build_model("deeppro_plus").eval()
    loaded = load_weights(trained.best)
    model = loaded.model
    assert (loaded.kind, loaded.name, loaded.ema, loaded.epoch) == ("ours", "deeppro_plus", False, 2)
    model.eval()
    scores = {}
    for name, m in (("untrained", untrained), ("trained", model)):
        probs = [predict_sequence(m, s.frames) for s in seqs]
        inter = union = 0
        for p, s in zip(probs, seqs):
            i, u = iou_counts(p, s.masks, 0.5)
            inter, union = inter + i, union + u
        scores[name] = {"pd": _pd_at_fa(probs, [s.centroids for s in seqs]), "iou": inter / union}
    print(scores)
    assert scores["trained"]["pd"] > max(0.4, scores["untrained"]["pd"] + 0.3), scores
    assert scores["trained"]["iou"] > max(0.1, 5 * scores["untrained"]["iou"]), scores


def test_validation_holdout_lists(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "train.txt").write_text("".join(f"Sequence{i}/Mix/00001.mat\n" for i in range(1, 11)))
    cfg = DeepProConfig(val_holdout=3)
    train_file, val_file, text = split_files(cfg, root, tmp_path / "out")
    val = val_file.read_text().split()
    train = train_file.read_text().split()
    assert val == ["Sequence3/", "Sequence5/", "Sequence8/"] and len(train) == 7 and not set(val) & set(train)
    assert "3 held-out" in text
    (root / "val.txt").write_text("Sequence11/Mix/00001.mat\n")
    assert split_files(cfg, root, tmp_path / "out")[1] == root / "val.txt"
    assert split_files(DeepProConfig(val_split="none"), root, tmp_path / "out")[1] is None


# --------------------------------------------------------------------------------------------- testing


def _test_cli(argv):
    from test_deeppro import cli

    return cli([*argv, "--device", "cpu"])


def test_test_script_official_weights(ref_dir, nudt_root, tmp_path, capsys):
    out = tmp_path / "eval"
    res = _test_cli(["--weights", str(ref_dir / "deeppro" / OFFICIAL["deeppro"]), "--data-root",
                     str(nudt_root), "--out", str(out), "--workers", "0", "--no-progress",
                     "--batch-size", "2"])
    printed = capsys.readouterr().out
    assert "low SNR" in printed and "high SNR" in printed and "Fa (1e-5)" in printed
    text = (out / "eval.txt").read_text()
    lines = text.splitlines()
    assert lines[0].endswith(" - Model - INFO - PARAMETER ...") and "---- EVALUATION----" in lines[2]
    assert sum(" - INFO - Sequence" in line and line.endswith(" results:") for line in lines) == 2
    assert "Low SNR results:\tAUC:" in text and "High SNR results:\tAUC:" in text
    assert "Final results:\tAUC:" in text and "Eval avg class IoU of prediction:" in lines[-1]
    assert sum("Th_Seg = " in line for line in lines) == 27 * 5
    data = json.loads((out / "results.json").read_text())
    assert data["model"] == "deeppro" and data["weights_source"] == "official"
    assert data["low_snr_sequences"] == ["Sequence47"]
    assert 0 <= data["data_wait_fraction"] <= 1 and 0 <= data["data_wait_s"] <= data["wall_s"]
    assert len(data["pooled"]["all"]["pd"]) == 27 and set(data["summary"]) >= {"low_snr", "high_snr", "all"}
    assert (out / "roc.png").stat().st_size > 1000
    groups = ("low_snr", "high_snr")
    assert res["summary"]["all"]["targets"] == sum(data["summary"][k]["targets"] for k in groups)


def test_help(capsys):
    import test_deeppro
    import train_NUDT

    for module in (train_NUDT, test_deeppro):
        with pytest.raises(SystemExit) as exc:
            run_main(module.cli, ["--help"])
        text = capsys.readouterr().out
        assert exc.value.code == 0 and "--data-root" in text and "--model" in text
        assert "run_main(cli)" in Path(module.__file__).read_text()


def _one_line_error(argv, capsys) -> str:
    from test_deeppro import cli

    with pytest.raises(SystemExit) as exc:
        run_main(cli, argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_mismatched_weights_one_line(ref_dir, trained, nudt_root, capsys):
    err = _one_line_error(["--weights", str(ref_dir / "deeppro" / OFFICIAL["deeppro"]), "--model",
                           "deeppro_plus", "--data-root", str(nudt_root)], capsys)
    assert "do not fit --model deeppro_plus" in err and "deeppro" in err
    err = _one_line_error(["--weights", str(trained.best), "--model", "deeppro", "--data-root",
                           str(nudt_root)], capsys)
    assert "checkpoint is for deeppro_plus" in err
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(Path(trained.run_dir) / "missing.pt")
    loaded = load_weights(ref_dir / "deeppro" / OFFICIAL["deeppro_plus"])
    assert loaded.name == "deeppro_plus" and loaded.kind == "official"


def test_validation_fast_path_gives_the_eager_metrics(ref_dir, nudt_root):
    """The per-epoch validation runs the fast path on the CPU (--fast auto): same metrics as the eager
    model, and the trained model's mode is left as it was."""
    from utils.deeppro_train import make_val_evaluator

    model = load_weights(ref_dir / "deeppro" / OFFICIAL["deeppro"]).model
    got = {}
    for mode in ("auto", "off"):
        cfg = DeepProConfig(fast=mode, seqlen=40)
        evaluate, n_val = make_val_evaluator(cfg, nudt_root, None, nudt_root / "val.txt")
        model.train()
        got[mode] = evaluate(model, 0)
        assert model.training and n_val == 1
    assert got["auto"]["val_iou"] == pytest.approx(got["off"]["val_iou"], abs=1e-6)
    assert got["auto"]["val_pd"] == got["off"]["val_pd"] and got["auto"]["val_auc"] == pytest.approx(
        got["off"]["val_auc"], abs=1e-6)
