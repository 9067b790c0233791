"""Inference speed: our eager reference models against the fast path (`nets.fast.optimize_for_inference`).

    python bench/speed.py                          # CPU: DeepPro(-Plus) 40x128x128 and 40x256x256,
                                                   #      STMENet (itsdt, irdst) 512x512 T=5, batch 1 and 16
    python bench/speed.py --device cuda --amp bf16 --cuda-graph    # adds DeepPro 40x480x720 (batch 1, 4)
    python bench/speed.py --quick                  # tiny sizes: a smoke test, no timing claims
    python bench/speed.py --json speed.json --markdown

For every model and input: latency (median of `--repeats` timed calls after `--warmup` calls), frames/s
(DeepPro predicts every frame of a clip: B * T frames per call; STMENet one key frame per clip: B), the
peak memory one call allocates (CUDA: allocator peak; CPU: the profiler's running total of allocations),
achieved GFLOP/s (2 x the multiply-accumulates of `utils.complexity.count_macs`, difference convolutions
included) next to a float32 matmul timed in the same run, and the largest absolute difference between the
two paths' outputs. Both paths run under `torch.inference_mode()` with random weights and random BatchNorm
statistics (speed does not depend on the values). The load average is recorded with every row: on a
shared machine compare rows of one run, and prefer `--threads 1 --clock cpu`, which other jobs disturb
least.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import nets  # noqa: E402
from nets.fast import optimize_for_inference, randomize_batchnorm  # noqa: E402
from utils.checkpoint import atomic_write_text  # noqa: E402
from utils.complexity import count_macs, count_params  # noqa: E402
from utils.config import Config, name_list, option, parse_config  # noqa: E402
from utils.errors import ConfigError  # noqa: E402

MODELS = ("deeppro", "deeppro_plus", "stmenet-itsdt", "stmenet-irdst")
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    model: str  # one of MODELS
    shape: tuple[int, ...]  # input [B, C, T, H, W]
    kwargs: dict = field(default_factory=dict)

    @property
    def frames(self) -> int:
        """Frames predicted per call."""
        b, _, t = self.shape[:3]
        return b * t if self.model.startswith("deeppro") else b

    @property
    def input(self) -> str:
        return "x".join(str(s) for s in self.shape)


def default_cases(device: str, quick: bool, models: list[str]) -> list[Case]:
    if quick:
        sizes = {"deeppro": [(1, 1, 40, 16, 24)], "stmenet": [(1, 3, 5, 32, 32), (2, 3, 5, 32, 32)]}
    elif device == "cuda":
        sizes = {"deeppro": [(1, 1, 40, 128, 128), (1, 1, 40, 256, 256), (1, 1, 40, 480, 720),
                             (4, 1, 40, 480, 720)],
                 "stmenet": [(1, 3, 5, 512, 512), (16, 3, 5, 512, 512)]}
    else:
        sizes = {"deeppro": [(1, 1, 40, 128, 128), (1, 1, 40, 256, 256)],
                 "stmenet": [(1, 3, 5, 512, 512), (16, 3, 5, 512, 512)]}
    cases = []
    for name in models:
        family = "deeppro" if name.startswith("deeppro") else "stmenet"
        kwargs = {"variant": name.split("-")[1]} if family == "stmenet" else {}
        cases += [Case(name, shape, kwargs) for shape in sizes[family]]
    return cases


def build(case: Case) -> torch.nn.Module:
    """The eager model with random weights and random BatchNorm statistics (CSAM gamma non-zero)."""
    name = "stmenet" if case.model.startswith("stmenet") else case.model
    return randomize_batchnorm(nets.build_model(name, **case.kwargs))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn, x: torch.Tensor, device: str) -> float:
    """Peak memory that one call `fn(x)` allocates through PyTorch, in MB: the CUDA allocator's peak, or on
    the CPU the running total of the allocations the profiler records (independent of how malloc reuses
    freed memory)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    events = [e["args"] for e in events if e.get("name") == "[memory]"]
    if not events:
        return 0.0
    base = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(e["Total Allocated"] - base for e in events) / 2**20


def time_calls(
    fn, x: torch.Tensor, device: str, warmup: int, repeats: int, clock=time.perf_counter
) -> tuple[float, torch.Tensor]:
    """Median seconds of `repeats` calls after `warmup` calls, and the last output."""
    out = None
    for _ in range(warmup):
        out = fn(x)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = clock()
        out = fn(x)
        _sync(device)
        times.append(clock() - t0)
    return statistics.median(times), out


def matmul_gflops(device: str, n: int, repeats: int = 10, clock=time.perf_counter) -> float:
    """Median GFLOP/s of an `n` x `n` float32 matmul."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds, _ = time_calls(lambda m: m @ b, a, device, warmup=2, repeats=repeats, clock=clock)
    return 2 * n**3 / seconds / 1e9


def measure(case: Case, args: SpeedConfig, reference_gflops: float) -> dict:
    device = args.device
    eager = build(case).to(device)
    fast = optimize_for_inference(eager, compile=args.compile, amp=AMP.get(args.amp),
                                  cuda_graph=args.cuda_graph)
    x = torch.randn(case.shape, generator=torch.Generator().manual_seed(1)).to(device)
    # Counting on the meta device avoids a real pass, but its BatchNorm is slow: small inputs run for real.
    macs = count_macs(eager, case.shape, device="cpu" if math.prod(case.shape) <= 2**20 else "meta")["total"]

    def run_eager(inp: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return eager(inp)

    record = {"model": case.model, "input": case.input, "batch": case.shape[0], "device": device,
              "threads": torch.get_num_threads() if device == "cpu" else None, "amp": args.amp or None,
              "compile": args.compile, "cuda_graph": args.cuda_graph, "clock": args.clock,
              "params": count_params(eager),
              "gmacs": macs / 1e9, "matmul_gflops": reference_gflops}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    outputs = {}
    for path, fn in (("eager", run_eager), ("fast", fast)):
        record[f"{path}_peak_mb"] = peak_memory_mb(fn, x, device)  # the first warm-up call
        seconds, outputs[path] = time_calls(fn, x, device, max(args.warmup - 1, 0), args.repeats, clock)
        record[f"{path}_ms"] = 1e3 * seconds
        record[f"{path}_fps"] = case.frames / seconds
        record[f"{path}_gflops"] = 2 * macs / seconds / 1e9
    record["speedup"] = record["eager_ms"] / record["fast_ms"]
    record["max_abs_diff"] = (outputs["eager"].float() - outputs["fast"].float()).abs().max().item()
    record["loadavg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return record


TABLE_HEADER = (f"{'model':<14} {'input':<17} {'dev':<4} {'eager ms':>9} {'fast ms':>9} {'x':>5} "
                f"{'fast fps':>9} {'GFLOP/s':>8} {'%mm':>4} {'peak MB e/f':>13} {'max|diff|':>9} {'load':>5}")


def table_row(r: dict) -> str:
    pct = 100 * r["fast_gflops"] / r["matmul_gflops"]
    peak = f"{r['eager_peak_mb']:,.0f}/{r['fast_peak_mb']:,.0f}"
    load = "-" if r["loadavg"] is None else f"{r['loadavg']:.1f}"
    return (f"{r['model']:<14} {r['input']:<17} {r['device']:<4} {r['eager_ms']:>9.1f} {r['fast_ms']:>9.1f} "
            f"{r['speedup']:>5.2f} {r['fast_fps']:>9.1f} {r['fast_gflops']:>8.1f} {pct:>4.0f} {peak:>13} "
            f"{r['max_abs_diff']:>9.1e} {load:>5}")


def print_markdown(records: list[dict]) -> None:
    print("| model | input B x C x T x H x W | params | GMACs | device | eager ms | fast ms | speed-up | "
          "fast frames/s |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for r in records:
        dev = r["device"]
        if r["threads"]:
            dev += f" ({r['threads']} thread{'s' if r['threads'] > 1 else ''}, {r['clock']} clock)"
        fps = f"{r['fast_fps']:.0f}" if r["fast_fps"] >= 10 else f"{r['fast_fps']:.2f}"
        print(f"| {r['model']} | {r['input']} | {r['params']:,} | {r['gmacs']:.1f} | {dev} | "
              f"{r['eager_ms']:.0f} | {r['fast_ms']:.0f} | {r['speedup']:.1f}x | {fps} |")


@dataclass
class SpeedConfig(Config):
    """Speed options"""

    quick: bool = option(False, "tiny inputs, one timed call: a smoke test")
    device: str = option("auto", "auto = cuda when available", choices=("auto", "cpu", "cuda"))
    models: str = option(",".join(MODELS), f"comma-separated subset of {', '.join(MODELS)}")
    threads: int = option(0, "CPU threads (0: torch's default)")
    repeats: int = option(5, "timed calls per path (median reported)")
    warmup: int = option(2, "untimed calls before timing (the first one also measures the peak memory)")
    clock: str = option("wall", "wall time, or this process's CPU time (CPU only; with --threads 1 it is "
                        "robust to other jobs on a shared machine)", choices=("wall", "cpu"))
    compile: bool = option(False, "torch.compile the fast path")
    amp: str = option("", "autocast dtype for the fast path (empty: float32)", choices=("", *AMP))
    cuda_graph: bool = option(False, "replay the fast path as a CUDA graph")
    json: str = option("", "write the records to this json file (a list; empty: none)")
    markdown: bool = option(False, "also print a README-style markdown table")

    def model_list(self) -> list[str]:
        return name_list(self.models)

    def validate(self) -> None:
        super().validate()
        unknown = [m for m in self.model_list() if m not in MODELS]
        self.require(not unknown and bool(self.model_list()),
                     f"--models: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(MODELS)}")
        self.at_least(0, "threads", "warmup")
        self.at_least(1, "repeats")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_config(SpeedConfig(), argv, __doc__.split("\n\n")[0], "bench/speed.py")
    models = args.model_list()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if args.clock == "cpu" and args.device != "cpu":
        raise ConfigError("--clock cpu measures CPU runs only; use the wall clock with --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.warmup = 1, 1
    torch.backends.cudnn.benchmark = True
    size = 512 if args.quick else 8192 if args.device == "cuda" else 2048
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    reference = matmul_gflops(args.device, size, repeats=2 if args.quick else 10, clock=clock)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.clock} "
          f"clock, float32 matmul {reference:.1f} GFLOP/s, load average {load:.2f}")
    print(TABLE_HEADER, flush=True)
    records = []
    for case in default_cases(args.device, args.quick, models):
        try:
            records.append(measure(case, args, reference))
        except torch.OutOfMemoryError:
            print(f"{case.model:<14} {case.input:<17} skipped: out of memory", flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            continue
        print(table_row(records[-1]), flush=True)
    if args.markdown:
        print()
        print_markdown(records)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(records, indent=1), Path(args.json))
    return records


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
