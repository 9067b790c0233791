"""Result files and console tables: the authors' eval.txt layout, Pd/Fa tables, json dumps.

Pd/Fa results here are the dicts of `utils.metrics.pd_fa` / `pool_pd_fa`. A DeepPro evaluation is passed as
{"per_sequence": {name: pd_fa dict}, "low_snr": pooled, "high_snr": pooled, "all": pooled, "iou": float,
"header": str} where low_snr / high_snr / header are optional.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from utils.checkpoint import atomic_write_text
from utils.errors import ConfigError
from utils.metrics import BORDER_RULES, value_at

# (results key, the authors' title of the block) in the order of their eval.txt.
_GROUPS = (("low_snr", "Low SNR results"), ("high_snr", "High SNR results"), ("all", "Final results"))


def _timestamp(now: _dt.datetime) -> str:
    return f"{now:%Y-%m-%d %H:%M:%S},{now.microsecond // 1000:03d}"


def _curve_lines(res: Mapping) -> list[str]:
    """One authors'-format line per threshold: Th_Seg, PD:[tp/targets, pd], FA:[false pixels, fa]."""
    thr, tp, tg = res["thresholds"], res["tp"], np.broadcast_to(res["targets"], np.shape(res["thresholds"]))
    fa, px = res["fa_pixels"], np.broadcast_to(res["pixels"], np.shape(res["thresholds"]))
    lines = []
    for t, a, b, c, d in zip(thr, tp, tg, fa, px):
        pd = a / b if b else float("nan")
        lines.append(f"Th_Seg = {float(t):e}:\tPD:[{int(a)}/{int(b)}, {pd:.5f}]\tFA:[{int(c)}, {c / d:e}]\n")
    return lines


def eval_txt_messages(results: Mapping, header: str | None = None) -> list[str]:
    """The log messages of the authors' eval.txt (without the `time - Model - INFO - ` prefix); results that
    record their Pd / Fa window rule ("border", see utils.metrics.pd_fa) get one line naming it after the
    "---- EVALUATION----" line."""
    if "all" not in results or "per_sequence" not in results:
        raise ConfigError("eval results need 'per_sequence' and 'all' entries")
    header = results.get("header") if header is None else header
    msgs = ["PARAMETER ...", str(header if header is not None else "Namespace()"), "---- EVALUATION----"]
    if results.get("border") is not None:  # our runs name their window rule (the authors' logs do not)
        b, r_det, r_win = results["border"], results.get("detect_radius", 1), results.get("window_radius", 4)
        msgs.append(f"Pd / Fa windows: border={b} ({BORDER_RULES.get(b, '?')}), detect radius {r_det}, "
                    f"false-alarm window radius {r_win}")
    for name, res in results["per_sequence"].items():
        msgs.append(f"{name} results:\n")
        msgs += _curve_lines(res)
    for key, title in _GROUPS:
        if results.get(key) is not None:
            msgs.append(f"{title}:\tAUC:{results[key]['auc']:.5f}\n")
            msgs += _curve_lines(results[key])
    if results.get("iou") is not None:
        msgs.append(f"Eval avg class IoU of prediction: {float(results['iou']):f}")
    return msgs


def write_eval_txt(path: str | Path, results: Mapping, header: str | None = None,
                   now: _dt.datetime | None = None) -> None:
    """Write `results` (see the module docstring) in the layout of the authors' eval.txt logs:
    per sequence the 27 threshold lines, then Low SNR / High SNR / Final blocks with the AUC, then the IoU."""
    stamp = _timestamp(now or _dt.datetime.now())
    text = "".join(f"{stamp} - Model - INFO - {m}\n" for m in eval_txt_messages(results, header))
    atomic_write_text(text, path)


def format_pd_fa_table(results: Mapping, threshold: float = 0.5) -> str:
    """Console table: per sequence and subset, Pd (%) and Fa (x1e-5) at `threshold`, AUC of pooled rows."""
    rows = [(name, res) for name, res in results.get("per_sequence", {}).items()]
    rows += [(title.replace(" results", ""), results[key]) for key, title in _GROUPS if results.get(key)]
    width = max([len(n) for n, _ in rows] + [8])
    border = results.get("border", "clip")
    lines = [f"Pd / Fa at threshold {threshold} (Fa in 1e-5 false pixels per pixel; border={border}: "
             f"{BORDER_RULES.get(border, '?')})",
             f"{'':<{width}}  {'Pd (%)':>8}  {'Fa (1e-5)':>9}  {'targets':>7}  {'AUC':>7}"]
    for name, res in rows:
        auc_txt = f"{res['auc']:.4f}" if "auc" in res and not math.isnan(res["auc"]) else "-"
        pd, fa, targets = (value_at(res, k, threshold) for k in ("pd", "fa", "targets"))
        lines.append(f"{name:<{width}}  {100 * pd:8.2f}  {1e5 * fa:9.3f}  {int(targets):7d}  {auc_txt:>7}")
    if results.get("iou") is not None:
        lines.append(f"IoU (pooled over all sequences, prob > 0.5) = {float(results['iou']):.4f}")
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    """numpy arrays / scalars -> lists / Python numbers; NaN and inf -> None (strict json)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented strict json (see `to_jsonable`)."""
    atomic_write_text(json.dumps(to_jsonable(obj), indent=2) + "\n", path)


def claim_output_dir(out: str | Path, identity: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Create the result folder `out` of one evaluation and record what it holds (OUT/evaluated.json:
    weights, data, split). A folder that already holds the results of another evaluation is refused
    (ConfigError) unless `overwrite`; the same evaluation again simply replaces its files."""
    out = Path(out)
    marker = out / "evaluated.json"
    record = {k: str(v) for k, v in identity.items()}
    if marker.is_file() and not overwrite:
        try:
            old = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != record:
            what = ", ".join(f"{k} {v}" for k, v in (old or {}).items()) or "unreadable record"
            raise ConfigError(f"{out}: holds the results of another evaluation ({what}); pass --overwrite "
                              "or another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(record, indent=1) + "\n", marker)
    return out
