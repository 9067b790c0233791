"""Readers of run logs and evaluation files: the authors' eval.txt layout (theirs or ours), test_deeppro.py's
results.json, cross_metrics.json, and the DeepPro authors' training logs (to our per-epoch CSV)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from utils.errors import DataError

GROUPS = {"all": "Final results", "low_snr": "Low SNR results", "high_snr": "High SNR results"}
_TH_LINE = re.compile(r"Th_Seg = ([-+.\deE]+):\s*PD:\[(\d+)/(\d+), [^\]]*\]\s*FA:\[(\d+), ([-+.\deE]+)\]")
_AUC = re.compile(r"AUC:\s*([-+.\deE]+)")


def read_eval_txt(path: str | Path, group: str = "all") -> tuple[np.ndarray, np.ndarray, float]:
    """(fa, pd, auc) of one pooled group of an eval.txt in the DeepPro authors' log layout."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: eval file not found")
    title = GROUPS[group]
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    start = next((i for i, ln in enumerate(lines) if f"{title}:" in ln), None)
    if start is None:
        raise DataError(f"{path}: no '{title}' block (not an eval.txt of the DeepPro layout?)")
    auc = _AUC.search(lines[start])
    fa, pd = [], []
    for ln in lines[start + 1:]:
        m = _TH_LINE.search(ln)
        if m:
            tp, targets = int(m.group(2)), int(m.group(3))
            pd.append(tp / targets if targets else np.nan)
            fa.append(float(m.group(5)))
        elif ln.strip() and "results" in ln:
            break
    if not fa:
        raise DataError(f"{path}: the '{title}' block holds no Th_Seg lines")
    fa_arr, pd_arr = np.array(fa), np.array(pd)
    return fa_arr, pd_arr, float(auc.group(1)) if auc else float("nan")


def read_roc(path: str | Path, group: str = "all") -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """label -> (fa, pd, auc) from a results.json (test_deeppro.py), a cross_metrics.json or an eval.txt."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return {path.stem: read_eval_txt(path, group)}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable json ({str(err).splitlines()[0]})") from None
    if isinstance(data, dict) and "rows" in data:  # cross_metrics.json
        return {r["label"]: (np.asarray(r["pd_fa"]["fa_curve"]), np.asarray(r["pd_fa"]["pd_curve"]),
                             float(r["pd_fa"]["auc"])) for r in data["rows"]}
    pooled = (data.get("pooled") or {}).get(group) if isinstance(data, dict) else None
    if not pooled:
        raise DataError(f"{path}: no pooled '{group}' Pd/Fa curve (expected test_deeppro.py's results.json)")
    label = f"{data.get('model', path.parent.name)} ({path.parent.name})"
    return {label: (np.asarray(pooled["fa"], float), np.asarray(pooled["pd"], float), float(pooled["auc"]))}


def authors_trainlog_to_csv(path: Path, out_csv: Path) -> Path:
    """A DeepPro authors' training log -> our per-epoch CSV columns (epoch, lr, train_loss, val_loss,
    train_iou, val_iou)."""
    pats = {"lr": r"Learning rate:\s*([-+.\deE]+)", "train_loss": r"Training mean loss:\s*([-+.\deE]+)",
            "train_iou": r"Training accuracy \(IoU\) of prediction:\s*([-+.\deE]+)",
            "val_loss": r"Eval mean loss:\s*([-+.\deE]+)",
            "val_iou": r"Eval avg class IoU of prediction:\s*([-+.\deE]+)"}
    rows: list[dict] = []
    for ln in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.search(r"\*\*\*\* Epoch \d+ \((\d+)/\d+\) \*\*\*\*", ln)
        if m:
            rows.append({"epoch": int(m.group(1))})
            continue
        for key, pat in pats.items():
            m = re.search(pat, ln)
            if m and rows:
                rows[-1][key] = float(m.group(1))
    if not rows:
        raise DataError(f"{path}: no '**** Epoch k (k/N) ****' lines (not a DeepPro training log?)")
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", *pats], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return out_csv


__all__ = ["GROUPS", "authors_trainlog_to_csv", "read_eval_txt", "read_roc"]
