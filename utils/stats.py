"""Dataset statistics of an authors' txt list: frames, sequences, targets per frame, box sizes, speeds.

    python -m utils.stats data/itsdt_synth/coco_train_ITSDT.txt

The keys are those of ../shared/reference/annotations/stats.json (computed on the real lists), so a
synthetic dataset can be compared with the real one it imitates. Speeds are the displacement of the box
centre between consecutive frames of a sequence where both frames hold exactly one box.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from utils.errors import DataError

SPEED_KEY = "speed_px_per_frame_deciles (single-target frames)"


def _parse(lines: list[str], name: str) -> list[tuple[str, int | None, np.ndarray]]:
    out = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            boxes = np.array([[int(v) for v in p.split(",")] for p in parts[1:]], np.int64).reshape(-1, 5)
        except ValueError as err:
            raise DataError(f"{name}:{lineno}: malformed box list") from err
        stem = os.path.splitext(os.path.basename(parts[0]))[0]
        out.append((os.path.dirname(parts[0]), int(stem) if stem.isdigit() else None, boxes))
    return out


def list_stats(lines: list[str] | str | Path, name: str = "<list>") -> dict:
    """Statistics of a txt list given as lines or a path (see the module docstring)."""
    if isinstance(lines, (str, Path)):
        name = str(lines)
        if not os.path.isfile(name):
            raise DataError(f"{name}: list file not found")
        lines = Path(name).read_text().splitlines()
    entries = _parse(lines, name)
    if not entries:
        raise DataError(f"{name}: the list is empty (empty split)")
    counts = Counter(len(b) for _, _, b in entries)
    allb = np.concatenate([b for _, _, b in entries]) if entries else np.zeros((0, 5), np.int64)
    w = (allb[:, 2] - allb[:, 0]).astype(float)
    h = (allb[:, 3] - allb[:, 1]).astype(float)
    speeds = []
    for (d0, i0, b0), (d1, i1, b1) in zip(entries, entries[1:]):
        if d0 == d1 and i0 is not None and i1 == i0 + 1 and len(b0) == 1 and len(b1) == 1:
            c0 = (b0[0, :2] + b0[0, 2:4]) / 2
            c1 = (b1[0, :2] + b1[0, 2:4]) / 2
            speeds.append(float(np.hypot(*(c1 - c0))))
    q = np.arange(10, 100, 10)

    def dec(v) -> list[float]:
        return [round(float(x), 2) for x in np.percentile(v, q, method="weibull")] if len(v) else []

    return {"frames": len(entries), "sequences": len({d for d, _, _ in entries}),
            "frames_without_box": counts.get(0, 0),
            "targets_per_frame_hist": {str(k): v for k, v in counts.items()},
            "box_w_deciles": dec(w), "box_h_deciles": dec(h),
            "box_w_median": float(np.median(w)) if len(w) else 0.0,
            "box_h_median": float(np.median(h)) if len(h) else 0.0,
            SPEED_KEY: dec(speeds), "speed_median": round(float(np.median(speeds)), 2) if speeds else 0.0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("lists", nargs="+", help="txt lists")
    a = p.parse_args(argv)
    print(json.dumps({os.path.basename(f): list_stats(f) for f in a.lists}, indent=1))


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
