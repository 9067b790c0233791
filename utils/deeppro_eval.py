"""DeepPro / DeepPro-Plus test protocol: clips, stitching, Pd / Fa / AUC / IoU, result files.

    python test_deeppro.py --data-root DIR --weights W [--model deeppro|deeppro_plus]

Protocol (spec/deeppro.md, as the authors' test.py): each test sequence of N frames is cut into clips of
`seqlen` (40) frames with stride 36 (4 frames of overlap), the last clip aligned to the end of the
sequence (N = 100: [0, 40), [36, 76), [60, 100)); the per-frame probabilities of overlapping clips are
stitched with an element-wise max; frames keep their native size. Scores (utils.metrics): Pd / Fa at the
27 thresholds per sequence, pooled over the low-SNR sequences (chosen by name), the others (high SNR) and
all, with the AUC of Pd over Fa; IoU = sum(I) / sum(U) pooled over all sequences with prediction
prob > 0.5 (strict) against the masks.

Results go to OUT/eval.txt (the authors' log layout), OUT/results.json and OUT/roc.png.

With no `--data-root`, a small synthetic NUDT-MIRSDT-style dataset is generated once into
`data/synthetic/nudt` (and `data/synthetic/nudt_noise` for `--dataset noise`), see `ensure_synthetic`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import nets
from nets.fast import FAST_MODES, for_evaluation
from utils.checkpoint import FORMAT, check_identity, describe_identity, load_state_strict, model_weights
from utils.data import NUDTSequence, NUDTTestSequences, nudt_collate
from utils.distributed import resolve_device
from utils.errors import CheckpointError, ConfigError, DataError
from utils.metrics import DEFAULT_THRESHOLDS, check_border, iou_counts, pd_fa, pool_pd_fa, value_at
from utils.timing import TimedIterator

MODELS = ("deeppro", "deeppro_plus")
# The authors' low-SNR (SNR <= 3) test sequences of NUDT-MIRSDT.
LOW_SNR_SEQUENCES = (47, 56, 59, 76, 92, 101, 105, 119)
SYNTHETIC_ROOT = Path("data/synthetic/nudt")
SYNTHETIC_NOISE_ROOT = Path("data/synthetic/nudt_noise")
# Keys that only the authors' DeepPro (three branches) / DeepPro-Plus (one TPro) state dicts hold.
_OFFICIAL_MARKERS = {"deeppro": "TPro1.", "deeppro_plus": "TPro."}


# ----------------------------------------------------------------------------------------------------
# Default data
# ----------------------------------------------------------------------------------------------------


def ensure_synthetic(noise: bool = False, root: str | Path = SYNTHETIC_ROOT,
                     noise_root: str | Path = SYNTHETIC_NOISE_ROOT, seed: int = 0,
                     log: Callable[[str], None] = print) -> tuple[Path, Path | None]:
    """Generate the default synthetic NUDT-MIRSDT-style dataset once (clean, and for `noise` the Noise
    variant whose masks stay in the clean folder); returns (data root, mask root or None).

    The generator's NUDT defaults are used (8 train, 1 val, 4 test sequences of 100 frames, 128x160; half
    of the test sequences low-SNR and named like the real ones). A folder with `synth_meta.json` is reused;
    a generation is written to a temporary folder first, so an interrupted run leaves nothing half-made.
    """
    from utils.synth import SynthConfig, generate

    def make(folder: Path, **kwargs) -> None:
        if (folder / "synth_meta.json").is_file():
            return
        if folder.exists() and any(folder.iterdir()):
            raise DataError(f"{folder}: exists but holds no synth_meta.json (not a synthetic dataset); "
                            "remove it or pass --data-root")
        folder.parent.mkdir(parents=True, exist_ok=True)
        log(f"no --data-root given: generating a synthetic NUDT-MIRSDT-style dataset in {folder} (once; "
            "pass --data-root for real data) ...")
        t0 = time.time()
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            meta = generate(SynthConfig(format="nudt", out=str(tmp), seed=seed, **kwargs))
            if folder.exists():
                folder.rmdir()
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        splits = {}
        for s in meta["sequences"]:
            splits[s["split"]] = splits.get(s["split"], 0) + 1
        log(f"  wrote {len(meta['sequences'])} sequences ({', '.join(f'{v} {k}' for k, v in splits.items())})"
            f" in {time.time() - t0:.1f} s")

    root = Path(root)
    make(root)
    if not noise:
        return root, None
    noise_root = Path(noise_root)
    make(noise_root, noise=True, write_masks=False)
    return noise_root, root


def low_snr_names(values: Iterable[str | int]) -> list[str]:
    """Sequence names of a low-SNR list given as numbers (`47`) or names (`Sequence47`); `none` is skipped."""
    out = []
    for v in values:
        text = str(v).strip()
        if text and text.lower() != "none":
            out.append(f"Sequence{int(text)}" if text.isdigit() else text)
    return out


# ----------------------------------------------------------------------------------------------------
# Clips and stitching
# ----------------------------------------------------------------------------------------------------


def default_stride(seqlen: int) -> int:
    """The authors' clip stride: seqlen - int(0.1 * seqlen) (36 for 40-frame clips)."""
    return seqlen - int(0.1 * seqlen)


def clip_ranges(n_frames: int, seqlen: int = 40, stride: int = 36) -> list[tuple[int, int]]:
    """Frame ranges [start, end) of the test clips of a sequence, as the authors' test loader:
    clip i ends at min(N, (i + 1) * stride + overlap) with overlap = seqlen - stride, and starts
    `seqlen` frames before its end. N = 100, 40, 36 -> [(0, 40), (36, 76), (60, 100)]."""
    if not 0 < stride <= seqlen:
        raise ConfigError(f"clip stride must be in 1..{seqlen}, got {stride}")
    if n_frames < seqlen:
        raise DataError(f"a sequence of {n_frames} frames is shorter than the {seqlen}-frame clip")
    overlap = seqlen - stride
    count = math.ceil((n_frames - overlap) / stride)
    ends = [min(n_frames, (i + 1) * stride + overlap) for i in range(count)]
    return [(e - seqlen, e) for e in ends]


def stitch_max(out: np.ndarray, start: int, probs: np.ndarray) -> None:
    """Merge a clip's probabilities `probs [T, H, W]` into `out [N, H, W]` at frame `start` in place,
    element-wise max with what is there (`out` starts at 0; probabilities are >= 0)."""
    end = start + len(probs)
    if start < 0 or end > len(out) or probs.shape[1:] != out.shape[1:]:
        raise ConfigError(f"clip [{start}, {end}) of {tuple(probs.shape[1:])} frames does not fit a sequence "
                          f"of {tuple(out.shape)}")
    np.maximum(out[start:end], probs, out=out[start:end])


@torch.no_grad()
def predict_sequence(model: nn.Module, frames: np.ndarray | torch.Tensor, seqlen: int = 40, stride: int = 36,
                     batch_size: int = 4, device: torch.device | str | None = None) -> np.ndarray:
    """Stitched probabilities of a whole sequence: `frames [N, H, W]` (normalised) -> float32 [N, H, W].

    Clips from `clip_ranges` go through the model `batch_size` at a time (`[b, 1, seqlen, H, W]`);
    overlaps are merged with `stitch_max`. The model runs as given (call `model.eval()` first).
    """
    x = torch.as_tensor(frames)
    if x.ndim != 3:
        raise ConfigError(f"frames must be [N, H, W], got {list(x.shape)}")
    if device is None:
        device = next(model.parameters()).device
    n, h, w = x.shape
    out = np.zeros((n, h, w), np.float32)
    ranges = clip_ranges(n, seqlen, stride)
    for i in range(0, len(ranges), max(1, batch_size)):
        chunk = ranges[i:i + max(1, batch_size)]
        batch = torch.stack([x[s:e] for s, e in chunk]).unsqueeze(1).to(device, torch.float32)
        probs = torch.sigmoid(model(batch).float()).cpu().numpy()
        for (s, _), p in zip(chunk, probs):
            stitch_max(out, s, p)
    return out


# ----------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------


class SequenceScorer:
    """Accumulates Pd / Fa per sequence and pooled IoU; `results()` gives the dict utils.report writes.

    low_snr: names of the low-SNR sequences; thresholds: the 27 default thresholds; iou_threshold: the
    strict threshold of the pooled IoU (0.5 at test time, the authors' 0.3 for model selection); border,
    detect_radius, window_radius: the Pd / Fa window rule of utils.metrics.pd_fa ("clip" or "authors").
    """

    def __init__(self, low_snr: Iterable[str] = (), thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 iou_threshold: float = 0.5, border: str = "clip", detect_radius: int = 1,
                 window_radius: int = 4):
        self.low = set(low_snr)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.iou_threshold = float(iou_threshold)
        self.border = check_border(border)
        self.detect_radius, self.window_radius = int(detect_radius), int(window_radius)
        self.per_sequence: dict[str, dict] = {}
        self.inter = self.union = 0
        self.frames = 0
        self.timing: dict[str, float] = {}

    def add(self, name: str, probs: np.ndarray, centroids: np.ndarray, masks: np.ndarray) -> dict:
        """Score one stitched sequence: probs float [N, H, W], centroids / masks bool [N, H, W]."""
        res = pd_fa(probs, centroids, self.thresholds, detect_radius=self.detect_radius,
                    window_radius=self.window_radius, border=self.border)
        i, u = iou_counts(probs, masks, self.iou_threshold)
        res["inter"], res["union"] = i, u
        self.inter += i
        self.union += u
        self.frames += len(probs)
        self.per_sequence[name] = res
        return res

    @property
    def iou(self) -> float:
        return self.inter / self.union if self.union else float("nan")

    def results(self, header: str | None = None) -> dict:
        """{"per_sequence", "low_snr", "high_snr", "all", "iou", "header", "border", "detect_radius",
        "window_radius"} (a subset without sequences is None)."""
        if not self.per_sequence:
            raise DataError("no test sequence was scored")
        low = [r for n, r in self.per_sequence.items() if n in self.low]
        high = [r for n, r in self.per_sequence.items() if n not in self.low]
        return {"per_sequence": self.per_sequence, "low_snr": pool_pd_fa(low) if low else None,
                "high_snr": pool_pd_fa(high) if high else None,
                "all": pool_pd_fa(list(self.per_sequence.values())), "iou": self.iou, "header": header,
                "border": self.border, "detect_radius": self.detect_radius,
                "window_radius": self.window_radius}


def summary(results: Mapping, threshold: float = 0.5) -> dict:
    """Pd, Fa, AUC and target counts at `threshold` for the pooled groups, plus the IoU."""
    out: dict = {}
    for key in ("low_snr", "high_snr", "all"):
        res = results.get(key)
        if res is None:
            continue
        out[key] = {"pd": value_at(res, "pd", threshold), "fa": value_at(res, "fa", threshold),
                    "auc": float(res["auc"]), "targets": int(value_at(res, "targets", threshold)),
                    "tp": int(value_at(res, "tp", threshold)),
                    "fa_pixels": int(value_at(res, "fa_pixels", threshold))}
    out["iou"] = float(results["iou"])
    out["threshold"] = float(threshold)
    return out


def evaluate_sequences(model: nn.Module, sequences: Iterable[NUDTSequence], low_snr: Iterable[str] = (),
                       seqlen: int = 40, stride: int = 36, batch_size: int = 4,
                       iou_threshold: float = 0.5, device: torch.device | str | None = None,
                       progress: bool = False, total: int | None = None, border: str = "clip",
                       detect_radius: int = 1, window_radius: int = 4) -> SequenceScorer:
    """Run the test protocol over `sequences` with `model` (put in eval mode) and score them (border and
    radii: the Pd / Fa window rule, see SequenceScorer).

    The returned scorer's `timing` holds the data-wait figures (utils.timing.TimedIterator.summary())."""
    scorer = SequenceScorer(low_snr, iou_threshold=iou_threshold, border=border, detect_radius=detect_radius,
                            window_radius=window_radius)
    sequences = TimedIterator(sequences)
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(sequences, total=total, desc="test sequences", disable=not progress, dynamic_ncols=True,
                   leave=False)
        for seq in bar:
            probs = predict_sequence(model, seq.frames, seqlen, stride, batch_size, device)
            scorer.add(seq.name, probs, seq.centroids, seq.masks)
            bar.set_postfix(seq=seq.name, refresh=False)
    finally:
        model.train(was_training)
    scorer.timing = sequences.summary()
    return scorer


# ----------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------


def _official_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    for name in ("deeppro", "deeppro_plus"):  # "TPro1." is tested first: "TPro." is not its prefix
        if any(k.startswith(_OFFICIAL_MARKERS[name]) for k in state):
            return name
    return None


def load_deeppro_weights(path: str | Path, model_name: str = "auto", prefer_ema: bool = True,
                         seqlen: int = 40) -> tuple[nn.Module, dict]:
    """Build the model a checkpoint needs and load it strictly.

    `path`: a training checkpoint of this toolbox (its EMA weights when present and `prefer_ema`) or one
    of the authors' official `.pth` files (detected by their `model_state_dict`). `model_name`:
    "auto" (from the checkpoint's identity or key names), "deeppro" or "deeppro_plus"; a model that does
    not fit the weights raises a one-line CheckpointError. Returns (model, info) with info = {"source":
    "ours" | "official", "model", "ema", "epoch"}.
    """
    from nets.official import extract_state_dict, read_checkpoint

    path = Path(path)
    if model_name not in ("auto",) + MODELS:
        raise ConfigError(f"--model {model_name!r}: expected auto, deeppro or deeppro_plus")
    try:
        obj = read_checkpoint(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except ValueError as err:
        raise CheckpointError(str(err).splitlines()[0]) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a DeepPro checkpoint (holds a {type(obj).__name__})")
    if obj.get("format") == FORMAT:
        identity = obj.get("identity") or {}
        saved = str(identity.get("name", ""))
        if saved not in MODELS:
            raise CheckpointError(f"{path}: checkpoint is for {describe_identity(identity)}, not a DeepPro "
                                  "model")
        name = saved if model_name == "auto" else model_name
        kwargs = dict(identity.get("kwargs") or {"seqlen": seqlen})
        check_identity(obj, {"name": name, "kwargs": kwargs}, path)
        model = nets.build_model(name, **kwargs)
        use_ema = bool(prefer_ema and obj.get("ema"))
        load_state_strict(model, model_weights(obj, prefer_ema), path)
        return model, {"source": "ours", "model": name, "ema": use_ema, "epoch": obj.get("epoch")}
    try:
        state = extract_state_dict(obj)
    except ValueError as err:
        raise CheckpointError(f"{path}: {str(err).splitlines()[0]}") from None
    detected = _official_arch(state)
    name = model_name if model_name != "auto" else detected
    if name is None:
        raise CheckpointError(f"{path}: cannot tell which model these weights are for; pass --model "
                              "deeppro or deeppro_plus")
    model = nets.build_model(name, seqlen=seqlen)
    try:
        nets.load_official(model, state)
    except ValueError as err:
        hint = f" (the keys look like {detected})" if detected and detected != name else ""
        reason = str(err).splitlines()[0].replace("official state dict: ", "")
        raise CheckpointError(f"{path}: official weights do not fit --model {name}{hint}: {reason}") from None
    epoch = obj.get("epoch")
    return model, {"source": "official", "model": name, "ema": False,
                   "epoch": int(epoch) + 1 if isinstance(epoch, (int, np.integer)) else None}


# ----------------------------------------------------------------------------------------------------
# The test script
# ----------------------------------------------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parts = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog=prog, description=f"{parts[0]}\n\n{parts[2]}\n\n{parts[3]}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, type=Path,
                   help="a checkpoint of train_NUDT.py (best.pt / last.pt; EMA weights when present) or an "
                        "official best_model.pth of the authors")
    p.add_argument("--model", default="auto", choices=("auto",) + MODELS,
                   help="architecture (default: from the checkpoint)")
    p.add_argument("--data-root", default="", help="NUDT-MIRSDT(-Noise) root with test.txt (default: the "
                   "synthetic dataset, generated once)")
    p.add_argument("--mask-root", default="", help="read masks and centroids from this root (the Noise "
                   "variant's masks live in the clean dataset)")
    p.add_argument("--dataset", default="nudt", choices=("nudt", "noise"),
                   help="which synthetic variant to generate when --data-root is not given")
    p.add_argument("--split", default="test", help="split file stem under the root")
    p.add_argument("--out", default="", type=str,
                   help="result folder (default: WEIGHTS_DIR/eval_<split> for a checkpoint of train_NUDT.py, "
                        "runs/test_<model>_<weights file stem> for official weights)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="clip length (default: the checkpoint's; 40 for official weights)")
    p.add_argument("--stride", type=int, default=None,
                   help="clip stride; overlap = seqlen - stride (default: seqlen - int(0.1 seqlen) = 36)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per forward pass")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="threshold of the printed Pd / Fa (one of the 27 scored thresholds)")
    p.add_argument("--iou-threshold", type=float, default=0.5, help="pooled IoU counts prob > this")
    p.add_argument("--low-snr", nargs="*", default=[str(n) for n in LOW_SNR_SEQUENCES], metavar="SEQ",
                   help="low-SNR sequences, numbers or names (default: the authors' 47 56 59 76 92 101 105 "
                        "119); none: every sequence is high-SNR")
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights of a checkpoint with EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--fast", choices=FAST_MODES, default="auto",
                   help="inference path: the fast one (nets.fast: BN folded, fused convs; same outputs "
                        "within ~1e-7) or the eager model; auto = fast on the CPU, eager elsewhere")
    p.add_argument("--workers", type=int, default=2, help="processes decoding sequences")
    p.add_argument("--per-sequence", action="store_true", help="also print one row per sequence")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.seqlen is not None and args.seqlen < 4:
        raise ConfigError(f"--seqlen must be >= 4, got {args.seqlen}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if not any(abs(args.threshold - t) <= 1e-12 for t in DEFAULT_THRESHOLDS):
        raise ConfigError(f"--threshold {args.threshold} is not one of the 27 scored thresholds "
                          f"{list(DEFAULT_THRESHOLDS)}")


def format_summary(results: Mapping, threshold: float) -> str:
    """The console table: Pd (%), Fa (x1e-5) and AUC of the low-SNR / high-SNR / all groups."""
    s = summary(results, threshold)
    titles = {"low_snr": "low SNR", "high_snr": "high SNR", "all": "all"}
    lines = [f"Pd / Fa at threshold {threshold:g}; Fa in units of 1e-5 (false-alarm pixels per pixel)",
             f"{'':<9}  {'Pd (%)':>7}  {'Fa (1e-5)':>9}  {'AUC':>6}  {'targets':>7}"]
    for key, title in titles.items():
        if key in s:
            g = s[key]
            pd = f"{100 * g['pd']:7.2f}" if math.isfinite(g["pd"]) else f"{'-':>7}"
            auc = f"{g['auc']:6.4f}" if math.isfinite(g["auc"]) else f"{'-':>6}"
            lines.append(f"{title:<9}  {pd}  {1e5 * g['fa']:9.3f}  {auc}  {g['targets']:7d}")
    lines.append(f"IoU (pooled, prob > {results.get('iou_threshold', 0.5):g}) = {s['iou']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """test_deeppro.py: evaluate a DeepPro(-Plus) checkpoint; returns {"results", "summary", "files"}."""
    from utils.plots import plot_roc
    from utils.report import format_pd_fa_table, write_eval_txt, write_json

    args = build_parser(prog).parse_args(argv)
    _check_args(args)
    device = resolve_device(args.device)
    model, info = load_deeppro_weights(args.weights, args.model, not args.no_ema, args.seqlen or 40)
    model.to(device).eval()
    args.seqlen = int(getattr(model, "seqlen", args.seqlen or 40))
    model = for_evaluation(model, args.fast)
    if args.stride is None:
        args.stride = default_stride(args.seqlen)
    clip_ranges(args.seqlen, args.seqlen, args.stride)  # validates the stride
    if args.data_root:
        root, mask_root = Path(args.data_root), (Path(args.mask_root) if args.mask_root else None)
    else:
        root, mask_root = ensure_synthetic(noise=args.dataset == "noise")
        if args.mask_root:
            mask_root = Path(args.mask_root)
    if args.out:
        out = Path(args.out)
    elif info["source"] == "ours":
        out = args.weights.parent / f"eval_{args.split}"
    else:
        out = Path(f"runs/test_{info['model']}_{args.weights.stem}")
    low = low_snr_names(args.low_snr)

    ds = NUDTTestSequences(root, args.split, mask_root, min_frames=args.seqlen)
    loader = DataLoader(ds, batch_size=None, num_workers=min(args.workers, len(ds)), collate_fn=nudt_collate)
    weights_text = f"{info['source']} {info['model']} weights{' (EMA)' if info['ema'] else ''}"
    print(f"testing {weights_text} from {args.weights} on {len(ds)} sequences of {root} ({args.split}) "
          f"on {device}; clips of {args.seqlen} frames, stride {args.stride}, {args.batch_size} per forward")
    t0 = time.time()
    scorer = evaluate_sequences(model, loader, low, args.seqlen, args.stride, args.batch_size,
                                args.iou_threshold, device, progress=args.progress, total=len(ds))
    seconds = time.time() - t0
    results = scorer.results(header=str(args))
    results["iou_threshold"] = args.iou_threshold
    summ = summary(results, args.threshold)

    out.mkdir(parents=True, exist_ok=True)
    write_eval_txt(out / "eval.txt", results)
    groups = [(t, results[k]) for k, t in (("low_snr", "low SNR"), ("high_snr", "high SNR"), ("all", "all"))
              if results.get(k)]
    curves = {t: (r["fa"], r["pd"]) for t, r in groups}
    aucs = {t: r["auc"] for t, r in groups}
    plot_roc(curves, out / "roc.png", title=f"{info['model']} Pd-Fa ({args.split})", auc=aucs)
    write_json(out / "results.json", {
        "weights": str(args.weights), "model": info["model"], "weights_source": info["source"],
        "ema": info["ema"], "data_root": str(root), "mask_root": str(mask_root) if mask_root else None,
        "split": args.split, "seqlen": args.seqlen, "stride": args.stride, "threshold": args.threshold,
        "iou_threshold": args.iou_threshold, "low_snr_sequences": [n for n in ds.names if n in set(low)],
        "frames": scorer.frames, "seconds": round(seconds, 3),
        "fps": round(scorer.frames / seconds, 2) if seconds > 0 else None, "workers": args.workers,
        **scorer.timing, "summary": summ,
        "thresholds": list(DEFAULT_THRESHOLDS),
        "pooled": {k: results[k] for k in ("low_snr", "high_snr", "all") if results.get(k)},
        "per_sequence": results["per_sequence"]})

    if args.per_sequence:
        print(format_pd_fa_table({"per_sequence": results["per_sequence"]}, args.threshold))
    print(format_summary(results, args.threshold))
    wait = 100 * scorer.timing.get("data_wait_fraction", 0.0)
    print(f"{scorer.frames} frames in {seconds:.1f} s ({scorer.frames / max(seconds, 1e-9):.1f} frames/s, "
          f"decoding included; {wait:.1f}% of the time waiting for frames, {args.workers} loader workers); "
          f"wrote {out / 'eval.txt'}, {out / 'results.json'}, {out / 'roc.png'}")
    return {"results": results, "summary": summ, "out": out,
            "files": {"eval": out / "eval.txt", "json": out / "results.json", "roc": out / "roc.png"}}


__all__ = [
    "LOW_SNR_SEQUENCES", "MODELS", "SequenceScorer", "build_parser", "clip_ranges", "default_stride",
    "ensure_synthetic", "evaluate_sequences", "format_summary", "load_deeppro_weights", "low_snr_names",
    "main", "predict_sequence", "stitch_max", "summary", "value_at",
]
