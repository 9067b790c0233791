"""Loaders (utils.data) on synthetic datasets in the real layouts, the real txt lists, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import utils.data.coco_clips as coco_clips
from utils.boxes import letterbox_params
from utils.data import (
    NUDT_MEAN,
    NUDT_STD,
    CocoClipDataset,
    CocoEvalClips,
    FrameIndex,
    NUDTTestSequences,
    NUDTTrainDataset,
    clip_collate,
    eval_collate,
    letterbox_boxes,
    mask_centroids,
    nudt_collate,
    read_split,
    read_txt_list,
)
from utils.data.frames import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import DataError
from utils.synth import SynthConfig, generate
from utils_coco.coco_to_txt import coco_to_lines

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("daub")
    generate(SynthConfig(format="coco", style="daub", num_seqs=(2, 0, 1), frames=8, size=(64, 64),
                         out=str(root)))
    return root


@pytest.fixture(scope="module")
def nudt_roots(tmp_path_factory) -> tuple[Path, Path]:
    clean = tmp_path_factory.mktemp("nudt")
    noisy = tmp_path_factory.mktemp("nudt_noise")
    args = dict(format="nudt", num_seqs=(2, 0, 2), frames=14, size=(40, 48), targets=(1, 1), low_snr_seqs=1)
    generate(SynthConfig(out=str(clean), **args))
    generate(SynthConfig(out=str(noisy), noise=True, write_masks=False, **args))
    return clean, noisy


def _one_line(err: pytest.ExceptionInfo, name: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and name in msg, msg


def _frame(root: Path, rel: str, size: tuple[int, int]) -> torch.Tensor:
    """Our reading of one frame, letterboxed by hand: float [3, H, W] normalised."""
    img = Image.open(root / rel).convert("RGB")
    iw, ih = img.size
    _, nw, nh, dx, dy = letterbox_params((ih, iw), size)
    canvas = Image.new("RGB", (size[1], size[0]), (128, 128, 128))
    canvas.paste(img.resize((nw, nh), Image.BICUBIC), (dx, dy))
    x = torch.from_numpy(np.asarray(canvas, np.float32) / 255).permute(2, 0, 1)
    return (x - MEAN) / STD


# ----------------------------------------------------------------------------------------- COCO training
def test_clip_item_frames_boxes_and_collate(coco_root):
    size = (96, 128)
    ds = CocoClipDataset(coco_root / "coco_train_DAUB.txt", input_size=size, num_frames=5)
    assert len(ds) == 16
    x, t = ds[3]  # frame 3 of data1: frames 0, 0, 1, 2, 3
    assert x.shape == (3, 5, 96, 128) and x.dtype == torch.float32
    for k, idx in enumerate([0, 0, 1, 2, 3]):
        assert torch.allclose(x[:, k], _frame(coco_root, f"images/train/data1/{idx}.bmp", size), atol=1e-5)
    assert torch.allclose(x[:, 0, 0, 0], (0.5019608 - MEAN[:, 0, 0]) / STD[:, 0, 0], atol=1e-5)  # grey pad
    coco = json.loads((coco_root / "instances_train2017.json").read_text())
    ann = [a for a in coco["annotations"] if a["image_id"] == 4]
    bx, by, bw, bh = ann[0]["bbox"]
    want = letterbox_boxes(np.array([[bx, by, bx + bw, by + bh, 0]]), (64, 64), size)
    assert t.shape == (1, 5) and torch.allclose(t, torch.from_numpy(want))
    images, targets = clip_collate([ds[0], ds[9]])
    assert images.shape == (2, 3, 5, 96, 128) and len(targets) == 2 and targets[1].shape[1] == 5


def test_letterbox_boxes_by_hand():
    boxes = np.array([[10, 20, 30, 40, 0], [11, 20, 31, 41, 2], [-5, 0, 1, 10, 0], [630, 470, 650, 490, 0]])
    out = letterbox_boxes(boxes, (480, 640), (512, 512))  # scale 0.8, nw 512, nh 384, dx 0, dy 64
    # x 11 * 0.8 = 8.8 -> 8; 31 * 0.8 = 24.8 -> 24; y 41 * 0.8 + 64 = 96.8 -> 96; the third box is 0 px wide
    # after truncation and dropped; the fourth becomes (504, 440, 520, 456), clipped to x2 = 512.
    expect = np.array([[16, 88, 16, 16, 0], [16, 88, 16, 16, 2], [508, 448, 8, 16, 0]], np.float32)
    np.testing.assert_allclose(out, expect)
    assert letterbox_boxes(np.zeros((0, 5)), (64, 64), (64, 64)).shape == (0, 5)


def test_frame_discovery(tmp_path):
    layout = (("a", ["000.png", "001.png", "003.png", "notes.txt"]), ("b", ["00001.jpeg", "00002.tiff"]))
    for folder, names in layout:
        (tmp_path / folder).mkdir()
        for n in names:
            if n.endswith(".txt"):
                (tmp_path / folder / n).write_text("x")
            else:
                Image.new("L", (4, 4)).save(tmp_path / folder / n)
    idx = FrameIndex()
    got = [Path(p).name for p in idx.clip_paths(str(tmp_path / "a" / "003.png"), 5)]
    assert got == ["000.png", "000.png", "001.png", "001.png", "003.png"]
    got = [Path(p).name for p in idx.clip_paths(str(tmp_path / "b" / "00002.tiff"), 3)]
    assert got == ["00001.jpeg", "00001.jpeg", "00002.tiff"]


def test_data_root_remap(coco_root, tmp_path):
    coco = json.loads((coco_root / "instances_train2017.json").read_text())
    lst = tmp_path / "authors.txt"
    lst.write_text("".join(s + "\n" for s in coco_to_lines(coco, "/home/public/DAUB/")))
    ref = CocoClipDataset(coco_root / "coco_train_DAUB.txt", input_size=64)
    for kw in ({}, {"list_root": "/home/public/DAUB"}):
        ds = CocoClipDataset(lst, input_size=64, data_root=coco_root, **kw)
        assert ds.entries[5].path == str(coco_root / "images/train/data1/5.bmp")
        x, t = ds[5]
        x0, t0 = ref[5]
        assert torch.equal(x, x0) and torch.equal(t, t0)
    with pytest.raises(DataError, match="list root") as err:
        read_txt_list(lst, coco_root, list_root="/elsewhere")
    _one_line(err, "/home/public/DAUB/images")


def test_epoch_indices(coco_root):
    ds = CocoClipDataset(coco_root / "coco_train_DAUB.txt", input_size=64)
    a, b, c = ds.epoch_indices(0, seed=1), ds.epoch_indices(0, seed=1), ds.epoch_indices(1, seed=1)
    assert a == b and a != c and len(a) == len(set(a)) == len(ds) // 5
    assert len(ds.epoch_view(2, seed=1)) == len(ds) // 5


def test_real_lists_parse(ref_dir, tmp_path):
    ann = ref_dir / "annotations"
    itsdt = read_txt_list(ann / "coco_train_ITSDT.txt", data_root=tmp_path)
    assert len(itsdt) == 10000 and sum(len(e.boxes) == 0 for e in itsdt) == 69
    assert itsdt[0].path == str(tmp_path / "images/1/0.bmp") and max(len(e.boxes) for e in itsdt) == 7
    assert all(e.path.startswith(str(tmp_path) + "/images/") for e in itsdt)
    irdst = read_txt_list(ann / "coco_train_IRDST.txt", data_root=tmp_path)
    assert len(irdst) == 20398 and max(len(e.boxes) for e in irdst) == 2
    b = irdst[0].boxes
    assert b.dtype == np.int64 and b.tolist() == [[273, 480, 288, 489, 0]]
    daub = read_txt_list(ann / "coco_train_DAUB.txt", data_root=tmp_path)
    assert len(daub) == 8982 and daub[0].path == str(tmp_path / "images/train/data5/0.bmp")


# ------------------------------------------------------------------------------------------ COCO evaluation
def test_eval_clips_decode_once_and_workers(coco_root, tmp_path, monkeypatch):
    coco = json.loads((coco_root / "instances_test2017.json").read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] % 3]  # some frames lose their box
    js = coco_root / "partial_test.json"
    js.write_text(json.dumps(coco))
    all_ids = [i["id"] for i in coco["images"]]
    annotated = sorted({a["image_id"] for a in coco["annotations"]})
    ev_all = CocoEvalClips(js, input_size=64, protocol="all")
    ev = CocoEvalClips(js, input_size=64)
    assert len(ev_all) == len(all_ids) == 8 and len(ev) == len(annotated) < 8

    calls = []
    real = coco_clips.letterbox_rgb
    monkeypatch.setattr(coco_clips, "letterbox_rgb", lambda p, s, *rule: calls.append(p) or real(p, s, *rule))
    items = list(ev_all)
    assert len(calls) == 8 == len(set(calls))  # every frame decoded once
    ref = CocoClipDataset(coco_root / "coco_test_DAUB.txt", input_size=64)
    first = {Path(e.path).name: e for e in ref.entries}
    image_id, clip, hw = items[4]
    assert image_id == all_ids[4] and hw.tolist() == [64, 64]
    assert torch.equal(clip, ref[ref.entries.index(first["4.bmp"])][0])

    ids = []
    for batch_ids, clips, sizes in DataLoader(ev, batch_size=3, num_workers=2, collate_fn=eval_collate):
        assert clips.shape[1:] == (3, 5, 64, 64) and sizes.shape == (len(batch_ids), 2)
        ids += batch_ids.tolist()
    assert sorted(ids) == annotated


# ----------------------------------------------------------------------------------------------- NUDT
def test_nudt_train_clips_padding_and_values(nudt_roots):
    root, _ = nudt_roots
    ds = NUDTTrainDataset(root, "train", seqlen=8, resize=None, patch=None)
    assert len(ds) == 2 * 13  # i = 1 .. 13 per sequence
    x, y = ds[0]  # even: clip [0, 1) padded before
    assert x.shape == (1, 8, 40, 48) and y.shape == (8, 40, 48)
    assert (x[0, :7] == 0).all() and (y[:7] == 0).all()
    frame0 = np.asarray(Image.open(root / "Sequence1" / "images" / "00001.png"), np.float32)
    assert torch.allclose(x[0, 7], torch.from_numpy((frame0 - NUDT_MEAN) / NUDT_STD), atol=1e-5)
    mask0 = np.asarray(Image.open(root / "Sequence1" / "masks" / "00001.png")) > 0
    assert torch.equal(y[7].bool(), torch.from_numpy(mask0))
    x, y = ds[1]  # odd: clip [0, 2) padded after
    assert (x[0, 2:] == 0).all() and (x[0, :2] != 0).any()
    x, y = ds[12]  # clip [5, 13): full length
    assert (x[0] != 0).flatten(1).any(1).all()


def test_nudt_train_resize_crop_and_epochs(nudt_roots):
    root, _ = nudt_roots
    ds = NUDTTrainDataset(root, "train", seqlen=8, resize=64, patch=32, center_prob=1.0, seed=3)
    view = ds.epoch_view(0)
    assert len(view) == max(1, int(0.1 * len(ds)))
    x, y = view[1]
    assert x.shape == (1, 8, 32, 32) and y.shape == (8, 32, 32) and set(y.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(view[1][0], x) and torch.equal(ds.epoch_view(0)[1][1], y)  # seeded
    hits = 0
    for i in range(len(ds)):  # centred crops keep the middle real frame's target
        s, start, end = ds.clips[i]
        t = end - start
        mid = t // 2 if i % 2 else 8 - (t + 1) // 2  # in the padded clip (the authors' index)
        _, yy = ds[i]
        full = ds._load(s, start, end)[1]
        hits += bool(yy[mid].any()) or not full[t // 2].any()
    assert hits == len(ds)
    # Draws with replacement, probability proportional to clip length.
    big = NUDTTrainDataset(root, "train", seqlen=8, resize=None, patch=None, sample_rate=200)
    draws = np.bincount(big.epoch_indices(0), minlength=len(big))
    lengths = np.array([e - s for _, s, e in big.clips], float)
    np.testing.assert_allclose(draws / draws.sum(), lengths / lengths.sum(), atol=0.01)
    assert big.epoch_indices(0) != big.epoch_indices(1)


def test_nudt_noise_variant_mask_root(nudt_roots):
    clean, noisy = nudt_roots
    with pytest.raises(DataError) as err:
        NUDTTrainDataset(noisy, "train", seqlen=8)
    _one_line(err, "masks")
    ds = NUDTTrainDataset(noisy, "train", seqlen=8, resize=None, patch=None, mask_root=clean)
    ref = NUDTTrainDataset(clean, "train", seqlen=8, resize=None, patch=None)
    assert torch.equal(ds[5][1], ref[5][1]) and not torch.equal(ds[5][0], ref[5][0])
    seq = NUDTTestSequences(noisy, "test", mask_root=clean, min_frames=10)[0]
    assert seq.masks.any()


def test_nudt_test_sequences(nudt_roots, tmp_path):
    root, _ = nudt_roots
    ds = NUDTTestSequences(root, "test", min_frames=10)
    assert ds.names == ["Sequence47", "Sequence85"]
    seq = ds[0]
    assert seq.frames.shape == seq.masks.shape == seq.centroids.shape == (14, 40, 48)
    assert seq.frames.dtype == np.float32 and seq.masks.dtype == bool and seq.centroids.dtype == bool
    raw = np.asarray(Image.open(root / "Sequence47" / "images" / "00004.png"), np.float32)
    np.testing.assert_allclose(seq.frames[3], (raw - NUDT_MEAN) / NUDT_STD, atol=1e-5)
    assert (seq.masks | ~seq.centroids).all() and seq.centroids.sum() <= seq.masks.any((1, 2)).sum()
    # Without masks_centroid the centroids come from the masks (one target: the same pixels).
    copy = tmp_path / "nc"
    shutil.copytree(root, copy)
    for name in ds.names:
        shutil.rmtree(copy / name / "masks_centroid")
    alt = NUDTTestSequences(copy, "test", min_frames=10)[0]
    assert np.array_equal(alt.centroids, seq.centroids)
    assert np.array_equal(mask_centroids(seq.masks[5]), seq.centroids[5])
    got = [r.name for r in DataLoader(ds, batch_size=None, num_workers=2, collate_fn=nudt_collate)]
    assert got == ds.names


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_nudt_input(nudt_roots, tmp_path):
    root, _ = nudt_roots
    with pytest.raises(DataError) as err:
        NUDTTestSequences(tmp_path / "nowhere")
    _one_line(err, "nowhere")
    with pytest.raises(DataError, match="split file not found") as err:
        NUDTTestSequences(root, "validation")
    _one_line(err, "validation.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty split") as err:
        read_split(tmp_path / "empty.txt")
    _one_line(err, "empty.txt")
    (tmp_path / "bad.txt").write_text("Sequence1/Mix/00001.mat\nSeq 2/Mix/00001.mat\n")
    with pytest.raises(DataError, match="malformed line") as err:
        read_split(tmp_path / "bad.txt")
    _one_line(err, "bad.txt:2")
    with pytest.raises(DataError, match="shorter than the 40-frame clip") as err:
        NUDTTestSequences(root, "test")
    _one_line(err, "Sequence47")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    Image.new("L", (30, 20)).save(copy / "Sequence85" / "images" / "00007.png")
    with pytest.raises(DataError, match="differs") as err:
        NUDTTestSequences(copy, "test", min_frames=10)[1]
    _one_line(err, "Sequence85/images/00007.png")
    (copy / "Sequence85" / "masks" / "00003.png").unlink()
    with pytest.raises(DataError, match="13 masks for 14 frames") as err:
        NUDTTestSequences(copy, "test", min_frames=10)
    _one_line(err, "Sequence85/masks")
    (copy / "Sequence1" / "images" / "00002.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read image") as err:
        NUDTTrainDataset(copy, "train", seqlen=8, resize=None, patch=None)[1]
    _one_line(err, "Sequence1/images/00002.png")


def test_bad_coco_input(coco_root, tmp_path):
    lst = coco_root / "coco_train_DAUB.txt"
    with pytest.raises(DataError, match="list file not found") as err:
        CocoClipDataset(tmp_path / "none.txt")
    _one_line(err, "none.txt")
    with pytest.raises(DataError, match="data root not found") as err:
        CocoClipDataset(lst, data_root=tmp_path / "gone")
    _one_line(err, "gone")
    bad = tmp_path / "bad.txt"
    bad.write_text("images/train/data1/0.bmp 1,2,3,4,0\nimages/train/data1/1.bmp 1,2,3,0\n")
    with pytest.raises(DataError, match="malformed box") as err:
        read_txt_list(bad)
    _one_line(err, "bad.txt:2")
    bad.write_text("images/train/data1/0.bmp 1,2,x,4,0\n")
    with pytest.raises(DataError, match="malformed box"):
        read_txt_list(bad)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty split") as err:
        read_txt_list(tmp_path / "empty.txt")
    _one_line(err, "empty.txt")

    copy = tmp_path / "copy"
    shutil.copytree(coco_root, copy)
    (copy / "images/train/data1/2.bmp").write_bytes(b"BM garbage")
    ds = CocoClipDataset(copy / "coco_train_DAUB.txt", input_size=64)
    with pytest.raises(DataError, match="cannot read image") as err:
        ds[3]
    _one_line(err, "data1/2.bmp")
    Image.new("L", (32, 32)).save(copy / "images/train/data1/2.bmp")
    with pytest.raises(DataError, match="differs from the key frame") as err:
        CocoClipDataset(copy / "coco_train_DAUB.txt", input_size=64)[3]
    _one_line(err, "data1/2.bmp")
    (copy / "images/train/data2/4.bmp").unlink()
    with pytest.raises(DataError, match="frame not found") as err:
        CocoClipDataset(copy / "coco_train_DAUB.txt", input_size=64)[12]
    _one_line(err, "data2/4.bmp")

    js = json.loads((coco_root / "instances_test2017.json").read_text())
    stray = dict(js["annotations"][0], image_id=999)
    for broken, match in (({k: v for k, v in js.items() if k != "images"}, "no 'images'"),
                          ({k: v for k, v in js.items() if k != "annotations"}, "no 'annotations'"),
                          (dict(js, annotations=js["annotations"] + [stray]), "image_id 999"),
                          (dict(js, images=[]), "empty split")):
        path = copy / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(DataError, match=match) as err:
            CocoEvalClips(path, input_size=64)
        _one_line(err, "broken.json")
    (copy / "images/test/data3/6.bmp").unlink()
    with pytest.raises(DataError, match="not found") as err:
        CocoEvalClips(copy / "instances_test2017.json", input_size=64)
    _one_line(err, "data3/6.bmp")
