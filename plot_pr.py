"""Draw precision-recall curves from PR files (101 tab-separated precisions, the authors' format).

    python plot_pr.py runs/itsdt/pr_curve.txt --published ../shared/reference/published/ITSDT --out pr.png
    python plot_pr.py "ours=runs/itsdt/pr_curve.txt" "paper=published/ITSDT/STMENet.txt" --out pr.png

Each curve is labelled with its file stem (or the LABEL of a LABEL=PATH argument) and its AP50 (mean of
the 101 precisions, in %).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli import run_main
from utils.coco_metrics import read_pr_txt
from utils.errors import DataError
from utils.plots import plot_pr_curves


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=labelled_path, metavar="[LABEL=]FILE",
                   help="PR txt files (label: LABEL, else the file stem)")
    p.add_argument("--published", type=Path, action="append", default=[], metavar="DATASET_DIR",
                   help="also draw every *.txt in this folder (e.g. published/ITSDT); repeatable (default: "
                        "none)")
    p.add_argument("--out", type=Path, default=None,
                   help="output PNG (default: pr.png beside the first FILE, else in the current folder)")
    p.add_argument("--title", default=None,
                   help="figure title (default: 'Precision-recall (IoU 0.5): DATASET')")
    p.add_argument("--dataset", default=None,
                   help="dataset in the title (default: the --published folder name(s))")
    p.add_argument("--highlight", action="append", default=None, metavar="LABEL",
                   help="label(s) to draw thicker; default: the FILES given directly")
    return p.parse_args(argv)


def labelled_path(arg: str) -> tuple[str, Path]:
    """`LABEL=PATH` -> (LABEL, PATH); a plain PATH (also one that contains "=") is labelled by its stem."""
    label, sep, rest = arg.partition("=")
    if sep and label and rest and not Path(arg).exists():
        return label, Path(rest)
    return Path(arg).stem, Path(arg)


def collect_curves(files: list[Path | tuple[str, Path]], published: list[Path]) -> dict[str, object]:
    """Label -> 101 precisions. Files given directly come first (a `(label, path)` pair keeps its label);
    a repeated label gets its folder added."""
    paths: list[tuple[str, Path]] = [f if isinstance(f, tuple) else (f.stem, f) for f in files]
    for folder in published:
        if not folder.is_dir():
            raise DataError(f"{folder}: --published folder not found")
        found = sorted(folder.glob("*.txt"))
        if not found:
            raise DataError(f"{folder}: no PR *.txt files in the --published folder")
        paths += [(f.stem, f) for f in found]
    if not paths:
        raise DataError("no PR files given (pass FILES and/or --published DATASET_DIR)")
    curves: dict[str, object] = {}
    for label, path in paths:
        if label in curves:
            label = f"{path.parent.name}/{label}"
        curves[label] = read_pr_txt(path)
    return curves


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    curves = collect_curves(args.files, args.published)
    highlight = args.highlight if args.highlight is not None else [label for label, _ in args.files]
    out = args.out or (args.files[0][1].parent if args.files else Path()) / "pr.png"
    dataset = args.dataset or ", ".join(dict.fromkeys(folder.name for folder in args.published)) or None
    out = plot_pr_curves(curves, out, title=args.title, highlight=highlight, dataset=dataset)
    for label, prec in curves.items():
        print(f"{label:<20} AP50 {100 * float(prec.mean()):6.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
