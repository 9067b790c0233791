"""DDP on CPU: two gloo processes under torchrun (loopback only) train in lockstep; rank 0 alone writes.
Each rank's CUDA device, with mocked GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from utils.distributed import resolve_device
from utils.errors import ConfigError

WORKER = Path(__file__).with_name("engine_worker.py")


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with gloo is not available in this torch build")
def test_two_gloo_processes_end_identical_and_write_one_checkpoint(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), "--out", str(out), "--dump-dir", str(dump), "--epochs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=WORKER.parents[1], env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("training tiny") == 1  # only rank 0 logs
    assert "2 process(es), batch 4 x 2" in proc.stdout

    r0 = torch.load(dump / "rank0.pt", weights_only=True)
    r1 = torch.load(dump / "rank1.pt", weights_only=True)
    for part in ("model", "ema"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k} differs between ranks"

    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "train_log.csv"]
    last = torch.load(out / "last.pt", weights_only=True)
    assert all(torch.equal(last["model"][k], r0["model"][k]) for k in r0["model"])
    assert len(last["rank_states"]) == 2 and last["epoch"] == 2
    # 48 items over 2 ranks, batch 4 per rank: 6 steps per epoch
    assert last["global_step"] == 12
    assert len((out / "train_log.csv").read_text().strip().splitlines()) == 3


@pytest.mark.parametrize("visible, local_rank, spec, expected", [
    (1, 3, "cuda", 0),  # the launcher gave each rank its own CUDA_VISIBLE_DEVICES
    (1, 3, "cuda:0", 0),
    (4, 3, "cuda", 3),  # all GPUs visible to every rank: cuda:LOCAL_RANK
    (4, 3, "cuda:3", 3),
])
def test_resolve_device_under_ddp(monkeypatch, visible, local_rank, spec, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert resolve_device(spec, local_rank, distributed=True) == torch.device("cuda", expected)


def test_resolve_device_refuses_a_gpu_the_rank_cannot_see(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="only 2 CUDA device"):
        resolve_device("cuda", 3, distributed=True)
    with pytest.raises(ConfigError, match="each process uses cuda:LOCAL_RANK"):
        resolve_device("cuda:0", 1, distributed=True)
