"""Paper-style figures (matplotlib, Agg backend, PNG): PR curves, Pd-Fa (ROC) curves, training curves."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.errors import DataError  # noqa: E402

_STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7.5,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "grid.linestyle": "--",
    "axes.spines.top": False, "axes.spines.right": False, "savefig.bbox": "tight", "savefig.dpi": 200,
    "lines.linewidth": 1.3,
}


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_pr_curves(curves: Mapping[str, Sequence[float]], out_png: str | Path, title: str | None = None,
                   highlight: str | Sequence[str] | None = None) -> Path:
    """Precision-recall curves at IoU 0.5: each value list holds the precision at recall 0, 0.01, ..., 1
    (101 points, the authors' PR file). Legend labels carry AP50 = 100 * mean precision, sorted best first.
    `highlight`: label(s) drawn thicker and on top (e.g. our model)."""
    if not curves:
        raise DataError(f"{out_png}: no PR curves to plot")
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
               title=title or "Precision-recall (IoU 0.5)")
        ax.legend(loc="lower left", frameon=False)
        return _save(fig, out_png)


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], out_png: str | Path,
             title: str | None = None, auc: Mapping[str, float] | None = None) -> Path:
    """Pd over Fa curves (one (fa, pd) pair per label), Fa on a log axis (zeros are dropped from the plot).
    `auc`: optional label -> AUC shown in the legend."""
    if not curves:
        raise DataError(f"{out_png}: no Pd-Fa curves to plot")
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        for (label, (fa, pd)), color in zip(curves.items(), _colors(len(curves))):
            fa, pd = np.asarray(fa, dtype=np.float64), np.asarray(pd, dtype=np.float64)
            if fa.shape != pd.shape:
                raise DataError(f"{label}: fa {fa.shape} and pd {pd.shape} differ in length")
            keep = (fa > 0) & np.isfinite(pd)
            order = np.argsort(fa[keep])
            text = f"{label} (AUC {auc[label]:.4f})" if auc and label in auc else label
            ax.plot(fa[keep][order], pd[keep][order], marker="o", ms=2.5, color=color, label=text)
        ax.set_xscale("log")
        ax.set(xlabel="Fa (false-alarm pixels / pixels)", ylabel="Pd", title=title or "Pd-Fa (ROC)")
        ax.legend(loc="lower right", frameon=False)
        return _save(fig, out_png)


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


def plot_training_curves(csv_path: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """One subplot per quantity of the engine's per-epoch CSV (epoch on x): losses share a panel
    (train_loss with val_loss), lr gets a log axis, every other numeric column its own panel."""
    cols = read_training_csv(csv_path)
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
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.6 * nrows), squeeze=False)
        for ax, (name, keys) in zip(axes.ravel(), panels):
            for key in keys:
                ok = np.isfinite(cols[key])
                ax.plot(epoch[ok], cols[key][ok], marker="o" if ok.sum() < 30 else None, ms=2.5, label=key)
            if name == "lr" and np.all(cols["lr"][np.isfinite(cols["lr"])] > 0):
                ax.set_yscale("log")
            ax.set(xlabel="epoch", title=name)
            if len(keys) > 1:
                ax.legend(frameon=False)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, out_png)
