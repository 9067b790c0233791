"""Videos browsers play (H.264 MP4, yuv420p, even size; GIF where PyAV is missing), written atomically;
contact sheets with a colour legend and text that stays readable on the tiles."""

from __future__ import annotations

import sys

import av
import numpy as np
import pytest
from PIL import Image

from utils.video import VideoWriter
from utils.visualize import (
    DETECTOR_LEGEND,
    MIN_TEXT_PX,
    PRED_COLOR,
    TRUTH_COLOR,
    ContactSheet,
    annotate,
    text_px,
)


def _frames(n: int, h: int = 24, w: int = 33) -> list[np.ndarray]:
    return [annotate(np.full((h, w), 40 * i, np.uint8), boxes=[[3, 4, 9, 8]], scores=[0.9]) for i in range(n)]


def _temps(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_mp4_is_h264_yuv420p_with_even_size(tmp_path):
    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=7) as video:
        for i in range(5):  # 33 px wide: padded to 34
            video.write(np.full((24, 33), 40 * i, np.uint8))
    assert video.path == out and not _temps(tmp_path)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        assert (ctx.name, ctx.pix_fmt, ctx.width, ctx.height) == ("h264", "yuv420p", 34, 24)
        assert stream.average_rate == 7
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5
    assert [int(np.median(f[:, :33])) for f in decoded] == pytest.approx([0, 40, 80, 120, 160], abs=3)
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # index first: plays while it downloads


def test_gif_fallback_when_pyav_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with VideoWriter(tmp_path / "prediction.mp4", fps=5) as video:
        for img in _frames(3):
            video.write(img)
    note = capsys.readouterr().out.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("note:") and "prediction.gif" in note[0]
    assert video.path == tmp_path / "prediction.gif" and not (tmp_path / "prediction.mp4").exists()
    with Image.open(video.path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3 and gif.size == (33, 24)


def test_gif_fallback_when_pyav_has_no_h264_encoder(tmp_path, monkeypatch, capsys):
    def no_encoder(name, mode="r"):
        raise av.codec.codec.UnknownCodecError(name)

    monkeypatch.setattr(av.codec, "Codec", no_encoder)
    video = VideoWriter(tmp_path / "v.mp4")
    assert video.path.suffix == ".gif" and "no h264 encoder" in capsys.readouterr().out
    video.close()


def test_videos_replace_the_old_file_only_when_complete(tmp_path):
    for name in ("v.mp4", "v.gif"):
        out = tmp_path / name
        out.write_bytes(b"previous")
        with pytest.raises(RuntimeError), VideoWriter(out, fps=5) as video:
            video.write(_frames(1)[0])
            raise RuntimeError("stopped mid-stream")
        assert out.read_bytes() == b"previous" and not _temps(tmp_path)
        with VideoWriter(out, fps=5) as video:  # no frame: no file written, the old one stays
            pass
        assert out.read_bytes() == b"previous"
        with VideoWriter(out, fps=5) as video:
            video.write(_frames(1)[0])
        assert out.read_bytes() != b"previous" and not _temps(tmp_path)


def _ink_rows(tile: np.ndarray, color: tuple[int, int, int]) -> int:
    """Rows holding pixels close to `color` (text drawn in it, shrunk with the tile)."""
    diff = np.abs(tile.astype(int) - np.array(color)).max(2)
    return int((diff < 100).any(1).sum())


def test_contact_sheet_text_is_readable_and_the_colours_are_explained(tmp_path):
    assert text_px(320) == MIN_TEXT_PX and text_px(100) == MIN_TEXT_PX and text_px(640) == 23
    sheet = ContactSheet(count=2, tile_width=320, columns=2, legend=DETECTOR_LEGEND)
    for i in range(2):
        frame = np.full((512, 640), 90, np.uint8)  # a NUDT-size frame, shrunk to half on the sheet
        sheet.offer(i, annotate(frame, boxes=[[300, 200, 308, 208]], scores=[0.87]))
    tile = sheet.kept[0][1]
    assert tile.shape[1] == 320
    score_area = tile[: 200 // 2, 140:200]  # above the box: only the score's digits
    assert _ink_rows(score_area, PRED_COLOR) >= MIN_TEXT_PX
    out = sheet.save(tmp_path / "sheet.png")
    tiles = sheet.image()
    with Image.open(out) as im:
        saved = np.asarray(im.convert("RGB"))
    assert saved.shape[1] == tiles.shape[1] and saved.shape[0] > tiles.shape[0]
    np.testing.assert_array_equal(saved[: tiles.shape[0]], tiles)
    band = saved[tiles.shape[0]:]
    for color in (PRED_COLOR, TRUTH_COLOR):  # a swatch of each colour
        assert (band == color).all(2).sum() >= MIN_TEXT_PX ** 2
    assert _ink_rows(band, (230, 230, 230)) >= 2 * MIN_TEXT_PX  # two lines of text
    assert not _temps(tmp_path)
