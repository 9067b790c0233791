"""Res-UNet+DTUM through the toolbox's scripts on tiny synthetic NUDT-MIRSDT-style data: the DTUM recipe as
train_NUDT.py's defaults, the 5-frame window dataset, a short training run that learns, sliding-window
prediction, and test_deeppro.py's `--protocol dtum` recomputed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import nets
from tests.conftest import synthetic_set
from utils.data import NUDTTestSequences, normalise_nudt, read_split
from utils.data.frames import read_grey, read_mask
from utils.data.nudt import NUDTWindowDataset, sequence_files, window_indices
from utils.deeppro_eval import main as eval_main
from utils.deeppro_train import AUTHORS_RECIPE, recipe_defaults
from utils.deeppro_train import main as train_main
from utils.dtum_protocol import DTUM_THRESHOLDS
from utils.engine import seed_everything
from utils.losses import dtum_soft_iou_loss
from utils.metrics import DEFAULT_THRESHOLDS, iou_counts
from utils.segmentation import predict_sequence
from utils.weights import load_weights

_QUIET = ["--workers", "0", "--no-progress", "--no-tensorboard", "--no-plot"]


@pytest.fixture(scope="module")
def nudt_root(tmp_path_factory) -> Path:
    """2 train, 1 val, 2 test sequences (Sequence47 low-SNR) of 8 frames of 32x32."""
    return synthetic_set(tmp_path_factory, "nudt_dtum", format="nudt", seed=5, num_seqs=(2, 1, 2), frames=8,
                         size=(32, 32))


@pytest.fixture(scope="module")
def trained(nudt_root, tmp_path_factory):
    """4 epochs of the DTUM recipe (every window once per epoch, batch 1: 64 Adam steps) through
    train_NUDT's main; lr 0.01 instead of the recipe's 1e-3 so that a few steps suffice."""
    out = tmp_path_factory.mktemp("run_dtum")
    argv = ["--data-root", str(nudt_root), "--out", str(out), "--exist-ok", "--model", "resunet_dtum",
            "--lr", "0.01", "--epochs", "4", "--seed", "0", *_QUIET]
    return train_main(AUTHORS_RECIPE, argv)


# ------------------------------------------------------------------------------------------- recipe


def test_recipe_defaults_apply_unless_overridden(capsys):
    dtum = recipe_defaults(AUTHORS_RECIPE, ["--model", "resunet-dtum"])
    want = nets.model_info("resunet_dtum").recipe
    assert want["lr"] == 1e-3 and want["step_size"] == 3 and want["batch_size"] == 1
    for key, value in want.items():
        assert getattr(dtum, key) == value, key
    assert (dtum.epochs, dtum.betas, dtum.weight_decay, dtum.step_gamma, dtum.sampling, dtum.loss,
            dtum.val_protocol, dtum.seqlen, dtum.patch, dtum.resize) == \
        (20, (0.9, 0.99), 0.0, 0.5, "all", "dtum_soft_iou", "dtum", 5, 0, 0)
    # `--model=...` selects the recipe too; flags are never abbreviated (the real parse refuses `--mod`
    # and names --model), so an abbreviation selects nothing; DeepPro keeps its authors' defaults
    assert recipe_defaults(AUTHORS_RECIPE, ["--model=resunet_dtum"]).epochs == 20
    assert recipe_defaults(AUTHORS_RECIPE, ["--mod", "resunet_dtum"]) == AUTHORS_RECIPE
    assert recipe_defaults(AUTHORS_RECIPE, ["--model", "deeppro"]) == AUTHORS_RECIPE
    assert recipe_defaults(AUTHORS_RECIPE, []) == AUTHORS_RECIPE
    # a bad value is left to the real parse, which reports it once
    assert recipe_defaults(AUTHORS_RECIPE, ["--model", "resunet_dtum", "--lr", "abc"]) == AUTHORS_RECIPE
    assert capsys.readouterr().err == ""


def test_explicit_options_win_over_the_recipe(nudt_root, tmp_path):
    """--lr and --epochs given: those values, the rest of the recipe kept (the run's stored config)."""
    out = tmp_path / "run"
    train_main(AUTHORS_RECIPE, ["--data-root", str(nudt_root), "--out", str(out), "--model", "resunet_dtum",
                                "--lr", "0.005", "--epochs", "1", "--max-iters-per-epoch", "2",
                                "--val-split", "none", *_QUIET])
    cfg = load_weights(out / "last.pt").train_config
    assert cfg["lr"] == 0.005 and cfg["epochs"] == 1
    assert cfg["betas"] == [0.9, 0.99] and cfg["step_size"] == 3 and cfg["batch_size"] == 1
    assert cfg["loss"] == "dtum_soft_iou" and cfg["weight_decay"] == 0.0 and cfg["seqlen"] == 5


# ------------------------------------------------------------------------------------------- data


def test_window_dataset_items(nudt_root):
    ds = NUDTWindowDataset(nudt_root, seqlen=5, resize=None, patch=None)
    names = read_split(nudt_root / "train.txt")
    assert len(ds) == 16 and [s.name for s in ds.sequences] == names
    assert window_indices(0, 5) == [0] * 5 and window_indices(2, 5) == [0, 0, 0, 1, 2]
    assert window_indices(7, 5) == [3, 4, 5, 6, 7]
    files = sequence_files(str(nudt_root), names[1])
    for frame in (0, 2, 7):
        x, y = ds[8 + frame]
        assert x.shape == (1, 5, 32, 32) and y.shape == (1, 32, 32)
        want = normalise_nudt(np.stack([read_grey(files.frames[k]) for k in window_indices(frame, 5)]))
        np.testing.assert_array_equal(x[0].numpy(), want)
        np.testing.assert_array_equal(y[0].numpy(), read_mask(files.masks[frame]).astype(np.float32))
    order = ds.epoch_indices(0, seed=1)
    assert sorted(order) == list(range(16)) and order != list(range(16)) and order != ds.epoch_indices(1, 1)


# ------------------------------------------------------------------------------------------- prediction


@pytest.mark.parametrize("batch_size", [1, 3])
def test_sliding_windows_equal_the_model_per_window(batch_size):
    torch.manual_seed(0)
    model = nets.build_model("resunet_dtum").eval()
    frames = torch.randn(7, 16, 24)
    got = predict_sequence(model, frames.numpy(), seqlen=5, batch_size=batch_size)
    with torch.no_grad():
        for i in range(7):
            clip = frames[window_indices(i, 5)][None, None]
            want = torch.sigmoid(model(clip))[0, 0].numpy()
            np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-6)
    # the first frame's window is that frame five times, the last one the five last frames
    with torch.no_grad():
        first = torch.sigmoid(model(frames[:1].repeat(5, 1, 1)[None, None]))[0, 0].numpy()
    np.testing.assert_allclose(got[0], first, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- training


def _soft_iou_and_iou(model, seqs) -> tuple[float, float]:
    """The test protocol's probabilities scored by the DTUM SoftIoU loss and the pooled IoU at 0.5."""
    probs = [predict_sequence(model, s.frames, 5) for s in seqs]
    p = torch.from_numpy(np.concatenate(probs))
    masks = torch.from_numpy(np.concatenate([s.masks for s in seqs])).float()
    loss = float(dtum_soft_iou_loss(torch.logit(p.clamp(1e-7, 1 - 1e-7)), masks))
    inter = union = 0
    for prob, s in zip(probs, seqs):
        i, u = iou_counts(prob, s.masks, 0.5)
        inter, union = inter + i, union + u
    return loss, inter / max(union, 1)


def test_training_learns(trained, nudt_root):
    """The training loss falls, and the trained weights (eval mode, the test protocol's sliding windows)
    segment the training sequences better than the same initial weights untrained. With 16 training frames
    the test sequences are too few to show generalisation."""
    rows = trained.history
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and "val_auc" in rows[0] and "val_pd" in rows[0]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
    loaded = load_weights(trained.last)
    assert (loaded.kind, loaded.name, loaded.ema, loaded.epoch) == ("ours", "resunet_dtum", False, 4)
    seed_everything(0)  # the engine's seeding before it builds the model: the same initial weights
    untrained = nets.build_model("resunet_dtum").eval()
    seqs = list(NUDTTestSequences(nudt_root, "train", min_frames=1))
    loss0, iou0 = _soft_iou_and_iou(untrained, seqs)
    loss1, iou1 = _soft_iou_and_iou(loaded.model.eval(), seqs)
    assert loss1 < loss0 - 0.05 and iou1 > iou0 + 0.05, (loss0, iou0, loss1, iou1)


# ------------------------------------------------------------------------------------------- evaluation


def _shooting_rules(prob: np.ndarray, label: np.ndarray, th: float) -> tuple[int, int, int]:
    """The DTUM authors' per-frame rule written out: (targets, detected, false-alarm pixels); windows are
    numpy slices [r - k : r + k + 1], empty where the start is negative."""
    pred = prob >= th
    comps, n = ndimage.label(label, structure=np.ones((3, 3), bool))
    protected = np.zeros_like(pred)
    detected = 0
    for k in range(1, n + 1):
        hit = False
        for r, c in zip(*np.nonzero(comps == k)):
            if r - 1 >= 0 and c - 1 >= 0 and pred[r - 1:r + 2, c - 1:c + 2].any():
                hit = True
            if r - 4 >= 0 and c - 4 >= 0:
                protected[r - 4:r + 5, c - 4:c + 5] = True
        detected += hit
    return n, detected, int((pred & ~protected).sum())


def test_protocol_dtum_recomputed_by_hand(trained, nudt_root, tmp_path):
    out = tmp_path / "eval"
    res = eval_main(["--weights", str(trained.best), "--data-root", str(nudt_root), "--out", str(out),
                     "--protocol", "dtum", "--workers", "0", "--no-progress", "--batch-size", "3"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"] == "dtum" and saved["border"] == "authors"
    assert saved["thresholds"] == list(DTUM_THRESHOLDS) and saved["stride"] is None
    text = (out / "eval.txt").read_text()
    assert "protocol='dtum'" in text and "border=authors" in text
    assert text.count("Th_Seg = ") == 50 * (2 + 3)  # 2 sequences and the low / high / all blocks
    model = load_weights(trained.best).model.eval()
    seqs = list(NUDTTestSequences(nudt_root, "test", min_frames=1))
    probs = [predict_sequence(model, s.frames, 5) for s in seqs]
    for j, th in enumerate(DTUM_THRESHOLDS):
        counts = np.zeros(3, np.int64)
        for p, s in zip(probs, seqs):
            for f in range(len(p)):
                counts += _shooting_rules(p[f], s.centroids[f], th)
        pooled = res["results"]["all"]
        assert (int(pooled["targets"][j]), int(pooled["tp"][j]), int(pooled["fa_pixels"][j])) == \
            tuple(counts), th
    # the default protocol on the same weights: DeepPro's 27 thresholds, windows clipped at the border
    res = eval_main(["--weights", str(trained.best), "--data-root", str(nudt_root), "--out", str(out),
                     "--overwrite", "--workers", "0", "--no-progress"])
    assert res["results"]["protocol"] == "deeppro" and res["results"]["border"] == "clip"
    assert tuple(res["results"]["all"]["thresholds"]) == tuple(DEFAULT_THRESHOLDS)


def test_protocol_threshold_and_seqlen_checks(trained, nudt_root, tmp_path, capsys):
    from test_deeppro import cli
    from utils.cli import run_main

    for argv, words in ((["--protocol", "dtum", "--threshold", "0.42"], "not one of the 50 thresholds"),
                        (["--seqlen", "8"], "takes clips of 5 frames")):
        with pytest.raises(SystemExit) as exc:
            run_main(cli, ["--weights", str(trained.best), "--data-root", str(nudt_root), "--out",
                           str(tmp_path / "e"), "--workers", "0", "--no-progress", *argv])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and words in err and "\n" not in err, err
