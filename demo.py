"""The main job on the embedded default: synthetic data -> training -> evaluation, for both models.

    python demo.py --out demo_out                 # what `make demo` runs
    python demo.py --out demo_out --skip-train    # data, statistics and previews only
    python demo.py --update-readme demo_out/summary.json   # README demo table + docs/demo_summary.json

Every step is one of the toolbox's own commands, printed twice before it runs: with the demo's short
settings (what runs here) and as the paper's recipe (the same command without the demo flags; point
`--data-root` at the real dataset). The demo keeps the real geometry (targets of a few pixels in 256 x 256
frames, STMENet at 256 input) and shortens only the training, so its scores are those of a few CPU
iterations, not of the paper's runs. The headline numbers go to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
README = ROOT / "README.md"
COMMITTED_SUMMARY = ROOT / "docs" / "demo_summary.json"
TABLE_START, TABLE_END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"

# The demo's short settings, step by step (appended to the real command; the scripts' defaults are the
# authors' recipe). STMENet: 256-px input on 256 x 256 frames, so targets keep their real few-pixel size.
ITSDT_DATA = "--num-seqs 4,1,1 --frames 8 --size 256 --targets 1-2 --snr-range 12 20 --seed 5 --preview"
NUDT_DATA = "--size 64x80 --frames 60 --num-seqs 6,1,2 --seed 1 --preview"
STMENET_TRAIN = (
    "--input-size 256 --epochs 1 --max-iters-per-epoch 1 --val-max-images 2 --workers 0 --resume auto "
    "--no-progress"
)
STMENET_EVAL = "--workers 0 --no-progress"
STMENET_PREDICT = "--sheet-frames 4 --sheet-columns 4 --no-progress"
DEEPPRO_TRAIN = (
    "--resize 0 --patch 16 --center-prob 1 --lr 0.05 --epochs 2 --sample-rate 0.18 --workers 0 "
    "--resume auto --no-progress"
)
DEEPPRO_EVAL = "--no-progress"
DEEPPRO_PREDICT = "--sheet-frames 4 --sheet-columns 4 --no-progress"


def run(cmd: list[str], demo_flags: str, log: list[dict], recipe: bool = True) -> None:
    """Run one toolbox script with the demo's short settings appended, after printing it and (for the
    training and evaluation steps, `recipe`) the paper's recipe: the same command without those flags."""
    flags = shlex.split(demo_flags)
    full = shlex.join(["python", *cmd, *flags])
    print(f"\n$ {full}\n  demo settings: {demo_flags}", flush=True)
    if recipe:
        print(
            f"  the paper's recipe: the same command without the demo flags: {shlex.join(['python', *cmd])}"
        )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd, *flags], cwd=ROOT, check=True)
    log.append({"command": full, "demo_flags": demo_flags, "seconds": round(time.perf_counter() - t0, 1)})


def data_steps(out: Path, log: list[dict]) -> tuple[Path, Path]:
    """Small synthetic ITSDT-style (COCO) and NUDT-MIRSDT-style datasets, statistics and previews."""
    itsdt, nudt = out / "data" / "itsdt_synth", out / "data" / "nudt_synth"
    if not (itsdt / "instances_test2017.json").is_file():
        run(
            ["make_synthetic.py", "--format", "coco", "--style", "itsdt", "--out", str(itsdt)],
            ITSDT_DATA,
            log,
            recipe=False,
        )
    if not (nudt / "test.txt").is_file():
        run(["make_synthetic.py", "--format", "nudt", "--out", str(nudt)], NUDT_DATA, log, recipe=False)
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
    """One STMENet iteration with the authors' optimiser settings (a CPU affords no more at 256 input), COCO
    evaluation (PR file and plot), predictions drawn on one test sequence."""
    run_dir = out / "runs" / "stmenet_itsdt"
    run(["train_ITSDT.py", "--data-root", str(itsdt), "--out", str(run_dir)], STMENET_TRAIN, log)
    run(
        [
            "vid_map_coco_ITSDT.py",
            "--data-root",
            str(itsdt),
            "--weights",
            str(run_dir / "best.pt"),
            "--out",
            str(out / "eval_stmenet_itsdt"),
        ],
        STMENET_EVAL,
        log,
    )
    test_seq = first_test_folder(itsdt / "instances_test2017.json")
    run(
        [
            "predict.py",
            "--weights",
            str(run_dir / "best.pt"),
            "--source",
            str(itsdt / test_seq),
            "--gt-json",
            str(itsdt / "instances_test2017.json"),
            "--out",
            str(out / "predict_stmenet"),
        ],
        STMENET_PREDICT,
        log,
    )


def deeppro_steps(out: Path, nudt: Path, log: list[dict]) -> None:
    """A short DeepPro-Plus run (native size, 16x16 target-centred crops, raised lr), then the Pd/Fa
    protocol with eval.txt, json and ROC plot, and predictions drawn on one test sequence."""
    run_dir = out / "runs" / "deeppro_plus_nudt"
    run(
        ["train_NUDT.py", "--data-root", str(nudt), "--out", str(run_dir), "--model", "deeppro_plus"],
        DEEPPRO_TRAIN,
        log,
    )
    run(
        [
            "test_deeppro.py",
            "--data-root",
            str(nudt),
            "--weights",
            str(run_dir / "best.pt"),
            "--out",
            str(out / "eval_deeppro_plus_nudt"),
        ],
        DEEPPRO_EVAL,
        log,
    )
    test_seq = (nudt / "test.txt").read_text().split()[0].split("/")[0]
    run(
        [
            "predict.py",
            "--weights",
            str(run_dir / "best.pt"),
            "--source",
            str(nudt / test_seq),
            "--out",
            str(out / "predict_deeppro"),
        ],
        DEEPPRO_PREDICT,
        log,
    )


def _val_history(train_log: Path, column: str) -> list[float]:
    """One column of a run's train_log.csv (the epochs that validated), as floats."""
    with train_log.open(newline="") as f:
        return [
            round(float(row[column]), 4) for row in csv.DictReader(f) if row.get(column) not in (None, "")
        ]


def build_summary(out: Path, log: list[dict], seconds: float) -> dict:
    """The demo's headline numbers from the files its steps wrote (parts that did not run are left out)."""
    import torch

    summary: dict = {
        "seconds": round(seconds),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "steps": len(log),
    }
    metrics_json = out / "eval_stmenet_itsdt" / "metrics.json"
    if metrics_json.is_file():
        m = json.loads(metrics_json.read_text())
        summary["stmenet"] = {
            "settings": STMENET_TRAIN,
            "val_map50": [
                round(100 * v, 1)
                for v in _val_history(out / "runs" / "stmenet_itsdt" / "train_log.csv", "map50")
            ],
            "test_ap50": round(100 * m["ap50"], 1),
            "test_P": round(100 * m["P"], 1),
            "test_R": round(100 * m["R"], 1),
            "test_F1": round(100 * m["F1"], 1),
        }
    results_json = out / "eval_deeppro_plus_nudt" / "results.json"
    if results_json.is_file():
        s = json.loads(results_json.read_text())["summary"]
        summary["deeppro_plus"] = {
            "settings": DEEPPRO_TRAIN,
            "threshold": s["threshold"],
            **{
                group: {
                    "pd": round(100 * s[group]["pd"], 1),
                    "fa": float(f"{s[group]['fa']:.2g}"),
                    "auc": round(s[group]["auc"], 3),
                    "targets": s[group]["targets"],
                }
                for group in ("all", "low_snr", "high_snr")
                if group in s
            },
        }
    return summary


def _sci(x: float) -> str:
    """2.3e-04 -> '2.3e-4'."""
    mant, exp = f"{x:.1e}".split("e")
    return f"{mant}e{int(exp)}"


def readme_table(summary: dict) -> str:
    """The README's table of the demo's headline numbers (generated; tests/test_readme.py checks it)."""
    st, dp = summary["stmenet"], summary["deeppro_plus"]
    rows = [
        "| step | headline number (demo run) |",
        "|---|---|",
        f"| STMENet validation mAP50 per epoch | {' -> '.join(f'{v:.1f}' for v in st['val_map50'])} |",
        f"| STMENet test (`vid_map_coco_ITSDT.py`) | AP50 {st['test_ap50']:.1f}, P {st['test_P']:.1f}, "
        f"R {st['test_R']:.1f}, F1 {st['test_F1']:.1f} |",
    ]
    for group, name in (("all", "all"), ("low_snr", "low SNR"), ("high_snr", "high SNR")):
        if group in dp:
            g = dp[group]
            rows.append(
                f"| DeepPro-Plus test, {name} (`test_deeppro.py`, threshold {dp['threshold']:g}) | "
                f"Pd {g['pd']:.1f} % at Fa {_sci(g['fa'])}, AUC {g['auc']:.3f} ({g['targets']} targets) |"
            )
    rows.append(f"| whole demo | {summary['seconds']} s, torch {summary['torch']} |")
    return "\n".join(rows)


def update_readme(summary_path: Path, readme: Path = README, committed: Path = COMMITTED_SUMMARY) -> None:
    """Write the demo table of `summary_path` between the README's markers; keep a copy in docs/."""
    from utils.checkpoint import atomic_write_text

    summary = json.loads(Path(summary_path).read_text())
    text = readme.read_text()
    block = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not block.search(text):
        raise SystemExit(f"error: {readme}: no {TABLE_START} ... {TABLE_END} block")
    atomic_write_text(
        block.sub(lambda _: f"{TABLE_START}\n{readme_table(summary)}\n{TABLE_END}", text), readme
    )
    atomic_write_text(json.dumps(summary, indent=1) + "\n", committed)
    print(f"wrote the demo table into {readme} and {committed}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo_out", help="output folder (data, runs, evaluations)")
    parser.add_argument("--skip-train", action="store_true", help="only generate data, statistics, previews")
    parser.add_argument("--only", choices=("stmenet", "deeppro"), help="run only one model's part")
    parser.add_argument(
        "--update-readme",
        metavar="SUMMARY",
        help="write the README's demo table from SUMMARY (a demo's summary.json) and stop",
    )
    args = parser.parse_args(argv)
    if args.update_readme:
        update_readme(Path(args.update_readme))
        return
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
    seconds = time.perf_counter() - t0
    (out / "demo_steps.json").write_text(json.dumps(log, indent=1))
    (out / "summary.json").write_text(json.dumps(build_summary(out, log, seconds), indent=1) + "\n")
    print(f"\ndemo finished in {seconds:.0f} s; everything is under {out}")
    print(f"headline numbers: {out / 'summary.json'}")
    for step in log:
        print(f"  {step['seconds']:7.1f} s  {step['command']}")
    print("These are the demo's short settings; the paper's recipe is each command without its demo flags.")


if __name__ == "__main__":
    main()
