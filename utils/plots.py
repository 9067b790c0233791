"""Paper-style figures (matplotlib, Agg backend, PNG): PR curves, Pd-Fa (ROC) curves, training curves.

Each figure has a builder that returns the matplotlib Figure (`pr_figure`, `roc_figure`, `training_figure`)
and a `plot_*` function that builds it and writes the PNG atomically (`save_figure`). Legends sit outside
the axes; Fa axes are logarithmic with Fa = 0 drawn at a marked floor (a decade below the smallest Fa > 0).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from utils.errors import DataError  # noqa: E402

_STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7.5,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "grid.linestyle": "--",
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.3,
}
_DPI = 200
FLOOR_LABEL = "Fa = 0"  # text of the marker line where Fa = 0 points are drawn on a log axis


def save_figure(fig: plt.Figure, out_png: str | Path, **savefig_kw) -> Path:
    """Render `fig` as PNG into memory, then write it atomically (a crash never leaves half a PNG) and close
    the figure. `savefig_kw` go to `Figure.savefig` (dpi, bbox_inches, metadata, ...)."""
    from utils.checkpoint import atomic_write  # imports torch: only when a figure is written

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", **savefig_kw)
    finally:
        plt.close(fig)
    return atomic_write(out_png, lambda f: f.write(buf.getvalue()))


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    with plt.rc_context(_STYLE):  # tick labels are created at draw time: draw in the same style
        return save_figure(fig, out_png, dpi=_DPI, bbox_inches="tight")


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def figure_title(what: str, run: str | None = None, dataset: str | None = None,
                 title: str | None = None) -> str:
    """`title` if given, else "<what>: <run> (<dataset>)" with the parts that are known."""
    if title:
        return title
    subject = f"{run} ({dataset})" if run and dataset else run or dataset
    return f"{what}: {subject}" if subject else what


def _legend_outside(ax: plt.Axes, n_entries: int) -> None:
    """Legend to the right of the axes (never on the curves); two columns when it would be very tall."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
              ncol=2 if n_entries > 16 else 1)


def log_floor(values: np.ndarray) -> float:
    """Where zeros are drawn on a log axis: one decade below the smallest positive value (1e-7 if none)."""
    pos = values[np.isfinite(values) & (values > 0)]
    return 10.0 ** (math.floor(math.log10(pos.min())) - 1) if pos.size else 1e-7


def _mark_floor(ax: plt.Axes, floor: float, axis: str) -> None:
    """A dotted line at the floor labelled "Fa = 0", and its tick labelled 0, so that no one reads the
    points on it as Fa = floor. Call after the axis is set to log scale."""
    line = ax.axvline if axis == "x" else ax.axhline
    line(floor, color="0.4", ls=":", lw=0.9, zorder=1, gid="fa_floor")
    if axis == "x":
        ax.annotate(FLOOR_LABEL, (floor, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", fontsize=6.5, color="0.3", rotation=90, va="top")
    else:
        ax.annotate(FLOOR_LABEL, (0.0, floor), xycoords=("axes fraction", "data"), xytext=(2, 2),
                    textcoords="offset points", fontsize=6.5, color="0.3", ha="left", va="bottom")
    target = ax.xaxis if axis == "x" else ax.yaxis
    log_fmt = target.get_major_formatter()
    target.set_major_formatter(FuncFormatter(
        lambda v, pos: "0" if math.isclose(v, floor, rel_tol=1e-9) else log_fmt(v, pos)))


# ----------------------------------------------------------------------------------------------------
# Precision-recall and Pd-Fa
# ----------------------------------------------------------------------------------------------------


def pr_figure(curves: Mapping[str, Sequence[float]], title: str | None = None,
              highlight: str | Sequence[str] | None = None, run: str | None = None,
              dataset: str | None = None) -> plt.Figure:
    """Precision-recall curves at IoU 0.5: each value list holds the precision at recall 0, 0.01, ..., 1
    (101 points, the authors' PR file). Legend labels (right of the axes) carry AP50 = 100 * mean
    precision, sorted best first. `highlight`: label(s) drawn thicker and on top (e.g. our model).
    Title: `title`, else "Precision-recall (IoU 0.5): <run> (<dataset>)"."""
    if not curves:
        raise DataError("no PR curves to plot")
    marked = {highlight} if isinstance(highlight, str) else set(highlight or ())
    items = []
    for label, prec in curves.items():
        p = np.clip(np.asarray(prec, dtype=np.float64).ravel(), 0.0, None)
        if p.size < 2:
            raise DataError(f"{label}: a PR curve needs at least 2 points, got {p.size}")
        items.append((100.0 * p.mean(), label, p))
    items.sort(key=lambda it: -it[0])
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        for (ap, label, p), color in zip(items, _colors(len(items))):
            bold = label in marked
            ax.plot(np.linspace(0.0, 1.0, p.size), p, color="crimson" if bold and len(marked) == 1 else color,
                    lw=2.4 if bold else 1.2, zorder=3 if bold else 2, label=f"{label} (AP50 {ap:.2f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Recall", ylabel="Precision",
               title=figure_title("Precision-recall (IoU 0.5)", run, dataset, title))
        _legend_outside(ax, len(items))
    return fig


def plot_pr_curves(curves: Mapping[str, Sequence[float]], out_png: str | Path, title: str | None = None,
                   highlight: str | Sequence[str] | None = None, run: str | None = None,
                   dataset: str | None = None) -> Path:
    """`pr_figure` written to `out_png`."""
    if not curves:
        raise DataError(f"{out_png}: no PR curves to plot")
    return _save(pr_figure(curves, title, highlight, run, dataset), out_png)


def roc_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str | None = None,
               auc: Mapping[str, float] | None = None, run: str | None = None,
               dataset: str | None = None) -> plt.Figure:
    """Pd over Fa curves (one (fa, pd) pair per label), Fa on a log axis. Points with Fa = 0 are drawn at a
    floor one decade below the smallest Fa > 0 of all curves (open markers, a dotted line labelled
    "Fa = 0"). `auc`: optional label -> AUC shown in the legend (right of the axes)."""
    if not curves:
        raise DataError("no Pd-Fa curves to plot")
    arrays = {}
    for label, (fa, pd) in curves.items():
        fa, pd = np.asarray(fa, dtype=np.float64).ravel(), np.asarray(pd, dtype=np.float64).ravel()
        if fa.shape != pd.shape:
            raise DataError(f"{label}: fa {fa.shape} and pd {pd.shape} differ in length")
        arrays[label] = (fa, pd)
    floor = log_floor(np.concatenate([fa for fa, _ in arrays.values()]))
    any_zero = False
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        for (label, (fa, pd)), color in zip(arrays.items(), _colors(len(arrays))):
            keep = np.isfinite(fa) & np.isfinite(pd) & (fa >= 0)
            x = np.where(fa[keep] > 0, fa[keep], floor)
            y = pd[keep]
            order = np.argsort(x, kind="stable")
            text = f"{label} (AUC {auc[label]:.4f})" if auc and label in auc else label
            ax.plot(x[order], y[order], marker="o", ms=2.5, color=color, label=text)
            zero = x == floor
            if zero.any():
                any_zero = True
                ax.plot(x[zero], y[zero], ls="none", marker="o", ms=4.5, mfc="white", mec=color, zorder=4,
                        gid="fa_zero_points")
        ax.set_xscale("log")
        if any_zero:
            _mark_floor(ax, floor, "x")
        ax.set(xlabel="Fa (false-alarm pixels / pixels)", ylabel="Pd",
               title=figure_title("Pd-Fa (ROC)", run, dataset, title))
        _legend_outside(ax, len(arrays))
    return fig


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], out_png: str | Path,
             title: str | None = None, auc: Mapping[str, float] | None = None, run: str | None = None,
             dataset: str | None = None) -> Path:
    """`roc_figure` written to `out_png`."""
    if not curves:
        raise DataError(f"{out_png}: no Pd-Fa curves to plot")
    return _save(roc_figure(curves, title, auc, run, dataset), out_png)


# ----------------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------------


def read_training_csv(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Per-epoch CSV with an `epoch` column -> numeric column name -> float array (NaN where blank)."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"{path}: training log not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "epoch" not in rows[0]:
        raise DataError(f"{path}: expected a header with an 'epoch' column and at least one row")
    cols: dict[str, np.ndarray] = {}
    for name in rows[0]:
        try:
            cols[name] = np.array([float(r[name]) if r[name] not in ("", None) else math.nan for r in rows])
        except ValueError:
            continue  # a text column (e.g. a timestamp) is not plotted
    return cols


def _is_fa(name: str) -> bool:
    return name == "fa" or name.endswith("_fa")


def _is_percent(name: str) -> bool:
    """Fractions the console prints in % (mAP, recall)."""
    base = name.removeprefix("val_")
    return base.startswith(("map", "recall"))


def _panel_title(name: str) -> str:
    if _is_percent(name):
        shown = name.replace("map50_95", "mAP50-95").replace("map", "mAP")
        return f"{shown} (%)"
    if _is_fa(name):
        return f"{name} (log)"
    return name


def run_identity(csv_path: str | Path) -> tuple[str, str | None]:
    """(run name, dataset) of a run's per-epoch CSV: the folder name, and `dataset` of the engine's
    config.json beside the CSV (None when there is none)."""
    path = Path(csv_path)
    dataset = None
    cfg = path.parent / "config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("dataset")
        except (OSError, ValueError, AttributeError):
            value = None
        dataset = str(value) if value else None
    return path.resolve().parent.name, dataset


def training_figure(csv_path: str | Path, title: str | None = None, run: str | None = None,
                    dataset: str | None = None) -> plt.Figure:
    """One subplot per quantity of the engine's per-epoch CSV, integer epochs on x: losses share a panel
    (train_loss with val_loss, legend below it), lr and Fa columns (`fa`, `*_fa`) get a log axis (Fa = 0 at
    a marked floor), mAP / recall columns are shown in %, every other numeric column gets its own panel.
    Title: `title`, else "Training curves: <run> (<dataset>)" with `run` defaulting to the CSV's folder
    name and `dataset` to the `dataset` entry of the config.json beside it."""
    cols = read_training_csv(csv_path)
    auto_run, auto_dataset = run_identity(csv_path)
    heading = figure_title("Training curves", run or auto_run, dataset or auto_dataset, title)
    epoch = cols.pop("epoch")
    panels: list[tuple[str, list[str]]] = []
    losses = [c for c in ("train_loss", "val_loss") if c in cols]
    if losses:
        panels.append(("loss", losses))
    panels += [(c, [c]) for c in cols if c not in losses and np.isfinite(cols[c]).any()]
    if not panels:
        raise DataError(f"{csv_path}: no numeric columns besides 'epoch'")
    n = len(panels)
    ncols = 2 if n == 4 else min(n, 3)
    nrows = math.ceil(n / ncols)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.7 * nrows + 0.4), squeeze=False)
        for ax, (name, keys) in zip(axes.ravel(), panels):
            for key in keys:
                ok = np.isfinite(cols[key])
                x, y = epoch[ok], cols[key][ok]
                if _is_percent(key):
                    y = 100.0 * y
                zero = np.zeros(int(ok.sum()), bool)
                if _is_fa(key) and (y > 0).any():
                    floor, zero = log_floor(y), y <= 0
                    y = np.where(zero, floor, y)
                    ax.set_yscale("log")
                (line,) = ax.plot(x, y, marker="o" if ok.sum() < 30 else None, ms=2.5, label=key)
                if zero.any():
                    ax.plot(x[zero], y[zero], ls="none", marker="o", ms=4, mfc="white", mec=line.get_color(),
                            zorder=4, gid="fa_zero_points")
                    _mark_floor(ax, floor, "y")
            if name == "lr" and np.all(cols["lr"][np.isfinite(cols["lr"])] > 0):
                ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set(xlabel="epoch", title=_panel_title(name))
            if len(keys) > 1:
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=len(keys), frameon=False)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        fig.suptitle(heading)
        fig.tight_layout()
    return fig


def plot_training_curves(csv_path: str | Path, out_png: str | Path, title: str | None = None,
                         run: str | None = None, dataset: str | None = None) -> Path:
    """`training_figure` written to `out_png`."""
    return _save(training_figure(csv_path, title, run, dataset), out_png)
