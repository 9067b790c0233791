"""Paper-style figures from run logs and evaluation files.

    python plot_run.py train runs/deeppro_nudt    # writes runs/deeppro_nudt/training_curves.png
    python plot_run.py train trainlog_DeepPro_NUDT-MIRSDT.txt --out authors_curves.png   # the authors' log
    python plot_run.py roc runs/test_deeppro/results.json eval_DeepPro_NUDT-MIRSDT.txt --out roc.png
    python plot_run.py roc "ours=runs/test_deeppro/eval.txt" --group low_snr --out roc_low.png

train: one panel per logged quantity (losses together, lr on a log axis, mAP50 / IoU / ...) from our
per-epoch CSV (a run folder or its train_log.csv) or from a DeepPro authors' training log.
roc: Pd over Fa (log x) with the AUC in the legend, from test_deeppro.py's results.json, any eval.txt in the
authors' layout (theirs, e.g. the published DeepPro logs, or ours), or cross_metrics.json (one curve per
model). Precision-recall curves: plot_pr.py (with --published for the authors' PR files).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from utils.cli import run_main
from utils.errors import DataError
from utils.logs import GROUPS, authors_trainlog_to_csv, read_roc
from utils.plots import figure_title, plot_roc, plot_training_curves


def _labelled(spec: str) -> tuple[str, Path]:
    label, sep, path = spec.partition("=")
    return (label, Path(path)) if sep and label and not Path(spec).exists() else ("", Path(spec))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="plot_run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    tr = sub.add_parser("train", help="training curves from a run log")
    tr.add_argument("log", type=Path, help="run folder, its train_log.csv, or a DeepPro authors' log (.txt)")
    tr.add_argument("--out", type=Path, default=None,
                    help="output PNG (default: training_curves.png in the run folder, i.e. beside the log)")
    tr.add_argument("--title", default=None,
                    help="figure title (default: 'Training curves: RUN (DATASET)')")
    tr.add_argument("--run", default=None,
                    help="run name in the title (default: the run folder's name; for an authors' log its "
                         "file stem)")
    tr.add_argument("--dataset", default=None,
                    help="dataset in the title (default: 'dataset' of the run's config.json, if any)")
    roc = sub.add_parser("roc", help="Pd-Fa curves from evaluation files")
    roc.add_argument("files", nargs="+", metavar="[LABEL=]FILE",
                     help="results.json, cross_metrics.json or eval.txt (ours or the authors')")
    roc.add_argument("--group", default="all", choices=sorted(GROUPS),
                     help="pooled sequences to draw (default: all)")
    roc.add_argument("--out", type=Path, default=None,
                     help="output PNG (default: roc.png, or roc_GROUP.png for another group, in the first "
                          "FILE's folder)")
    roc.add_argument("--title", default=None, help="figure title (default: 'Pd-Fa (GROUP): DATASET')")
    roc.add_argument("--dataset", default=None, help="dataset in the title (default: none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.what == "train":
        log = args.log / "train_log.csv" if args.log.is_dir() else args.log
        if not log.is_file():
            raise DataError(f"{log}: training log not found")
        from utils.engine import CURVES_PNG  # the name the engine writes into each run folder

        out = args.out or log.parent / CURVES_PNG
        if log.suffix.lower() == ".csv":
            out = plot_training_curves(log, out, args.title, args.run, args.dataset)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                csv_path = authors_trainlog_to_csv(log, Path(tmp) / "log.csv")
                out = plot_training_curves(csv_path, out, args.title, args.run or log.stem, args.dataset)
    else:
        curves, aucs = {}, {}
        for spec in args.files:
            label, path = _labelled(spec)
            for name, (fa, pd, auc) in read_roc(path, args.group).items():
                key = label or name
                curves[key], aucs[key] = (fa, pd), auc
        first = _labelled(args.files[0])[1]
        out = args.out or first.parent / ("roc.png" if args.group == "all" else f"roc_{args.group}.png")
        what = f"Pd-Fa ({args.group.replace('_', ' ')})"
        title = figure_title(what, dataset=args.dataset, title=args.title)
        out = plot_roc(curves, out, title=title, auc=aucs)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    run_main(main)
