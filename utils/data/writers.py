"""Writers of the on-disk dataset layouts (NUDT-MIRSDT, COCO video) and a preview of a written dataset.

Used by the synthetic generator (utils/synth/); the loaders in this package read what these write.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from utils.data.naming import coco_json_name, coco_list_name, nudt_split_name


def save_grey(arr: np.ndarray, path: str | Path) -> None:
    """uint8 [H, W] -> 8-bit grey PNG (fast zlib level 1) or BMP, by the path's suffix."""
    img = Image.fromarray(arr)
    if str(path).endswith(".png"):
        img.save(path, compress_level=1)
    else:
        img.save(path)


def write_nudt_sequence(root: str | Path, name: str, frames: np.ndarray, masks: np.ndarray | None = None,
                        centroids: np.ndarray | None = None) -> list[str]:
    """Write `<root>/<name>/{images,masks,masks_centroid}/00001.png ...` (frames uint8 [N, H, W], masks
    and centroids bool [N, H, W] stored as 0/255; None skips them). Returns the split-file lines."""
    seq = Path(root) / name
    parts = {"images": frames, "masks": masks, "masks_centroid": centroids}
    for sub, arr in parts.items():
        if arr is not None:
            (seq / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for t in range(len(frames)):
        stem = f"{t + 1:05d}"
        for sub, arr in parts.items():
            if arr is not None:
                a = arr[t] if arr.dtype == np.uint8 else arr[t].astype(np.uint8) * 255
                save_grey(a, seq / sub / f"{stem}.png")
        lines.append(f"{name}/Mix/{stem}.mat")
    return lines


def write_nudt_splits(root: str | Path, lines: dict[str, list[str]]) -> None:
    """Write `<root>/{train,val,test}.txt` (splits without lines are skipped)."""
    for split, split_lines in lines.items():
        if split_lines:
            (Path(root) / nudt_split_name(split)).write_text("".join(s + "\n" for s in split_lines))


class CocoSplit:
    """Accumulates one split of a COCO-video dataset: frames under images/<seq>/<i>.bmp, one category."""

    def __init__(self, description: str = ""):
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.description = description

    def add_sequence(self, root: str | Path, folder: str, frames: np.ndarray,
                     boxes: list[np.ndarray]) -> None:
        """frames uint8 [N, H, W] written as images/<folder>/<i>.bmp; boxes[i] int [K, 4] (x1, y1, x2, y2)."""
        out = Path(root) / "images" / folder
        out.mkdir(parents=True, exist_ok=True)
        h, w = frames.shape[1:3]
        for t, frame in enumerate(frames):
            save_grey(frame, out / f"{t}.bmp")
            image_id = len(self.images) + 1
            self.images.append({"height": int(h), "width": int(w), "id": image_id,
                                "file_name": f"images/{folder}/{t}.bmp"})
            for x1, y1, x2, y2 in np.asarray(boxes[t]).reshape(-1, 4).tolist():
                self.annotations.append({"iscrowd": 0, "image_id": image_id,
                                         "bbox": [float(x1), float(y1), x2 - x1, y2 - y1],
                                         "area": float((x2 - x1) * (y2 - y1)), "category_id": 1,
                                         "id": len(self.annotations) + 1})

    def coco(self) -> dict:
        return {"info": {"description": self.description}, "licenses": [], "images": self.images,
                "annotations": self.annotations,
                "categories": [{"supercategory": "none", "id": 1, "name": "target"}]}

    def write(self, root: str | Path, split: str, style: str) -> None:
        """`instances_<split>2017.json` and the authors' list `coco_<split>_<STYLE>.txt` (root-relative paths,
        made by the same code as utils_coco/coco_to_txt.py)."""
        from utils_coco.coco_to_txt import coco_to_lines

        coco = self.coco()
        (Path(root) / coco_json_name(split)).write_text(json.dumps(coco))
        lines = coco_to_lines(coco, "")
        (Path(root) / coco_list_name(style, split)).write_text("".join(s + "\n" for s in lines))


def write_preview(root: str | Path, meta: dict, n_show: int = 6) -> Path:
    """`<root>/preview.png` (written atomically): see `preview_figure`."""
    from utils.plots import save_figure

    return save_figure(preview_figure(root, meta, n_show), Path(root) / "preview.png", dpi=100,
                       metadata={"Software": None})


def preview_figure(root: str | Path, meta: dict, n_show: int = 6):
    """Matplotlib figure: frames of the first test sequence with truth overlaid, plus a histogram of the
    realised SNR of every target, low- and high-SNR groups on the same bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from scipy import ndimage

    root = Path(root)
    seqs = meta["sequences"]
    seq = next((s for s in seqs if s["split"] == "test"), seqs[0])
    n = seq["frames"]
    idx = np.unique(np.linspace(0, n - 1, min(n_show, n)).round().astype(int))
    if meta["format"] == "coco":
        coco = json.loads((root / coco_json_name(seq["split"])).read_text())
        ids = {i["file_name"]: i["id"] for i in coco["images"]}
        by_image: dict[int, list] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
    fig, axes = plt.subplots(1, len(idx) + 1, figsize=(3.2 * (len(idx) + 1), 3.2))
    for ax, t in zip(axes, idx):
        if meta["format"] == "nudt":
            img = np.array(Image.open(root / seq["name"] / "images" / f"{t + 1:05d}.png"))
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            mpath = root / seq["name"] / "masks" / f"{t + 1:05d}.png"
            if mpath.is_file():
                labels, _ = ndimage.label(np.array(Image.open(mpath)) > 0, structure=np.ones((3, 3)))
                for sl in ndimage.find_objects(labels):
                    y0, x0 = sl[0].start - 3, sl[1].start - 3
                    bw, bh = sl[1].stop - sl[1].start + 6, sl[0].stop - sl[0].start + 6
                    ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), bw, bh, fill=False, color="lime",
                                               lw=0.8))
        else:
            img = np.array(Image.open(root / "images" / seq["name"] / f"{t}.bmp").convert("L"))
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            image_id = ids[f"images/{seq['name']}/{t}.bmp"]
            for a in by_image.get(image_id, []):
                x, y, bw, bh = a["bbox"]
                ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, color="lime", lw=0.8))
        ax.set_title(f"{seq['name']} #{t}", fontsize=8)
        ax.axis("off")
    hist = axes[-1]
    groups = {label: [tg["snr"] for s in seqs if s["snr_label"] == label
                      for tg in s["targets"] if tg["snr"] is not None] for label in ("low", "high")}
    every = [v for vals in groups.values() for v in vals]
    if every:  # one set of bins for both groups, so bar widths and heights compare
        lo, hi = min(every), max(every)
        edges = np.histogram_bin_edges(every, bins=20, range=(lo, hi) if hi > lo else (lo - 0.5, hi + 0.5))
        for (label, vals), color in zip(groups.items(), ("tab:red", "tab:blue")):
            if vals:
                hist.hist(vals, bins=edges, color=color, alpha=0.7, label=f"{label} SNR (n={len(vals)})")
        hist.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, frameon=False,
                    borderaxespad=0.0)
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist.set_xlabel("realised SNR")
    hist.set_ylabel("targets")
    fig.suptitle(f"synthetic {meta['style']} ({meta['variant']}): truth in green", fontsize=9)
    fig.tight_layout()
    return fig
