"""Draw precision-recall curves from PR files (101 tab-separated precisions, the authors' format).

    python plot_pr.py runs/itsdt/pr_curve.txt --published ../shared/reference/published/ITSDT --out pr.png

Each curve is labelled with its file stem and its AP50 (mean of the 101 precisions, in %).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli import run_main
from utils.errors import DataError
from utils.metrics import read_pr_txt
from utils.plots import plot_pr_curves


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="PR txt files (label = file stem)")
    p.add_argument("--published", type=Path, action="append", default=[], metavar="DATASET_DIR",
                   help="also draw every *.txt in this folder (e.g. published/ITSDT); repeatable")
    p.add_argument("--out", type=Path, required=True, help="output PNG")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--highlight", action="append", default=None, metavar="LABEL",
                   help="label(s) to draw thicker; default: the FILES given directly")
    return p.parse_args(argv)


def collect_curves(files: list[Path], published: list[Path]) -> dict[str, object]:
    """Label -> 101 precisions. Files given directly come first; a repeated stem gets its folder added."""
    paths = list(files)
    for folder in published:
        if not folder.is_dir():
            raise DataError(f"{folder}: --published folder not found")
        found = sorted(folder.glob("*.txt"))
        if not found:
            raise DataError(f"{folder}: no PR *.txt files in the --published folder")
        paths += found
    if not paths:
        raise DataError("no PR files given (pass FILES and/or --published DATASET_DIR)")
    curves: dict[str, object] = {}
    for path in paths:
        label = path.stem if path.stem not in curves else f"{path.parent.name}/{path.stem}"
        curves[label] = read_pr_txt(path)
    return curves


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    curves = collect_curves(args.files, args.published)
    highlight = args.highlight if args.highlight is not None else [f.stem for f in args.files]
    out = plot_pr_curves(curves, args.out, title=args.title, highlight=highlight)
    for label, prec in curves.items():
        print(f"{label:<20} AP50 {100 * float(prec.mean()):6.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
