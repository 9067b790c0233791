"""bench/gpu_check.py: its CPU smoke run (--device cpu --quick); how it records failures and time limits."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import bench_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return bench_module("gpu_check")


def test_quick_cpu_run_records_every_section(tmp_path, gpu_check):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out),
                           "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| section | model |" in proc.stdout
    records = json.loads(out.read_text())
    assert {r["section"] for r in records} == set(gpu_check.SECTIONS)
    for r in records:
        assert set(gpu_check.FIELDS) <= set(r)
        assert r["ok"] or r["skipped"], r  # measured, or skipped with a reason
        assert not (r["ok"] and r["error"]), r
    measured = [r for r in records if r["ok"]]

    train = [r for r in measured if r["section"] == "train"]
    assert {(r["model"], r["variant"]) for r in train} == set(gpu_check.MODELS)
    for r in train:
        assert r["steps"] == 3 and r["finite"]  # --quick: 3 steps, the middle one timed
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"]) and r["loss_first"] > 0
        assert r["steps_per_s"] > 0 and 0 <= r["data_wait"] <= 1
    amp = [r for r in records if r["section"] == "train" and r["dtype"] != "fp32"]
    assert len(amp) == 2 * len(train) and all("CUDA only" in r["skipped"] for r in amp)

    infer = {(r["model"], r["variant"], r["mode"], r["dtype"]): r
             for r in measured if r["section"] == "infer"}
    for model, variant in gpu_check.MODELS:
        assert infer[(model, variant, "eager", "fp32")]["max_abs_diff"] == 0.0
        assert infer[(model, variant, "fast", "fp32")]["max_abs_diff"] < gpu_check.FP32_TOL
        low = infer[(model, variant, "fast", "bf16")]
        assert low["finite"] and 0 < low["max_abs_diff"] < 0.5
        assert all(r["frames_per_s"] > 0 for k, r in infer.items() if k[:2] == (model, variant))
    skipped = {r["mode"] for r in records if r["section"] == "infer" and r["skipped"]}
    assert skipped == {"cuda_graph", "compile"}  # CUDA-only, and compile not asked for

    ddp = [r for r in measured if r["section"] == "ddp"]
    first, resumed = (next(r for r in ddp if r["mode"] == m) for m in ("torchrun x1", "torchrun x1, resumed"))
    assert first["model"] == resumed["model"] == "deeppro"
    assert (first["epochs_done"], first["steps"]) == (2, 4)
    assert (resumed["resumed_from_epoch"], resumed["epochs_done"], resumed["steps"]) == (2, 3, 6)
    assert resumed["loss_first"] == first["loss_first"]  # the first run's log rows are kept
    assert not any(Path(tmp_path).glob("data"))  # nothing written outside --work-dir


def test_failures_are_recorded_and_time_limits_skip_the_rest(tmp_path, gpu_check, capsys):
    def boom():
        raise RuntimeError("out of luck\nsecond line")

    def slow():
        time.sleep(5)
        return gpu_check.new_record("infer", "slow", ok=True)

    def fine():
        return gpu_check.new_record("infer", "fine", ok=True)

    items = [(boom, gpu_check.new_record("infer", "boom"), None),
             (fine, gpu_check.new_record("infer", "skipped"), "not on this device"),
             (fine, gpu_check.new_record("infer", "fine"), None),
             (slow, gpu_check.new_record("infer", "slow"), None),
             (fine, gpu_check.new_record("infer", "late"), None)]
    records: list[dict] = []
    out = tmp_path / "r.json"
    t0 = time.perf_counter()
    gpu_check.run_section("infer", items, 1.0, records, str(out))
    assert time.perf_counter() - t0 < 4  # the slow record was interrupted
    by_model = {r["model"]: r for r in records}
    assert by_model["boom"]["error"] == "RuntimeError: out of luck" and not by_model["boom"]["ok"]
    assert by_model["skipped"]["skipped"] == "not on this device"
    assert by_model["fine"]["ok"] and by_model["fine"]["error"] is None
    assert "time limit" in by_model["slow"]["error"]
    assert "--timeout-per-section" in by_model["late"]["skipped"]
    assert json.loads(out.read_text()) == records
    table = gpu_check.markdown_table(records)
    assert "FAILED: RuntimeError: out of luck" in table and len(table.splitlines()) == 2 + len(records)


def test_bad_options_give_one_line(gpu_check, capsys):
    from utils.cli import run_main

    with pytest.raises(SystemExit) as exc:
        run_main(gpu_check.cli, ["--device", "cpu", "--sections", "train", "--timeout-per-section", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --timeout-per-section must be > 0, got 0.0"
    with pytest.raises(SystemExit) as exc:
        run_main(gpu_check.cli, ["--device", "tpu"])
    assert exc.value.code == 2
    assert "--device 'tpu'" in capsys.readouterr().err


def test_full_size_plan_has_the_papers_sizes_and_enough_steps(tmp_path, gpu_check, capsys):
    """What the GPU run will do, checked without running it: every train record gets the papers' batch and
    input at `--steps` full batches from its synthetic data, and the torchrun arguments parse."""
    import torch

    import train_ITSDT
    from utils.config import parse_config
    from utils.deeppro_train import AUTHORS_RECIPE

    sizes = gpu_check.sizes_for(parse_config(gpu_check.CheckConfig(), ["--device", "cpu"]))
    assert sizes.steps == 20 and sizes.dp_infer_hw == (480, 720)
    for model, variant in gpu_check.MODELS:
        cfg, task = gpu_check.train_task(model, variant, "fp16", sizes, tmp_path, "cpu")
        assert cfg.batch_size == 4 and cfg.amp and cfg.amp_dtype == "float16" and task.evaluate is None
        if model == "stmenet":
            assert (cfg.input_size, cfg.num_frames, cfg.variant) == (512, 5, variant)
        else:
            assert (cfg.seqlen, cfg.resize, cfg.patch, cfg.model) == (40, 256, 128, model)
        assert len(task.epoch_indices(0, cfg.seed)) >= sizes.steps * cfg.batch_size
    capsys.readouterr()
    cpu = torch.device("cpu")
    stme = parse_config(train_ITSDT.DEFAULTS, gpu_check.script_args("train_ITSDT.py", sizes, tmp_path, cpu))
    assert (stme.input_size, stme.num_frames, stme.batch_size) == (512, 5, 4)
    nudt = parse_config(AUTHORS_RECIPE, gpu_check.script_args("train_NUDT.py", sizes, tmp_path, cpu))
    assert (nudt.seqlen, nudt.resize, nudt.patch, nudt.batch_size) == (40, 256, 128, 4)
