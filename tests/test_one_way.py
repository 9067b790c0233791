"""One way to do each thing: one flag vocabulary (aliases, typos, sizes, model names, --help defaults), one
weights loader, one data-root resolver, no tool importing an evaluation module, claimed output folders."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import nets
from tests.conftest import bench_module
from utils.checkpoint import FORMAT
from utils.config import parse_config
from utils.data.roots import check_layout, ensure_synthetic, resolve_coco_root, resolve_nudt_roots
from utils.deeppro_train import AUTHORS_RECIPE
from utils.detector_eval import DetectorEvalConfig
from utils.errors import CheckpointError, ConfigError, DataError
from utils.report import claim_output_dir
from utils.synth import SynthConfig, generate
from utils.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
CONFIGURED = ("train_ITSDT", "train_NUDT", "vid_map_coco_DAUB", "test_deeppro", "predict", "cross_metrics",
              "export_onnx", "bench.speed", "bench.deeppro_speed", "bench.metrics", "bench.data",
              "bench.gpu_check")


def _help(script: str, capsys) -> str:
    module = bench_module(script[6:]) if script.startswith("bench.") else importlib.import_module(script)
    entry = getattr(module, "cli", None) or module.main
    with pytest.raises(SystemExit) as exc:
        entry(["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script", CONFIGURED)
def test_help_shows_every_default_once(script, capsys):
    """Every option of the dataclass-configured scripts says its default (or that it is required), once,
    and no help text points at files users do not have."""
    text = _help(script, capsys)
    entries = [e for e in text.split("\n  --")[1:] if not e.startswith("help")]
    assert len(entries) >= 3
    for entry in entries:
        flat = " ".join(entry.split())
        assert flat.count("(default:") + flat.count("(required)") == 1, flat
    assert "spec/" not in text


def test_deprecated_aliases_still_work_with_a_note(capsys):
    cfg = parse_config(AUTHORS_RECIPE, ["--val-fast", "off", "--eval-batch-size", "3", "--no-ema"])
    assert cfg.fast == "off" and cfg.val_batch_size == 3 and cfg.ema is False
    err = capsys.readouterr().err
    assert "--val-fast is deprecated; use --fast" in err and "--eval-batch-size is deprecated" in err
    cfg = parse_config(DetectorEvalConfig(), ["--conf-thres", "0.25", "--nms-thres", "0.5"])
    assert (cfg.conf_threshold, cfg.nms_threshold) == (0.25, 0.5)


def test_model_names_and_sizes(capsys):
    assert parse_config(AUTHORS_RECIPE, ["--model", "DeepPro-Plus"]).model == "deeppro_plus"
    assert parse_config(AUTHORS_RECIPE, ["--patch", "64x64", "--resize", "128"]).patch == 64
    assert parse_config(DetectorEvalConfig(), ["--input-size", "320x320"]).input_size == 320
    with pytest.raises(SystemExit) as exc:
        parse_config(DetectorEvalConfig(), ["--input-size", "320x256"], prog="vid_map_coco_ITSDT.py")
    assert exc.value.code == 2 and "square" in capsys.readouterr().err
    export = importlib.import_module("export_onnx")
    assert parse_config(export.ExportConfig(weights="w", out="o"), ["--size", "256x320"]).size == (256, 320)
    assert parse_config(export.ExportConfig(weights="w", out="o"), ["--size", "96"]).size == (96, 96)
    assert parse_config(export.ExportConfig(weights="w", out="o"), ["--size", "16", "20"]).size == (16, 20)
    assert "--size H W is deprecated" in capsys.readouterr().err


def test_a_typo_gets_the_closest_flag_in_one_line():
    run = subprocess.run([sys.executable, "train_NUDT.py", "--epoch", "3"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == ("train_NUDT.py: error: unknown option --epoch (did you mean --epochs?) "
                                  "(see train_NUDT.py --help)")


def test_no_tool_imports_an_evaluation_module():
    """Training, inference and the tools get roots, weights and post-processing from modules below both."""
    evaluation = {"utils.detector_eval", "utils.deeppro_eval"}
    users = [*ROOT.glob("utils/*train*.py"), ROOT / "utils" / "inference.py", ROOT / "utils" / "detection.py",
             ROOT / "utils" / "segmentation.py", ROOT / "utils" / "cross_eval.py", ROOT / "predict.py",
             ROOT / "cross_metrics.py", ROOT / "export_onnx.py"]
    for path in users:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not evaluation & set(names), f"{path.name} imports {names}"


def test_nets_import_only_torch():
    """Models import torch, the standard library and each other, nothing of utils/ or other packages
    (nets.load_official hands paths to utils.weights lazily, inside the function)."""
    allowed = {"torch", "nets", *sys.stdlib_module_names}
    for path in (ROOT / "nets").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert (mod or "").split(".")[0] in allowed, (path.name, mod)


def test_one_loader_reads_every_format(tmp_path):
    """Our checkpoints (EMA preferred), the authors' DeepPro dicts and STMENet state dicts, one reader."""
    plus = nets.build_model("deeppro_plus")
    official = tmp_path / "best_model.pth"
    torch.save({"model_state_dict": plus.state_dict(), "epoch": 4}, official)
    loaded = load_weights(official)
    assert (loaded.name, loaded.kind, loaded.epoch, loaded.task) == ("deeppro_plus", "official", 5, "segment")
    ours = tmp_path / "best.pt"
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in plus.state_dict().items()}
    torch.save({"format": FORMAT, "identity": {"name": "deeppro_plus", "kwargs": {"seqlen": 40}},
                "model": plus.state_dict(), "ema": {"weights": ema, "updates": 1}, "epoch": 3,
                "config": {"lr": 0.1}}, ours)
    got = load_weights(ours)
    assert got.kind == "ours" and got.ema and got.train_config == {"lr": 0.1}
    key = next(k for k, v in ema.items() if v.is_floating_point())
    assert torch.equal(got.model.state_dict()[key], ema[key])
    assert not load_weights(ours, prefer_ema=False).ema
    with pytest.raises(CheckpointError, match="not STMENet or another detector"):
        load_weights(ours, task="detect")
    fits = r"do not fit --model deeppro \(the keys look like deeppro_plus\)"
    with pytest.raises(CheckpointError, match=fits):
        load_weights(official, "deeppro")
    with pytest.raises(ConfigError, match="expected auto or one of"):
        load_weights(official, "no_such_model")


def _coco_root(tmp_path) -> Path:
    root = tmp_path / "coco"
    generate(SynthConfig(format="coco", style="daub", out=str(root), num_seqs=(1, 0, 1), frames=3,
                         size=(32, 32)))
    return root


def _nudt_root(tmp_path) -> Path:
    root = tmp_path / "nudt"
    generate(SynthConfig(format="nudt", out=str(root), num_seqs=(1, 0, 1), frames=4, size=(32, 32)))
    return root


def test_a_root_of_the_other_family_names_the_right_script(tmp_path):
    coco, nudt = _coco_root(tmp_path), _nudt_root(tmp_path)
    with pytest.raises(DataError, match="NUDT-MIRSDT .* dataset, not a COCO-json .* use train_NUDT.py"):
        resolve_coco_root(nudt, "daub")
    with pytest.raises(DataError, match="COCO-json .* not a NUDT-MIRSDT .* use train_ITSDT.py"):
        resolve_nudt_roots(coco)
    check_layout(coco, "coco")
    check_layout(nudt, "nudt")
    run = subprocess.run([sys.executable, "vid_map_coco_DAUB.py", "--data-root", str(nudt), "--results",
                          "r.json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "use train_NUDT.py" in run.stderr and len(run.stderr.splitlines()) == 1


def test_synthetic_default_is_written_by_rank_0_only(tmp_path, monkeypatch):
    """Under torchrun the other ranks wait for rank 0's finished set instead of writing their own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "1")
    folder = tmp_path / "data" / "synthetic" / "daub"
    done = threading.Event()

    def rank0():
        time.sleep(0.5)
        generate(SynthConfig(format="coco", style="daub", out=str(folder), num_seqs=(1, 0, 1), frames=2,
                             size=(32, 32)))
        done.set()

    worker = threading.Thread(target=rank0)
    worker.start()
    assert ensure_synthetic("daub", wait_s=60) == Path("data/synthetic/daub") and done.is_set()
    worker.join()
    monkeypatch.setenv("RANK", "0")
    calls = []
    monkeypatch.setattr("utils.synth.generate", lambda cfg: calls.append(cfg) or {"sequences": []})
    ensure_synthetic("daub")  # finished: reused, nothing generated
    assert calls == []


def test_an_output_folder_holds_one_evaluation(tmp_path):
    out = tmp_path / "eval"
    claim_output_dir(out, {"weights": "a.pt", "data": "x"})
    claim_output_dir(out, {"weights": "a.pt", "data": "x"})  # the same evaluation again: fine
    with pytest.raises(ConfigError, match="holds the results of another evaluation .*--overwrite"):
        claim_output_dir(out, {"weights": "b.pt", "data": "x"})
    claim_output_dir(out, {"weights": "b.pt", "data": "x"}, overwrite=True)
    assert json.loads((out / "evaluated.json").read_text())["weights"] == "b.pt"
