"""The training engine: schedules, parameter groups, EMA, config parsing, checkpoints and the loop."""

from __future__ import annotations

import csv
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.engine_worker import (
    CountingSGD,
    NoisyRegression,
    make_task,
    mse_loss,
    quick_config,
    tiny_model,
)
from utils import checkpoint as ck
from utils.config import TrainConfig, build_parser, option, parse_config
from utils.distributed import ShardedEpochSampler, sample_seed
from utils.ema import ModelEMA
from utils.engine import (
    LOG_CSV,
    NonFiniteLossError,
    epoch_fraction,
    epoch_permutation,
    epoch_weighted_draws,
    train,
)
from utils.errors import CheckpointError, ConfigError
from utils.optim import conv_decay_groups, schedule_from_config, step_lr, warm_cos_lr

# ----------------------------------------------------------------------------------------------------
# Schedules and optimizer groups
# ----------------------------------------------------------------------------------------------------


def test_warm_cos_matches_the_authors_formula():
    lr, min_lr = 6.25e-4, 6.25e-6
    f = warm_cos_lr(lr, epochs=100)  # W = 3, N = 5, start 0.1 lr
    assert f(0, 0) == pytest.approx(lr * 0.1)
    assert f(1, 0) == pytest.approx((lr - lr * 0.1) / 9 + lr * 0.1)
    assert f(3, 0) == pytest.approx(lr)
    assert f(4, 0) == pytest.approx(min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi / 92)))
    assert f(50, 0) == pytest.approx(min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * 47 / 92)))
    assert all(f(e, 0) == pytest.approx(min_lr) for e in range(95, 100))
    assert f(94, 123) == f(94, 0) > min_lr  # once per epoch: the iteration does not matter
    values = [f(e, 0) for e in range(3, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    short = warm_cos_lr(1.0, epochs=10)  # W = 1, N = 1 for short runs, as the authors
    assert short(1, 0) == pytest.approx(1.0) and short(9, 0) == pytest.approx(0.01)


def test_deeppro_step_schedule():
    f = step_lr(1e-3, step_size=10, gamma=0.7, min_lr=1e-5)
    expected = [1e-3, 1e-3, 7e-4, 7e-4, 4.9e-4, 3.43e-4]
    assert [f(e, 0) for e in (0, 9, 10, 19, 20, 31)] == pytest.approx(expected)
    assert f(200, 0) == pytest.approx(1e-5)
    cfg = TrainConfig(lr=1e-3, schedule="step", step_size=10, step_gamma=0.7, min_lr_ratio=0.01)
    assert schedule_from_config(cfg)(130, 0) == pytest.approx(1e-5)


def test_conv_decay_groups_exempt_norms_biases_and_scalars():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.conv3d = nn.Conv3d(4, 4, 1, bias=False)
            self.bn3d = nn.BatchNorm3d(4)
            self.gamma = nn.Parameter(torch.zeros(1))

    net = Net()
    no_decay, decay = conv_decay_groups(net, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.conv3d.weight)}
    assert len(no_decay["params"]) + len(decay["params"]) == len(list(net.parameters()))


# ----------------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------------


def test_ema_update_formula_and_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9999, tau=2000)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(4, 2))  # moves BN statistics and num_batches_tracked
    ema.update(model)
    d = 0.9999 * (1 - math.exp(-1 / 2000))
    assert torch.allclose(ema.ema[0].weight, d * w0 + (1 - d) * (w0 + 1.0))
    assert ema.ema[1].num_batches_tracked.item() == 1
    assert not any(p.requires_grad for p in ema.ema.parameters())
    for _ in range(20000):  # decay saturates at 0.9999: the average converges to a constant model
        ema.updates += 1
    ema.update(model)
    assert ema.decay_at(ema.updates) == pytest.approx(0.9999 * (1 - math.exp(-20001 / 2000)))


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class DemoConfig(TrainConfig):
    """Demo model options"""

    data_root: str = option("", "dataset folder")
    variant: str = option("itsdt", "architecture", choices=("itsdt", "irdst"))
    input_size: int | None = option(None, "input side")
    strides: tuple[int, ...] = option((8,), "head strides")


def test_parse_config_overrides_and_keeps_script_defaults():
    defaults = DemoConfig(epochs=100, lr=6.25e-4, data_root="/data/ITSDT")
    argv = ["--batch-size", "8", "--no-ema", "--variant", "irdst", "--betas", "0.8", "0.9",
            "--warmup-epochs", "2.5", "--input-size", "none", "--strides", "8", "16"]
    cfg = parse_config(defaults, argv)
    assert isinstance(cfg, DemoConfig)
    assert (cfg.epochs, cfg.lr, cfg.data_root) == (100, 6.25e-4, "/data/ITSDT")
    assert (cfg.batch_size, cfg.ema, cfg.variant, cfg.betas) == (8, False, "irdst", (0.8, 0.9))
    assert cfg.warmup_epochs == 2.5 and cfg.input_size is None and cfg.strides == (8, 16)
    assert parse_config(DemoConfig, []) == DemoConfig()
    with pytest.raises(SystemExit):
        parse_config(defaults, ["--variant", "daub"])
    with pytest.raises(ConfigError, match="--epochs"):
        parse_config(defaults, ["--epochs", "0"])
    text = build_parser(defaults, "Train on ITSDT").format_help()
    assert "--sync-bn, --no-sync-bn" in text and "dataset folder" in text and "Demo model options" in text
    assert "(default: 100)" in text


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------


def test_sharded_sampler_covers_the_epoch_identically_on_every_rank():
    fn = epoch_permutation(10)
    shards = [ShardedEpochSampler(fn, batch_size=2, seed=3, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(4)
    pairs = [s.shard() for s in shards]
    assert all(len(p) == 4 for p in pairs)  # 10 padded to 12
    assert {i for p in pairs for i, _, _ in p} == set(range(10))
    assert [pos for _, pos, _ in pairs[1]] == [1, 4, 7, 10]
    single = ShardedEpochSampler(fn, batch_size=2, seed=3)
    single.set_epoch(4)
    # an item's seed depends on its position in the epoch list, not on the number of ranks
    assert all(single.shard()[p] == pairs[p % 3][p // 3] for p in range(10))
    assert len({s for _, _, s in single.shard()}) == 10
    assert single.num_batches() == 5 and list(single)[1] == single.shard()[2:4]
    single.set_epoch(4, start_batch=3)
    assert len(single) == 2 and list(single)[0] == single.shard()[6:8]
    assert fn(0, 3) != fn(1, 3) and fn(1, 3) == fn(1, 3)
    assert len(epoch_fraction(100, 0.2)(0, 1)) == 20
    draws = epoch_weighted_draws([0.0, 1.0, 3.0], 1000)(0, 1)
    assert 0 not in draws and 650 < draws.count(2) < 850


# ----------------------------------------------------------------------------------------------------
# Checkpoint files
# ----------------------------------------------------------------------------------------------------


def test_atomic_save_keeps_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.atomic_save({"format": ck.FORMAT, "v": torch.ones(3)}, path)
    before = path.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(CheckpointError, match="No space left on device") as err:
        ck.atomic_save({"v": torch.zeros(3)}, path)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    ck.atomic_save({"format": ck.FORMAT, "format_version": 1, "model": {"w": torch.ones(2)}}, good)
    data = good.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "empty.pt": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "foreign.pt")
    torch.save({"obj": np.dtype}, tmp_path / "pickle.pt")
    expected = {"truncated.pt": "truncated or corrupt", "empty.pt": "empty",
                "foreign.pt": "not a training checkpoint", "pickle.pt": "cannot be loaded safely",
                "missing.pt": "not found"}
    for name, text in expected.items():
        with pytest.raises(CheckpointError, match=text) as err:
            ck.load_checkpoint(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    ckpt = ck.load_checkpoint(good)
    with pytest.raises(CheckpointError, match=r"is for tiny\(width=16\), this run builds other\(\)"):
        ck.check_identity({"identity": {"name": "tiny", "kwargs": {"width": 16}}}, {"name": "other"}, good)
    with pytest.raises(CheckpointError, match="missing"):
        ck.load_state_strict(nn.Linear(2, 2), ckpt["model"], good)


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    state = ck.capture_rng_state()
    ck.atomic_save({"rng": state}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), __import__("random").random())
    ck.restore_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.randn(), __import__("random").random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


_cfg = quick_config


_task = make_task


def test_training_learns_and_writes_logs_and_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, epochs=6, optimizer="adam", lr=0.02)
    result = train(cfg, _task())
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "last.pt", LOG_CSV]
    rows = read_rows(run / LOG_CSV)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_l1", "train_mse", "skipped_steps",
                             "val_loss", "time"]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0]
    val = [float(r["val_loss"]) for r in rows]
    assert result.best_value == pytest.approx(min(val), rel=1e-6)
    assert result.best_epoch == 1 + int(np.argmin(val))
    last, best = ck.load_checkpoint(result.last), ck.load_checkpoint(result.best)
    assert last["epoch"] == 6 and last["global_step"] == 6 * 6 and best["epoch"] == result.best_epoch
    assert "optimizer" in last and "optimizer" not in best
    assert last["identity"] == {"name": "tiny", "kwargs": {"width": 16}}
    # the EMA weights are evaluated and saved next to the raw ones
    model = tiny_model()
    ck.load_weights(model, result.last, identity={"name": "tiny", "kwargs": {"width": 16}})
    assert torch.equal(model[0].weight, result.ema_model[0].weight)
    assert not torch.equal(last["ema"]["weights"]["0.weight"], last["model"]["0.weight"])


def test_eval_period_and_selection_on_train_loss(tmp_path):
    calls = []

    def evaluate(model, epoch):
        calls.append((epoch, model.training))
        return {"score": float(epoch)}

    result = train(_cfg(tmp_path, epochs=5, eval_period=2, ema=False),
                   _task(evaluate=evaluate, select_metric="score", select_mode="max"))
    assert calls == [(1, False), (3, False), (4, False)]  # every 2nd epoch and the last, in eval mode
    assert result.best_epoch == 5 and result.best_value == 4.0
    rows = read_rows(tmp_path / "run" / LOG_CSV)
    assert [r["score"] for r in rows] == ["", "1", "", "3", "4"]
    with pytest.raises(ConfigError, match="needs an evaluator"):
        train(_cfg(tmp_path, exist_ok=True), _task(evaluate=None, select_metric="map50"))


def _nan_loss_at(calls: set[int]):
    count = [0]

    def loss_fn(out, y):
        count[0] += 1
        loss, parts = mse_loss(out, y)
        return (loss * float("nan"), parts) if count[0] in calls else (loss, parts)

    return loss_fn


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path):
    with pytest.raises(NonFiniteLossError) as err:
        train(_cfg(tmp_path), _task(loss_fn=_nan_loss_at({9})))
    msg = str(err.value)
    assert "epoch 2, iteration 3/6" in msg and "dataset items [" in msg and "--skip-nonfinite" in msg
    assert "\n" not in msg
    assert ck.load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1  # the good checkpoint stays


def test_skip_nonfinite_skips_the_update(tmp_path):
    steps = []
    task = _task(loss_fn=_nan_loss_at(set(range(1, 7))),  # every step of epoch 1 is NaN
                 make_optimizer=lambda groups: CountingSGD(groups, steps, lr=0.05, momentum=0.9))
    result = train(_cfg(tmp_path, epochs=2, skip_nonfinite=True, ema=False), task)
    rows = result.history
    assert rows[0]["skipped_steps"] == 6 and rows[1]["skipped_steps"] == 0
    assert math.isnan(rows[0]["train_loss"]) and math.isfinite(rows[1]["train_loss"])
    assert len(steps) == 6  # only epoch 2 stepped
    torch.manual_seed(1)
    untouched = tiny_model()
    assert not torch.equal(untouched[0].weight, result.model[0].weight)


def test_skipped_epoch_leaves_weights_and_optimizer_untouched(tmp_path):
    task = _task(loss_fn=_nan_loss_at(set(range(1, 100))), evaluate=None, select_metric="train_loss")
    result = train(_cfg(tmp_path, epochs=1, skip_nonfinite=True, ema=False), task)
    torch.manual_seed(1)
    fresh = tiny_model()
    after = result.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in fresh.state_dict().items())  # BN statistics too
    assert ck.load_checkpoint(result.last)["optimizer"]["state"] == {}


def test_resume_refuses_foreign_or_broken_checkpoints_and_keeps_them(tmp_path):
    train(_cfg(tmp_path, epochs=1), _task())
    last = tmp_path / "run" / "last.pt"
    with pytest.raises(ConfigError, match="--resume auto"):
        train(_cfg(tmp_path, epochs=2), _task())  # a fresh run would overwrite last.pt
    with pytest.raises(CheckpointError, match=r"is for tiny\(width=16\), this run builds tiny\(width=32\)"):
        train(_cfg(tmp_path, epochs=2, resume="auto"), _task(model_kwargs={"width": 32}))
    with pytest.raises(CheckpointError, match="weights only"):
        train(_cfg(tmp_path, epochs=2, resume=str(tmp_path / "run" / "best.pt")), _task())
    data = last.read_bytes()
    last.write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(_cfg(tmp_path, epochs=2, resume="auto"), _task())
    assert last.read_bytes() == data[:1000]  # nothing was written over it


def test_disk_full_during_training_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    train(_cfg(tmp_path, epochs=1), _task())
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()
    real_save = torch.save

    def full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(CheckpointError, match="previous file is intact"):
        train(_cfg(tmp_path, epochs=2, resume="auto"), _task())
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir() if p.name.startswith("."))  == []
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert ck.load_checkpoint(last)["epoch"] == 1


def test_plot_and_tensorboard_hooks(tmp_path, monkeypatch, capsys):
    plots, scalars, writers = [], [], []
    fake_plots = types.ModuleType("utils.plots")
    fake_plots.plot_training_curves = lambda csv_path, png_path: plots.append((Path(csv_path).name,
                                                                               Path(png_path).name))

    class Writer:
        def __init__(self, logdir, purge_step=None):
            writers.append((Path(logdir).name, purge_step))

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def flush(self):
            pass

        def close(self):
            writers.append("closed")

    fake_tb = types.ModuleType("torch.utils.tensorboard")
    fake_tb.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "utils.plots", fake_plots)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_tb)
    train(_cfg(tmp_path, epochs=2, plot=True, tensorboard=True), _task())
    assert plots == [(LOG_CSV, "training_curves.png")] * 2
    assert writers == [("tb", 1), "closed"]
    assert ("val_loss", 2) in scalars and ("train_loss", 1) in scalars and ("lr", 2) in scalars

    monkeypatch.setitem(sys.modules, "utils.plots", None)  # the plotting module is missing
    train(_cfg(tmp_path, epochs=3, plot=True, tensorboard=False, resume="auto"), _task())
    assert "warning: utils.plots.plot_training_curves is not available" in capsys.readouterr().out


def test_datasets_with_epoch_item_get_the_position_and_seed(tmp_path):
    class Positional(NoisyRegression):
        def epoch_item(self, index, position, seed):
            calls.append((index, position, seed))
            return self.x[index], self.y[index]

    calls: list = []
    ds = Positional()
    train(_cfg(tmp_path, epochs=2, ema=False),
          _task(train_dataset=ds, evaluate=None, select_metric="train_loss"))
    assert len(calls) == 2 * 48
    for epoch in range(2):
        got = calls[48 * epoch:48 * (epoch + 1)]
        assert [p for _, p, _ in got] == list(range(48))
        assert [i for i, _, _ in got] == epoch_permutation(48)(epoch, 1)
        assert all(s == sample_seed(1, epoch, p) for _, p, s in got)
