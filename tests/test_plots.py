"""Figures are written as PNGs with the expected content; plot_pr.py draws the authors' PR files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import plot_pr
from utils.errors import DataError
from utils.metrics import read_pr_txt, write_pr_txt
from utils.plots import plot_pr_curves, plot_roc, plot_training_curves, read_training_csv

ROOT = Path(__file__).resolve().parents[1]


def _png_ok(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 5  # not a blank canvas
    return im.size


def test_pr_curves(tmp_path):
    curves = {"ours": np.linspace(1, 0.2, 101), "theirs": np.linspace(0.9, 0, 101)}
    out = plot_pr_curves(curves, tmp_path / "sub" / "pr.png", title="PR", highlight="ours")
    _png_ok(out)
    with pytest.raises(DataError):
        plot_pr_curves({}, tmp_path / "none.png")


def test_roc(tmp_path):
    fa = np.array([0.9, 1e-2, 1e-4, 1e-5, 1e-6, 0.0])
    pd = np.array([1.0, 0.99, 0.98, 0.95, 0.9, 0.5])
    _png_ok(plot_roc({"DeepPro": (fa, pd), "other": (fa * 2, pd * 0.9)}, tmp_path / "roc.png",
                     auc={"DeepPro": 0.99}))
    with pytest.raises(DataError):
        plot_roc({"bad": (fa, pd[:3])}, tmp_path / "bad.png")


def test_training_curves(tmp_path):
    csv_path = tmp_path / "log.csv"
    rows = ["epoch,lr,train_loss,val_loss,map50,time"]
    for e in range(1, 6):
        val = "" if e == 2 else f"{1.5 / e:.3f}"
        rows.append(f"{e},{1e-3 * 0.9 ** e:.6g},{2.0 / e:.3f},{val},{0.1 * e:.2f},2024-01-0{e}T10:00")
    csv_path.write_text("\n".join(rows) + "\n")
    cols = read_training_csv(csv_path)
    assert "time" not in cols  # text column skipped
    np.testing.assert_allclose(cols["train_loss"], [2.0 / e for e in range(1, 6)], atol=1e-3)
    assert np.isnan(cols["val_loss"][1])
    w, h = _png_ok(plot_training_curves(csv_path, tmp_path / "curves.png"))
    assert w > h  # loss, lr and map50 panels side by side
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError):
        plot_training_curves(tmp_path / "bad.csv", tmp_path / "x.png")


def test_published_stmenet_ap50(ref_dir):
    # stmenet.md: STMENet AP50 77.33 on ITSDT-15K and 76.15 on IRDST (mean of the 101 precisions).
    for dataset, ap50 in (("ITSDT", 77.33), ("IRDST", 76.15)):
        prec = read_pr_txt(ref_dir / "published" / dataset / "STMENet.txt")
        assert round(100 * prec.mean(), 2) == pytest.approx(ap50)


def test_plot_pr_script(ref_dir, tmp_path, capsys):
    ours = tmp_path / "ours.txt"
    write_pr_txt(ours, np.linspace(1, 0, 101))
    out = tmp_path / "pr.png"
    plot_pr.main([str(ours), "--published", str(ref_dir / "published" / "ITSDT"), "--out", str(out),
                  "--title", "ITSDT-15K"])
    printed = capsys.readouterr().out
    assert "STMENet" in printed and "77.33" in printed and "ours" in printed and "50.00" in printed
    _png_ok(out)
    curves = plot_pr.collect_curves([ours], [ref_dir / "published" / "IRDST"])
    assert round(100 * curves["STMENet"].mean(), 2) == 76.15 and len(curves) == 14


def test_plot_pr_cli_help_and_errors(tmp_path):
    run = [sys.executable, str(ROOT / "plot_pr.py")]
    r = subprocess.run(run + ["--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--published" in r.stdout
    r = subprocess.run(run + [str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x.png")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "missing.txt" in r.stderr


def test_plot_pr_labelled_files(ref_dir, tmp_path, capsys):
    ours = tmp_path / "pr_curve.txt"
    write_pr_txt(ours, np.full(101, 0.25))
    paper = ref_dir / "published" / "ITSDT" / "STMENet.txt"
    out = tmp_path / "pr.png"
    plot_pr.main([f"ours (demo)={ours}", f"STMENet (paper)={paper}", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "ours (demo)" in printed and "25.00" in printed
    assert "STMENet (paper)" in printed and "77.33" in printed and "pr_curve" not in printed
    _png_ok(out)
    # A path that itself holds "=" stays a path; a repeated label gets its folder added.
    odd = tmp_path / "a=b.txt"
    write_pr_txt(odd, np.full(101, 0.5))
    curves = plot_pr.collect_curves([plot_pr.labelled_path(str(odd)), ("x", ours), ("x", paper)], [])
    assert list(curves) == ["a=b", "x", "ITSDT/x"]
