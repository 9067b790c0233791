"""The one prepared GPU check: AMP training, the inference paths and a torchrun run with resume.

    python bench/gpu_check.py --json gpu_check.json              # one CUDA GPU, under 8 minutes
    python bench/gpu_check.py --device cpu --quick --json x.json # the CI smoke test of the same code

Sections (`--sections`, each bounded by `--timeout-per-section` seconds):

- train: STMENet (itsdt, irdst) and DeepPro / DeepPro-Plus, `--steps` steps through the project's engine
  (`utils.engine.Trainer` on the scripts' `build_task`) at the papers' batch and input sizes (STMENet
  batch 4, 512x512, T = 5; DeepPro batch 4, 40-frame clips, 128x128 crops of 256x256-resized frames), on
  synthetic data written into the work folder, once with AMP bfloat16 and once with float16. The lr is
  the recipe's base lr held constant (no warm-up), validation is off. Reports the first and last step
  loss, finite, falling (mean of the last third of the steps below that of the first third), the peak
  CUDA memory, steps/s and the share of the wall time spent waiting for the next batch (both over the
  steps after the first). The engine runs AMP on CUDA only: on the CPU one float32 record per model is
  measured and the AMP records are skipped with that reason.
- infer: random weights and BatchNorm statistics (bench/speed.py's `build`), DeepPro at 40x480x720 and
  STMENet at 5x512x512, batch 1: the eager model in float32 (the reference), the fast path
  (`nets.fast.optimize_for_inference`) in float32 and bfloat16, with CUDA graphs, and with torch.compile.
  Reports frames/s (median of `--repeats` calls), the CUDA memory one call allocates and the max abs
  difference to the eager float32 output; float32 paths must agree within 1e-3 x max(1, max |reference|).
- ddp: `python -m torch.distributed.run --standalone --nproc_per_node 1` with train_ITSDT.py and
  train_NUDT.py for `--epochs 2 --max-iters-per-epoch 2`, then `--resume auto --epochs 3`; the resume
  record checks that the run continued at epoch 3 with the first run's log rows intact. One process
  means world size 1, where the engine creates no process group (no NCCL / gloo traffic).

`--quick`: tiny sizes, 2 steps, 1 timed call, and on the CPU only train_NUDT.py in the ddp section; CUDA
graphs (CUDA only) and torch.compile (unless `--compile on`) are skipped on the CPU with the reason.

Every measurement is one record {section, model, variant, dtype, mode, batch, size, steps, loss_first,
loss_last, finite, falling, peak_mem_mib, steps_per_s, frames_per_s, data_wait, max_abs_diff, ok, skipped,
error}; a failing record keeps its error (one line) and the run goes on. The json list is rewritten after
every record (a killed run keeps what it measured), a markdown table is printed at the end, and the exit
status is 1 when any record failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from gpu_ddp import ddp_section, script_args  # noqa: E402, F401 - script_args: part of this tool's interface
from gpu_records import (  # noqa: E402, F401 - FIELDS / train_shape: part of this tool's interface
    FIELDS,
    Sizes,
    free_memory,
    markdown_table,
    mib,
    new_record,
    one_line,
    status,
    sync,
    synthetic,
    time_limit,
    train_shape,
    write_json,
)
from speed import Case, build, peak_memory_mb, time_calls  # noqa: E402

from nets.fast import optimize_for_inference  # noqa: E402
from utils.config import Config, option, parse_config  # noqa: E402
from utils.deeppro_train import AUTHORS_RECIPE  # noqa: E402
from utils.detector_train import DetectorConfig  # noqa: E402
from utils.distributed import resolve_device  # noqa: E402
from utils.engine import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("train", "infer", "ddp")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ENGINE_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}
FP32_TOL = 1e-3  # the fast path's contract, relative to max(1, max |reference|)
MODELS = (("stmenet", "itsdt"), ("stmenet", "irdst"), ("deeppro", ""), ("deeppro_plus", ""))


@dataclass
class CheckConfig(Config):
    """GPU check options"""

    device: str = option("cuda", "cuda, cuda:N or cpu")
    quick: bool = option(False, "tiny sizes, 2 steps, 1 timed call: a smoke test of the code, not numbers")
    json: str = option("", "write the records to this json file (a list; empty: none)")
    sections: list[str] = option(list(SECTIONS), "sections to run", choices=SECTIONS)
    timeout_per_section: float = option(140.0, "seconds per section: a record still running then is "
                                        "interrupted, the ones after it are skipped")
    steps: int = option(0, "training steps per train record (0: 20, with --quick 3)")
    repeats: int = option(0, "timed calls per inference record, median reported (0: 10, with --quick 1)")
    warmup: int = option(3, "untimed calls before timing an inference record (CUDA graph capture and "
                         "compilation happen here)")
    workers: int = option(-1, "data-loading workers of the train and ddp records (-1: the training "
                          "scripts' default of 2, with --quick 0)")
    compile: str = option("auto", "torch.compile records: auto = on CUDA only", choices=("auto", "on", "off"))
    work_dir: str = option("", "folder for the synthetic data and run folders (empty: a temporary folder, "
                           "removed at the end)")

    def validate(self) -> None:
        super().validate()
        self.require(bool(self.sections), "--sections: name at least one of " + ", ".join(SECTIONS))
        self.require(self.timeout_per_section > 0, f"--timeout-per-section must be > 0, got "
                                                   f"{self.timeout_per_section}")
        self.at_least(0, "steps", "repeats", "warmup")
        self.at_least(-1, "workers")


def sizes_for(cfg: CheckConfig) -> Sizes:
    workers = cfg.workers if cfg.workers >= 0 else (0 if cfg.quick else DetectorConfig().workers)
    if cfg.quick:
        return Sizes(cfg.steps or 3, cfg.repeats or 1, workers, 2, 64, 5, 2, 8, 48, 32, (32, 48),
                     {"num_seqs": (1, 1, 1), "frames": 8, "size": (64, 64)},
                     {"num_seqs": (1, 1, 1), "frames": 12, "size": (48, 48)})
    # 3 training sequences of 40 frames = 120 clips (30 STMENet steps); NUDT: 2 x 56 clips of 60 frames
    return Sizes(cfg.steps or 20, cfg.repeats or 10, workers, 4, 512, 5, 4, AUTHORS_RECIPE.seqlen,
                 AUTHORS_RECIPE.resize, AUTHORS_RECIPE.patch, (480, 720),
                 {"num_seqs": (3, 1, 1)}, {"num_seqs": (2, 1, 1), "frames": 60})


# ----------------------------------------------------------------------------------------------------
# train: steps through the engine
# ----------------------------------------------------------------------------------------------------


class RecordingLoss(nn.Module):
    """The task's loss, recording every step's value (a module: the engine moves it to the device)."""

    def __init__(self, loss_fn):
        super().__init__()
        self.loss_fn = loss_fn
        self.values: list[float] = []

    def forward(self, outputs, targets):
        loss, parts = self.loss_fn(outputs, targets)
        self.values.append(float(loss.detach()))
        return loss, parts


class TimedBatches:
    """Iterates a DataLoader and records when each batch was asked for and when it arrived."""

    def __init__(self, loader, device: torch.device, asked: list[float], got: list[float]):
        self.loader, self.device, self.asked, self.got = loader, device, asked, got

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            self.asked.append(time.perf_counter())
            try:
                batch = next(it)
            except StopIteration:
                sync(self.device)
                self.asked[-1] = time.perf_counter()  # the end of the last step
                return
            self.got.append(time.perf_counter())
            yield batch


class TimedTrainer(Trainer):
    """The engine's Trainer with the wait for every batch timed (nothing else changes)."""

    def __init__(self, cfg, task):
        super().__init__(cfg, task)
        self.asked: list[float] = []
        self.got: list[float] = []

    def _loader(self, epoch: int, start: int):
        return TimedBatches(super()._loader(epoch, start), self.device, self.asked, self.got)


def train_task(model: str, variant: str, dtype: str, sizes: Sizes, work: Path, device: str):
    """(engine config, task) of one train record: the scripts' build_task on synthetic data."""
    run_dir = work / "runs" / f"train_{model}_{variant or 'x'}_{dtype}"
    common = {"out": str(run_dir), "exist_ok": True, "epochs": 1, "max_iters_per_epoch": sizes.steps,
              "schedule": "constant", "amp": dtype != "fp32", "amp_dtype": ENGINE_DTYPE.get(dtype, "float16"),
              "device": device, "workers": sizes.workers, "progress": False, "tensorboard": False,
              "plot": False}
    if model == "stmenet":
        from utils.detector_train import build_task

        root = synthetic(work, "coco", variant, sizes.coco_data)
        cfg = DetectorConfig(style=variant, variant=variant, data_root=str(root), input_size=sizes.stme_input,
                             num_frames=sizes.stme_frames, batch_size=sizes.stme_batch, epoch_fraction=1.0,
                             val_max_images=8, **common)
        task, _ = build_task(cfg, root)
        task = dataclasses.replace(task, evaluate=None, select_metric="train_loss", select_mode="min")
    else:
        from utils.deeppro_train import build_task

        root = synthetic(work, "nudt", "nudt", sizes.nudt_data)
        cfg = dataclasses.replace(AUTHORS_RECIPE, model=model, data_root=str(root), seqlen=sizes.dp_seqlen,
                                  resize=sizes.dp_resize, patch=sizes.dp_patch, batch_size=sizes.dp_batch,
                                  sample_rate=1.0, val_split="none", **common)
        task, _ = build_task(cfg, root, None, run_dir)
    return cfg, dataclasses.replace(task, loss_fn=RecordingLoss(task.loss_fn))


def train_record(model: str, variant: str, dtype: str, sizes: Sizes, work: Path,
                 device: torch.device) -> dict:
    rec = new_record("train", model, variant, dtype=dtype, mode="engine", **train_shape(model, sizes))
    free_memory(device)
    with contextlib.redirect_stdout(io.StringIO()):
        cfg, task = train_task(model, variant, dtype, sizes, work, str(device))
        trainer = TimedTrainer(cfg, task)
        trainer.fit()
    losses, asked, got = task.loss_fn.values, trainer.asked, trainer.got
    n = len(got)
    if n != sizes.steps or len(losses) != n:
        raise RuntimeError(f"ran {n} steps with {len(losses)} losses, expected {sizes.steps}")
    third = max(1, n // 3)
    finite = all(math.isfinite(v) for v in losses)
    rec.update(steps=n, loss_first=losses[0], loss_last=losses[-1], finite=finite,
               falling=finite and statistics.mean(losses[-third:]) < statistics.mean(losses[:third]),
               peak_mem_mib=mib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None)
    # Timed: the steps after the first (worker start-up, cuDNN autotuning). Batch k is asked for when step
    # k - 1 ends; the engine asks for no batch after the last one, so the last step's end is known only
    # when the loader was drained (then `asked` has n + 1 entries).
    last = n if len(asked) > n else n - 1
    if last >= 2:
        span = asked[last] - asked[1]
        waits = sum(g - a for a, g in zip(asked[1:last], got[1:last]))
        rec.update(steps_per_s=round((last - 1) / span, 3), data_wait=round(waits / span, 4))
    rec["ok"] = finite
    if not finite:
        rec["error"] = f"non-finite loss in {sum(not math.isfinite(v) for v in losses)} of {n} steps"
    del trainer, task
    return rec


def train_section(sizes: Sizes, work: Path, device: torch.device):
    """(record factory, placeholder record, skip reason or None) per train record."""
    dtypes = ("bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16", "fp16")
    for model, variant in MODELS:
        for dtype in dtypes:
            if device.type != "cuda" and dtype != "fp32":
                skip = "the engine runs AMP on CUDA only (Trainer.use_amp)"
            else:
                skip = None
            placeholder = new_record("train", model, variant, dtype=dtype, mode="engine",
                                     **train_shape(model, sizes))
            yield (lambda m=model, v=variant, d=dtype: train_record(m, v, d, sizes, work, device),
                   placeholder, skip)


# ----------------------------------------------------------------------------------------------------
# infer: the inference paths
# ----------------------------------------------------------------------------------------------------


def infer_case(model: str, variant: str, sizes: Sizes) -> Case:
    if model == "stmenet":
        return Case(f"stmenet-{variant}", (1, 3, sizes.stme_frames, sizes.stme_input, sizes.stme_input),
                    {"variant": variant})
    return Case(model, (1, 1, sizes.dp_seqlen, *sizes.dp_infer_hw), {"seqlen": sizes.dp_seqlen})


class Reference:
    """The eager float32 model of a case, its input and its output (built once per case)."""

    def __init__(self, case: Case, device: torch.device):
        self.model = build(case).to(device)
        self.x = torch.randn(case.shape, generator=torch.Generator().manual_seed(1)).to(device)
        with torch.inference_mode():
            self.out = self.model(self.x).float()

    def runner(self):
        def run(x):
            with torch.inference_mode():
                return self.model(x)
        return run


def infer_placeholder(case: Case, mode: str, dtype: str) -> dict:
    return new_record("infer", case.model.split("-")[0], case.kwargs.get("variant", ""), dtype=dtype,
                      mode=mode, batch=case.shape[0], size="x".join(map(str, case.shape[2:])))


def infer_record(case: Case, refs: dict, mode: str, dtype: str, sizes: Sizes, warmup: int,
                 device: torch.device) -> dict:
    rec = infer_placeholder(case, mode, dtype)
    free_memory(device)
    if case.model not in refs:
        refs[case.model] = Reference(case, device)
    ref = refs[case.model]
    fn = ref.runner() if mode == "eager" else optimize_for_inference(
        ref.model, amp=DTYPES[dtype], cuda_graph=mode == "cuda_graph", compile=mode == "compile")
    if device.type == "cuda":
        rec["peak_mem_mib"] = round(peak_memory_mb(fn, ref.x, "cuda"), 1)
    seconds, out = time_calls(fn, ref.x, device.type, warmup, sizes.repeats)
    out = out.float()
    diff = (out - ref.out).abs().max().item() if out.shape == ref.out.shape else float("inf")
    rec.update(frames_per_s=round(case.frames / seconds, 2), max_abs_diff=diff,
               finite=bool(torch.isfinite(out).all()))
    errors = []
    if out.shape != ref.out.shape:
        errors.append(f"output shape {tuple(out.shape)} differs from the reference {tuple(ref.out.shape)}")
    if not rec["finite"]:
        errors.append("non-finite outputs")
    tol = FP32_TOL * max(1.0, ref.out.abs().max().item())
    if dtype == "fp32" and diff > tol:
        tf32 = " (cuDNN TF32 on)" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else ""
        errors.append(f"max abs difference {diff:.3g} to the eager float32 output exceeds {tol:.3g}{tf32}")
    rec["ok"], rec["error"] = not errors, "; ".join(errors) or None
    return rec


def infer_section(sizes: Sizes, device: torch.device, compile_mode: str, warmup: int):
    """(record factory, placeholder record, skip reason or None) per inference record; every mode runs
    over all models before the next (torch.compile last), the eager references are built once."""
    cases = [infer_case(m, v, sizes) for m, v in MODELS]
    refs: dict = {}
    modes = [("eager", "fp32"), ("fast", "fp32"), ("fast", "bf16"), ("cuda_graph", "fp32"),
             ("cuda_graph", "bf16"), ("compile", "fp32")]  # compile last: it takes longest
    compiles = compile_mode == "on" or (compile_mode == "auto" and device.type == "cuda")
    for mode, dtype in modes:
        for case in cases:
            skip = None
            if mode == "cuda_graph" and device.type != "cuda":
                skip = "CUDA graphs need a CUDA device"
            elif mode == "compile" and not compiles:
                skip = "torch.compile is off (--compile auto compiles on CUDA only; --compile on asks for it)"
            yield (lambda c=case, m=mode, d=dtype: infer_record(c, refs, m, d, sizes, warmup, device),
                   infer_placeholder(case, mode, dtype), skip)
    refs.clear()


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------


def run_section(name: str, items, budget: float, records: list[dict], json_path: str,
                alarm: bool = True) -> None:
    """Run the section's records within `budget` seconds: errors are recorded, the rest skipped in time."""
    t0 = time.perf_counter()
    for factory, placeholder, skip in items:
        left = budget - (time.perf_counter() - t0)
        if skip is None and left <= 0:
            skip = f"the section's {budget:.0f} s (--timeout-per-section) were spent"
        start = time.perf_counter()
        if skip is not None:
            rec = {**placeholder, "skipped": skip}
        else:
            try:
                with time_limit(left) if alarm else contextlib.nullcontext():
                    rec = factory()
            except Exception as err:  # noqa: BLE001 - one failing record must not stop the check
                rec = {**placeholder, "ok": False, "error": one_line(err)}
            rec["wall_s"] = round(time.perf_counter() - start, 1)
        records.append(rec)
        write_json(records, json_path)
        model, variant, dtype, mode = (str(rec[k] or "") for k in ("model", "variant", "dtype", "mode"))
        print(f"{name:<5} {model:<12} {variant:<5} {dtype:<4} {mode:<20} {status(rec)}", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(CheckConfig(), argv, __doc__.split("\n\n")[0], "bench/gpu_check.py")
    device = resolve_device(cfg.device)
    sizes = sizes_for(cfg)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu check on {device} ({name}), torch {torch.__version__}, sections {', '.join(cfg.sections)}, "
          f"{cfg.timeout_per_section:.0f} s per section" + (", quick" if cfg.quick else ""), flush=True)
    records: list[dict] = []
    with contextlib.ExitStack() as stack:
        if cfg.work_dir:
            work = Path(cfg.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_")))
        budget = cfg.timeout_per_section
        for section in SECTIONS:
            if section not in cfg.sections:
                continue
            if section == "train":
                items = train_section(sizes, work, device)
            elif section == "infer":
                items = infer_section(sizes, device, cfg.compile, cfg.warmup)
            else:
                start = time.perf_counter()
                items = ddp_section(sizes, work, device, cfg.quick, lambda s=start: s + budget)
            run_section(section, items, budget, records, cfg.json, alarm=section != "ddp")
            free_memory(device)
    print()
    print(markdown_table(records))
    failed = [r for r in records if not r.get("skipped") and not r["ok"]]
    print(f"\n{len(records)} records: {sum(bool(r['ok']) for r in records)} ok, "
          f"{sum(bool(r.get('skipped')) for r in records)} skipped, {len(failed)} failed"
          + (f"; json: {cfg.json}" if cfg.json else ""))
    return records


def cli(argv: list[str] | None = None) -> None:
    """`main`, exiting with status 1 when a record failed."""
    records = main(argv)
    if any(not r.get("skipped") and not r["ok"] for r in records):
        raise SystemExit(1)


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(cli)
