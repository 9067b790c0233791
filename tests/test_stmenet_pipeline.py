"""STMENet end to end through the real scripts: synthetic data -> train_ITSDT.main -> vid_map_coco_ITSDT.main.

One tiny synthetic ITSDT-style set and one short CPU training run are shared by the tests (module fixtures).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nets
from utils.checkpoint import FORMAT, FORMAT_VERSION
from utils.errors import CheckpointError, ConfigError
from utils.metrics import read_pr_txt
from utils.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train_ITSDT", "train_IRDST", "train_DAUB", "vid_map_coco_ITSDT", "vid_map_coco_IRDST",
           "vid_map_coco_DAUB")
SIZE = 64  # frames and network input (a multiple of 32)
FRAMES = 3  # clip length (the paper uses 5; fewer is faster and exercises num_frames)
# A short run that learns on CPU: higher lr than the authors' (their 6.25e-4 needs 100 long epochs).
TRAIN_ARGS = ["--input-size", str(SIZE), "--num-frames", str(FRAMES), "--epochs", "12", "--epoch-fraction", "1",
              "--lr", "0.02", "--warmup-epochs", "1", "--no-aug-epochs", "1", "--eval-period", "6",
              "--workers", "0", "--no-progress", "--no-tensorboard", "--no-plot", "--val-batch-size", "16"]
EVAL_ARGS = ["--workers", "0", "--no-progress", "--batch-size", "16"]


def _script(name: str):
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Tiny ITSDT-style set: 4 train / 1 val / 1 test sequences of 16 frames, 64x64, 1-2 targets.
    The training txt list is removed so that training must make it from the json."""
    root = tmp_path_factory.mktemp("stme") / "itsdt"
    generate(SynthConfig(format="coco", style="itsdt", out=str(root), seed=5, num_seqs=(4, 1, 1), frames=16,
                         size=(SIZE, SIZE), targets=(1, 2), snr_range=(8.0, 12.0)))
    (root / "coco_train_ITSDT.txt").unlink()
    return root


def _untrained_checkpoint(path: Path) -> Path:
    """A checkpoint in this toolbox's format holding freshly initialised weights (no EMA)."""
    kwargs = {"variant": "itsdt", "num_classes": 1, "num_frames": FRAMES}
    torch.manual_seed(0)
    model = nets.build_model("stmenet", **kwargs)
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION,
                "identity": {"name": "stmenet", "kwargs": kwargs}, "model": model.state_dict(), "ema": None,
                "epoch": 0, "config": {"input_size": SIZE}}, path)
    return path


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """(run folder, validation metrics of the untrained model, training result)."""
    out = tmp_path_factory.mktemp("run")
    ckpt = _untrained_checkpoint(out / "untrained.pt")
    before = _script("vid_map_coco_ITSDT").main(["--data-root", str(data_root), "--weights", str(ckpt),
                                                 "--test-json", "instances_val2017.json",
                                                 "--out", str(out / "eval_untrained"), *EVAL_ARGS])
    result = _script("train_ITSDT").main(["--data-root", str(data_root), "--out", str(out / "train"),
                                          *TRAIN_ARGS])
    return out, before, result


def test_help_of_every_script(capsys):
    for name in SCRIPTS:
        with pytest.raises(SystemExit) as exc:
            _script(name).main(["--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "--data-root" in text, name
        assert ("--weights" in text and "--results" in text) if name.startswith("vid_map") else "--select" in text
    # the real entry point as a user runs it
    run = subprocess.run([sys.executable, "vid_map_coco_DAUB.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "--protocol" in run.stdout


def test_bad_options_are_one_line_errors(tmp_path, data_root):
    with pytest.raises(ConfigError):
        _script("train_ITSDT").main(["--data-root", str(data_root), "--input-size", "100"])
    with pytest.raises(ConfigError, match="exactly one of --weights"):
        _script("vid_map_coco_ITSDT").main(["--data-root", str(data_root), "--out", str(tmp_path)])
    junk = tmp_path / "junk.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, junk)
    with pytest.raises(CheckpointError, match="neither a checkpoint of this toolbox nor the authors'"):
        _script("vid_map_coco_ITSDT").main(["--data-root", str(data_root), "--weights", str(junk),
                                            "--out", str(tmp_path), *EVAL_ARGS])
    run = subprocess.run([sys.executable, "vid_map_coco_ITSDT.py", "--data-root", str(tmp_path / "missing"),
                          "--results", "r.json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and len(run.stderr.splitlines()) == 1


def test_results_scoring_without_a_model(tmp_path, data_root):
    """--results scores a results json: the ground truth itself is perfect, shifted boxes score 0."""
    gt = json.loads((data_root / "instances_test2017.json").read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"]]
    shifted = [dict(d, bbox=[d["bbox"][0] + 40, d["bbox"][1] + 40, *d["bbox"][2:]]) for d in perfect]
    for dets, ap in ((perfect, 1.0), (shifted, 0.0)):
        path = tmp_path / "results.json"
        path.write_text(json.dumps(dets))
        out = tmp_path / f"eval_{ap}"
        m = _script("vid_map_coco_ITSDT").main(["--data-root", str(data_root), "--results", str(path),
                                                "--out", str(out)])
        assert m["ap50"] == pytest.approx(ap, abs=1e-9)
        assert m["protocol"] == "annotated" and len(m["stats"]) == 12
        assert read_pr_txt(out / "pr_curve.txt").mean() == pytest.approx(ap, abs=1e-9)
        assert json.loads((out / "metrics.json").read_text())["ap50"] == pytest.approx(ap)
        assert (out / "pr_curve.png").stat().st_size > 0


def test_training_learns(trained):
    """A short CPU run through train_ITSDT.main: validation AP50 far above the untrained model's."""
    out, before, result = trained
    run = out / "train"
    assert (run / "coco_train_ITSDT.txt").is_file()  # made from the json: the dataset had no txt list
    assert result.best is not None and result.last.is_file()
    rows = [r for r in result.history if "map50" in r]
    assert [r["epoch"] for r in rows] == [6, 12]
    assert all("val_loss" in r and r["val_loss"] > 0 for r in rows)
    best = max(r["map50"] for r in rows)
    assert before["ap50"] < 0.05
    assert best > before["ap50"] + 0.3, (before["ap50"], [r["map50"] for r in rows])
    assert rows[-1]["train_loss"] < result.history[0]["train_loss"]


def test_evaluating_checkpoints_and_official_weights(trained, data_root, capsys):
    """best.pt (EMA weights) and the same weights in the authors' key names give the same numbers."""
    out, _, result = trained
    ours = _script("vid_map_coco_ITSDT").main(["--data-root", str(data_root), "--weights", str(result.best),
                                               "--test-json", "instances_val2017.json",
                                               "--out", str(out / "eval_best"), *EVAL_ARGS])
    text = capsys.readouterr().out
    assert "protocol 'annotated'" in text and "non-standard" in text and "EMA" in text
    best_row = next(r for r in result.history if r["epoch"] == result.best_epoch)
    assert ours["ap50"] == pytest.approx(best_row["map50"], abs=1e-6)  # the evaluation seen in training
    for name in ("eval_results.json", "metrics.json", "pr_curve.txt", "pr_curve.png"):
        assert (out / "eval_best" / name).is_file()

    ckpt = torch.load(result.best, map_location="cpu", weights_only=True)
    model = nets.build_model("stmenet", variant="itsdt", num_frames=FRAMES)
    model.load_state_dict(ckpt["ema"]["weights"])
    official = out / "STME_official.pth"
    torch.save({f"module.{k}": v for k, v in model.to_official().items()}, official)
    got = _script("vid_map_coco_ITSDT").main(["--data-root", str(data_root), "--weights", str(official),
                                              "--test-json", "instances_val2017.json", "--input-size", str(SIZE),
                                              "--num-frames", str(FRAMES), "--out", str(out / "eval_official"),
                                              *EVAL_ARGS])
    assert "the authors' state dict" in capsys.readouterr().out
    assert got["ap50"] == pytest.approx(ours["ap50"], abs=1e-6)
    assert got["stats"] == pytest.approx(ours["stats"], abs=1e-6)
    # the IRDST variant refuses the ITSDT checkpoint with one clear line
    with pytest.raises(CheckpointError, match="variant"):
        _script("vid_map_coco_IRDST").main(["--data-root", str(data_root), "--weights", str(official),
                                            "--out", str(out / "eval_irdst"), *EVAL_ARGS])


def test_protocol_all_and_subset(trained, data_root, tmp_path):
    """--protocol all scores every image; --max-images scores an evenly spread subset."""
    _, _, result = trained
    every = _script("vid_map_coco_ITSDT").main(["--data-root", str(data_root), "--weights", str(result.best),
                                                "--protocol", "all", "--out", str(tmp_path / "all"),
                                                *EVAL_ARGS])
    n_images = len(json.loads((data_root / "instances_test2017.json").read_text())["images"])
    assert every["protocol"] == "all" and every["num_images"] == n_images
    few = _script("vid_map_coco_ITSDT").main(["--data-root", str(data_root), "--weights", str(result.best),
                                              "--max-images", "5", "--out", str(tmp_path / "few"), *EVAL_ARGS])
    assert few["num_images"] <= 5


def test_default_synthetic_root_is_generated_once(tmp_path, monkeypatch, capsys):
    """Without --data-root the scripts make data/synthetic/<style> once (here a tiny one, via the style)."""
    from utils import stmenet_eval

    monkeypatch.chdir(tmp_path)
    calls = []

    def tiny(cfg):
        calls.append(cfg.out)
        shutil.copytree(src, cfg.out, dirs_exist_ok=True)
        return json.loads((src / "synth_meta.json").read_text())

    src = tmp_path / "src"
    generate(SynthConfig(format="coco", style="daub", out=str(src), num_seqs=(1, 0, 1), frames=4, size=(32, 32)))
    monkeypatch.setattr("utils.synth.generate", tiny)
    for _ in range(2):
        root = stmenet_eval.resolve_root("", "daub")
    assert root == Path("data/synthetic/daub") and calls == [str(root)]
    assert "generating a small synthetic daub-style dataset" in capsys.readouterr().out
