"""Segmenter evaluation for test_deeppro.py: DeepPro / DeepPro-Plus (and any registered segmenter) on the
NUDT-MIRSDT(-Noise) test sequences; Pd / Fa / AUC per SNR group, the authors' eval.txt, results.json and
the ROC figure.

    python test_deeppro.py --data-root DIR --weights W [--model deeppro|deeppro_plus|resunet_dtum]
                           [--protocol deeppro|dtum]

The protocol itself (clips, stitching, scoring) is `utils.segmentation`; a model with one output frame per
clip (Res-UNet+DTUM) is run on the window of frames ending at each frame. `--protocol deeppro` (default):
the 27 thresholds, Pd / Fa windows clipped at the frame border; `--protocol dtum`: the DTUM authors' 50
thresholds (utils.dtum_protocol) and their border rule (ShootingRules' numpy slices). Both score Pd / Fa
against the centroid labels (masks_centroid) with detect radius 1 and window radius 4, and the IoU against
the full masks. With no `--data-root`, a small
synthetic NUDT-MIRSDT-style dataset is generated once into `data/synthetic/nudt` (and
`data/synthetic/nudt_noise` for `--dataset noise`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from nets.fast import for_evaluation
from utils.config import REQUIRED, Config, bit_depth_option, fast_option, option, parse_config
from utils.data import NUDTTestSequences, nudt_collate
from utils.data.roots import dataset_label, resolve_nudt_roots
from utils.distributed import resolve_device
from utils.dtum_protocol import DTUM_THRESHOLDS
from utils.errors import ConfigError
from utils.metrics import DEFAULT_THRESHOLDS
from utils.segmentation import (
    LOW_SNR_SEQUENCES,
    clip_length,
    clip_output,
    clip_ranges,
    default_stride,
    evaluate_sequences,
    low_snr_names,
    summary,
)
from utils.weights import load_weights

# Evaluation protocols: (thresholds, the Pd / Fa border rule of --border auto).
PROTOCOLS = {"deeppro": (DEFAULT_THRESHOLDS, "clip"), "dtum": (DTUM_THRESHOLDS, "authors")}


@dataclass
class SegmenterEvalConfig(Config):
    """Segmenter evaluation options"""

    weights: str = option(REQUIRED, "a checkpoint of train_NUDT.py (best.pt / last.pt; EMA weights when "
                          "present) or an official best_model.pth of the authors", required=True)
    model: str = option("auto", "architecture (auto: from the checkpoint)")
    data_root: str = option("", "NUDT-MIRSDT(-Noise) root with test.txt (empty: the synthetic dataset, "
                            "generated once)")
    mask_root: str = option("", "read masks and centroids from this root (the Noise variant's masks live in "
                            "the clean dataset)")
    dataset: str = option("nudt", "which synthetic variant to use when --data-root is not given",
                          choices=("nudt", "noise"))
    split: str = option("test", "split file stem under the root")
    out: str = option("", "result folder (empty: beside the weights, eval_<dataset>_<split>_<weights>)")
    overwrite: bool = option(False, "replace the results of another evaluation in --out")
    protocol: str = option("deeppro", "deeppro (the DeepPro authors' 27 thresholds) or dtum (the DTUM "
                           "authors' 50 thresholds and border rule)", choices=tuple(PROTOCOLS))
    seqlen: int | None = option(None, "clip length (none: the checkpoint's; 40 for official DeepPro weights, "
                                "the model's 5 frames for Res-UNet+DTUM)")
    stride: int | None = option(None, "clip stride; overlap = seqlen - stride (none: seqlen - int(0.1 "
                                "seqlen) = 36; not used by models with one output frame per clip)")
    batch_size: int = option(4, "clips (windows) per forward pass")
    threshold: float = option(0.5, "threshold of the printed Pd / Fa (one of the protocol's thresholds)")
    iou_threshold: float = option(0.5, "pooled IoU counts prob > this")
    low_snr: list[str] = option([str(n) for n in LOW_SNR_SEQUENCES], "low-SNR sequences, numbers or names "
                                "(the authors' list; none: every sequence is high-SNR)")
    ema: bool = option(True, "evaluate the EMA weights of a checkpoint that has them")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    fast: str = fast_option()
    border: str = option("auto", "Pd / Fa windows at the frame border: clip (clipped to the frame), "
                         "authors (their ShootingRules verbatim: numpy slices, no window for targets near "
                         "the top / left edge) or auto (the protocol's: deeppro clip, dtum authors)",
                         choices=("auto", "clip", "authors"))
    detect_radius: int = option(1, "a target is detected by a predicted pixel within this many pixels of it "
                                "(3x3 window)")
    window_radius: int = option(4, "predicted pixels within this many pixels of a target are not false "
                                "alarms (9x9 window; the DeepPro authors' released logs match 5, 11x11)")
    bit_depth_rule: str = bit_depth_option()
    workers: int = option(2, "processes decoding sequences")
    per_sequence: bool = option(False, "also print one row per sequence")
    progress: bool = option(True, "show a progress bar")

    def validate(self) -> None:
        self.at_least(1, "seqlen")
        self.at_least(1, "batch_size")
        self.at_least(0, "workers", "detect_radius", "window_radius")
        thresholds = PROTOCOLS[self.protocol][0]
        self.require(any(abs(self.threshold - t) <= 1e-12 for t in thresholds),
                     f"--threshold {self.threshold} is not one of the {len(thresholds)} thresholds of "
                     f"--protocol {self.protocol} {list(thresholds)}")

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(PROTOCOLS[self.protocol][0])

    @property
    def border_rule(self) -> str:
        """--border, with auto resolved by the protocol."""
        return PROTOCOLS[self.protocol][1] if self.border == "auto" else self.border


def format_summary(results: Mapping, threshold: float) -> str:
    """The console table: Pd (%), Fa (x1e-5) and AUC of the low-SNR / high-SNR / all groups."""
    s = summary(results, threshold)
    titles = {"low_snr": "low SNR", "high_snr": "high SNR", "all": "all"}
    protocol = f"{results['protocol']} protocol, " if results.get("protocol") else ""
    lines = [f"Pd / Fa at threshold {threshold:g} ({protocol}border={results.get('border', 'clip')}); Fa in "
             "units of 1e-5 (false-alarm pixels per pixel)",
             f"{'':<9}  {'Pd (%)':>7}  {'Fa (1e-5)':>9}  {'AUC':>6}  {'targets':>7}"]
    for key, title in titles.items():
        if key in s:
            g = s[key]
            pd = f"{100 * g['pd']:7.2f}" if math.isfinite(g["pd"]) else f"{'-':>7}"
            auc = f"{g['auc']:6.4f}" if math.isfinite(g["auc"]) else f"{'-':>6}"
            lines.append(f"{title:<9}  {pd}  {1e5 * g['fa']:9.3f}  {auc}  {g['targets']:7d}")
    lines.append(f"IoU (pooled, prob > {results.get('iou_threshold', 0.5):g}) = {s['iou']:.4f}")
    return "\n".join(lines)


def evaluate(cfg: SegmenterEvalConfig) -> dict:
    """Evaluate one segmenter; returns {"results", "summary", "out", "files"}."""
    from utils.plots import plot_roc
    from utils.report import claim_output_dir, format_pd_fa_table, write_eval_txt, write_json

    device = resolve_device(cfg.device)
    loaded = load_weights(cfg.weights, cfg.model, task="segment", prefer_ema=cfg.ema, seqlen=cfg.seqlen or 40)
    model = loaded.model.to(device).eval()
    seqlen = clip_length(model, cfg.seqlen or 40)
    windows = clip_output(model) == "last"
    if windows and cfg.seqlen is not None and cfg.seqlen != seqlen:
        raise ConfigError(f"--seqlen {cfg.seqlen}: {loaded.name} takes clips of {seqlen} frames")
    model = for_evaluation(model, cfg.fast)
    stride = None if windows else cfg.stride or default_stride(seqlen)
    if not windows:
        clip_ranges(seqlen, seqlen, stride)  # validates the stride
    border = cfg.border_rule
    root, mask_root = resolve_nudt_roots(cfg.data_root, cfg.mask_root, cfg.dataset)
    weights = Path(cfg.weights)
    out = Path(cfg.out) if cfg.out else \
        weights.parent / f"eval_{dataset_label(root)}_{cfg.split}_{weights.stem}"
    claim_output_dir(out, {"weights": weights, "data_root": root.resolve(), "split": cfg.split,
                           "mask_root": mask_root}, cfg.overwrite)
    low = low_snr_names(cfg.low_snr)

    ds = NUDTTestSequences(root, cfg.split, mask_root, min_frames=1 if windows else seqlen,
                           bit_depth_rule=cfg.bit_depth_rule)
    loader = DataLoader(ds, batch_size=None, num_workers=min(cfg.workers, len(ds)), collate_fn=nudt_collate)
    weights_text = f"{loaded.kind} {loaded.name} weights{' (EMA)' if loaded.ema else ''}"
    clips = (f"the {seqlen}-frame window ending at each frame" if windows
             else f"clips of {seqlen} frames, stride {stride}")
    print(f"testing {weights_text} from {weights} on {len(ds)} sequences of {root} ({cfg.split}) "
          f"on {device}; {clips}, {cfg.batch_size} per forward; {cfg.protocol} protocol "
          f"({len(cfg.thresholds)} thresholds, border={border})")
    t0 = time.time()
    scorer = evaluate_sequences(model, loader, low, seqlen, stride, cfg.batch_size, cfg.iou_threshold, device,
                                progress=cfg.progress, total=len(ds), border=border,
                                detect_radius=cfg.detect_radius, window_radius=cfg.window_radius,
                                thresholds=cfg.thresholds)
    seconds = time.time() - t0
    results = scorer.results(header=str(cfg))
    results["iou_threshold"] = cfg.iou_threshold
    results["protocol"] = cfg.protocol
    summ = summary(results, cfg.threshold)

    write_eval_txt(out / "eval.txt", results)
    groups = [(t, results[k]) for k, t in (("low_snr", "low SNR"), ("high_snr", "high SNR"), ("all", "all"))
              if results.get(k)]
    curves = {t: (r["fa"], r["pd"]) for t, r in groups}
    aucs = {t: r["auc"] for t, r in groups}
    plot_roc(curves, out / "roc.png", title=f"{loaded.name} on {dataset_label(root)} ({cfg.split}): Pd-Fa",
             auc=aucs)
    write_json(out / "results.json", {
        "weights": str(weights), "model": loaded.name, "weights_source": loaded.kind, "ema": loaded.ema,
        "data_root": str(root), "mask_root": str(mask_root) if mask_root else None, "split": cfg.split,
        "dataset": dataset_label(root), "protocol": cfg.protocol, "seqlen": seqlen,
        "clips": "windows ending at each frame" if windows else "stitched clips", "stride": stride,
        "threshold": cfg.threshold, "iou_threshold": cfg.iou_threshold, "border": border,
        "detect_radius": cfg.detect_radius,
        "window_radius": cfg.window_radius, "bit_depth_rule": cfg.bit_depth_rule,
        "low_snr_sequences": [n for n in ds.names if n in set(low)],
        "frames": scorer.frames, "seconds": round(seconds, 3),
        "fps": round(scorer.frames / seconds, 2) if seconds > 0 else None, "workers": cfg.workers,
        **scorer.timing, "summary": summ, "thresholds": list(cfg.thresholds),
        "pooled": {k: results[k] for k in ("low_snr", "high_snr", "all") if results.get(k)},
        "per_sequence": results["per_sequence"]})

    if cfg.per_sequence:
        print(format_pd_fa_table({"per_sequence": results["per_sequence"]}, cfg.threshold))
    print(format_summary(results, cfg.threshold))
    wait = 100 * scorer.timing.get("data_wait_fraction", 0.0)
    print(f"{scorer.frames} frames in {seconds:.1f} s ({scorer.frames / max(seconds, 1e-9):.1f} frames/s, "
          f"decoding included; {wait:.1f}% of the time waiting for frames, {cfg.workers} loader workers); "
          f"wrote {out / 'eval.txt'}, {out / 'results.json'}, {out / 'roc.png'}")
    return {"results": results, "summary": summ, "out": out,
            "files": {"eval": out / "eval.txt", "json": out / "results.json", "roc": out / "roc.png"}}


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """test_deeppro.py: parse `argv` and evaluate."""
    cfg = parse_config(SegmenterEvalConfig(), argv, __doc__.split("\n\n")[0], prog)
    return evaluate(cfg)


__all__ = ["PROTOCOLS", "SegmenterEvalConfig", "evaluate", "format_summary", "main"]
