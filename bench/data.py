"""Data throughput: synthetic generation (frames/s) and loader speed (clips/s), printed as a table.

    python bench/data.py            # 10k generated 256x256 frames, a few hundred clips per loader
    python bench/data.py --quick    # a few seconds

Rows: generation of NUDT-style (128x160 PNG + masks) and DAUB-style (256x256 BMP + json) frames; STMENet
training clips (5 frames letterboxed to the input size) and evaluation clips (json order, each frame decoded
once); DeepPro training clips (40 frames resized to 256x256, 128x128 crops) and whole test sequences.
Everything runs in one process on the CPU (num_workers=0) unless a row says otherwise.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from utils.config import Config, option, parse_config  # noqa: E402
from utils.data import (  # noqa: E402
    CocoClipDataset,
    CocoEvalClips,
    NUDTTestSequences,
    NUDTTrainDataset,
    clip_collate,
    eval_collate,
    nudt_collate,
)
from utils.synth import SynthConfig, generate  # noqa: E402


def _timed(fn) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


def run(quick: bool, workdir: Path, input_size: int) -> list[tuple[str, int, float, str]]:
    rows = []
    torch.set_num_threads(1)
    nudt = workdir / "nudt"
    coco = workdir / "daub"
    n_seq = (2, 0, 2) if quick else (18, 0, 2)
    n, dt = _timed(lambda: sum(s["frames"] for s in generate(SynthConfig(
        format="nudt", out=str(nudt), num_seqs=n_seq, frames=100))["sequences"]))
    rows.append(("generate nudt 128x160 (png, masks, centroids)", n, dt, "frames"))
    n_seq = (4, 0, 2) if quick else (98, 0, 2)  # 10,000 frames of 256x256
    n, dt = _timed(lambda: sum(s["frames"] for s in generate(SynthConfig(
        format="coco", style="daub", out=str(coco), num_seqs=n_seq, frames=100))["sequences"]))
    rows.append(("generate daub 256x256 (bmp, json, txt)", n, dt, "frames"))

    n_items = 40 if quick else 400
    ds = CocoClipDataset(coco / "coco_train_DAUB.txt", input_size=input_size)
    idx = ds.epoch_indices(0, fraction=min(1.0, n_items / len(ds)))
    n, dt = _timed(lambda: sum(1 for i in idx if ds[i] is not None))
    rows.append((f"stmenet train clips 5x{input_size}^2 (random order)", n, dt, "clips"))
    loader = DataLoader(ds.epoch_view(1, fraction=min(1.0, n_items / len(ds))), batch_size=8, num_workers=2,
                        collate_fn=clip_collate)
    n, dt = _timed(lambda: sum(len(b[1]) for b in loader))
    rows.append(("  same, DataLoader batch 8, 2 workers", n, dt, "clips"))
    ev = CocoEvalClips(coco / "instances_test2017.json", input_size=input_size, protocol="all")
    n, dt = _timed(lambda: sum(1 for _ in ev))
    rows.append((f"stmenet eval clips 5x{input_size}^2 (each frame decoded once)", n, dt, "clips"))
    loader = DataLoader(ev, batch_size=8, num_workers=2, collate_fn=eval_collate)
    n, dt = _timed(lambda: sum(len(b[0]) for b in loader))
    rows.append(("  same, DataLoader batch 8, 2 workers", n, dt, "clips"))

    nd = NUDTTrainDataset(nudt, "train", sample_rate=(0.05 if quick else 0.3), cache_frames=4096)
    view = nd.epoch_view(0)
    n, dt = _timed(lambda: sum(1 for i in range(len(view)) if view[i] is not None))
    rows.append(("deeppro train clips 40x128^2 (resize 256, cold frame cache)", n, dt, "clips"))
    view = nd.epoch_view(1)
    n, dt = _timed(lambda: sum(1 for i in range(len(view)) if view[i] is not None))
    rows.append(("  same, next epoch (frame cache warm)", n, dt, "clips"))
    te = NUDTTestSequences(nudt, "test")
    loader = DataLoader(te, batch_size=None, collate_fn=nudt_collate)
    n, dt = _timed(lambda: sum(len(r.frames) for r in loader))
    rows.append(("deeppro test sequences (frames, masks, centroids)", n, dt, "frames"))
    return rows


@dataclass
class DataBenchConfig(Config):
    """Data speed options"""

    quick: bool = option(False, "small sizes, a few seconds")
    input_size: int = option(512, "STMENet input size (512 as the authors)")
    work_dir: str = option("", "where to write the datasets (empty: a temporary folder, removed at the end)",
                           aliases=("--workdir",))

    def validate(self) -> None:
        super().validate()
        self.at_least(32, "input_size")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(DataBenchConfig(), argv, __doc__.split("\n\n")[0], "bench/data.py")
    workdir = Path(cfg.work_dir or tempfile.mkdtemp(prefix="bench_data_"))
    try:
        rows = run(cfg.quick, workdir, cfg.input_size)
    finally:
        if not cfg.work_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'items':>6}  {'seconds':>8}  {'per second':>12}")
    for name, n, dt, unit in rows:
        print(f"{name:<{width}}  {n:>6}  {dt:>8.2f}  {n / dt:>8.1f} {unit}")


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
