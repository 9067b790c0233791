"""The README's commands, run as copied (placeholders replaced by tiny synthetic data), so it cannot drift.

Every line of a ```bash block that starts with `python ` or `.venv/bin/python ` is one command
(backslash continuations joined, `# ...` comments dropped). Each runs in order in one temporary folder,
so later commands find what earlier ones wrote (runs/stmenet_itsdt/best.pt, ...), with the smallest
settings appended (the flags that script has). The demo's table must equal docs/demo_summary.json.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import demo
from tests.conftest import REFERENCE

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Appended to every README command of that script (argparse: a later flag wins over the README's).
SMALL = {
    "make_synthetic.py": "--frames 44 --size 32x40 --num-seqs 2,1,2",
    "train_ITSDT.py": "--epochs 1 --max-iters-per-epoch 1 --input-size 64 --val-max-images 2 --batch-size 2 "
    "--workers 0 --device cpu --no-progress --no-tensorboard",
    "vid_map_coco_ITSDT.py": "--workers 0 --device cpu --no-progress",
    "train_NUDT.py": "--epochs 1 --max-iters-per-epoch 1 --resize 0 --patch 16 --batch-size 1 "
    "--val-batch-size 1 --workers 0 --device cpu --no-progress --no-tensorboard",
    "test_deeppro.py": "--workers 0 --device cpu --no-progress",
    "predict.py": "--device cpu --no-progress --max-frames 6 --frames 44",
    "cross_metrics.py": "--device cpu --no-progress",
    "export_onnx.py": "--size 64",
    "compare.py": "--no-speed --models acm_yolox,deeppro",
}
SMALL["train_IRDST.py"] = SMALL["train_ITSDT.py"]
COCO_SMALL = "--frames 6 --size 64 --num-seqs 2,1,1"  # make_synthetic.py --format coco


def readme_commands(text: str | None = None) -> list[str]:
    """The command lines of the README's ```bash blocks (`python ...` / `.venv/bin/python ...`)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith(("python ", ".venv/bin/python ")):
                commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


def script_of(command: str) -> tuple[str, list[str]]:
    """(script path relative to the repo, its arguments) of one README command."""
    words = shlex.split(command)
    return words[1], words[2:]


def test_commands_are_found():
    commands = readme_commands()
    assert len(commands) >= 8
    assert readme_commands("```bash\npython a.py --x 1 \\\n    --y 2   # note\nls\n```\n") == [
        "python a.py --x 1 --y 2"
    ]


def _help_text(script: str, args: list[str]) -> str:
    sub = [args[0]] if script == "plot_run.py" and args else []  # its flags live under the subcommand
    res = subprocess.run(
        [sys.executable, script, *sub, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_every_readme_flag_is_in_the_scripts_help():
    helps: dict[tuple[str, str], str] = {}
    for command in readme_commands():
        script, args = script_of(command)
        key = (script, args[0] if script == "plot_run.py" else "")
        if key not in helps:
            helps[key] = _help_text(script, args)
        for flag in {a.split("=")[0] for a in args if a.startswith("--")}:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[key]), (
                f"README: `{command}` uses {flag}, which `{script} --help` does not list"
            )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with the README's placeholders made real: tiny datasets named like the real ones (no
    synth marker, so they are labelled as real data), a video, the authors' files where available."""
    from utils.data.roots import MARKER
    from utils.synth import SynthConfig, generate
    from utils.video import VideoWriter

    ws = tmp_path_factory.mktemp("readme")
    data = ws / "data_real"
    for style, name in (("itsdt", "ITSDT-15K"), ("irdst", "IRDST")):
        generate(SynthConfig(format="coco", style=style, out=str(data / name), seed=3, num_seqs=(2, 1, 1),
                             frames=6, size=(64, 64), targets=(1, 1)))
    nudt = dict(format="nudt", seed=4, num_seqs=(2, 1, 2), frames=44, size=(32, 40))
    generate(SynthConfig(out=str(data / "NUDT-MIRSDT"), **nudt))
    generate(SynthConfig(out=str(data / "NUDT-MIRSDT-Noise"), noise=True, write_masks=False, **nudt))
    for root in data.iterdir():
        (root / MARKER).unlink()
    # the demo's outputs that predict.py's first example reads
    demo_data = ws / "demo_out" / "data" / "itsdt_synth"
    generate(
        SynthConfig(
            format="coco",
            style="itsdt",
            out=str(demo_data),
            seed=5,
            num_seqs=(0, 0, 2),
            frames=6,
            size=(64, 64),
        )
    )
    test_json = demo_data / "instances_test2017.json"
    first = json.loads(test_json.read_text())["images"][0]["file_name"]
    with VideoWriter(ws / "flight.mp4", fps=5) as video:
        for i in range(6):
            video.write(np.full((32, 40, 3), 40 + 10 * i, np.uint8))
    official = REFERENCE / "deeppro"
    if official.is_dir():
        for name in (
            "ckpt_DeepPro_NUDT-MIRSDT_best_model.pth",
            "ckpt_DeepPro-Plus_NUDT-MIRSDT_best_model.pth",
            "eval_DeepPro_NUDT-MIRSDT.txt",
        ):
            (ws / name).symlink_to(official / name)
        (ws / "best_model.pth").symlink_to(official / "ckpt_DeepPro_NUDT-MIRSDT_best_model.pth")
        dtum = REFERENCE / "baselines" / "resunet_dtum" / "ResUNet_DTUM_para.pth"
        if dtum.is_file():
            (ws / dtum.name).symlink_to(dtum)
    if (REFERENCE / "published").is_dir():
        (ws / "published").symlink_to(REFERENCE / "published")
    return {
        "dir": ws,
        "data": data,
        "demo_seq": str(Path("demo_out/data/itsdt_synth") / Path(first).parent),
        "official": official.is_dir(),
    }


def _prepare(command: str, ws: dict) -> list[str]:
    """The command with placeholders replaced and the smallest settings appended."""
    command = command.replace("/path/to/", f"{ws['data']}/")
    command = re.sub(r"demo_out/data/itsdt_synth/images/\d+", ws["demo_seq"], command)
    command = command.replace("demo_out/runs/stmenet_itsdt/", "runs/stmenet_itsdt/")
    script, args = script_of(command)
    small = SMALL.get(script, "")
    if script == "make_synthetic.py" and "coco" in args:
        small = COCO_SMALL
    return [sys.executable, str(ROOT / script), *args, *shlex.split(small)]


@pytest.mark.slow
def test_readme_commands_run_as_copied(workspace):
    """Every README command, in order, exits 0 (official weights and published curves: where present)."""
    commands = readme_commands()
    ran, skipped, failed = 0, [], []
    for command in commands:
        needs_ref = any(w in command for w in ("best_model.pth", "eval_DeepPro_", "published/", "_para.pth"))
        if needs_ref and not workspace["official"]:
            skipped.append(command)
            continue
        res = subprocess.run(
            _prepare(command, workspace),
            cwd=workspace["dir"],
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(),
        )
        if res.returncode != 0:
            failed.append(f"{command}\n{res.stdout[-1500:]}\n{res.stderr[-2500:]}")
        ran += 1
    assert not failed, "README commands failed:\n" + "\n\n".join(failed)
    assert ran >= 8, f"only {ran} README commands ran; skipped (no ../shared/reference): {skipped}"
    ws = workspace["dir"]
    # the paths the README names as outputs exist
    for path in (
        "runs/stmenet_itsdt/best.pt",
        "runs/deeppro_plus_nudt-mirsdt/best.pt",
        "runs/deeppro_nudt-mirsdt-noise/best.pt",
        "runs/stmenet_irdst/best.pt",
        "runs/stmenet_itsdt/eval_ITSDT-15K_instances_test2017_best/metrics.json",
        "runs/deeppro_plus_nudt-mirsdt/eval_NUDT-MIRSDT_test_best/results.json",
        "runs/stmenet_itsdt/training_curves.png",
    ):
        assert (ws / path).is_file(), f"README names {path}, which its commands did not write"


def test_readme_demo_table_matches_the_committed_summary():
    summary = json.loads(demo.COMMITTED_SUMMARY.read_text())
    text = README.read_text(encoding="utf-8")
    block = text.split(demo.TABLE_START)[1].split(demo.TABLE_END)[0].strip()
    assert block == demo.readme_table(summary), (
        "README demo table != docs/demo_summary.json: run "
        "`python demo.py --update-readme docs/demo_summary.json`"
    )


def test_demo_summary_writer_gives_the_committed_keys(tmp_path):
    """build_summary on outputs in the layout the demo's scripts write has the committed summary's keys."""
    from utils.report import write_json

    run_dir = tmp_path / "runs" / "stmenet_itsdt"
    run_dir.mkdir(parents=True)
    (run_dir / "train_log.csv").write_text("epoch,lr,train_loss,map50\n1,0.003,5.0,0.01\n2,0.003,4.0,0.125\n")
    write_json(
        tmp_path / "eval_stmenet_itsdt" / "metrics.json", {"ap50": 0.25, "P": 0.5, "R": 0.4, "F1": 0.444}
    )
    group = {"pd": 0.75, "fa": 2.34e-4, "auc": 0.9123, "targets": 40, "tp": 30, "fa_pixels": 3}
    write_json(
        tmp_path / "eval_deeppro_plus_nudt" / "results.json",
        {"summary": {"all": group, "low_snr": group, "high_snr": group, "iou": 0.3, "threshold": 0.5}},
    )
    made = demo.build_summary(tmp_path, [{"command": "python x.py", "seconds": 1.0}], 61.0)
    committed = json.loads(demo.COMMITTED_SUMMARY.read_text())

    def keys(d, prefix=""):
        return {prefix + k for k in d} | {
            x for k, v in d.items() if isinstance(v, dict) for x in keys(v, k + ".")
        }

    assert keys(made) == keys(committed)
    assert made["stmenet"]["val_map50"] == [1.0, 12.5] and made["stmenet"]["test_ap50"] == 25.0
    assert made["deeppro_plus"]["all"] == {"pd": 75.0, "fa": 2.3e-4, "auc": 0.912, "targets": 40}
    table = demo.readme_table(made)
    assert "1.0 -> 12.5" in table and "Pd 75.0 % at Fa 2.3e-4" in table and "61 s" in table


def test_update_readme_rewrites_only_the_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{demo.TABLE_START}\nold\n{demo.TABLE_END}\nrest\n")
    shutil.copy(demo.COMMITTED_SUMMARY, tmp_path / "s.json")
    demo.update_readme(tmp_path / "s.json", readme, tmp_path / "copy.json")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert readme.read_text() == (
        f"intro\n{demo.TABLE_START}\n{demo.readme_table(summary)}\n{demo.TABLE_END}\nrest\n"
    )
    assert json.loads((tmp_path / "copy.json").read_text()) == summary
