"""The main job on the embedded default: synthetic data -> training -> evaluation, for both models.

    python demo.py --out demo_out            # what `make demo` runs (about 3 minutes on 2 CPU cores)
    python demo.py --out demo_out --skip-train   # data, statistics and previews only

Every step is one of the toolbox's own commands, printed before it runs, so the demo doubles as a
walk-through: copy a printed command, change `--data-root`, and it runs on a real dataset.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def run(cmd: list[str], log: list[dict]) -> None:
    """Run one toolbox command (a Python script of this repo), echoing it and timing it."""
    print(f"\n$ {shlex.join(['python', *cmd])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
    log.append({"command": shlex.join(["python", *cmd]), "seconds": round(time.perf_counter() - t0, 1)})


def data_steps(out: Path, log: list[dict]) -> tuple[Path, Path]:
    """Small synthetic ITSDT-style (COCO) and NUDT-MIRSDT-style datasets, statistics and previews."""
    itsdt, nudt = out / "data" / "itsdt_synth", out / "data" / "nudt_synth"
    if not (itsdt / "instances_test2017.json").is_file():
        run(["make_synthetic.py", "--format", "coco", "--style", "itsdt", "--out", str(itsdt),
             "--num-seqs", "16,2,2", "--frames", "8", "--size", "64", "--targets", "1-2",
             "--snr-range", "12", "20", "--seed", "5", "--preview"], log)
    if not (nudt / "test.txt").is_file():
        run(["make_synthetic.py", "--format", "nudt", "--out", str(nudt), "--size", "64x80",
             "--frames", "60", "--num-seqs", "6,1,2", "--seed", "1", "--preview"], log)
    from utils.stats import list_stats

    stats = list_stats(itsdt / "coco_train_ITSDT.txt")
    (out / "itsdt_synth_stats.json").write_text(json.dumps(stats, indent=1))
    print(f"statistics of the synthetic ITSDT-style train list -> {out / 'itsdt_synth_stats.json'}")
    print(f"previews -> {itsdt / 'preview.png'}, {nudt / 'preview.png'}")
    return itsdt, nudt


def first_test_folder(test_json: Path) -> str:
    """The frame folder (relative to the dataset root) of the first image of a COCO test json."""
    first = json.loads(test_json.read_text())["images"][0]["file_name"]
    return str(Path(first).parent)


def stmenet_steps(out: Path, itsdt: Path, log: list[dict]) -> None:
    """A short STMENet run (64x64 input; Adam and a short EMA ramp so a few epochs show learning),
    then COCO evaluation with the PR file and plot, and predictions drawn on one test sequence (a low
    score threshold: a few CPU epochs leave the scores low). The authors' recipe is the scripts' default."""
    run_dir = out / "runs" / "stmenet_itsdt"
    run(["train_ITSDT.py", "--data-root", str(itsdt), "--out", str(run_dir), "--input-size", "64",
         "--epochs", "8", "--epoch-fraction", "1", "--optimizer", "adam", "--lr", "0.003",
         "--ema-tau", "40", "--warmup-epochs", "1", "--no-aug-epochs", "1", "--eval-period", "2",
         "--workers", "0", "--resume", "auto"], log)
    run(["vid_map_coco_ITSDT.py", "--data-root", str(itsdt), "--weights", str(run_dir / "best.pt"),
         "--out", str(out / "eval_stmenet_itsdt"), "--workers", "0"], log)
    test_seq = first_test_folder(itsdt / "instances_test2017.json")
    run(["predict.py", "--weights", str(run_dir / "best.pt"), "--source", str(itsdt / test_seq),
         "--gt-json", str(itsdt / "instances_test2017.json"), "--out", str(out / "predict_stmenet"),
         "--conf-thres", "0.05", "--sheet-frames", "4", "--sheet-columns", "4", "--no-progress"], log)


def deeppro_steps(out: Path, nudt: Path, log: list[dict]) -> None:
    """A short DeepPro-Plus run (native size, 16x16 target-centred crops, raised lr), then the Pd/Fa
    protocol with eval.txt, json and ROC plot. The authors' recipe is the script's default."""
    run_dir = out / "runs" / "deeppro_nudt"
    run(["train_NUDT.py", "--data-root", str(nudt), "--out", str(run_dir), "--model", "deeppro_plus",
         "--resize", "0", "--patch", "16", "--center-prob", "1", "--lr", "0.05", "--epochs", "2",
         "--sample-rate", "0.18", "--workers", "0", "--resume", "auto"], log)
    run(["test_deeppro.py", "--data-root", str(nudt), "--weights", str(run_dir / "best.pt"),
         "--out", str(out / "eval_deeppro_nudt")], log)
    test_seq = (nudt / "test.txt").read_text().split()[0].split("/")[0]
    run(["predict.py", "--weights", str(run_dir / "best.pt"), "--source", str(nudt / test_seq),
         "--out", str(out / "predict_deeppro"), "--sheet-frames", "4", "--sheet-columns", "4",
         "--no-progress"], log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo_out", help="output folder (data, runs, evaluations)")
    parser.add_argument("--skip-train", action="store_true", help="only generate data, statistics, previews")
    parser.add_argument("--only", choices=("stmenet", "deeppro"), help="run only one model's part")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    t0 = time.perf_counter()
    itsdt, nudt = data_steps(out, log)
    if not args.skip_train:
        if args.only in (None, "stmenet"):
            stmenet_steps(out, itsdt, log)
        if args.only in (None, "deeppro"):
            deeppro_steps(out, nudt, log)
    (out / "demo_steps.json").write_text(json.dumps(log, indent=1))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; everything is under {out}")
    for step in log:
        print(f"  {step['seconds']:7.1f} s  {step['command']}")


if __name__ == "__main__":
    main()
