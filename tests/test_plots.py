"""Figures are written as PNGs with the expected content; plot_pr.py draws the authors' PR files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import plot_pr
from utils.coco_metrics import read_pr_txt, write_pr_txt
from utils.errors import DataError
from utils.plots import (
    FLOOR_LABEL,
    plot_pr_curves,
    plot_roc,
    plot_training_curves,
    pr_figure,
    read_training_csv,
    roc_figure,
    training_figure,
)

ROOT = Path(__file__).resolve().parents[1]


def _png_ok(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 5  # not a blank canvas
    return im.size


def _outside(fig, ax, legend) -> bool:
    """The legend's box does not overlap the axes' box (in display pixels)."""
    fig.canvas.draw()
    a, b = ax.get_window_extent(), legend.get_window_extent()
    return b.x0 >= a.x1 or b.x1 <= a.x0 or b.y0 >= a.y1 or b.y1 <= a.y0


def _fa_log_csv(path: Path) -> Path:
    rows = ["epoch,lr,train_loss,val_loss,val_iou,val_fa,map50"]
    for e in range(1, 6):
        fa = 0 if e == 5 else 1e-3 / e ** 3
        rows.append(f"{e},{1e-3 * 0.9 ** e:.6g},{2.0 / e:.3f},{1.5 / e:.3f},{0.08 * e:.2f},{fa:.3g},"
                    f"{0.1 * e:.2f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_pr_legend_outside_with_fourteen_curves():
    rng = np.random.default_rng(0)
    curves = {f"method{i}": np.sort(rng.random(101))[::-1] for i in range(14)}
    fig = pr_figure(curves, run="demo", dataset="ITSDT-15K")
    ax = fig.axes[0]
    assert _outside(fig, ax, ax.get_legend()) and len(ax.get_legend().get_texts()) == 14
    assert ax.get_title() == "Precision-recall (IoU 0.5): demo (ITSDT-15K)"
    assert pr_figure(curves, title="custom").axes[0].get_title() == "custom"


def test_roc_draws_fa_zero_at_a_marked_floor():
    fa = np.array([0.9, 1e-2, 1e-4, 1e-6, 0.0, 0.0])
    pd = np.array([1.0, 0.99, 0.98, 0.9, 0.6, 0.5])
    fig = roc_figure({"DeepPro": (fa, pd), "other": (fa * 2, pd * 0.9)}, dataset="NUDT-MIRSDT")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and _outside(fig, ax, ax.get_legend())
    assert ax.get_title() == "Pd-Fa (ROC): NUDT-MIRSDT"
    floor = 1e-7  # a decade below the smallest Fa > 0 of all curves (1e-6)
    curve = next(ln for ln in ax.get_lines() if ln.get_label() == "DeepPro")
    assert len(curve.get_xdata()) == 6 and np.isclose(min(curve.get_xdata()), floor)  # nothing dropped
    zeros = [ln for ln in ax.get_lines() if ln.get_gid() == "fa_zero_points"]
    assert len(zeros) == 2 and all(np.allclose(ln.get_xdata(), floor) for ln in zeros)
    np.testing.assert_allclose(sorted(zeros[0].get_ydata()), [0.5, 0.6])
    marker = [ln for ln in ax.get_lines() if ln.get_gid() == "fa_floor"]
    assert len(marker) == 1 and np.allclose(marker[0].get_xdata(), floor)
    assert [t.get_text() for t in ax.texts] == [FLOOR_LABEL]
    fmt = ax.xaxis.get_major_formatter()
    assert fmt(floor, 0) == "0" and fmt(1e-6, 1) not in ("", "0")  # the floor's tick reads 0, not 1e-7
    # Without a zero there is no floor marker.
    plain = roc_figure({"a": (fa[:4], pd[:4])}).axes[0]
    assert not [ln for ln in plain.get_lines() if ln.get_gid() == "fa_floor"] and not plain.texts


def test_training_figure_axes_ticks_units_and_title(tmp_path):
    run = tmp_path / "deeppro_nudt"
    run.mkdir()
    (run / "config.json").write_text('{"dataset": "nudt", "model": "deeppro"}')
    fig = training_figure(_fa_log_csv(run / "train_log.csv"))
    assert fig._suptitle.get_text() == "Training curves: deeppro_nudt (nudt)"
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {"loss", "lr", "val_iou", "val_fa (log)", "mAP50 (%)"}
    fig.canvas.draw()
    for ax in panels.values():
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert panels["val_fa (log)"].get_yscale() == "log" and panels["lr"].get_yscale() == "log"
    fa_ax = panels["val_fa (log)"]
    assert [ln.get_gid() for ln in fa_ax.get_lines()].count("fa_zero_points") == 1
    np.testing.assert_allclose(panels["mAP50 (%)"].get_lines()[0].get_ydata(), [10, 20, 30, 40, 50])
    loss = panels["loss"]
    assert _outside(fig, loss, loss.get_legend())
    named = training_figure(run / "train_log.csv", run="ours", dataset="NUDT-MIRSDT")
    assert named._suptitle.get_text() == "Training curves: ours (NUDT-MIRSDT)"


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    out = tmp_path / "pr.png"
    plot_pr_curves({"a": np.linspace(1, 0, 101)}, out)
    before = out.read_bytes()

    def broken(self, *args, **kwargs):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", broken)
    with pytest.raises(RuntimeError):
        plot_pr_curves({"b": np.linspace(0.5, 0, 101)}, out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["pr.png"]


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


def test_plot_pr_script(ref_dir, tmp_path, capsys, monkeypatch):
    ours = tmp_path / "ours.txt"
    write_pr_txt(ours, np.linspace(1, 0, 101))
    out = tmp_path / "pr.png"
    plot_pr.main([str(ours), "--published", str(ref_dir / "published" / "ITSDT"), "--out", str(out),
                  "--title", "ITSDT-15K"])
    printed = capsys.readouterr().out
    assert "STMENet" in printed and "77.33" in printed and "ours" in printed and "50.00" in printed
    _png_ok(out)
    # Default output: pr.png beside the first file; the --published folder names the dataset in the title.
    seen = {}
    monkeypatch.setattr(plot_pr, "plot_pr_curves", lambda curves, out, **kw: seen.update(kw, out=out) or out)
    plot_pr.main([str(ours), "--published", str(ref_dir / "published" / "ITSDT")])
    assert seen["out"] == tmp_path / "pr.png" and seen["dataset"] == "ITSDT"
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


def test_nudt_preview_histogram_shares_its_bins(tmp_path):
    from utils.data.writers import preview_figure
    from utils.synth import SynthConfig, generate

    meta = generate(SynthConfig(format="nudt", out=str(tmp_path / "nudt"), num_seqs=(0, 0, 2), frames=2,
                                size=(48, 64), low_snr_seqs=1, preview=True))
    assert _png_ok(tmp_path / "nudt" / "preview.png")[0] > 500
    hist = preview_figure(tmp_path / "nudt", meta).axes[-1]
    low, high = hist.containers  # one bar set per SNR group, on the same 20 bins
    assert [lab.get_text().split(" ")[0] for lab in hist.get_legend().get_texts()] == ["low", "high"]
    lefts = [[round(p.get_x(), 9) for p in c.patches] for c in (low, high)]
    widths = [[round(p.get_width(), 9) for p in c.patches] for c in (low, high)]
    assert len(lefts[0]) == 20 and lefts[0] == lefts[1] and widths[0] == widths[1]
    snrs = {g: [t["snr"] for s in meta["sequences"] if s["snr_label"] == g for t in s["targets"]
                if t["snr"] is not None] for g in ("low", "high")}
    assert sum(p.get_height() for p in low.patches) == len(snrs["low"]) > 0
    assert max(snrs["low"]) < min(snrs["high"])  # the low group's bars sit left of the high group's
