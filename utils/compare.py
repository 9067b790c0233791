"""The comparison tables of compare.py: every registered model beside the published numbers.

Three tables; every row names its source, "measured" or "published: <where from>":
- complexity: parameters, multiply-accumulates at the paper's resolution and CPU frames/s. Detectors: one
  T-frame clip at 512x512 (T = `num_frames`), one output frame. Segmenters at 480x720, per output frame: a
  DeepPro clip of `seqlen` frames gives `seqlen` maps (MACs / seqlen), a Res-UNet+DTUM clip of 5 frames gives
  the current frame's map (MACs of the clip). "GMACs" counts convolutions (difference convs included) and
  Linear layers; "thop-style" adds BatchNorm at 4 operations per element, the count behind the DeepPro
  paper's "GFLOPs" (utils/complexity.py). Frames/s: a short timed run on the CPU at a small size;
- detection: AP50, P, R, F1 at IoU 0.5 from metrics.json files (vid_map_coco_*.py) and AP50 of the
  published 101-point PR files (folders such as published/ITSDT);
- segmentation: Pd and Fa at threshold 0.5 and AUC, from results.json files (test_deeppro.py), the authors'
  eval logs (eval_<method>_<dataset>.txt) and the DeepPro README tables (utils/published_tables.json).

Models are handled through the registry only: input layout from `utils.onnx_export.clip_shape` (task and
attributes), validity of a size checked by a forward on the meta device (`example_clip`).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import nets
from utils.coco_metrics import read_pr_txt
from utils.complexity import count_macs, count_params, param_kilobytes
from utils.errors import ConfigError, DataError
from utils.metrics import DEFAULT_THRESHOLDS
from utils.onnx_export import clip_shape, size_rule

PAPER_HW = {"detect": (512, 512), "segment": (480, 720)}
PUBLISHED_TABLES = Path(__file__).with_name("published_tables.json")
SUBSETS = ("all", "low_snr")
PD_FA_THRESHOLD = 0.5
DET_KEYS = ("ap50", "P", "R", "F1")
_EVAL_LOG = re.compile(r"^eval_(?P<method>[^_]+)_(?P<dataset>.+)$")


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------
def model_entries(names: Sequence[str] | None = None) -> list[tuple[str, str, str | None]]:
    """`(label, registry name, variant)` of every requested model (default: all registered); a model with
    architecture variants gets one entry per variant, labelled "name (variant)"."""
    out = []
    for name in names or nets.list_models():
        info = nets.model_info(name)
        out += [(f"{info.name} ({v})", info.name, v) for v in info.variants] or [(info.name, info.name, None)]
    return out


def build(name: str, variant: str | None = None) -> nn.Module:
    """The registered model in eval mode (default weights)."""
    return nets.build_model(name, **({"variant": variant} if variant else {})).eval()


def example_clip(name: str, model: nn.Module, hw: tuple[int, int] | None = None,
                 batch: int = 1) -> tuple[int, ...]:
    """The input shape of `model` with the smallest H, W >= `hw` it accepts (None: the smallest at all).

    H and W are rounded up to a multiple s of the model's `size_rule` multiple, s growing until a forward on
    the meta device (shapes only, no arithmetic) raises no ValueError, so that rules a model checks but does
    not declare (Res-UNet+DTUM: multiples of 8) are found too."""
    multiple, minimum = size_rule(name, model)
    h0, w0 = hw or (minimum, minimum)
    net = copy.deepcopy(model).to("meta").eval()
    error: Exception | None = None
    for k in range(1, 65):
        step = multiple * k
        h, w = (max(minimum, -(-v // step) * step) for v in (h0, w0))
        if h % multiple or w % multiple:
            continue
        shape = clip_shape(name, model, (h, w), batch)
        try:
            with torch.no_grad():
                net(torch.zeros(shape, device="meta"))
            return shape
        except ValueError as err:
            error = err
    raise ConfigError(f"{name}: no valid input size near {h0}x{w0} ({str(error).splitlines()[0]})")


def output_frames(name: str, output_shape: Sequence[int]) -> int:
    """Frames a forward pass predicts: 1 for a detector (the key frame), `[B, K, H, W]` -> K for a segmenter
    (DeepPro: every frame of the clip; Res-UNet+DTUM: the current one)."""
    return 1 if nets.model_info(name).task == "detect" else int(output_shape[1])


def _meta_output_shape(model: nn.Module, shape: Sequence[int]) -> tuple[int, ...]:
    net = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad():
        return tuple(net(torch.zeros(tuple(shape), device="meta")).shape)


def cpu_speed(name: str, model: nn.Module, hw: tuple[int, int], runs: int = 3, fast: str = "auto") -> dict:
    """Output frames per second on the CPU at the smallest valid size >= `hw` (batch 1, after one warm-up
    pass): `{"fps", "input", "runs", "fast", "threads"}`."""
    from nets.fast import for_evaluation

    shape = example_clip(name, model, hw)
    net = for_evaluation(copy.deepcopy(model).cpu(), fast)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = net(x)
        t0 = time.perf_counter()
        for _ in range(runs):
            net(x)
        seconds = time.perf_counter() - t0
    return {"fps": output_frames(name, out.shape) * runs / max(seconds, 1e-9), "input": list(shape),
            "runs": runs, "fast": fast, "threads": torch.get_num_threads()}


def complexity_row(label: str, name: str, model: nn.Module, speed: dict | None = None) -> dict:
    """Parameters and MACs per output frame at the paper's resolution (see the module docstring)."""
    task = nets.model_info(name).task
    shape = clip_shape(name, model, PAPER_HW[task])
    macs = count_macs(model, shape)
    frames = output_frames(name, _meta_output_shape(model, shape))
    return {"method": label, "model": name, "task": task, "source": "measured", "params": count_params(model),
            "params_kb": param_kilobytes(model), "macs_input": list(shape), "frames_per_pass": frames,
            "gmacs": macs["total"] / frames / 1e9, "gmacs_thop": macs["thop_style"] / frames / 1e9,
            "fps": speed["fps"] if speed else None, "speed": speed}


# ----------------------------------------------------------------------------------------------------------
# Metrics: measured files and published numbers
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Collection:
    """Rows of the three tables plus the curves of the figures (dataset -> label -> curve)."""

    complexity: list[dict] = field(default_factory=list)
    detection: list[dict] = field(default_factory=list)
    segmentation: list[dict] = field(default_factory=list)
    pr_curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    roc_curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = field(default_factory=dict)


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: results file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable json ({str(err).splitlines()[0]})") from None


def _number(obj, key: str, path: Path) -> float:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{path}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _curve(values, path: Path, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{what}' is not a list of numbers") from None
    if arr.size < 2:
        raise DataError(f"{path}: '{what}' needs at least 2 values, got {arr.size}")
    return arr


def add_results(coll: Collection, label: str, path: str | Path) -> None:
    """A measured results file: a metrics.json of vid_map_coco_*.py (AP50, P, R, F1 and the PR curve) or a
    results.json of test_deeppro.py (Pd, Fa, AUC of the pooled groups and the 'all' Pd-Fa curve)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a json object (a metrics.json or a results.json)")
    dataset = str(data.get("dataset") or "unknown dataset")
    if "precision_50" in data:
        row = {"dataset": dataset, "method": label, "source": "measured", "file": str(path)}
        row.update({k: _number(data, k, path) for k in DET_KEYS})
        coll.detection.append(row)
        coll.pr_curves.setdefault(dataset, {})[label] = _curve(data["precision_50"], path, "precision_50")
        return
    if isinstance(data.get("summary"), dict) and isinstance(data.get("pooled"), dict):
        subsets = [s for s in SUBSETS if isinstance(data["summary"].get(s), dict)]
        if not subsets:
            raise DataError(f"{path}: 'summary' holds none of the groups {', '.join(SUBSETS)}")
        for subset in subsets:
            s = data["summary"][subset]
            coll.segmentation.append({"dataset": dataset, "subset": subset, "method": label,
                                      "source": "measured", "file": str(path), "pd": _number(s, "pd", path),
                                      "fa": _number(s, "fa", path), "auc": _number(s, "auc", path)})
        pooled = data["pooled"].get("all")
        if isinstance(pooled, dict):
            coll.roc_curves.setdefault(dataset, {})[label] = (
                _curve(pooled.get("fa"), path, "pooled.all.fa"),
                _curve(pooled.get("pd"), path, "pooled.all.pd"), _number(pooled, "auc", path))
        return
    raise DataError(f"{path}: neither a metrics.json of vid_map_coco_*.py ('precision_50') nor a "
                    f"results.json of test_deeppro.py ('summary' and 'pooled')")


def load_published_tables(path: str | Path = PUBLISHED_TABLES) -> dict:
    """utils/published_tables.json: the papers' tables, transcribed (numbers as printed, with their units)."""
    data = _read_json(Path(path))
    for key in ("sources", "pr_files", "complexity", "segmentation"):
        if key not in data:
            raise DataError(f"{path}: no '{key}' entry")
    return data


def add_published_tables(coll: Collection, tables: dict) -> None:
    """The README tables of the DeepPro paper: complexity (params KB, FPS, GFLOPs at 480x720) and Pd / Fa /
    AUC on NUDT-MIRSDT (low SNR, all) and NUDT-MIRSDT-Noise."""
    comp = tables["complexity"]
    cite = f"published: {comp['source']} paper"
    h, w = comp["resolution"]
    for method, kb, fps, gflops in comp["rows"]:
        coll.complexity.append({"method": method, "model": None, "task": "segment", "source": cite,
                                "params": None, "params_kb": float(kb), "macs_input": f"{h}x{w} (paper)",
                                "gmacs": None, "gmacs_thop": float(gflops), "fps": float(fps), "speed": None})
    seg = tables["segmentation"]
    cite = f"published: {seg['source']} paper"
    for table in seg["tables"]:
        for method, pd, fa, auc_value in table["rows"]:
            coll.segmentation.append({"dataset": table["dataset"], "subset": table["subset"],
                                      "method": method, "source": cite, "pd": pd / 100.0, "fa": fa * 1e-5,
                                      "auc": float(auc_value)})


def _published_pr_folder(coll: Collection, folder: Path, tables: dict) -> None:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder}: no PR *.txt files in the --published folder")
    dataset = folder.name
    paper = tables["pr_files"].get(dataset)
    cite = f"published: PR file ({paper} paper)" if paper else "published: PR file"
    for f in files:
        prec = read_pr_txt(f)
        coll.detection.append({"dataset": dataset, "method": f.stem, "source": cite, "file": str(f),
                               "ap50": float(prec.mean()), "P": None, "R": None, "F1": None})
        coll.pr_curves.setdefault(dataset, {})[f"{f.stem} (published)"] = prec


def _published_eval_log(coll: Collection, path: Path) -> None:
    from utils.logs import read_eval_txt

    m = _EVAL_LOG.match(path.stem)
    if not m:
        raise DataError(f"{path}: an authors' eval log must be named eval_<method>_<dataset>.txt")
    method, dataset = m.group("method"), m.group("dataset")
    thresholds = np.asarray(DEFAULT_THRESHOLDS)
    at = int(np.flatnonzero(np.isclose(thresholds, PD_FA_THRESHOLD))[0])
    for subset in SUBSETS:
        try:
            fa, pd, auc_value = read_eval_txt(path, subset)
        except DataError:
            if subset == "all":
                raise
            continue
        if fa.size != thresholds.size:
            raise DataError(f"{path}: {fa.size} threshold lines in the {subset} block, expected "
                            f"{thresholds.size} (the authors' thresholds)")
        coll.segmentation.append({"dataset": dataset, "subset": subset, "method": method,
                                  "source": "published: authors' eval log", "file": str(path),
                                  "pd": float(pd[at]), "fa": float(fa[at]), "auc": auc_value})
        if subset == "all":
            coll.roc_curves.setdefault(dataset, {})[f"{method} (published)"] = (fa, pd, auc_value)


def add_published(coll: Collection, path: str | Path, tables: dict) -> None:
    """`--published PATH`: an authors' eval log (eval_<method>_<dataset>.txt), a folder of them, or a folder
    of PR files (*.txt, 101 precisions each; the folder name is the dataset, e.g. published/ITSDT)."""
    path = Path(path)
    if path.is_file():
        _published_eval_log(coll, path)
        return
    if not path.is_dir():
        raise DataError(f"{path}: --published file or folder not found")
    logs = sorted(path.glob("eval_*.txt"))
    if logs:
        for log in logs:
            _published_eval_log(coll, log)
    else:
        _published_pr_folder(coll, path, tables)


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 2, scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def _source(row: dict) -> str:
    """The source cell: published rows in italics."""
    return "measured" if row["source"] == "measured" else f"*{row['source']}*"


def _md(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def format_markdown(coll: Collection, settings: dict) -> str:
    """The three tables as markdown, each with a line saying what is counted."""
    lines = ["# Model comparison", "",
             "Rows marked *published* are the papers' numbers (utils/published_tables.json, the authors' PR "
             "files and eval logs); *measured* rows are computed here or read from the given results files.",
             "", "## Complexity", "",
             "GMACs per output frame at the paper's resolution (detectors: one T-frame clip at 512x512; "
             "segmenters: 480x720, DeepPro a clip of seqlen frames / seqlen, Res-UNet+DTUM one 5-frame clip "
             "per frame). GMACs: convolutions (difference convs included) and Linear layers; thop-style: "
             "plus BatchNorm at 4 ops/element, the count behind the DeepPro paper's GFLOPs (the published "
             "GFLOPs sit in that column). Frames/s: measured on the CPU "
             + (f"at batch 1 (input in the speed column, fast path {settings.get('fast')}, "
                f"{torch.get_num_threads()} threads); " if settings.get("speed")
                else "(skipped: --no-speed); ")
             + "published FPS are the authors' (their hardware).", ""]
    rows = []
    for r in coll.complexity:
        speed = r.get("speed") or {}
        shape = r["macs_input"] if isinstance(r["macs_input"], str) else "x".join(map(str, r["macs_input"]))
        rows.append([r["method"], _source(r),
                     f"{r['params']:,}" if r["params"] is not None else "–", _fmt(r["params_kb"], 1), shape,
                     _fmt(r["gmacs"], 3), _fmt(r["gmacs_thop"], 3), _fmt(r["fps"], 2),
                     "x".join(map(str, speed["input"])) if speed else "–"])
    lines += _md(["Method", "Source", "Params", "Params (KB fp32)", "MACs input", "GMACs/frame",
                  "thop-style GMACs/frame", "Frames/s", "Speed input"], rows)
    if coll.detection:
        lines += ["", "## Detection", "",
                  "AP50, P, R, F1 (x100) at IoU 0.5; P is the authors' convention (mean precision up to R). "
                  "Published PR files give AP50 only (mean of the 101-point curve).", ""]
        det = sorted(coll.detection, key=lambda r: (r["dataset"], r["source"] != "measured", -r["ap50"]))
        lines += _md(["Dataset", "Method", "Source", "AP50", "P", "R", "F1"],
                     [[r["dataset"], r["method"], _source(r), *(_fmt(r[k], 2, 100.0) for k in DET_KEYS)]
                      for r in det])
    if coll.segmentation:
        lines += ["", "## Segmentation", "",
                  f"Pd (x1e-2) and Fa (x1e-5) at threshold {PD_FA_THRESHOLD}, AUC of Pd over Fa; subset all "
                  "or low_snr (SNR <= 3 sequences).", ""]
        seg = sorted(coll.segmentation, key=lambda r: (r["dataset"], SUBSETS.index(r["subset"]),
                                                        r["source"] != "measured", r["method"].lower(),
                                                        r["source"]))
        lines += _md(["Dataset", "Subset", "Method", "Source", "Pd (x1e-2)", "Fa (x1e-5)", "AUC"],
                     [[r["dataset"], r["subset"], r["method"],
                       _source(r),
                       _fmt(r["pd"], 2, 100.0), _fmt(r["fa"], 2, 1e5), _fmt(r["auc"], 4)] for r in seg])
    return "\n".join(lines) + "\n"


def write_figures(coll: Collection, out: Path) -> dict[str, str]:
    """One PR figure per dataset with PR curves and one Pd-Fa figure per dataset with Pd-Fa curves."""
    from utils.plots import plot_pr_curves, plot_roc

    files = {}
    for dataset, curves in sorted(coll.pr_curves.items()):
        measured = [k for k in curves if not k.endswith("(published)")]
        path = out / f"pr_{_slug(dataset)}.png"
        plot_pr_curves(curves, path, title=f"{dataset}: precision-recall at IoU 0.5", highlight=measured)
        files[f"pr {dataset}"] = str(path)
    for dataset, curves in sorted(coll.roc_curves.items()):
        path = out / f"roc_{_slug(dataset)}.png"
        plot_roc({k: (fa, pd) for k, (fa, pd, _) in curves.items()}, path, title=f"{dataset}: Pd-Fa (all)",
                 auc={k: a for k, (_, _, a) in curves.items()})
        files[f"roc {dataset}"] = str(path)
    return files


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unknown"


__all__ = ["Collection", "PAPER_HW", "PUBLISHED_TABLES", "add_published", "add_published_tables",
           "add_results", "build", "complexity_row", "cpu_speed", "example_clip", "format_markdown",
           "load_published_tables", "model_entries", "output_frames", "write_figures"]
