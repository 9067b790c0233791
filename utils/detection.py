"""Detection inference over COCO clips, shared by evaluation, training-time validation and the tools.

    >>> evaluator = COCOEvaluator(gt_json)
    >>> run_inference(model, CocoEvalClips(gt_json, 512, 5, root), evaluator)
    >>> evaluator.evaluate()["ap50"]

`run_inference` is the generic loop: clips in batches through the model, the one post-process
(`utils.postprocess`), detections in image pixels fed to an evaluator with reset / process / evaluate
(`utils.coco_metrics.COCOEvaluator`). `DetectionValidator` scores a model on a validation json during training
(mAP50 and the validation loss in one pass). `subset_json` picks an evenly spread subset of a split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.checkpoint import atomic_write_text
from utils.coco_metrics import COCOEvaluator
from utils.coco_results import read_json
from utils.config import Config, bit_depth_option, coco_backend_option, option
from utils.data import CocoEvalClips, eval_collate, frame_number, letterbox_boxes
from utils.data.frames import DEFAULT_BIT_DEPTH_RULE
from utils.errors import DataError
from utils.postprocess import CONF_THRES, NMS_THRES, model_stride, postprocess
from utils.timing import TimedIterator
from utils_coco.coco_to_txt import category_index, load_coco


def read_results(path: str | os.PathLike) -> list:
    """A COCO results json (a list); DataError naming the file otherwise."""
    data = read_json(path, "results json")
    if not isinstance(data, list):
        raise DataError(f"{path}: COCO results must be a list of dicts")
    return data


def subset_json(json_path: Path, out_path: Path, max_images: int, protocol: str = "annotated") -> Path:
    """Write a copy of a COCO json restricted to at most `max_images` images of the protocol, spread evenly
    over the sequences (ordered by folder, then frame index), and return its path; returns `json_path`
    itself when it holds no more than `max_images` such images (or `max_images` is 0)."""
    coco = load_coco(json_path)
    annotated = {a["image_id"] for a in coco["annotations"]}
    images = [im for im in coco["images"] if protocol == "all" or im["id"] in annotated]
    if not images:
        raise DataError(f"{json_path}: no images to evaluate under protocol {protocol!r} (empty split)")

    def key(im: dict) -> tuple:
        name = str(im["file_name"])
        num = frame_number(name)
        return os.path.dirname(name), -1 if num is None else num, name

    if not 0 < max_images < len(images):
        return Path(json_path)
    images.sort(key=key)
    picks = np.unique(np.linspace(0, len(images) - 1, max_images).round().astype(int))
    images = [images[i] for i in picks]
    keep = {im["id"] for im in images}
    out = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    out.setdefault("categories", [{"id": 1, "name": "target", "supercategory": "none"}])
    out["images"] = images
    out["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    atomic_write_text(json.dumps(out), out_path)
    return out_path



def gt_targets(coco: dict) -> dict[int, np.ndarray]:
    """image_id -> int64 [N, 5] (x1, y1, x2, y2, cls) of a checked COCO dict as the authors' txt lists hold
    them (x1 = int(x), x2 = x1 + int(w), cls = utils_coco.coco_to_txt.category_index), for the validation
    loss."""
    classes = category_index(coco)
    out: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        x1, y1 = int(x), int(y)
        out.setdefault(int(a["image_id"]), []).append([x1, y1, x1 + int(w), y1 + int(h),
                                                       classes[a["category_id"]]])
    return {k: np.asarray(v, np.int64).reshape(-1, 5) for k, v in out.items()}


@torch.no_grad()
def run_inference(model: nn.Module, clips: CocoEvalClips, evaluator: COCOEvaluator, *, batch_size: int = 8,
                  workers: int = 2, conf_thres: float = CONF_THRES, nms_thres: float = NMS_THRES,
                  max_dets: int = 100, loss_fn=None, targets: Mapping[int, np.ndarray] | None = None,
                  progress: bool = True, desc: str = "evaluating",
                  timing: dict | None = None, box_mapping: str = "authors") -> float | None:
    """Run `model` over every clip of `clips`, feed the detections (image pixels) to `evaluator`.

    With `loss_fn` and `targets` (image_id -> int [N, 5] boxes, see `gt_targets`) also returns the mean
    loss per image on the same forward passes (None otherwise). The model is put in eval mode. A `timing`
    dict is filled with the data-wait figures of utils.timing.TimedIterator.summary(). `box_mapping`: the
    utils.boxes.undo_letterbox mode, "authors" (their yolo_correct_boxes, default) or "exact".
    """
    model.eval()
    device = next(model.parameters()).device
    stride = model_stride(model)
    input_hw = clips.input_size
    loader = TimedIterator(DataLoader(clips, batch_size=batch_size, num_workers=workers,
                                      collate_fn=eval_collate, pin_memory=device.type == "cuda"))
    loss_sum, counted = 0.0, 0
    with tqdm(total=len(clips), desc=desc, unit="img", leave=False, dynamic_ncols=True,
              disable=not progress, mininterval=0.5) as bar:
        for ids, x, sizes in loader:
            out = model(x.to(device, non_blocking=True))
            if loss_fn is not None and targets is not None:
                empty = np.zeros((0, 5), np.int64)
                tg = [torch.from_numpy(letterbox_boxes(targets.get(int(i), empty), (int(s[0]), int(s[1])),
                                                       input_hw)).to(device) for i, s in zip(ids, sizes)]
                loss, _ = loss_fn(out.float(), tg)
                loss_sum += float(loss) * len(ids)
                counted += len(ids)
            per_image = postprocess(out, stride, input_hw, sizes.tolist(), conf_thres, nms_thres, max_dets,
                                    box_mapping)
            evaluator.process(ids.tolist(), per_image)
            bar.update(len(ids))
    if timing is not None:
        timing.update(loader.summary())
    return loss_sum / counted if counted else None


@dataclass
class CocoDataConfig(Config):
    """COCO-json dataset options"""

    data_root: str = option("", "dataset root (images/ + COCO json files); empty = the synthetic set of this "
                            "dataset's style, generated once into --synthetic-dir")
    test_json: str = option("instances_test2017.json", "test json relative to the data root (also looked up "
                            "under annotations/)")
    synthetic_dir: str = option("", "where the synthetic set lives when no --data-root (empty: "
                                "data/synthetic/<style>)")
    bit_depth_rule: str = bit_depth_option()
    coco_backend: str = coco_backend_option()
    style: str = option("itsdt", "this script's dataset (txt list names, synthetic style)", cli=False)


class DetectionValidator:
    """Scores a model on a COCO json during training: `validator(model, epoch) -> {map50, map50_95,
    recall50, val_loss}` (AP50 etc. as fractions; val_loss = the training loss on these clips).

    `max_images` > 0 evaluates an evenly spread subset (written to `work_dir/val_subset.json`); `prepare`
    turns the training model into the one to run (e.g. `nets.fast.for_evaluation`).
    """

    def __init__(self, json_path: Path, data_root: Path, input_size: int, num_frames: int, *,
                 protocol: str = "annotated", max_images: int = 0, work_dir: Path | None = None,
                 batch_size: int = 8, workers: int = 2, loss_fn=None, progress: bool = True,
                 conf_thres: float = CONF_THRES, nms_thres: float = NMS_THRES, max_dets: int = 100,
                 prepare: Callable[[nn.Module], nn.Module] | None = None,
                 bit_depth_rule: str = DEFAULT_BIT_DEPTH_RULE, coco_backend: str = "faster"):
        self.source_json = Path(json_path)
        work = Path(work_dir) if work_dir is not None else Path(".")
        json_used = subset_json(self.source_json, work / "val_subset.json", max_images, protocol)
        self.json_path = json_used
        self.clips = CocoEvalClips(json_used, input_size=input_size, num_frames=num_frames,
                                   data_root=data_root, protocol=protocol, bit_depth_rule=bit_depth_rule)
        self.evaluator = COCOEvaluator(json_used, protocol=protocol, backend=coco_backend)
        self.targets = gt_targets(self.evaluator.gt.dataset) if loss_fn is not None else None
        self.loss_fn = loss_fn
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.conf_thres, self.nms_thres, self.max_dets = conf_thres, nms_thres, max_dets
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.clips)

    def __call__(self, model: nn.Module, epoch: int | None = None) -> dict[str, float]:
        self.evaluator.reset()
        desc = "validating" if epoch is None else f"validating epoch {epoch + 1}"
        was_training = model.training
        runner = self.prepare(model) if self.prepare is not None else model
        model.train(was_training)
        val_loss = run_inference(runner, self.clips, self.evaluator, batch_size=self.batch_size,
                                 workers=self.workers, conf_thres=self.conf_thres, nms_thres=self.nms_thres,
                                 max_dets=self.max_dets, loss_fn=self.loss_fn, targets=self.targets,
                                 progress=self.progress, desc=desc)
        m = self.evaluator.evaluate()
        out = {"map50": m["ap50"], "map50_95": m["stats"][0], "recall50": m["R"]}
        if val_loss is not None:
            out["val_loss"] = val_loss
        return out


__all__ = ["CocoDataConfig", "DetectionValidator", "gt_targets", "read_results", "run_inference",
           "subset_json"]
