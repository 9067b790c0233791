"""Where the data is: `--data-root` when given, else the synthetic default set, generated once.

    >>> root = resolve_coco_root("", "itsdt")                 # data/synthetic/itsdt (made on first use)
    >>> root, mask_root = resolve_nudt_roots("", "", "noise") # data/synthetic/nudt_noise, masks from nudt
    >>> gt = require_json(root, "instances_test2017.json", "test")

Used alike by training, evaluation, prediction and the cross-metric tool. A synthetic set is written into
a temporary folder beside its final place and renamed when complete (`synth_meta.json` marks a finished
one), so an interrupted run leaves nothing half-made; under torchrun only global rank 0 writes and the
other ranks wait for it. A root of the other family (a NUDT-MIRSDT folder given to an STMENet script, or
the reverse) is recognised and the right script named.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from utils.errors import DataError

SYNTHETIC_DIR = Path("data") / "synthetic"
MARKER = "synth_meta.json"
COCO_STYLES = ("itsdt", "irdst", "daub")
# The scripts of each data layout, named when a root of the other layout is given.
SCRIPTS = {"coco": "train_ITSDT.py / train_IRDST.py / train_DAUB.py and vid_map_coco_*.py",
           "nudt": "train_NUDT.py and test_deeppro.py"}


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def synthetic_root(style: str, folder: str | os.PathLike = "", noise: bool = False) -> Path:
    """The folder of a synthetic default set: `data/synthetic/<style>` (`<style>_noise`: Noise variant)."""
    if folder:
        return Path(folder)
    return SYNTHETIC_DIR / (f"{style}_noise" if noise else style)


def _wait_for(marker: Path, wait_s: float) -> None:
    deadline = time.time() + wait_s
    while not marker.is_file():
        if time.time() > deadline:
            raise DataError(f"{marker.parent}: rank 0 did not finish writing the synthetic dataset in "
                            f"{wait_s:.0f} s")
        time.sleep(0.5)


def ensure_synthetic(style: str, folder: str | os.PathLike = "", *, noise: bool = False,
                     log: Callable[[str], None] = print, wait_s: float = 900.0, **options) -> Path:
    """Generate the synthetic set of `style` (nudt, itsdt, irdst, daub) once and return its root.

    `options` go to `utils.synth.SynthConfig` (e.g. `seed`, `write_masks`). A folder holding
    `synth_meta.json` is reused; a non-empty folder without it is refused (it is not ours to replace).
    """
    root = synthetic_root(style, folder, noise)
    marker = root / MARKER
    if marker.is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root}: exists but holds no {MARKER} (not a synthetic dataset); remove it or pass "
                        "--data-root")
    if not _is_main_rank():
        _wait_for(marker, wait_s)
        return root
    from utils.synth import SynthConfig, generate

    fmt = "nudt" if style == "nudt" else "coco"
    what = f"{style}-style" + (" Noise-variant" if noise else "")
    log(f"no --data-root: generating a small synthetic {what} dataset into {root} (once; pass --data-root "
        "for real data)")
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        meta = generate(SynthConfig(format=fmt, style=style if fmt == "coco" else "itsdt", out=str(tmp),
                                    noise=noise, **options))
        try:
            if root.exists():
                root.rmdir()  # the empty folder checked above
            os.replace(tmp, root)
        except OSError:
            if not marker.is_file():  # not another process that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    frames = sum(s["frames"] for s in meta["sequences"])
    log(f"  wrote {len(meta['sequences'])} sequences, {frames} frames in {time.time() - t0:.1f} s")
    return root


def detect_layout(root: Path) -> str | None:
    """"nudt" (split files / Sequence<N> folders), "coco" (json files), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    if any((root / f"{s}.txt").is_file() for s in ("train", "test")) or any(root.glob("Sequence*/images")):
        return "nudt"
    if any(root.glob("*.json")) or any(root.glob("annotations/*.json")):
        return "coco"
    return None


def check_layout(root: Path, expected: str) -> None:
    """DataError naming the right scripts when `root` holds the other family's layout."""
    found = detect_layout(root)
    if found is not None and found != expected:
        kind = {"nudt": "NUDT-MIRSDT (split files, Sequence folders)", "coco": "COCO-json (ITSDT/IRDST/DAUB)"}
        raise DataError(f"{root}: this is a {kind[found]} dataset, not a {kind[expected]} one; use "
                        f"{SCRIPTS[found]}")


def _existing_root(data_root: str | os.PathLike, expected: str) -> Path:
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found")
    check_layout(root, expected)
    return root


def resolve_coco_root(data_root: str | os.PathLike, style: str,
                      synthetic_dir: str | os.PathLike = "") -> Path:
    """`--data-root` when given (must exist, COCO layout), else the synthetic set of `style`."""
    if data_root:
        return _existing_root(data_root, "coco")
    root = ensure_synthetic(style, synthetic_dir)
    print(f"no --data-root: using the synthetic {style}-style dataset in {root}")
    return root


def resolve_nudt_roots(data_root: str | os.PathLike, mask_root: str | os.PathLike = "",
                       dataset: str = "nudt",
                       synthetic_dir: str | os.PathLike = "") -> tuple[Path, Path | None]:
    """(data root, mask root or None) of a NUDT-MIRSDT(-Noise) run. Without `--data-root` the synthetic
    set (and, for `dataset="noise"`, its Noise variant whose masks stay in the clean folder) is made once."""
    masks = Path(mask_root) if mask_root else None
    if masks is not None and not masks.is_dir():
        raise DataError(f"{masks}: --mask-root not found")
    if data_root:
        return _existing_root(data_root, "nudt"), masks
    clean = ensure_synthetic("nudt", synthetic_dir)
    if dataset != "noise":
        return clean, masks
    noisy = ensure_synthetic("nudt", Path(synthetic_dir).with_name(Path(synthetic_dir).name + "_noise")
                             if synthetic_dir else "", noise=True, write_masks=False)
    return noisy, masks or clean


def dataset_label(root: Path) -> str:
    """A name for titles and output folders taken from the data itself: `synthetic-<style>` for a
    generated set (its synth_meta.json), else the root folder's name."""
    import json

    marker = Path(root) / MARKER
    if marker.is_file():
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            return f"synthetic-{meta.get('style', 'unknown')}" + ("-noise" if meta.get("variant") == "noise"
                                                                   else "")
        except (OSError, ValueError):
            pass
    return Path(root).resolve().name or "data"


def find_json(root: Path, name: str) -> Path | None:
    """A json named relative to the dataset root, also looked up under `annotations/` (IRDST keeps its
    files there) and at the root by its base name; an absolute path is taken as is. None when absent."""
    if not name:
        return None
    path = Path(name)
    if path.is_absolute():
        return path if path.is_file() else None
    for cand in (root / path, root / "annotations" / path.name, root / path.name):
        if cand.is_file():
            return cand
    return None


def require_json(root: Path, name: str, what: str) -> Path:
    """`find_json` or a DataError that says where it looked (and names the right script for a NUDT root)."""
    found = find_json(root, name)
    if found is None:
        check_layout(root, "coco")
        raise DataError(f"{root / name}: {what} json not found (also looked in {root / 'annotations'}); "
                        f"pass --{what}-json relative to the data root")
    return found


__all__ = ["COCO_STYLES", "SYNTHETIC_DIR", "check_layout", "dataset_label", "detect_layout",
           "ensure_synthetic", "find_json", "require_json", "resolve_coco_root", "resolve_nudt_roots",
           "synthetic_root"]
