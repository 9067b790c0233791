"""predict.py and its pieces: streaming predictors (parity with the test protocol), frame sources, the
MP4 / GIF writers, the contact sheet, and end-to-end runs on tiny synthetic data."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image, ImageSequence

import nets
import predict
from utils.checkpoint import FORMAT
from utils.data import NUDT_MEAN, NUDT_STD
from utils.errors import CheckpointError, DataError
from utils.inference import DetectorStream, Frame, SegmenterStream, Truth, open_source
from utils.segmentation import predict_sequence
from utils.synth import SynthConfig, generate
from utils.video import VideoWriter
from utils.visualize import PRED_COLOR, TRUTH_COLOR, ContactSheet, annotate
from utils.weights import LoadedModel, load_weights


def _frame(i: int, grey: np.ndarray) -> Frame:
    return Frame(i, f"{i}.png", np.repeat(grey[:, :, None], 3, 2), grey)


class ClipDependentModel(nn.Module):
    """logits = frame + mean of the clip: the stitched result depends on which clips were run."""

    seqlen = 40

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        v = x[:, 0]
        return v + v.mean(dim=(1, 2, 3), keepdim=True) + self.bias


@pytest.mark.parametrize("n", [40, 45, 76, 100, 130])
def test_segmenter_stream_matches_the_test_protocol(n):
    rng = np.random.default_rng(n)
    grey = rng.integers(0, 256, (n, 5, 6), dtype=np.uint8)
    model = ClipDependentModel()
    stream = SegmenterStream(model, seqlen=40, stride=36)
    out, held = [], 0
    for i in range(n):
        out += stream.push(_frame(i, grey[i]))
        held = max(held, len(stream._frames))
    out += stream.flush()
    assert [f.index for f, _ in out] == list(range(n))
    assert held <= 40 + 36  # bounded memory, whatever the length
    norm = (grey.astype(np.float32) - np.float32(NUDT_MEAN)) / np.float32(NUDT_STD)
    want = predict_sequence(model, norm, 40, 36, batch_size=2)
    np.testing.assert_allclose(np.stack([p for _, p in out]), want, rtol=0, atol=1e-6)


def test_segmenter_stream_pads_a_short_stream_before_its_frames():
    grey = np.random.default_rng(0).integers(0, 256, (25, 4, 4), dtype=np.uint8)
    model = ClipDependentModel()
    stream = SegmenterStream(model)
    out = [r for i in range(25) for r in stream.push(_frame(i, grey[i]))] + stream.flush()
    norm = (grey.astype(np.float32) - np.float32(NUDT_MEAN)) / np.float32(NUDT_STD)
    clip = np.concatenate((np.zeros((15, 4, 4), np.float32), norm))
    want = torch.sigmoid(model(torch.from_numpy(clip)[None, None]))[0, 15:].detach().numpy()
    np.testing.assert_allclose(np.stack([p for _, p in out]), want, atol=1e-6)


class RecordingDetector(nn.Module):
    """A fake STMENet: one confident 8x8 box at cell (x=3, y=2) of every clip; records its inputs."""

    stride = 8
    num_frames = 3

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        b, _, _, h, w = x.shape
        out = torch.full((b, 6, h // 8, w // 8), -20.0) + self.bias
        out[:, :4] = 0.0  # dx = dy = 0 -> centre at grid * 8; w = h = exp(0) * 8
        out[:, 4:, 2, 3] = 20.0
        return out


def test_detector_stream_clips_batches_and_letterbox_undo():
    model = RecordingDetector()
    stream = DetectorStream(model, input_size=64, num_frames=3, conf_thres=0.5, nms_thres=0.3, batch_size=2)
    frames = [_frame(t, np.full((32, 64), 40 * t, np.uint8)) for t in range(5)]
    out = [r for f in frames for r in stream.push(f)] + stream.flush()
    assert [f.index for f, _ in out] == [0, 1, 2, 3, 4]
    assert [x.shape[0] for x in model.seen] == [2, 2, 1]
    # 64x32 frames letterboxed into 64x64: pasted at dy = 16, so the box (20, 12, 28, 20) maps to y - 16.
    for _, dets in out:
        np.testing.assert_allclose(dets, [[20, -4, 28, 4, 1.0, 0]], atol=1e-5)
    clips = torch.cat(model.seen)  # [5, 3, T, 64, 64]
    level = (torch.tensor([0, 40, 80, 120, 160]) / 255.0 - 0.485) / 0.229  # channel 0 inside the image
    want = [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]  # the first frame repeated at the start
    for i, ts in enumerate(want):
        np.testing.assert_allclose(clips[i, 0, :, 32, 5], level[ts], atol=1e-5)
    assert torch.allclose(clips[:, 0, :, 2, 5], torch.tensor((128 / 255.0 - 0.485) / 0.229))  # grey padding


def test_contact_sheet_keeps_evenly_spaced_frames_of_an_unknown_length():
    sheet = ContactSheet(count=4, tile_width=20, columns=2)
    for i in range(37):
        sheet.offer(i, np.full((10, 30, 3), i, np.uint8))
        assert len(sheet.kept) < 8
    kept = [i for i, _ in sheet.kept]
    assert kept[0] == 0 and kept[-1] >= 37 - sheet.stride and np.ptp(np.diff(kept)) == 0
    img = sheet.image()
    assert img.shape == (2 * 7 + 3 * 4, 2 * 20 + 3 * 4, 3)


def test_gif_writer_round_trip_and_drawing_colours(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    with VideoWriter(tmp_path / "v.gif", fps=5) as video:
        for i in range(6):
            grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
            img = annotate(grey, scale=2, boxes=[[3, 4, 9, 8]], scores=[0.93], truth_points=[[20.5, 10.5]],
                           mask=np.pad(np.ones((2, 2), bool), ((5, 13), (20, 8))), caption=f"#{i}")
            video.write(img)
            frames.append(img)
    gif = Image.open(tmp_path / "v.gif")
    back = [np.asarray(f.convert("RGB")).astype(int) for f in ImageSequence.Iterator(gif)]
    assert len(back) == 6 and gif.info["duration"] == 200 and gif.info["loop"] == 0
    for a, b in zip(back, frames):
        assert np.abs(a - b).max() <= 1  # greys within one level, drawing colours exact
        assert (b == PRED_COLOR).all(2).sum() == (a == PRED_COLOR).all(2).sum() > 0
        assert (a == TRUTH_COLOR).all(2).any()


def test_video_source_reads_back_an_mp4(tmp_path):
    with VideoWriter(tmp_path / "v.mp4", fps=7) as video:
        for i in range(5):
            video.write(np.full((24, 33), 50 * i, np.uint8))  # odd width: padded to even
    src = open_source(str(tmp_path / "v.mp4"))
    frames = list(src)
    assert len(frames) == 5 and src.fps == pytest.approx(7)
    assert frames[0].rgb.shape == (24, 34, 3) and frames[0].grey.shape == (24, 34)
    assert [int(np.median(f.grey)) for f in frames] == pytest.approx([0, 50, 100, 150, 200], abs=3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate(SynthConfig(format="nudt", out=str(root / "nudt"), num_seqs=(0, 0, 1), frames=40, size=(32, 40),
                         low_snr_seqs=0))
    generate(SynthConfig(format="coco", style="itsdt", out=str(root / "coco"), num_seqs=(0, 0, 1), frames=4,
                         size=(48, 64)))
    return root


def _save_ours(path, name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = nets.build_model(name, **kwargs)
    torch.save({"format": FORMAT, "format_version": 1, "identity": {"name": name, "kwargs": kwargs},
                "model": model.state_dict(), "ema": None, "epoch": 1, "config": {}}, path)


def test_sources_carry_the_truth(tiny_data):
    nudt = open_source(str(tiny_data / "nudt" / "Sequence85" / "images"))
    first = next(iter(nudt))
    assert len(nudt) == 40 and first.truth.mask.shape == (32, 40) and first.truth.centroids.any()
    json_path = tiny_data / "coco" / "instances_test2017.json"
    coco = json.loads(json_path.read_text())
    src = open_source(str(tiny_data / "coco" / "images" / "1"), gt_json=str(json_path))
    frames = list(src)
    assert [f.name for f in frames] == ["0.bmp", "1.bmp", "2.bmp", "3.bmp"]
    want = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in coco["annotations"] if a["image_id"] == 1]
    np.testing.assert_allclose(np.sort(frames[0].truth.boxes, 0), np.sort(np.array(want), 0))
    synth = list(open_source("synth:daub", frames=3))
    assert len(synth) == 3 and isinstance(synth[0].truth, Truth) and synth[0].truth.boxes.shape == (1, 4)


def test_predict_deeppro_end_to_end_gif(tiny_data, tmp_path):
    weights = tmp_path / "deeppro.pt"
    _save_ours(weights, "deeppro", {"seqlen": 40})
    out = tmp_path / "pred"
    summary = predict.main(["--weights", str(weights), "--source", str(tiny_data / "nudt" / "Sequence85"),
                            "--out", str(out), "--format", "gif", "--threshold", "0.5", "--no-progress"])
    assert summary["frames"] == 40
    gif = Image.open(out / "prediction.gif")
    assert gif.n_frames == 40 and gif.size == (40 * 4, 32 * 4)  # auto scale: towards 360 px, at most x4
    record = json.loads((out / "detections.json").read_text())
    assert record["model"] == "deeppro" and len(record["frames"]) == 40
    rows = [ln for ln in (out / "detections.txt").read_text().splitlines() if not ln.startswith("#")]
    assert len(rows) == summary["detections"] == sum(len(f["detections"]) for f in record["frames"])
    assert Image.open(out / "contact_sheet.png").size[0] > 0


def test_predict_stmenet_end_to_end_mp4(tiny_data, tmp_path, monkeypatch):
    """The detector path of predict.py (a fake STMENet keeps it fast; loading is tested below)."""
    monkeypatch.setattr(predict, "load_weights", lambda *a, **k: LoadedModel(RecordingDetector(), "stmenet",
                                                                           "test", {"input_size": 64}))
    out = tmp_path / "pred"
    json_path = tiny_data / "coco" / "instances_test2017.json"
    summary = predict.main(["--weights", "unused.pt", "--source", str(tiny_data / "coco" / "images" / "1"),
                            "--gt-json", str(json_path), "--out", str(out), "--conf-thres", "0.05",
                            "--max-frames", "3", "--scale", "2", "--no-progress"])
    assert summary["frames"] == 3
    cap = cv2.VideoCapture(str(out / "prediction.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 128
    cap.release()
    record = json.loads((out / "detections.json").read_text())
    assert record["input_size"] == 64 and [f["index"] for f in record["frames"]] == [0, 1, 2]
    for f in record["frames"]:  # 64x48 frames letterboxed into 64x64 (dy = 8): the fake box moves up 8 px
        assert f["detections"] == [{"bbox": [20.0, 4.0, 28.0, 12.0], "score": 1.0, "class": 0}]


def test_load_weights_recognises_the_formats(tmp_path):
    ours = tmp_path / "deeppro_plus.pt"
    _save_ours(ours, "deeppro_plus", {"seqlen": 40})
    loaded = load_weights(ours)
    assert loaded.name == "deeppro_plus" and not loaded.is_detector and "toolbox checkpoint" in loaded.source
    with pytest.raises(CheckpointError, match="not stmenet"):
        load_weights(ours, model="stmenet")
    official = tmp_path / "stme_irdst.pth"  # the authors' key names, IRDST variant, DataParallel prefix
    model = nets.build_model("stmenet", variant="irdst")
    torch.save({f"module.{k}": v for k, v in model.to_official().items()}, official)
    loaded = load_weights(official, variant="itsdt")  # itsdt tried first, then the variant that fits
    assert loaded.name == "stmenet" and loaded.model.variant == "irdst" and loaded.is_detector
    got = loaded.model.state_dict()
    assert all(torch.equal(got[key], value) for key, value in model.state_dict().items())


def test_predict_official_deeppro_finds_the_synthetic_target(ref_dir, tiny_data, tmp_path):
    """The authors' DeepPro on a clean synthetic sequence (SNR ~8): most truth centroids get a detection
    within 2 px, with few false components (measured: 35 of 35 found, 13 false components in 40 frames)."""
    weights = ref_dir / "deeppro" / "ckpt_DeepPro_NUDT-MIRSDT_best_model.pth"
    out = tmp_path / "pred"
    predict.main(["--weights", str(weights), "--source", str(tiny_data / "nudt" / "Sequence85"),
                  "--out", str(out), "--no-video", "--no-progress"])
    record = json.loads((out / "detections.json").read_text())
    truth = list(open_source(str(tiny_data / "nudt" / "Sequence85")))
    hits = targets = false = 0
    for f, t in zip(record["frames"], truth):
        pts = np.argwhere(t.truth.centroids)[:, ::-1]  # (x, y)
        cents = np.array([d["centroid"] for d in f["detections"]]).reshape(-1, 2)
        targets += len(pts)
        near = np.abs(cents[:, None] - pts[None]).max(2) <= 2 if len(cents) else np.zeros((0, len(pts)), bool)
        hits += int(near.any(0).sum())
        false += int((~near.any(1)).sum()) if len(pts) else len(cents)
    assert targets > 20 and hits >= 0.8 * targets and false <= 0.5 * len(truth)


def test_predict_bad_input(tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="weights.pt"):
        predict.main(["--weights", str(bad), "--source", "synth:nudt", "--out", str(tmp_path)])
    weights = tmp_path / "deeppro.pt"
    _save_ours(weights, "deeppro", {"seqlen": 40})
    with pytest.raises(DataError, match="source not found"):
        predict.main(["--weights", str(weights), "--source", str(tmp_path / "missing"),
                      "--out", str(tmp_path)])
