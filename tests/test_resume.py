"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine_worker import main as worker_main

WORKER = Path(__file__).with_name("engine_worker.py")


def run_worker(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(WORKER), "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=WORKER.parents[1])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_run(a: dict, b: dict) -> None:
    for key in ("model",):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs"
    for k in a["ema"]["weights"]:
        assert torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]), f"ema.{k} differs"
    assert a["ema"]["updates"] == b["ema"]["updates"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])

    def no_time(rows):
        return [{k: v for k, v in r.items() if k != "time"} for r in rows]

    assert no_time(a["history"]) == no_time(b["history"])
    assert a["best"] == b["best"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    """The uninterrupted run, in this process (same code and thread count as the worker subprocesses)."""
    out = tmp_path_factory.mktemp("baseline")
    worker_main(["--out", str(out)])
    return load(out / "last.pt")


def test_resume_after_kill_in_epoch_2_is_bit_identical(tmp_path, baseline):
    out = tmp_path / "run"
    proc = run_worker(out, "--kill-at", "2:5")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = load(out / "last.pt")
    assert (ckpt["epoch"], ckpt["iter_in_epoch"]) == (1, 0)
    proc = run_worker(out, "--resume", "auto")
    assert proc.returncode == 0, proc.stderr
    assert "continuing at epoch 2" in proc.stdout
    assert_same_run(baseline, load(out / "last.pt"))


def test_resume_from_a_mid_epoch_checkpoint_with_workers_is_bit_identical(tmp_path, baseline):
    """Mid-epoch checkpoints (--save-every-iters) and 2 loader workers: item seeds do not depend on either."""
    out = tmp_path / "run"
    common = ["--workers", "2", "--save-every-iters", "4"]
    proc = run_worker(out, *common, "--kill-at", "2:11")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = load(out / "last.pt")
    assert (ckpt["epoch"], ckpt["iter_in_epoch"]) == (1, 8)
    proc = run_worker(out, *common, "--resume", str(out / "last.pt"))
    assert proc.returncode == 0, proc.stderr
    assert "continuing at epoch 2, iteration 9" in proc.stdout
    assert_same_run(baseline, load(out / "last.pt"))
    assert not list(out.glob(".*.tmp-*"))
