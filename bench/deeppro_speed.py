"""DeepPro / DeepPro-Plus on the CPU: our fast path against the authors' model code, side by side.

    python bench/deeppro_speed.py --authors DIR          # the authors' model files from DIR (never committed)
    python bench/deeppro_speed.py                        # against our eager model instead
    python bench/deeppro_speed.py --shape 1x1x40x256x256 --threads 1 --rounds 9 --json out.json
    python bench/deeppro_speed.py --authors DIR --threads 1 --clock cpu   # least disturbed by other jobs

`--authors DIR`: a checkout (or copy) of the authors' DeepPro code: `DIR` on `sys.path` must make
`networks.layers` importable, and `DeepPro.py` / `DeepPro-Plus.py` (their `detector` classes) are found
anywhere under `DIR`. Their model gets random weights and random BatchNorm statistics (seeded); ours loads
the very same state dict through `nets.load_official`, so the logits must agree (the largest difference is
printed). Both run under `torch.inference_mode()` in one process, alternating one call of each per round,
and the table gives each side's median and best over the rounds, the speed-up of the medians and the load
average before and after (the machine may be shared: compare only numbers of one run). `--clock cpu`
times this process's CPU time instead of the wall clock (with one thread: the work done, which other jobs
on a shared machine disturb least). `--malloc retain` makes glibc keep freed memory in the process (no
trimming of the heap, no fresh mappings for big blocks), for both sides alike: with the default allocator
much of the time of code that allocates big tensors per call goes into page faults, which is most of the
authors' advantage given away (the same can be had for any run with `GLIBC_TUNABLES=`
`glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_max=0`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import nets  # noqa: E402
from nets.fast import optimize_for_inference, randomize_batchnorm  # noqa: E402
from utils.config import Config, name_list, option, parse_config  # noqa: E402
from utils.errors import ConfigError  # noqa: E402

MODELS = {"deeppro": "DeepPro.py", "deeppro_plus": "DeepPro-Plus.py"}


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


def retain_freed_memory() -> None:
    """Make glibc keep freed memory for reuse: trim the heap only beyond 1 GiB free, never serve big blocks
    from fresh mappings (both make the next big allocation page-fault its memory in again)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not (mallopt(M_TRIM_THRESHOLD, 1 << 30) and mallopt(M_MMAP_MAX, 0)):
        raise ConfigError("--malloc retain needs glibc's mallopt")


def load_authors(folder: Path, name: str, seqlen: int) -> nn.Module:
    """The authors' `detector(1, seqlen, out_len=seqlen)` from the file for `name` under `folder`."""
    matches = sorted(folder.rglob(MODELS[name]), key=lambda p: len(p.parts))
    if not matches:
        raise ConfigError(f"{folder}: no {MODELS[name]} found under --authors")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"authors_{name}", matches[0])
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as err:
        raise ConfigError(f"{matches[0]}: cannot import the authors' model ({err})") from err
    if not hasattr(module, "detector"):
        raise ConfigError(f"{matches[0]}: has no `detector` class")
    return module.detector(1, seqlen=seqlen, out_len=seqlen)


def pair(name: str, seqlen: int, authors: Path | None) -> tuple:
    """`(reference label, reference logits function, our eager model)` with shared weights."""
    torch.manual_seed(0)
    if authors is None:
        ours = randomize_batchnorm(nets.build_model(name, seqlen=seqlen))
        return "eager", ours, ours
    theirs = randomize_batchnorm(load_authors(authors, name, seqlen))
    ours = nets.load_official(nets.build_model(name, seqlen=seqlen), theirs.state_dict()).eval()
    return "authors", lambda x: theirs(x)[1], ours


def timed(fn, x: torch.Tensor, clock=time.perf_counter) -> tuple[float, torch.Tensor]:
    t0 = clock()
    with torch.inference_mode():
        out = fn(x)
    return clock() - t0, out


def measure(name: str, shape: tuple[int, ...], authors: Path | None, rounds: int, tile_pixels: int,
            clock: str = "wall") -> dict:
    label, reference, ours = pair(name, shape[2], authors)
    fast = optimize_for_inference(ours, tile_pixels=tile_pixels)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    _, want = timed(reference, x)  # warm-up of both (allocations, oneDNN weight packing)
    _, got = timed(fast, x)
    times: dict[str, list[float]] = {label: [], "fast": []}
    load_before = os.getloadavg()[0]
    tick = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(rounds):  # alternate, so a burst of load hits both sides alike
        times[label].append(timed(reference, x, tick)[0])
        times["fast"].append(timed(fast, x, tick)[0])
    ref_s, fast_s = statistics.median(times[label]), statistics.median(times["fast"])
    return {"model": name, "input": "x".join(map(str, shape)), "reference": label,
            "threads": torch.get_num_threads(), "clock": clock, "rounds": rounds, "tile_pixels": tile_pixels,
            "reference_s": ref_s, "reference_best_s": min(times[label]), "fast_s": fast_s,
            "fast_best_s": min(times["fast"]), "speedup": ref_s / fast_s,
            "max_abs_diff": (want - got).abs().max().item(), "load_before": load_before,
            "load_after": os.getloadavg()[0]}


HEADER = (f"{'model':<13} {'input':<15} {'vs':<8} {'ref s':>7} {'(best)':>7} {'fast s':>7} {'(best)':>7} "
          f"{'x':>6} {'max|diff|':>9} {'load':>9}")


def row(r: dict) -> str:
    return (f"{r['model']:<13} {r['input']:<15} {r['reference']:<8} {r['reference_s']:>7.3f} "
            f"{r['reference_best_s']:>7.3f} {r['fast_s']:>7.3f} {r['fast_best_s']:>7.3f} "
            f"{r['speedup']:>5.1f}x "
            f"{r['max_abs_diff']:>9.1e} {r['load_before']:>4.1f}/{r['load_after']:<4.1f}")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 5 or shape[1] != 1 or min(shape) < 1:
        raise ConfigError(f"--shape must be Bx1xTxHxW (e.g. 1x1x40x128x128), got {text!r}")
    return shape


@dataclass
class SpeedConfig(Config):
    """DeepPro speed options"""

    authors: str = option("", "folder with the authors' DeepPro code (empty: compare with our eager model)")
    models: str = option(",".join(MODELS), f"comma-separated subset of {', '.join(MODELS)}")
    shape: str = option("1x1x40x128x128", "input B x 1 x T x H x W")
    threads: int = option(2, "CPU threads")
    rounds: int = option(7, "alternating timed calls per side (median reported)")
    tile_pixels: int = option(1024, "our DeepPro tile size (0: whole frames)")
    clock: str = option("wall", "wall time or this process's CPU time", choices=("wall", "cpu"))
    malloc: str = option("default", "glibc's defaults, or keep freed memory in the process (both sides)",
                         choices=("default", "retain"))
    json: str = option("", "write the records to this json file (a list; empty: none)")

    def model_list(self) -> list[str]:
        return name_list(self.models)

    def validate(self) -> None:
        super().validate()
        names = self.model_list()
        self.require(bool(names) and all(m in MODELS for m in names),
                     f"--models: choose from {', '.join(MODELS)}, got {self.models!r}")
        self.at_least(1, "threads", "rounds")
        self.at_least(0, "tile_pixels")
        parse_shape(self.shape)


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(SpeedConfig(), argv, __doc__.split("\n\n")[0], "bench/deeppro_speed.py")
    authors = Path(cfg.authors) if cfg.authors else None
    if authors is not None and not authors.is_dir():
        raise ConfigError(f"{authors}: --authors is not a folder")
    shape = parse_shape(cfg.shape)
    if cfg.malloc == "retain":
        retain_freed_memory()
    torch.set_num_threads(cfg.threads)
    print(f"torch {torch.__version__}, {cfg.threads} thread(s), {cfg.clock} clock, {cfg.rounds} "
          f"alternating rounds, malloc {cfg.malloc}, load average {os.getloadavg()[0]:.2f}")
    print(HEADER, flush=True)
    records = []
    for name in cfg.model_list():
        records.append(measure(name, shape, authors, cfg.rounds, cfg.tile_pixels, cfg.clock)
                       | {"malloc": cfg.malloc})
        print(row(records[-1]), flush=True)
    if cfg.json:
        from utils.checkpoint import atomic_write_text

        atomic_write_text(json.dumps(records, indent=1), Path(cfg.json))
    return records


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
