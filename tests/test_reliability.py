"""Runs and checkpoints that can be trusted: checkpoint integrity and write order, no non-finite weights on
disk, the run-folder lock, OS faults on real file systems (a full tmpfs, a read-only remount), real signals
sent to real training processes (DataLoader workers > 0) and their resumption, loader-worker errors, the
BatchNorm batch check, and the CUDA-path (float16 AMP) defects reproduced on the CPU."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.engine_worker import (
    CountingSGD,
    make_task,
    mse_loss,
    quick_config,
)
from tests.engine_worker import main as worker_main
from tests.test_resume import assert_same_run
from utils import checkpoint as ck
from utils import engine
from utils.cli import run_main
from utils.engine import NonFiniteLossError, Trainer, train
from utils.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("engine_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


_task = make_task


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------------------------------
# Checkpoint integrity and write order
# ----------------------------------------------------------------------------------------------------


def test_a_flipped_bit_in_a_checkpoint_is_refused_and_old_files_still_load(tmp_path, capsys):
    train(quick_config(tmp_path, epochs=1), _task())
    last = tmp_path / "run" / "last.pt"
    ckpt = _load(last)
    assert ckpt["digest"] == ck.payload_digest(ckpt)
    data = bytearray(last.read_bytes())
    at = data.find(ckpt["model"]["0.weight"].numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10  # one bit of one weight: torch itself loads the file without complaint
    last.write_bytes(bytes(data))
    assert not torch.equal(_load(last)["model"]["0.weight"], ckpt["model"]["0.weight"])
    with pytest.raises(CheckpointError, match="corrupt checkpoint .*digest") as err:
        ck.load_checkpoint(last)
    assert "\n" not in str(err.value) and str(last) in str(err.value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # resuming it: one line, exit 2
        run_main(worker_main, ["--out", str(tmp_path / "run"), "--resume", "auto"])
    assert exit_info.value.code == 2
    assert _last_line(capsys.readouterr().err).startswith(f"error: {last}: corrupt checkpoint")
    old = {k: v for k, v in ckpt.items() if k != "digest"}  # a file written before digests existed
    torch.save(old, tmp_path / "old.pt")
    old_weights = ck.load_checkpoint(tmp_path / "old.pt")["model"]["0.weight"]
    assert torch.equal(old_weights, ckpt["model"]["0.weight"])


class _Killed(BaseException):
    """Stands for the process dying at that point (nothing after it runs)."""


def test_a_kill_between_the_two_checkpoint_writes_keeps_the_best_weights(tmp_path, monkeypatch):
    def score(model, epoch):  # every epoch is better than the one before
        return {"score": float(epoch)}

    task = _task(evaluate=score, select_metric="score", select_mode="max")
    real, calls = engine.save_checkpoint, []

    def dies_at_the_second_write_of_epoch_2(obj, path):
        if obj["epoch"] == 2 and obj["iter_in_epoch"] == 0:
            calls.append(Path(path).name)
            if len(calls) == 2:
                raise _Killed
        return real(obj, path)

    monkeypatch.setattr(engine, "save_checkpoint", dies_at_the_second_write_of_epoch_2)
    with pytest.raises(_Killed):
        train(quick_config(tmp_path, epochs=3, ema=False), task)
    run = tmp_path / "run"
    best, last = _load(run / "best.pt"), _load(run / "last.pt")
    assert best["best"]["epoch"] >= last["best"]["epoch"]  # best.pt is never older than last.pt says
    monkeypatch.setattr(engine, "save_checkpoint", real)
    result = train(quick_config(tmp_path, epochs=3, ema=False, resume="auto"), task)
    assert result.best_epoch == 3 == _load(run / "best.pt")["epoch"]
    assert not (run / ck.LOCK_NAME).exists()


def test_a_resume_keeps_a_best_pt_newer_than_last_pt(tmp_path, monkeypatch, capsys):
    """Select on a score that peaks in epoch 2: a resume from the epoch-1 last.pt must not forget the
    epoch-2 best.pt written just before the stop (its record says epoch 1)."""
    def score(model, epoch):
        return {"score": [1.0, 5.0, 2.0][epoch]}

    task = _task(evaluate=score, select_metric="score", select_mode="max")
    real = engine.save_checkpoint

    def dies_before_last_of_epoch_2(obj, path):
        if obj["epoch"] == 2 and Path(path).name == "last.pt":
            raise _Killed
        return real(obj, path)

    monkeypatch.setattr(engine, "save_checkpoint", dies_before_last_of_epoch_2)
    with pytest.raises(_Killed):
        train(quick_config(tmp_path, epochs=3, ema=False), task)
    monkeypatch.setattr(engine, "save_checkpoint", real)
    run = tmp_path / "run"
    best_before = _load(run / "best.pt")
    result = train(quick_config(tmp_path, epochs=3, ema=False, resume="auto"), task)
    assert "newer than what last.pt records" in capsys.readouterr().out
    assert (result.best_epoch, result.best_value) == (2, 5.0)
    best_after = _load(run / "best.pt")
    assert best_after["epoch"] == 2
    assert all(torch.equal(best_before["model"][k], best_after["model"][k]) for k in best_before["model"])


# ----------------------------------------------------------------------------------------------------
# Nothing non-finite is saved
# ----------------------------------------------------------------------------------------------------


def _nan_gradient_at(calls: set[int]):
    """A loss that stays finite while its gradient is NaN on the given (1-based) calls."""
    count = [0]

    def loss_fn(out, y):
        count[0] += 1
        if count[0] in calls:
            out.register_hook(lambda g: g * float("nan"))
        return mse_loss(out, y)

    return loss_fn


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_gradients_with_a_finite_loss_are_skipped_and_never_saved(tmp_path):
    result = train(quick_config(tmp_path, epochs=2, skip_nonfinite=True),
                   _task(loss_fn=_nan_gradient_at({3})))
    assert [r["skipped_steps"] for r in result.history] == [1, 0]
    last = _load(result.last)
    assert _finite(last["model"]) and _finite(last["ema"]["weights"])
    assert last["ema"]["updates"] == 11  # 12 steps, one skipped


def test_nan_gradients_stop_the_run_with_one_line(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 2/6: non-finite gradients") as err:
        train(quick_config(tmp_path, epochs=3), _task(loss_fn=_nan_gradient_at({8})))
    assert "\n" not in str(err.value) and "--skip-nonfinite" in str(err.value)
    last = _load(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and _finite(last["model"])


def test_non_finite_weights_are_never_saved(tmp_path):
    class Overflowing(torch.optim.SGD):
        steps = 0

        def step(self, closure=None):
            out = super().step(closure)
            Overflowing.steps += 1
            if Overflowing.steps == 12:  # the last step of epoch 2 (6 steps per epoch)
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("inf"))
            return out

    task = _task(make_optimizer=lambda groups: Overflowing(groups, lr=0.05))
    with pytest.raises(NonFiniteLossError, match="epoch 2: the model weights hold NaN/inf") as err:
        train(quick_config(tmp_path, epochs=3), task)
    assert "\n" not in str(err.value) and "keeps the previous checkpoint" in str(err.value)
    last = _load(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and _finite(last["model"]) and _finite(last["ema"]["weights"])


# ----------------------------------------------------------------------------------------------------
# The run folder: earlier runs and a lock
# ----------------------------------------------------------------------------------------------------


def test_a_new_run_never_writes_over_an_earlier_run(tmp_path):
    run = tmp_path / "run"
    train(quick_config(tmp_path, epochs=1), _task())
    (run / "last.pt").unlink()  # only best.pt and the log are left: --resume auto finds nothing to resume
    with pytest.raises(ConfigError, match="best.pt exists .*no last.pt to resume: pass --exist-ok"):
        train(quick_config(tmp_path, epochs=1, resume="auto"), _task())
    other = tmp_path / "other"
    train(quick_config(tmp_path, epochs=1, out=str(other)), _task())
    with pytest.raises(ConfigError, match=r"holds another run's checkpoints \(best.pt, train_log.csv\)"):
        train(quick_config(tmp_path, epochs=2, resume=str(other / "last.pt")), _task())
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "train_log.csv"]
    result = train(quick_config(tmp_path, epochs=1, exist_ok=True), _task())  # starts the folder over
    assert result.best_epoch == 1 and _load(run / "best.pt")["history"] == _load(run / "last.pt")["history"]


def test_a_second_job_on_a_run_folder_is_refused_and_a_dead_jobs_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from utils.checkpoint import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run), str(ROOT)], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by PID {holder.pid} on host "
                                              rf"{re.escape(socket.gethostname())}") as err:
            train(quick_config(tmp_path, epochs=1), _task())
        assert "\n" not in str(err.value) and str(run) in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    assert (run / ck.LOCK_NAME).exists()  # a killed job leaves its lock file behind
    capsys.readouterr()
    result = train(quick_config(tmp_path, epochs=1), _task())
    assert f"taking over the lock of PID {holder.pid}" in capsys.readouterr().out
    assert result.last.exists() and not (run / ck.LOCK_NAME).exists()


# ----------------------------------------------------------------------------------------------------
# OS faults on real file systems
# ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "256k"):
    """A real small tmpfs at `path` (skips where this process may not mount: needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a real small file system")
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({proc.stderr.strip() or proc.returncode}); "
                    "these tests need root with CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(worker_main, argv)
    return exit_info.value.code, capsys.readouterr().err


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys):
    with _tmpfs(tmp_path / "disk") as disk:
        run = disk / "run"
        worker_main(["--out", str(run), "--epochs", "1"])
        before = (run / "last.pt").read_bytes()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(disk / "filler", "wb") as f:  # leave room for the lock and config.json, not a checkpoint
            f.write(b"\0" * max(free - 12 * 1024, 0))
        code, err = _cli(["--out", str(run), "--epochs", "2", "--resume", "auto"], capsys)
        assert code == 2, err
        line = _last_line(err)
        assert re.fullmatch(rf"error: {re.escape(str(run))}/(last|best)\.pt: could not write "
                            r"\(No space left on device\); the previous file is intact", line), err
        assert "Traceback" not in err
        assert (run / "last.pt").read_bytes() == before
        assert not list(run.glob(".*.tmp-*"))


def test_a_read_only_run_folder_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys):
    with _tmpfs(tmp_path / "disk") as disk:
        run = disk / "run"
        worker_main(["--out", str(run), "--epochs", "1"])
        before = (run / "last.pt").read_bytes()
        proc = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only ({proc.stderr.strip()})")
        code, err = _cli(["--out", str(run), "--epochs", "2", "--resume", "auto"], capsys)
        assert code == 2, err
        assert _last_line(err) == f"error: {run / ck.LOCK_NAME}: could not write (Read-only file system)"
        assert (run / "last.pt").read_bytes() == before


def test_run_main_maps_os_errors_with_a_path_to_one_line(capsys):
    def denied(argv):
        raise PermissionError(13, "Permission denied", "/data/run/last.pt")

    with pytest.raises(SystemExit) as exit_info:
        run_main(denied, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: /data/run/last.pt: Permission denied"

    def bug(argv):
        raise OSError("something without a path")

    with pytest.raises(OSError, match="without a path"):  # not a user's file: a bug keeps its traceback
        run_main(bug, [])


# ----------------------------------------------------------------------------------------------------
# Signals (real processes, real signals, loader workers) and loader-worker errors
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    """The uninterrupted worker run (3 epochs of 12 steps), in this process."""
    out = tmp_path_factory.mktemp("baseline")
    worker_main(["--out", str(out)])
    return _load(out / "last.pt")


def _resume_and_compare(out: Path, baseline: dict) -> None:
    """Resume in this process (item seeds do not depend on the number of loader workers) and compare."""
    worker_main(["--out", str(out), "--resume", "auto"])
    assert_same_run(baseline, _load(out / "last.pt"))


def _start(out: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(WORKER), "--out", str(out), "--workers", "2", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"the worker ended before printing {text!r}: {proc.stderr.read()}")


def test_sigterm_during_a_step_saves_that_step_and_resumes_bit_identically(tmp_path, baseline):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(out), "--workers", "2",
                           "--kill-at", "2:5:TERM"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=ENV)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert _last_line(proc.stderr) == (f"stopped by SIGTERM at epoch 2, iteration 5/12: saved "
                                       f"{out / 'last.pt'}; continue with --resume auto")
    assert "Traceback" not in proc.stderr
    ckpt = _load(out / "last.pt")
    assert (ckpt["epoch"], ckpt["iter_in_epoch"]) == (1, 5)
    _resume_and_compare(out, baseline)


def test_ctrl_c_while_the_loader_workers_start_stops_at_once(tmp_path, baseline):
    out = tmp_path / "run"
    proc = _start(out, "--item-delay", "1.0")  # the first batch takes seconds to arrive
    try:
        _wait_for(proc, "training tiny")
        os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C in a terminal: the workers get it too
        t0 = time.time()
        line = proc.stderr.readline().strip()
        elapsed = time.time() - t0  # to the message; the interpreter's own exit adds its usual second or two
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    rest = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGINT, line + rest
    assert line == (f"stopped by SIGINT at epoch 1, iteration 0/12: saved {out / 'last.pt'}; "
                    "continue with --resume auto"), line + rest
    assert elapsed < 3, f"took {elapsed:.1f} s to stop"
    assert not rest.strip()
    _resume_and_compare(out, baseline)


def test_sigterm_to_the_whole_job_at_any_moment_is_resumable(tmp_path, baseline):
    out = tmp_path / "run"
    proc = _start(out, "--item-delay", "0.01")
    try:
        _wait_for(proc, "training tiny")
        time.sleep(0.8)
        os.killpg(proc.pid, signal.SIGTERM)  # as a batch scheduler ends a job: every process at once
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert re.fullmatch(r"stopped by SIGTERM (at|after) epoch \d.*: saved .*last\.pt; continue with --resume "
                        "auto", _last_line(err)), err
    assert "Traceback" not in err
    _resume_and_compare(out, baseline)


def test_an_error_inside_a_loader_worker_reaches_the_user_as_its_own_line(tmp_path, capsys):
    code, err = _cli(["--out", str(tmp_path / "run"), "--workers", "2", "--bad-item", "5"], capsys)
    assert code == 2
    assert _last_line(err) == "error: items/5.png: cannot read image (truncated file)", err


# ----------------------------------------------------------------------------------------------------
# BatchNorm with one value per channel
# ----------------------------------------------------------------------------------------------------


def test_a_batch_of_one_through_batchnorm_is_refused_up_front(tmp_path):
    steps = []
    task = _task(make_optimizer=lambda groups: CountingSGD(groups, steps, lr=0.05))
    with pytest.raises(ConfigError, match=r"--batch-size 1 leaves one value per channel in BatchNorm layer "
                                          r"'1' \(input \[1, 16\]\)") as err:
        train(quick_config(tmp_path, batch_size=1), task)
    assert "\n" not in str(err.value)
    assert steps == [] and not (tmp_path / "run" / "last.pt").exists()
    model = train(quick_config(tmp_path, batch_size=2, epochs=1, exist_ok=True), task).model
    assert not model[1]._forward_pre_hooks  # the check leaves the user's modules as they were


# ----------------------------------------------------------------------------------------------------
# The CUDA path (float16 AMP with a GradScaler), forced onto the CPU
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def amp_on_cpu(monkeypatch):
    monkeypatch.setattr(engine, "amp_supported", lambda device: True)


def test_resuming_a_checkpoint_without_a_scaler_into_a_float16_run(tmp_path, amp_on_cpu, capsys):
    train(quick_config(tmp_path, epochs=1, amp=False), _task())  # written with a disabled GradScaler
    assert _load(tmp_path / "run" / "last.pt")["scaler"] == {}
    result = train(quick_config(tmp_path, epochs=2, amp=True, amp_dtype="float16", resume="auto"), _task())
    assert "written without a float16 loss scaler" in capsys.readouterr().out
    assert len(result.history) == 2 and _load(result.last)["scaler"]["scale"] > 0


def test_a_non_finite_first_step_under_float16_amp_is_skipped(tmp_path, amp_on_cpu):
    count = [0]

    def nan_first(out, y):
        count[0] += 1
        loss, parts = mse_loss(out, y)
        return (loss * float("nan"), parts) if count[0] == 1 else (loss, parts)

    result = train(quick_config(tmp_path, epochs=1, amp=True, skip_nonfinite=True), _task(loss_fn=nan_first))
    assert result.history[0]["skipped_steps"] == 1


def test_steps_the_grad_scaler_skips_leave_ema_and_statistics_alone(tmp_path, amp_on_cpu):
    seen = []  # (loss, loss scale when the step began)
    trainer = None

    def recording(out, y):
        loss, parts = mse_loss(out, y)
        seen.append((float(loss.detach()), trainer.scaler.get_scale()))
        return loss, parts

    trainer = Trainer(quick_config(tmp_path, epochs=1, amp=True, amp_dtype="float16"),
                      _task(loss_fn=recording, evaluate=None, select_metric="train_loss"))
    result = trainer.fit()
    scales = [s for _, s in seen] + [trainer.scaler.get_scale()]
    skipped = [i for i in range(len(seen)) if scales[i + 1] < scales[i]]
    assert skipped, "the float16 scaler skipped no step: the test needs an overflow"  # 65536 x loss overflows
    kept = [v for i, (v, _) in enumerate(seen) if i not in skipped]
    row = result.history[0]
    assert row["amp_skipped_steps"] == len(skipped)
    assert trainer.ema.updates == len(seen) - len(skipped)
    assert row["train_loss"] == pytest.approx(sum(kept) / len(kept), rel=1e-9)


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_set_from_the_config(tmp_path, tf32):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not tf32
        Trainer(quick_config(tmp_path, tf32=tf32), _task())._release()
        assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
