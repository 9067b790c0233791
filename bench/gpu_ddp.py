"""The torchrun section of bench/gpu_check.py: the train scripts under a 1-process launcher, resumed once."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from gpu_records import ROOT, RecordTimeout, Sizes, new_record, synthetic, train_shape  # noqa: E402

from utils.checkpoint import read_checkpoint  # noqa: E402
from utils.deeppro_train import AUTHORS_RECIPE  # noqa: E402
from utils.detector_train import DetectorConfig  # noqa: E402

# ----------------------------------------------------------------------------------------------------
# ddp: the training scripts under torchrun, resumed once
# ----------------------------------------------------------------------------------------------------


def script_args(script: str, sizes: Sizes, work: Path, device: torch.device) -> list[str]:
    common = ["--device", str(device), "--workers", str(sizes.workers), "--no-progress", "--no-tensorboard",
              "--no-plot"]
    if script == "train_ITSDT.py":
        root = synthetic(work, "coco", "itsdt", sizes.coco_data)
        return ["--data-root", str(root), "--input-size", str(sizes.stme_input), "--num-frames",
                str(sizes.stme_frames), "--batch-size", str(sizes.stme_batch), "--epoch-fraction", "1",
                "--val-max-images", "8", "--val-batch-size", str(sizes.stme_batch), *common]
    root = synthetic(work, "nudt", "nudt", sizes.nudt_data)
    return ["--data-root", str(root), "--model", "deeppro", "--seqlen", str(sizes.dp_seqlen), "--resize",
            str(sizes.dp_resize), "--patch", str(sizes.dp_patch), "--batch-size", str(sizes.dp_batch),
            "--sample-rate", "1", *common]


def run_torchrun(args: list[str], timeout: float, device: torch.device) -> tuple[int, str]:
    """Run one 1-process torchrun in its own process group; (exit status, stdout + stderr)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if device.type == "cpu":
        env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        raise RecordTimeout(f"torchrun did not finish within {timeout:.0f} s") from None
    return proc.returncode, out


def failure_line(output: str, rc: int) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return f"exit {rc}: " + (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def ddp_placeholder(model: str, variant: str, resume: bool, sizes: Sizes, device: torch.device) -> dict:
    """The fields of a ddp record known before the run (dtype: the scripts' AMP default on CUDA)."""
    recipe = DetectorConfig() if model == "stmenet" else AUTHORS_RECIPE
    dtype = ("bf16" if recipe.amp_dtype == "bfloat16" else "fp16") if recipe.amp and device.type == "cuda" \
        else "fp32"
    mode = "torchrun x1, resumed" if resume else "torchrun x1"
    return new_record("ddp", model, variant, dtype=dtype, mode=mode, **train_shape(model, sizes))


def ddp_record(script: str, model: str, variant: str, resume: bool, sizes: Sizes, work: Path,
               device: torch.device, deadline: float, state: dict) -> dict:
    rec = ddp_placeholder(model, variant, resume, sizes, device)
    out = work / "runs" / f"ddp_{Path(script).stem}"
    args = [script, "--out", str(out), *script_args(script, sizes, work, device),
            "--max-iters-per-epoch", "2"]
    if resume:
        if script not in state:
            raise RuntimeError("the first torchrun run of this script did not finish")
        args += ["--epochs", "3", "--resume", "auto"]
    else:
        args += ["--epochs", "2", "--exist-ok"]
    rc, output = run_torchrun(args, deadline - time.perf_counter(), device)
    if rc != 0:
        rec["error"] = failure_line(output, rc)
        return rec
    ckpt = read_checkpoint(out / "last.pt")
    history = ckpt.get("history") or []
    losses = [float(r["train_loss"]) for r in history]
    rec.update(steps=int(ckpt.get("global_step", 0)), loss_first=losses[0] if losses else None,
               loss_last=losses[-1] if losses else None, finite=all(math.isfinite(v) for v in losses),
               epochs_done=int(ckpt["epoch"]))
    errors = []
    if not resume:
        state[script] = history
        if rec["epochs_done"] != 2 or rec["steps"] != 4:
            errors.append(f"last.pt holds epoch {rec['epochs_done']}, step {rec['steps']}; expected 2, 4")
    else:
        marker = "continuing at epoch 3"
        rec["resumed_from_epoch"] = 2 if marker in output else None
        if marker not in output:
            errors.append(f"no '{marker}' in the log")
        if rec["epochs_done"] != 3 or rec["steps"] != 6 or len(history) != 3:
            errors.append(f"last.pt holds epoch {rec['epochs_done']}, step {rec['steps']}, {len(history)} "
                          "log rows; expected 3, 6, 3")
        if history[:2] != state[script]:
            errors.append("the log rows of the first run changed")
    if not rec["finite"]:
        errors.append("non-finite training loss")
    rec["ok"], rec["error"] = not errors, "; ".join(errors) or None
    return rec


def ddp_section(sizes: Sizes, work: Path, device: torch.device, quick: bool, deadline_of):
    """(record factory, placeholder record, skip reason or None) per torchrun run; `deadline_of()` is the
    perf_counter time the section ends (the runs' timeout)."""
    scripts = [("train_ITSDT.py", "stmenet", "itsdt"), ("train_NUDT.py", "deeppro", "")]
    state: dict = {}
    for script, model, variant in scripts:
        for resume in (False, True):
            skip = "--quick on the CPU runs train_NUDT.py only" if quick and device.type == "cpu" \
                and model == "stmenet" else None
            yield (lambda s=script, m=model, v=variant, r=resume: ddp_record(s, m, v, r, sizes, work, device,
                                                                            deadline_of(), state),
                   ddp_placeholder(model, variant, resume, sizes, device), skip)


