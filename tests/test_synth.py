"""The synthetic generator: determinism, realised SNR, truth where the targets were drawn, layouts, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from utils import synth
from utils.errors import ConfigError
from utils.synth import STYLES, SynthConfig, generate, render_sequence

NUDT_ARGS = dict(format="nudt", num_seqs=(2, 1, 3), frames=12, size=(48, 64), low_snr_seqs=2)
COCO_ARGS = dict(format="coco", style="daub", num_seqs=(2, 1, 1), frames=8, size=(64, 64))


def _stack(folder: Path) -> np.ndarray:
    return np.stack([np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def _ring(masks: np.ndarray) -> np.ndarray:
    """Pixels 2..4 px around the masks."""
    outer = ndimage.binary_dilation(masks, np.ones((1, 9, 9)))
    return outer & ~ndimage.binary_dilation(masks, np.ones((1, 3, 3)))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def nudt_pair(tmp_path_factory):
    a = tmp_path_factory.mktemp("nudt_a")
    b = tmp_path_factory.mktemp("nudt_b")
    meta = generate(SynthConfig(out=str(a), seed=5, **NUDT_ARGS))
    generate(SynthConfig(out=str(b), seed=5, **NUDT_ARGS))
    return a, b, meta


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_itsdt")
    meta = generate(SynthConfig(format="coco", style="itsdt", num_seqs=(1, 0, 1), frames=6, size=(96, 128),
                                out=str(root), seed=2))
    return root, meta


def test_same_seed_same_bytes(nudt_pair, tmp_path):
    a, b, _ = nudt_pair
    fa, fb = _files(a), _files(b)
    assert len(fa) > 100 and fa.keys() == fb.keys()
    assert all(fa[k] == fb[k] for k in fa)
    c1, c2, c3 = tmp_path / "c1", tmp_path / "c2", tmp_path / "c3"
    generate(SynthConfig(out=str(c1), seed=1, **COCO_ARGS))
    generate(SynthConfig(out=str(c2), seed=1, **COCO_ARGS))
    generate(SynthConfig(out=str(c3), seed=2, **COCO_ARGS))
    f1, f2, f3 = _files(c1), _files(c2), _files(c3)
    assert f1 == f2
    assert f1["images/train/data1/0.bmp"] != f3["images/train/data1/0.bmp"]


def test_nudt_layout_and_low_snr_names(nudt_pair):
    root, _, meta = nudt_pair
    test_lines = (root / "test.txt").read_text().splitlines()
    assert test_lines[0] == "Sequence47/Mix/00001.mat" and len(test_lines) == 3 * 12
    names = list(dict.fromkeys(line.split("/")[0] for line in test_lines))
    assert names[:2] == ["Sequence47", "Sequence56"] and meta["low_snr_sequences"] == names[:2]
    train = list(dict.fromkeys(line.split("/")[0] for line in (root / "train.txt").read_text().splitlines()))
    assert not set(train) & set(names) and (root / "val.txt").is_file()
    for sub in ("images", "masks", "masks_centroid"):
        assert len(list((root / "Sequence47" / sub).glob("*.png"))) == 12
    img = Image.open(root / "Sequence47" / "images" / "00001.png")
    assert img.mode == "L" and img.size == (64, 48)


def test_realised_snr_in_range(nudt_pair, coco_root):
    _, _, meta = nudt_pair
    lo, hi = STYLES["nudt"].snr
    n_low, close, total = 0, 0, 0
    for seq in meta["sequences"]:
        for t in seq["targets"]:
            if t["snr"] is None:
                continue
            if seq["snr_label"] == "low":
                n_low += 1
                assert 0 < t["snr"] <= 3.0, (seq["name"], t)
            else:
                assert lo * 0.9 <= t["snr"] <= hi * 1.05, (seq["name"], t)
            total += 1
            close += abs(t["snr"] - seq["snr_requested"]) <= 0.05 * seq["snr_requested"]
    assert n_low >= 2
    assert close >= 0.8 * total  # saturation at 255 may cap a few bright targets
    _, cmeta = coco_root
    lo, hi = STYLES["itsdt"].snr
    snrs = [t["snr"] for s in cmeta["sequences"] for t in s["targets"] if t["snr"] is not None]
    assert snrs and all(lo * 0.9 <= v <= hi * 1.05 for v in snrs)


def test_truth_agrees_with_drawn_targets():
    st = replace(STYLES["nudt"], p_gap=0.5, p_enter=0.3, p_leave=0.3)
    r = render_sequence(0, st, 7, (64, 80), 30, 6.0, 3)
    n, h, w = r.frames.shape
    assert r.masks.shape == r.centroids.shape == (n, h, w)
    assert (r.masks | ~r.centroids).all()  # every centroid pixel lies in a mask
    for k in range(r.present.shape[0]):
        for t in np.nonzero(r.present[k])[0]:
            x1, y1, x2, y2 = r.boxes[k, t]
            cy, cx = np.rint(r.centres[k, t]).astype(int)
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert r.masks[t, y1:y2, x1:x2].any()
            if 0 <= cy < h and 0 <= cx < w:  # the drawn centre is in the mask and in the box
                assert r.masks[t, cy, cx] and x1 <= cx < x2 and y1 <= cy < y2
    # No mask pixel outside every target box; frames without a present target have no mask.
    boxed = np.zeros_like(r.masks)
    for k, t in zip(*np.nonzero(r.present)):
        x1, y1, x2, y2 = r.boxes[k, t]
        boxed[t, y1:y2, x1:x2] = True
    assert not (r.masks & ~boxed).any()
    assert not r.masks[~r.present.any(0)].any()
    # Targets are brighter than their surroundings (SNR 6).
    f = r.frames.astype(float)
    assert f[r.masks].mean() > f[_ring(r.masks)].mean() + 5


def test_written_truth_matches_frames(nudt_pair, coco_root):
    root, _, _ = nudt_pair
    for seq in ("Sequence85", "Sequence1"):
        frames, masks, cents = (_stack(root / seq / sub) for sub in ("images", "masks", "masks_centroid"))
        masks, cents = masks > 0, cents > 0
        assert masks.any() and (masks | ~cents).all()
        assert frames[cents].astype(float).mean() > frames[_ring(masks)].astype(float).mean() + 5
    croot, _ = coco_root
    coco = json.loads((croot / "instances_test2017.json").read_text())
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    diffs = []
    for a in coco["annotations"]:
        img = np.array(Image.open(croot / files[a["image_id"]]).convert("L"), float)
        x, y, bw, bh = (int(v) for v in a["bbox"])
        inner = img[y:y + bh, x:x + bw]
        outer = img[max(y - 6, 0):y + bh + 6, max(x - 6, 0):x + bw + 6]
        diffs.append(inner.max() - np.median(outer))
    assert len(diffs) > 5 and np.median(diffs) > 10


def test_coco_layout_lists_match_json(coco_root):
    from utils_coco.coco_to_txt import coco_to_lines

    root, meta = coco_root
    for split in ("train", "test"):
        coco = json.loads((root / f"instances_{split}2017.json").read_text())
        lines = (root / f"coco_{split}_ITSDT.txt").read_text().splitlines()
        assert lines == coco_to_lines(coco, "")
        assert len(lines) == len(coco["images"]) == 6
        assert lines[0].startswith(f"images/{coco['images'][0]['file_name'].split('/')[1]}/0.bmp")
    assert not (root / "instances_val2017.json").exists()  # no val sequences requested
    assert Image.open(root / "images" / "1" / "0.bmp").size == (128, 96)


def test_noise_variant_shares_masks(nudt_pair, tmp_path):
    clean, _, _ = nudt_pair
    noisy = tmp_path / "noisy"
    meta = generate(SynthConfig(out=str(noisy), seed=5, noise=True, **NUDT_ARGS))
    assert meta["variant"] == "noise"
    a = clean / "Sequence47"
    b = noisy / "Sequence47"
    for p in sorted((a / "masks").glob("*.png")):
        assert p.read_bytes() == (b / "masks" / p.name).read_bytes()
    fa = np.array(Image.open(a / "images" / "00003.png"), float)
    fb = np.array(Image.open(b / "images" / "00003.png"), float)
    assert 6 < np.std(fb - fa) < 14
    only_images = tmp_path / "noisy_images_only"
    generate(SynthConfig(out=str(only_images), seed=5, noise=True, write_masks=False, **NUDT_ARGS))
    assert not (only_images / "Sequence47" / "masks").exists()
    frame = "Sequence47/images/00003.png"
    assert (only_images / frame).read_bytes() == (noisy / frame).read_bytes()


def test_cli_preview_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    meta = synth.main(["--format", "coco", "--style", "irdst", "--out", str(out), "--num-seqs", "1,0,1",
                       "--frames", "5", "--size", "64x80", "--targets", "2", "--snr-range", "3", "5",
                       "--preview"])
    assert (out / "preview.png").is_file() and (out / "coco_train_IRDST.txt").is_file()
    assert all(len(s["targets"]) == 2 for s in meta["sequences"])
    assert "wrote 2 sequences" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="low-snr-range"):
        synth.main(["--out", str(tmp_path / "x"), "--low-snr-range", "2", "4"])
    with pytest.raises(ConfigError, match="num-seqs"):
        synth.main(["--out", str(tmp_path / "x"), "--num-seqs", "a,b"])
    with pytest.raises(ConfigError, match="noise"):
        synth.main(["--format", "coco", "--noise", "--out", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match=r"--size 32x32 is too small for itsdt-style"):
        synth.main(["--format", "coco", "--out", str(tmp_path / "x"), "--size", "32", "--frames", "2"])
    with pytest.raises(ConfigError, match="--jitter"):
        synth.main(["--out", str(tmp_path / "x"), "--jitter", "-1"])
    # without targets any size from 16 px works
    meta = synth.main(["--format", "coco", "--out", str(tmp_path / "y"), "--size", "32", "--frames", "2",
                       "--num-seqs", "0,0,1", "--targets", "0-0"])
    assert meta["sequences"][0]["frames"] == 2


def test_jitter_option_moves_the_background(tmp_path):
    """--jitter 0 gives a static background: consecutive frames differ only where targets are."""
    still = generate(SynthConfig(format="nudt", out=str(tmp_path / "still"), num_seqs=(0, 0, 1), frames=6,
                                 size=(48, 64), jitter=0.0, low_snr_seqs=0))
    shaky = generate(SynthConfig(format="nudt", out=str(tmp_path / "shaky"), num_seqs=(0, 0, 1), frames=6,
                                 size=(48, 64), jitter=1.0, low_snr_seqs=0))
    assert still["config"]["jitter"] == 0.0 and shaky["config"]["jitter"] == 1.0

    def background_change(root: Path) -> float:
        seq = next(p for p in root.iterdir() if p.name.startswith("Sequence"))
        frames = np.stack([np.asarray(Image.open(f), np.float32) for f in sorted((seq / "images").iterdir())])
        masks = np.stack([np.asarray(Image.open(f)) > 0 for f in sorted((seq / "masks").iterdir())])
        away = ~np.any(masks, 0)
        return float(np.abs(np.diff(frames, axis=0))[:, away].mean())

    assert background_change(tmp_path / "still") < 0.5 < background_change(tmp_path / "shaky")
