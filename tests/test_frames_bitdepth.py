"""Frames as they come: real bit depths (8/16-bit PNG and TIFF written by PIL and OpenCV, 32-bit and float
TIFF, .mat arrays), the one bit_depth_rule that brings them to the models' 8-bit scale, odd files (absurd
headers, corrupt .mat, BOMs) as one-line DataErrors, and the NUDT normaliser."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader

from utils.data import (
    BIT_DEPTH_RULES,
    CocoEvalClips,
    NUDTTestSequences,
    NUDTTrainDataset,
    nudt_collate,
    read_frame,
    read_grey,
    read_mask,
    read_split,
    read_txt_list,
)
from utils.data.frames import MAX_FRAME_PIXELS, decode_samples, letterbox_rgb, to_uint8
from utils.data.nudt import NUDT_MEAN, NUDT_STD, normalise_nudt
from utils.errors import DataError, read_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
H, W = 24, 32


def _ramp(seed: int = 0, lo: int = 300, hi: int = 65000) -> np.ndarray:
    """uint16 [H, W] covering lo..hi with values that differ in their low byte (a saturating reader turns
    almost all of them into 255)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(lo, hi + 1, size=(H, W)).astype(np.uint16)
    arr[0, 0], arr[-1, -1] = lo, hi
    return arr


def _one_line(err: pytest.ExceptionInfo, name: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and name in msg, msg
    return msg


# The four ways 16-bit grey frames reach the disk in practice.
WRITERS = {
    "pil-png": lambda p, a: Image.fromarray(a).save(p.with_suffix(".png")),
    "cv2-png": lambda p, a: cv2.imwrite(str(p.with_suffix(".png")), a),
    "pil-tif": lambda p, a: Image.fromarray(a).save(p.with_suffix(".tif")),
    "pil-tif-big-endian": lambda p, a: Image.fromarray(a.astype(">u2")).save(p.with_suffix(".tif")),
    "cv2-tif": lambda p, a: cv2.imwrite(str(p.with_suffix(".tif")), a),
}


def _write16(folder: Path, name: str, arr: np.ndarray, how: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    WRITERS[how](folder / name, arr)
    (path,) = [p for p in folder.iterdir() if p.stem == name]
    return path


@pytest.mark.parametrize("how", sorted(WRITERS))
def test_16_bit_grey_frames_follow_the_rule(tmp_path, how):
    arr = _ramp()
    path = _write16(tmp_path / how, "00001", arr, how)
    raw, bits = decode_samples(path)
    assert bits == 16 and raw.dtype == np.uint16 and np.array_equal(raw, arr)
    with pytest.raises(DataError) as err:
        read_grey(path)  # the default refuses and says what to choose
    msg = _one_line(err, path.name)
    assert "16-bit frame (values 300..65000)" in msg
    assert "--bit-depth-rule shift | minmax-per-sequence | scale-65535" in msg
    assert np.array_equal(read_grey(path, bit_depth_rule="shift"), (arr >> 8).astype(np.uint8))
    want = np.rint(arr.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(read_grey(path, bit_depth_rule="scale-65535"), want)
    mm = read_grey(path, bit_depth_rule="minmax-per-sequence")
    assert mm.min() == 0 and mm.max() == 255
    np.testing.assert_array_equal(mm, np.rint((arr - 300.0) * 255 / (65000 - 300)).astype(np.uint8))
    # What PIL's own conversion does with these frames: nearly one grey level.
    saturated = np.asarray(Image.open(path).convert("L"))
    assert (saturated == 255).mean() > 0.99 and len(np.unique(read_grey(path, bit_depth_rule="shift"))) > 200


def test_minmax_spans_the_whole_sequence_folder(tmp_path):
    folder = tmp_path / "seq"
    dark, bright = _ramp(1, 1000, 2000), _ramp(2, 1500, 3000)
    p1 = _write16(folder, "00001", dark, "pil-png")
    p2 = _write16(folder, "00002", bright, "pil-png")
    got1 = read_grey(p1, bit_depth_rule="minmax-per-sequence")
    got2 = read_grey(p2, bit_depth_rule="minmax-per-sequence")
    np.testing.assert_array_equal(got1, np.rint((dark - 1000.0) * 255 / 2000).astype(np.uint8))
    np.testing.assert_array_equal(got2, np.rint((bright - 1000.0) * 255 / 2000).astype(np.uint8))
    assert got1.max() < 255 and got2.min() > 0  # one stretch for the sequence keeps the temporal profile


def test_eight_bit_frames_are_unchanged_under_every_rule(tmp_path):
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, size=(H, W)).astype(np.uint8)
    files = {}
    Image.fromarray(grey).save(files.setdefault("L", tmp_path / "grey.png"))
    Image.fromarray(grey).save(files.setdefault("bmp", tmp_path / "grey.bmp"))
    Image.fromarray(grey).convert("P").save(files.setdefault("P", tmp_path / "palette.png"))
    Image.fromarray(np.stack([grey, 255 - grey], -1), "LA").save(files.setdefault("LA", tmp_path / "la.png"))
    Image.fromarray(np.stack([grey, grey, grey], -1)).save(files.setdefault("RGB", tmp_path / "rgb.png"))
    Image.fromarray(np.stack([grey, grey, grey, grey], -1)).save(files.setdefault("RGBA", tmp_path / "a.png"))
    for rule in BIT_DEPTH_RULES:
        for mode, path in files.items():
            assert np.array_equal(read_grey(path, bit_depth_rule=rule), grey), (mode, rule)
            assert np.array_equal(read_frame(path, rule, rgb=True), np.repeat(grey[..., None], 3, 2))
    bits = Image.fromarray(grey > 128)
    bits.save(tmp_path / "bits.png")
    assert np.array_equal(read_grey(tmp_path / "bits.png"), (grey > 128).astype(np.uint8) * 255)


def test_16_bit_colour_keeps_its_low_bits(tmp_path):
    arr = np.stack([_ramp(4), _ramp(5), _ramp(6)], -1)
    path = tmp_path / "colour.png"
    cv2.imwrite(str(path), arr[..., ::-1])  # OpenCV writes BGR
    assert Image.open(path).mode == "RGB"  # PIL alone would hand over the high bytes as 8-bit RGB
    rgb, bits = decode_samples(path, rgb=True)
    assert bits == 16 and np.array_equal(rgb, arr)
    with pytest.raises(DataError, match="16-bit frame"):
        read_frame(path, rgb=True)
    assert np.array_equal(read_frame(path, "shift", rgb=True), (arr >> 8).astype(np.uint8))
    assert np.array_equal(read_grey(path, bit_depth_rule="shift"), (arr[..., 0] >> 8).astype(np.uint8))


def test_32_bit_and_float_tiff(tmp_path):
    ints = _ramp(7).astype(np.int32) * 1000  # up to 6.5e7: genuinely more than 16 bits
    Image.fromarray(ints).save(tmp_path / "i32.tif")
    raw, bits = decode_samples(tmp_path / "i32.tif")
    assert bits == 32 and np.array_equal(raw, ints)
    shifted = read_grey(tmp_path / "i32.tif", bit_depth_rule="shift")
    assert np.array_equal(shifted, (ints >> 24).astype(np.uint8))
    with pytest.raises(DataError, match="outside 0..65535"):
        read_grey(tmp_path / "i32.tif", bit_depth_rule="scale-65535")

    on_8bit_scale = np.random.default_rng(8).random((H, W)).astype(np.float32) * 255
    Image.fromarray(on_8bit_scale).save(tmp_path / "f8.tif")
    assert np.array_equal(read_grey(tmp_path / "f8.tif"), np.rint(on_8bit_scale).astype(np.uint8))
    wide = on_8bit_scale * 100 - 5000
    (tmp_path / "seq").mkdir()  # minmax-per-sequence spans the frame's folder: give it its own
    path = tmp_path / "seq" / "f.tif"
    Image.fromarray(wide).save(path)
    with pytest.raises(DataError) as err:
        read_grey(path)
    assert "float frame" in _one_line(err, "f.tif")
    with pytest.raises(DataError, match="'shift' needs integer samples"):
        read_grey(path, bit_depth_rule="shift")
    got = read_grey(path, bit_depth_rule="minmax-per-sequence")
    lo, hi = float(wide.min()), float(wide.max())
    want = np.rint((wide.astype(np.float64) - lo) * 255 / (hi - lo)).astype(np.uint8)
    np.testing.assert_array_equal(got, want)


def test_mat_frames(tmp_path):
    folder = tmp_path / "Sequence1" / "images"
    folder.mkdir(parents=True)
    frames = [_ramp(10 + i) for i in range(3)]
    for i, f in enumerate(frames):
        scipy.io.savemat(folder / f"{i + 1:05d}.mat", {"frame": f})
    raw, bits = decode_samples(folder / "00002.mat")
    assert bits == 16 and np.array_equal(raw, frames[1])
    shifted = read_grey(folder / "00002.mat", bit_depth_rule="shift")
    assert np.array_equal(shifted, (frames[1] >> 8).astype(np.uint8))
    scipy.io.savemat(tmp_path / "double.mat", {"img": frames[0].astype(np.float64) / 300})
    assert np.array_equal(read_grey(tmp_path / "double.mat"), np.rint(frames[0] / 300.0).astype(np.uint8))
    scipy.io.savemat(tmp_path / "mask.mat", {"m": frames[0] > 30000})
    assert np.array_equal(read_mask(tmp_path / "mask.mat"), frames[0] > 30000)


def _png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height (8-bit grey) followed by a tiny IDAT: a corrupt header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


def _stack_mat(tmp):
    scipy.io.savemat(tmp / "00001.mat", {"Mix": np.zeros((H, W, 5))})
    return read_grey(tmp / "00001.mat")


def _two_arrays_mat(tmp):
    scipy.io.savemat(tmp / "00001.mat", {"a": np.zeros((H, W)), "b": np.zeros((H, W))})
    return read_grey(tmp / "00001.mat")


def _corrupt_mat(tmp):
    (tmp / "00001.mat").write_bytes(b"MATLAB 5.0 MAT-file, corrupt" * 4)
    return read_grey(tmp / "00001.mat")


def _nan_float(tmp):
    arr = np.zeros((H, W), np.float32)
    arr[3, 3] = np.nan
    Image.fromarray(arr).save(tmp / "nan.tif")
    return read_grey(tmp / "nan.tif", bit_depth_rule="minmax-per-sequence")


def _negative_shift(tmp):
    scipy.io.savemat(tmp / "neg.mat", {"x": np.full((H, W), -3, np.int16)})
    return read_grey(tmp / "neg.mat", bit_depth_rule="shift")


def _truncated_16bit(tmp):
    path = _write16(tmp, "00001", _ramp(), "pil-png")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return read_grey(path, bit_depth_rule="shift")


def _unknown_rule(tmp):
    return NUDTTestSequences(tmp, bit_depth_rule="clip")


# (id in docs/troubleshooting.md, provoke(tmp) -> raises, message pattern, what the message must name)
CASES = [
    ("frame-16bit-refused", lambda tmp: read_grey(_write16(tmp, "00001", _ramp(), "pil-png")),
     r"16-bit frame \(values 300\.\.65000\) has more than 8 bits; choose .* --bit-depth-rule shift",
     "00001.png"),
    ("frame-absurd-header", lambda tmp: read_grey(_png_with_header(tmp / "huge.png", 100000, 100000)),
     r"too large to decode|header claims", "huge.png"),
    ("frame-header-over-limit", lambda tmp: read_grey(_png_with_header(tmp / "big.png", 9000, 9000)),
     rf"header claims a 9000x9000 image \(corrupt file, or larger than {MAX_FRAME_PIXELS} pixels\)",
     "big.png"),
    ("frame-truncated-16bit", _truncated_16bit, r"cannot read image", "00001.png"),
    ("frame-mat-stack", _stack_mat, r"'Mix' is a 3-D array \[24, 32, 5\], not one 2-D frame; export one 2-D "
     r"frame per file \(MATLAB: imwrite", "00001.mat"),
    ("frame-mat-two-arrays", _two_arrays_mat, r"must hold exactly one 2-D array, found a \[24, 32\], b",
     "00001.mat"),
    ("frame-mat-corrupt", _corrupt_mat, r"cannot read \.mat file", "00001.mat"),
    ("frame-float-nan", _nan_float, r"float frame holds NaN or infinite values", "nan.tif"),
    ("frame-shift-negative", _negative_shift, r"holds negative values; 'shift' needs unsigned samples",
     "neg.mat"),
    ("frame-unknown-rule", _unknown_rule,
     r"bit_depth_rule must be one of refuse, shift, minmax-per-sequence, scale-65535, got 'clip'",
     "bit_depth_rule"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_odd_frames_are_one_line_errors(case, tmp_path):
    _, provoke, pattern, name = case
    with pytest.raises(DataError) as err:
        provoke(tmp_path)
    assert re.search(pattern, _one_line(err, name)), str(err.value)


def test_cases_are_documented():
    text = DOC.read_text()
    missing = [c[0] for c in CASES if f"`{c[0]}`" not in text]
    assert not missing, f"{DOC.name} does not list {missing}"


def test_text_files_with_a_byte_order_mark(tmp_path):
    split = tmp_path / "test.txt"
    split.write_bytes(b"\xef\xbb\xbfSequence85/Mix/00001.mat\r\nSequence86/Mix/00001.mat\r\n")
    assert read_text(split).startswith("Sequence85/") and read_split(split) == ["Sequence85", "Sequence86"]
    (tmp_path / "images").mkdir()
    lst = tmp_path / "list.txt"
    lst.write_bytes("\ufeffimages/1.bmp 1,2,5,6,0\n".encode("utf-8"))
    (entry,) = read_txt_list(lst)
    assert entry.path == str(tmp_path / "images" / "1.bmp") and entry.boxes.tolist() == [[1, 2, 5, 6, 0]]


def test_normalise_nudt():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    want = (grey.astype(np.float32) - np.float32(NUDT_MEAN)) / np.float32(NUDT_STD)
    out = normalise_nudt(grey)
    assert out.dtype == np.float32 and np.array_equal(out, want)
    half = grey.astype(np.float64) / 2 + 0.25  # a float stack on the 8-bit scale is used as it is
    np.testing.assert_allclose(normalise_nudt(half), (half - NUDT_MEAN) / NUDT_STD, atol=1e-6)
    deep = _ramp()
    with pytest.raises(DataError, match="16-bit frame"):
        normalise_nudt(deep)
    np.testing.assert_array_equal(normalise_nudt(deep, "shift"), normalise_nudt((deep >> 8).astype(np.uint8)))
    stack = np.stack([_ramp(1, 1000, 2000), _ramp(2, 1500, 3000)])
    mm = normalise_nudt(stack, "minmax-per-sequence")
    np.testing.assert_array_equal(mm, normalise_nudt(to_uint8(stack, 16, "minmax-per-sequence")))
    assert mm[0].max() < mm[1].max()


def _nudt_root(tmp: Path, n_frames: int = 6) -> tuple[Path, list[np.ndarray]]:
    root = tmp / "nudt"
    frames = [_ramp(20 + i, 100 + 10 * i, 4000 + 100 * i) for i in range(n_frames)]
    for name in ("images", "masks"):
        (root / "Sequence1" / name).mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(root / "Sequence1" / "images" / f"{i + 1:05d}.png")
        mask = np.zeros((H, W), np.uint16)
        mask[5 + i, 7] = 65535  # 16-bit masks are read as nonzero / zero, whatever the rule
        Image.fromarray(mask).save(root / "Sequence1" / "masks" / f"{i + 1:05d}.png")
    (root / "test.txt").write_text("Sequence1/\n")
    (root / "train.txt").write_text("Sequence1/\n")
    return root, frames


def test_nudt_sequences_through_a_dataloader_with_workers(tmp_path):
    root, frames = _nudt_root(tmp_path)
    with pytest.raises(DataError, match="00001.png: 16-bit frame"):
        NUDTTestSequences(root, min_frames=2)[0]
    stack = np.stack(frames)
    want_mm = normalise_nudt(to_uint8(stack, 16, "minmax-per-sequence"))
    want_shift = normalise_nudt((stack >> 8).astype(np.uint8))
    for rule, want in (("shift", want_shift), ("minmax-per-sequence", want_mm)):
        ds = NUDTTestSequences(root, min_frames=2, bit_depth_rule=rule)
        (seq,) = list(DataLoader(ds, batch_size=None, num_workers=2, collate_fn=nudt_collate))
        np.testing.assert_array_equal(seq.frames, want)
        assert seq.masks.sum() == len(frames) and seq.masks[2, 7, 7]
    train = NUDTTrainDataset(root, seqlen=4, resize=None, patch=None, bit_depth_rule="minmax-per-sequence")
    (x, y), = DataLoader(torch.utils.data.Subset(train, [1]), batch_size=None, num_workers=2)
    _, start, end = train.clips[1]
    assert (start, end) == (0, 2)  # two real frames, padded after them (odd item)
    np.testing.assert_array_equal(x[0, :2].numpy(), want_mm[start:end])
    assert torch.equal(x[0, 2:], torch.zeros(2, H, W)) and y[:2].sum() == 2


def test_coco_eval_clips_read_16_bit_frames_with_the_rule(tmp_path):
    import json

    root = tmp_path / "coco"
    (root / "images" / "seq1").mkdir(parents=True)
    frames = [_ramp(30 + i) for i in range(3)]
    for i, f in enumerate(frames):
        cv2.imwrite(str(root / "images" / "seq1" / f"{i}.png"), f)
    images = [{"id": i + 1, "file_name": f"images/seq1/{i}.png", "height": H, "width": W} for i in range(3)]
    anns = [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [4, 4, 6, 6], "area": 36, "iscrowd": 0}]
    (root / "instances_test2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "t"}]}))
    with pytest.raises(DataError, match="0.png: 16-bit frame"):
        next(iter(CocoEvalClips(root / "instances_test2017.json", input_size=32, num_frames=3)))
    clips = CocoEvalClips(root / "instances_test2017.json", input_size=32, num_frames=3,
                          bit_depth_rule="shift")
    (image_id, clip, hw), = list(DataLoader(clips, batch_size=None, num_workers=2))
    assert int(image_id) == 3 and hw.tolist() == [H, W]
    key, _ = letterbox_rgb(root / "images" / "seq1" / "2.png", (32, 32), "shift")
    from utils.data.frames import normalise_frame

    torch.testing.assert_close(clip[:, -1], torch.from_numpy(normalise_frame(key)))
    # the saturating conversion this replaces: one grey level where the frame has thousands
    assert len(np.unique(key[4:28, :, 0])) > 100
