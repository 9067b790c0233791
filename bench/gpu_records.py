"""Records, time limits, synthetic data and the report table of bench/gpu_check.py."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from utils.checkpoint import atomic_write_text  # noqa: E402
from utils.synth import SynthConfig, generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FIELDS = ("section", "model", "variant", "dtype", "mode", "batch", "size", "steps", "loss_first",
          "loss_last", "finite", "falling", "peak_mem_mib", "steps_per_s", "frames_per_s", "data_wait",
          "max_abs_diff", "ok", "skipped", "error", "wall_s")


@dataclass(frozen=True)
class Sizes:
    """Batch and input sizes of every section (the papers' or --quick's)."""

    steps: int
    repeats: int
    workers: int
    stme_batch: int  # STMENet: clips per step, network input side, frames per clip
    stme_input: int
    stme_frames: int
    dp_batch: int  # DeepPro: clips per step, clip length, resized frame side, crop side
    dp_seqlen: int
    dp_resize: int
    dp_patch: int
    dp_infer_hw: tuple[int, int]  # DeepPro inference frame size
    coco_data: dict  # utils.synth.SynthConfig options of the synthetic sets
    nudt_data: dict


# ----------------------------------------------------------------------------------------------------
# Records, time limits
# ----------------------------------------------------------------------------------------------------


def new_record(section: str, model: str, variant: str = "", **values) -> dict:
    record = dict.fromkeys(FIELDS)
    record.update(section=section, model=model, variant=variant, ok=False)
    record.update(values)
    return record


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class RecordTimeout(Exception):
    """The section's time ran out while a record was running."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise RecordTimeout in the main thread after `seconds` (SIGALRM; no limit where it is missing)."""
    usable = hasattr(signal, "setitimer") and os.name == "posix"
    if not usable:
        yield
        return

    def fire(signum, frame):
        raise RecordTimeout(f"section time limit reached after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


# ----------------------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------------------


def synthetic(work: Path, fmt: str, style: str, options: dict) -> Path:
    """A synthetic dataset of `fmt` / `style` under `work` (written once, seed 0)."""
    root = work / "data" / (style if fmt == "coco" else "nudt")
    if not (root / "synth_meta.json").is_file():
        with contextlib.redirect_stdout(io.StringIO()):
            generate(SynthConfig(format=fmt, style=style, out=str(root), seed=0, **options))
    return root


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------


def _fmt(v, spec: str = ".4g") -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def status(r: dict) -> str:
    if r.get("skipped"):
        return f"skipped: {r['skipped']}"
    return "ok" if r["ok"] else f"FAILED: {r['error']}"


def markdown_table(records: list[dict]) -> str:
    columns = ("section", "model", "variant", "dtype", "mode", "batch", "size", "steps", "loss first -> last",
               "falling", "peak MiB", "steps/s", "frames/s", "data wait", "max abs diff", "s", "status")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        loss = "" if r["loss_first"] is None else f"{_fmt(r['loss_first'])} -> {_fmt(r['loss_last'])}"
        wait = "" if r["data_wait"] is None else f"{100 * r['data_wait']:.0f}%"
        cells = [*(_fmt(r[k]) for k in ("section", "model", "variant", "dtype", "mode")), _fmt(r["batch"]),
                 _fmt(r["size"]), _fmt(r["steps"]), loss, _fmt(r["falling"]), _fmt(r["peak_mem_mib"], ".0f"),
                 _fmt(r["steps_per_s"], ".3g"), _fmt(r["frames_per_s"], ".4g"), wait,
                 _fmt(r["max_abs_diff"], ".2e"), _fmt(r["wall_s"], ".0f"), status(r).replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(records: list[dict], path: str) -> None:
    if path:
        atomic_write_text(json.dumps(records, indent=1) + "\n", Path(path))


def train_shape(model: str, sizes: Sizes) -> dict:
    """The batch and size fields of a train record."""
    if model == "stmenet":
        side = sizes.stme_input
        return {"batch": sizes.stme_batch, "size": f"{sizes.stme_frames}x{side}x{side}"}
    crop, frame = sizes.dp_patch, sizes.dp_resize
    return {"batch": sizes.dp_batch, "size": f"{sizes.dp_seqlen}x{crop}x{crop} of {frame}x{frame}"}
