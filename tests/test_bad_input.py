"""The bad-input catalogue: every input users can get wrong ends in one clear line, never a deep traceback.

Each `Case` provokes one fault in a temporary folder. Kinds:
- "raise": the call must raise `exc` whose message is one line, matches `match` and names `name` (the
  offending file, option or tensor) where there is one;
- "cli": the call returns (main, argv) of a script; `utils.cli.run_main(main, argv)` must exit with code 2
  and print `error: <one line>` (matching `match`, naming `name`) on stderr, with no traceback;
- "ok": a defined, non-error behaviour (empty detections, empty ground truth); the function asserts it.

docs/troubleshooting.md lists the same cases (by id) with what the user sees and how to fix it. The
hypothesis tests at the end fuzz the txt and json parsers: any failure must be a one-line ToolboxError.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import nets
from tests.engine_worker import NoisyRegression, mse_loss, quick_config, tiny_model
from utils import checkpoint as ck
from utils.cli import run_main
from utils.coco_metrics import coco_box_metrics, read_pr_txt
from utils.config import TrainConfig
from utils.data import (
    CocoClipDataset,
    CocoEvalClips,
    NUDTTestSequences,
    NUDTTrainDataset,
    read_split,
    read_txt_list,
)
from utils.engine import NonFiniteLossError, Task, train
from utils.errors import CheckpointError, ConfigError, DataError, ToolboxError
from utils.metrics import pd_fa, pool_pd_fa
from utils_coco import coco_to_txt
from utils_coco.coco_to_txt import coco_to_lines

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "troubleshooting.md"
SIZE = (64, 64)  # (H, W) of the hand-made COCO frames
NUDT_SIZE = (32, 32)


# --------------------------------------------------------------------------------------------------------
# Tiny datasets written by hand (explicit, fast)
# --------------------------------------------------------------------------------------------------------


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _coco_json(root: Path) -> Path:
    return root / "instances_test2017.json"


def _coco_list(root: Path) -> Path:
    return root / "coco_train_ITSDT.txt"


def _coco_root(tmp: Path, frames: int = 4) -> Path:
    """`tmp/coco`: images/seq1/{0..frames-1}.bmp (64x64), instances_test2017.json, coco_train_ITSDT.txt."""
    root = tmp / "coco"
    images, anns = [], []
    for i in range(frames):
        rel = f"images/seq1/{i}.bmp"
        _save(root / rel, np.full(SIZE, 40 + 10 * i))
        images.append({"id": i + 1, "file_name": rel, "width": SIZE[1], "height": SIZE[0]})
        anns.append({"id": i + 1, "image_id": i + 1, "bbox": [10, 12, 6, 5], "category_id": 1, "area": 30,
                     "iscrowd": 0})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "target"}]}
    _coco_json(root).write_text(json.dumps(coco))
    _coco_list(root).write_text("".join(f"{im['file_name']} 10,12,16,17,0\n" for im in images))
    return root


def _edit_json(root: Path, edit: Callable[[dict], object]) -> Path:
    path = _coco_json(root)
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    return path


def _nudt_root(tmp: Path, frames: int = 6, seqs: tuple[str, ...] = ("Sequence1",)) -> Path:
    """`tmp/nudt`: Sequence<N>/{images,masks}/<00001>.png (32x32, one target pixel), train.txt, test.txt."""
    root = tmp / "nudt"
    mask = np.zeros(NUDT_SIZE)
    mask[10:12, 14:16] = 255
    for seq in seqs:
        for i in range(1, frames + 1):
            _save(root / seq / "images" / f"{i:05d}.png", np.full(NUDT_SIZE, 90 + i))
            _save(root / seq / "masks" / f"{i:05d}.png", mask)
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("".join(f"{s}/Mix/00001.mat\n" for s in seqs))
    return root


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@functools.cache
def _model(name: str, **kw) -> torch.nn.Module:
    return nets.build_model(name, **kw).eval()


def _stmenet(variant: str) -> torch.nn.Module:
    return _model("stmenet", variant=variant)


def _official_file(tmp: Path, name: str, obj) -> Path:
    path = tmp / name
    torch.save(obj, path)
    return path


class _NotAWeight:
    """A pickled class: the weights-only unpickler must refuse it."""


# --------------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    provoke: Callable[[Path], object]
    exc: type | tuple = ToolboxError
    match: str = ""
    name: str | None = None  # must appear in the message (file name, option, ...)
    kind: str = "raise"  # "raise" | "cli" | "ok"


def _lines(path: Path, text: str) -> Callable[[Path], object]:
    return lambda tmp: read_txt_list(_write(tmp / path, text))


# -- STMENet loaders: txt list (training) ----------------------------------------------------------------


def _list_data_root_missing(tmp):
    root = _coco_root(tmp)
    CocoClipDataset(_coco_list(root), input_size=64, data_root=tmp / "no_such_root")


def _list_frame_missing(tmp):
    root = _coco_root(tmp)
    (root / "images/seq1/2.bmp").unlink()
    CocoClipDataset(_coco_list(root), input_size=64)[2]


def _list_corrupt_image(tmp):
    root = _coco_root(tmp)
    _write(root / "images/seq1/1.bmp", b"BM this is not a bitmap")
    CocoClipDataset(_coco_list(root), input_size=64)[3]


def _list_zero_byte_image(tmp):
    root = _coco_root(tmp)
    _write(root / "images/seq1/1.bmp", b"")
    CocoClipDataset(_coco_list(root), input_size=64)[1]


def _list_frame_sizes_differ(tmp):
    root = _coco_root(tmp)
    _save(root / "images/seq1/1.bmp", np.zeros((48, 64)))
    CocoClipDataset(_coco_list(root), input_size=64)[3]


def _list_frame_name_not_index(tmp):
    root = _coco_root(tmp)
    _save(root / "images/seq1/frame_a.bmp", np.zeros(SIZE))
    CocoClipDataset(_write(root / "named.txt", "images/seq1/frame_a.bmp 1,1,5,5,0\n"), input_size=64)[0]


def _list_foreign_abs_path(tmp):
    root = _coco_root(tmp)
    CocoClipDataset(_write(root / "abs.txt", "/home/someone/DAUB/seq1/0.bmp 1,1,5,5,0\n"), data_root=root)


# -- STMENet loaders: COCO json (evaluation) -------------------------------------------------------------


def _json_missing(tmp):
    root = _coco_root(tmp)
    CocoEvalClips(root / "instances_val2017.json", input_size=64)


def _json_malformed(tmp):
    root = _coco_root(tmp)
    _write(_coco_json(root), '{"images": [ {"id": 1,')
    CocoEvalClips(_coco_json(root), input_size=64)


def _json_not_object(tmp):
    root = _coco_root(tmp)
    _write(_coco_json(root), "[1, 2, 3]")
    CocoEvalClips(_coco_json(root), input_size=64)


def _json_without(key):
    def provoke(tmp):
        root = _coco_root(tmp)
        CocoEvalClips(_edit_json(root, lambda c: c.pop(key)), input_size=64)
    return provoke


def _json_empty_split(tmp):
    root = _coco_root(tmp)
    CocoEvalClips(_edit_json(root, lambda c: c.update(images=[], annotations=[])), input_size=64)


def _json_unknown_image_id(tmp):
    root = _coco_root(tmp)
    CocoEvalClips(_edit_json(root, lambda c: c["annotations"][1].update(image_id=999)), input_size=64)


def _json_image_missing(tmp):
    root = _coco_root(tmp)
    (root / "images/seq1/3.bmp").unlink()
    CocoEvalClips(_coco_json(root), input_size=64)


def _json_image_entry_broken(tmp):
    root = _coco_root(tmp)
    CocoEvalClips(_edit_json(root, lambda c: c["images"][2].pop("file_name")), input_size=64)


def _json_size_disagrees(tmp):
    root = _coco_root(tmp)
    path = _edit_json(root, lambda c: c["images"][0].update(width=640, height=480))
    list(CocoEvalClips(path, input_size=64))


def _json_corrupt_image(tmp):
    root = _coco_root(tmp)
    _write(root / "images/seq1/0.bmp", b"\x00" * 100)
    list(CocoEvalClips(_coco_json(root), input_size=64))


def _json_data_root_missing(tmp):
    root = _coco_root(tmp)
    CocoEvalClips(_coco_json(root), input_size=64, data_root=tmp / "no_such_root")


def _json_edit(edit: Callable[[dict], object]):
    def provoke(tmp):
        CocoEvalClips(_edit_json(_coco_root(tmp), edit), input_size=64)
    return provoke


def _json_annotation_ids_zero(tmp):
    """Annotation ids 0 (and repeated) are re-indexed: perfect detections score 1, not 0.25."""
    def zero_ids(c):
        for a in c["annotations"]:
            a["id"] = 0
    path = _edit_json(_coco_root(tmp), zero_ids)
    dets = [dict(_dets(i)[0], score=0.9 - 0.1 * i) for i in range(1, 5)]
    m = coco_box_metrics(path, dets)
    assert m["ap50"] == pytest.approx(1.0) and m["stats"][0] == pytest.approx(1.0)


# -- converter ---------------------------------------------------------------------------------------------


def _convert_cli(edit: Callable[[dict], object]):
    def provoke(tmp):
        path = _edit_json(_coco_root(tmp), edit)
        return coco_to_txt.main, ["--json", str(path), "--root", "", "--out", str(tmp / "out.txt")]
    return provoke


def _convert_infinite_bbox(tmp):
    path = _coco_json(_coco_root(tmp))
    path.write_text(path.read_text().replace("[10, 12, 6, 5]", "[1e999, 12, 6, 5]", 1))
    return coco_to_txt.main, ["--json", str(path), "--root", "", "--out", str(tmp / "out.txt")]


# -- NUDT-MIRSDT loaders -----------------------------------------------------------------------------------


def _nudt_split_missing(tmp):
    NUDTTestSequences(_nudt_root(tmp, frames=40), "val")


def _nudt_split_empty(tmp):
    root = _nudt_root(tmp, frames=40)
    _write(root / "test.txt", "\n  \n")
    NUDTTestSequences(root, "test")


def _nudt_split_binary(tmp):
    root = _nudt_root(tmp, frames=40)
    _write(root / "test.txt", b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    NUDTTestSequences(root, "test")


def _nudt_sequence_folder_missing(tmp):
    root = _nudt_root(tmp, frames=40)
    _write(root / "test.txt", "Sequence1/Mix/00001.mat\nSequence99/Mix/00001.mat\n")
    NUDTTestSequences(root, "test")


def _nudt_mask_count(tmp):
    root = _nudt_root(tmp, frames=8)
    (root / "Sequence1/masks/00004.png").unlink()
    NUDTTrainDataset(root, seqlen=8, resize=None, patch=None)


def _nudt_mask_root_missing(tmp):
    NUDTTrainDataset(_nudt_root(tmp), seqlen=8, resize=None, patch=None, mask_root=tmp / "clean_root")


def _nudt_too_short_for_test(tmp):
    NUDTTestSequences(_nudt_root(tmp, frames=12), "test")


def _nudt_too_short_for_training(tmp):
    NUDTTrainDataset(_nudt_root(tmp, frames=3), seqlen=40, resize=None, patch=None)


def _nudt_frame_sizes_differ(tmp):
    root = _nudt_root(tmp, frames=8)
    _save(root / "Sequence1/images/00005.png", np.zeros((24, 32)))
    NUDTTestSequences(root, "test", min_frames=8)[0]


def _nudt_corrupt_frame(tmp):
    root = _nudt_root(tmp, frames=8)
    _write(root / "Sequence1/images/00003.png", b"\x89PNG\r\n\x1a\n truncated")
    NUDTTrainDataset(root, seqlen=8, resize=None, patch=None)[2]


def _nudt_zero_byte_mask(tmp):
    root = _nudt_root(tmp, frames=8)
    _write(root / "Sequence1/masks/00002.png", b"")
    NUDTTestSequences(root, "test", min_frames=8)[0]


def _nudt_patch_too_big(tmp):
    NUDTTrainDataset(_nudt_root(tmp, frames=8), seqlen=8, resize=None, patch=128)[1]


# -- models ------------------------------------------------------------------------------------------------


def _deeppro_t(tmp):
    _model("deeppro", seqlen=40)(torch.zeros(1, 1, 20, 16, 16))


def _deeppro_channels(tmp):
    _model("deeppro_plus", seqlen=40)(torch.zeros(1, 3, 40, 16, 16))


def _deeppro_rank(tmp):
    _model("deeppro", seqlen=40)(torch.zeros(1, 40, 16, 16))


def _deeppro_tiny_frames(tmp):
    _model("deeppro", seqlen=40)(torch.zeros(1, 1, 40, 3, 16))


def _stmenet_not_32(tmp):
    _stmenet("itsdt")(torch.zeros(1, 3, 5, 100, 128))


def _stmenet_rank(tmp):
    _stmenet("itsdt")(torch.zeros(1, 3, 64, 64))


def _stmenet_channels(tmp):
    _stmenet("itsdt")(torch.zeros(1, 1, 5, 64, 64))


# -- checkpoints -------------------------------------------------------------------------------------------


def _plus_into_deeppro(tmp):
    plus = _official_file(tmp, "DeepPro-Plus_best_model.pth",
                          {"model_state_dict": _model("deeppro_plus", seqlen=40).state_dict(), "epoch": 3})
    nets.load_official(nets.build_model("deeppro"), plus)


def _irdst_into_itsdt(tmp):
    path = _official_file(tmp, "STME_IRDST.pth", _stmenet("irdst").to_official())
    nets.load_official(nets.build_model("stmenet", variant="itsdt"), path)


def _itsdt_into_irdst(tmp):
    state = _stmenet("itsdt").to_official()
    state["feature_fusion.C3_p3.conv1.conv.weight"] = torch.zeros(64, 128, 1, 1)  # the authors' unused block
    path = _official_file(tmp, "STME_ITSDT.pth", state)
    nets.load_official(nets.build_model("stmenet", variant="irdst"), path)


def _official_truncated(tmp):
    path = _official_file(tmp, "DeepPro_best_model.pth",
                          {"model_state_dict": _model("deeppro", seqlen=40).state_dict()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    nets.load_official(nets.build_model("deeppro"), path)


def _official_not_a_checkpoint(tmp):
    path = _save(tmp / "frame_00001.png", np.zeros((8, 8)))
    nets.load_official(nets.build_model("deeppro"), path)


def _official_no_tensors(tmp):
    path = _official_file(tmp, "optimizer_only.pth", {"epoch": 7, "lr": 0.001})
    nets.load_official(nets.build_model("deeppro"), path)


def _official_missing(tmp):
    nets.load_official(nets.build_model("deeppro"), tmp / "best_model.pth")


def _official_unsafe_pickle(tmp):
    path = _official_file(tmp, "pickled_object.pth", {"model_state_dict": _NotAWeight()})
    nets.load_official(nets.build_model("deeppro"), path)


def _train_ckpt_truncated(tmp):
    state = _model("deeppro", seqlen=40).state_dict()
    path = _official_file(tmp, "last.pt", {"format": ck.FORMAT, "model": state})
    path.write_bytes(path.read_bytes()[:1000])
    ck.load_checkpoint(path)


def _train_ckpt_empty(tmp):
    ck.load_checkpoint(_write(tmp / "last.pt", b""))


def _train_ckpt_foreign(tmp):
    state = _model("deeppro", seqlen=40).state_dict()
    path = _official_file(tmp, "best_model.pth", {"model_state_dict": state})
    ck.load_checkpoint(path)


def _train_ckpt_not_a_checkpoint(tmp):
    ck.load_checkpoint(_save(tmp / "frame_00001.png", np.zeros((8, 8))))


def _train_ckpt_unsafe(tmp):
    ck.load_checkpoint(_official_file(tmp, "evil.pt", {"format": ck.FORMAT, "model": _NotAWeight()}))


def _train_ckpt_other_model(tmp):
    identity = {"name": "stmenet", "kwargs": {"variant": "irdst"}}
    path = _official_file(tmp, "best.pt", {"format": ck.FORMAT, "identity": identity, "model": {}})
    ck.load_weights(_stmenet("itsdt"), path, identity={"name": "stmenet", "kwargs": {"variant": "itsdt"}})


def _train_ckpt_weights_do_not_fit(tmp):
    state = _model("deeppro_plus", seqlen=40).state_dict()
    path = _official_file(tmp, "best.pt", {"format": ck.FORMAT, "model": state, "ema": None})
    ck.load_weights(nets.build_model("deeppro"), path)


# -- metrics -----------------------------------------------------------------------------------------------


def _gt(tmp) -> Path:
    return _coco_json(_coco_root(tmp))


def _dets(image_id: int = 1) -> list[dict]:
    return [{"image_id": image_id, "category_id": 1, "bbox": [10, 12, 6, 5], "score": 0.9}]


def _metrics_gt_missing(tmp):
    coco_box_metrics(tmp / "instances_test2017.json", [])


def _metrics_gt_malformed(tmp):
    coco_box_metrics(_write(tmp / "gt.json", "{'images': []}"), [])


def _metrics_gt_no_categories(tmp):
    root = _coco_root(tmp)
    coco_box_metrics(_edit_json(root, lambda c: c.pop("categories")), [])


def _metrics_dets_malformed(tmp):
    coco_box_metrics(_gt(tmp), _write(tmp / "results.json", '[{"image_id": 1, "bbox": [1, 2'))


def _metrics_dets_not_list(tmp):
    coco_box_metrics(_gt(tmp), _write(tmp / "results.json", json.dumps({"image_id": 1})))


def _metrics_dets_missing_keys(tmp):
    dets = [{"image_id": 1, "bbox": [1, 2, 3, 4]}]
    coco_box_metrics(_gt(tmp), _write(tmp / "results.json", json.dumps(dets)))


def _metrics_dets_unknown_image(tmp):
    coco_box_metrics(_gt(tmp), _write(tmp / "results.json", json.dumps(_dets(999))))


def _metrics_dets_unknown_category(tmp):
    dets = [dict(_dets()[0], category_id=5)]
    coco_box_metrics(_gt(tmp), _write(tmp / "results.json", json.dumps(dets)))


def _metrics_dets_bad_bbox(tmp):
    dets = [dict(_dets()[0], bbox="10 12 6 5")]
    coco_box_metrics(_gt(tmp), _write(tmp / "results.json", json.dumps(dets)))


def _metrics_empty_gt_annotated(tmp):
    root = _coco_root(tmp)
    coco_box_metrics(_edit_json(root, lambda c: c.update(annotations=[])), _dets())


def _metrics_empty_detections(tmp):
    gt = _gt(tmp)
    for dets in ([], _write(tmp / "results.json", "[]")):
        m = coco_box_metrics(gt, dets)
        assert m["ap50"] == m["P"] == m["R"] == m["F1"] == 0.0 and m["num_detections"] == 0
        assert m["precision_50"] == [0.0] * 101


def _metrics_empty_gt_all(tmp):
    root = _coco_root(tmp)
    m = coco_box_metrics(_edit_json(root, lambda c: c.update(annotations=[])), _dets(), protocol="all")
    assert m["ap50"] == m["R"] == m["P"] == m["F1"] == 0.0 and m["num_images"] == 4


def _pd_fa_empty_gt(tmp):
    prob = np.zeros((3, 16, 16), np.float32)
    prob[1, 4, 4] = 0.9
    res = pd_fa(prob, np.zeros_like(prob))
    assert (res["targets"] == 0).all() and (res["tp"] == 0).all() and np.isnan(res["pd"]).all()
    assert np.isfinite(res["fa"]).all() and res["fa_pixels"][res["thresholds"] == 0.5][0] == 1
    pooled = pool_pd_fa([res])
    assert np.isnan(pooled["pd"]).all() and np.isfinite(pooled["fa"]).all()
    truth = np.zeros_like(prob)
    truth[2, 8, 8] = 1
    prob[2, 8, 8] = 0.8
    mixed = pool_pd_fa([res, pd_fa(prob, truth)])  # one sequence without targets does not spoil the pool
    assert (mixed["targets"] == 1).all() and math.isfinite(mixed["auc"])


def _pd_fa_shapes_differ(tmp):
    pd_fa(np.zeros((3, 16, 16)), np.zeros((3, 16, 15)))


def _pr_file_cli(text: str | bytes | None):
    def provoke(tmp):
        path = tmp / "STMENet_pr.txt"
        if text is not None:
            _write(path, text)
        return importlib.import_module("plot_pr").main, [str(path), "--out", str(tmp / "pr.png")]
    return provoke


# -- synthetic generator, engine ---------------------------------------------------------------------------


def _synth_cli(*args: str):
    def provoke(tmp):
        from utils.synth import main
        return main, ["--out", str(tmp / "synth"), "--frames", "4", "--num-seqs", "1,0,1", *args]
    return provoke


def _engine_cfg(tmp, **kw) -> TrainConfig:
    return quick_config(tmp, **{"epochs": 1, **kw})


def _engine_task(**kw) -> Task:
    base = dict(model=tiny_model, model_name="tiny", model_kwargs={"width": 16}, loss_fn=mse_loss,
                train_dataset=NoisyRegression(16), select_metric="train_loss", select_mode="min")
    base.update(kw)
    return Task(**base)


def _engine_nan_loss(tmp):
    calls = [0]

    def loss_fn(out, y):
        calls[0] += 1
        loss, parts = mse_loss(out, y)
        return (loss * float("nan"), parts) if calls[0] == 2 else (loss, parts)

    train(_engine_cfg(tmp), _engine_task(loss_fn=loss_fn))


def _engine_run_exists(tmp):
    train(_engine_cfg(tmp), _engine_task())
    train(_engine_cfg(tmp), _engine_task())


def _engine_resume_missing(tmp):
    train(_engine_cfg(tmp, resume=str(tmp / "old_run" / "last.pt")), _engine_task())


def _engine_resume_other_model(tmp):
    train(_engine_cfg(tmp), _engine_task())
    task = _engine_task(model_kwargs={"width": 32})
    train(_engine_cfg(tmp, out=str(tmp / "run2"), resume=str(tmp / "run" / "last.pt")), task)


def _engine_nan_gradients(tmp):
    def loss_fn(out, y):
        out.register_hook(lambda g: g * float("nan"))  # the loss stays finite, its gradient does not
        return mse_loss(out, y)

    train(_engine_cfg(tmp), _engine_task(loss_fn=loss_fn))


def _engine_nan_weights(tmp):
    class Blows(torch.optim.SGD):
        steps = 0

        def step(self, closure=None):
            super().step(closure)
            Blows.steps += 1
            if Blows.steps == 2:  # the last step of the epoch overflows the first layer
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("inf"))

    train(_engine_cfg(tmp), _engine_task(make_optimizer=lambda groups: Blows(groups, lr=0.01)))


def _engine_batch_of_one(tmp):
    train(_engine_cfg(tmp, batch_size=1), _engine_task())


def _engine_folder_locked(tmp):
    lock = ck.RunLock(tmp / "run").acquire()  # another job holds the folder
    try:
        train(_engine_cfg(tmp), _engine_task())
    finally:
        lock.release()


def _engine_earlier_run_without_last(tmp):
    train(_engine_cfg(tmp), _engine_task())
    (tmp / "run" / "last.pt").unlink()
    train(_engine_cfg(tmp, resume="auto"), _engine_task())


def _engine_resume_into_other_run(tmp):
    train(_engine_cfg(tmp), _engine_task())
    train(_engine_cfg(tmp, out=str(tmp / "other")), _engine_task())
    train(_engine_cfg(tmp, epochs=2, resume=str(tmp / "other" / "last.pt")), _engine_task())


def _train_ckpt_corrupt(tmp):
    train(_engine_cfg(tmp), _engine_task())
    path = tmp / "run" / "last.pt"
    data = bytearray(path.read_bytes())
    weight = torch.load(path, weights_only=True)["model"]["0.weight"]
    data[data.find(weight.numpy().tobytes()) + 2] ^= 1  # one flipped bit
    path.write_bytes(bytes(data))
    ck.load_checkpoint(path)


def _json_annotation_not_object(tmp):
    root = _coco_root(tmp)
    CocoEvalClips(_edit_json(root, lambda c: c["annotations"].insert(1, None)), input_size=64)


def _metrics_gt_annotation_without_image_id(tmp):
    root = _coco_root(tmp)
    coco_box_metrics(_edit_json(root, lambda c: c["annotations"][1].pop("image_id")), _dets())


def _metrics_dets_bbox_null(tmp):
    dets = [dict(_dets()[0], bbox=None)]
    coco_box_metrics(_gt(tmp), _write(tmp / "results.json", json.dumps(dets)))


def _metrics_dets_edit(**change):
    """Results json: a good detection on every image, entry 2 changed (NaN is written as json NaN)."""
    def provoke(tmp):
        dets = [_dets(i)[0] for i in range(1, 5)]
        dets[2].update(change)
        coco_box_metrics(_gt(tmp), _write(tmp / "results.json", json.dumps(dets)))
    return provoke


# -- the scripts (through utils.cli.run_main, as users run them) --------------------------------------------


def _script(module: str, args_of: Callable[[Path], list[str]], entry: str = "main"):
    """The script's entry point and argv (with --out in tmp, so nothing is written to the working tree)."""
    def provoke(tmp):
        return getattr(importlib.import_module(module), entry), [*args_of(tmp), "--out", str(tmp / "run")]
    return provoke


def _nudt_script(module: str, args_of: Callable[[Path], list[str]]):
    return _script(module, args_of, entry="cli")


# Our DeepPro-Plus key names -> the authors' (the inverse of DeepProPlus.convert_official).
_TO_AUTHORS_PLUS = [
    (r"^stem\.conv\.", "conv_in.0."), (r"^stem\.bn\.", "conv_in.1."), (r"^block1\.", "layer1.0."),
    (r"^block2\.", "layer1.1."), (r"^tpro\.heads\.", "TPro.QK_heads."), (r"^tpro\.bn\.", "TPro.norm1."),
    (r"^tpro\.mix\.conv\.", "TPro.conv.0."), (r"^tpro\.mix\.bn\.", "TPro.conv.1."), (r"^tpro\.", "TPro."),
    (r"^proj\.conv\.", "conv_out1.0."), (r"^proj\.bn\.", "conv_out1.1."), (r"^head\.", "conv_out2."),
    (r"\.skip\.conv\.", ".shortcut.0."), (r"\.skip\.bn\.", ".shortcut.1."),
]


def _authors_plus_weights(tmp) -> str:
    """An official-format DeepPro-Plus checkpoint (`model_state_dict` in the authors' key names)."""
    state = {}
    for key, value in _model("deeppro_plus", seqlen=40).state_dict().items():
        for pattern, repl in _TO_AUTHORS_PLUS:
            key = re.sub(pattern, repl, key)
        state[key] = value
    nets.load_official(nets.build_model("deeppro_plus"), {"model_state_dict": state})  # it is the real format
    return str(_official_file(tmp, "DeepPro-Plus_best_model.pth", {"model_state_dict": state, "epoch": 9}))


def _irdst_weights(tmp) -> str:
    return str(_official_file(tmp, "STME_IRDST.pth", _stmenet("irdst").to_official()))


def _deeppro_train_ckpt(tmp) -> str:
    identity = {"name": "deeppro", "kwargs": {"seqlen": 40}}
    state = _model("deeppro", seqlen=40).state_dict()
    return str(_official_file(tmp, "best.pt", {"format": ck.FORMAT, "identity": identity, "model": state}))


def _negative_class_root(tmp) -> list[str]:
    root = _coco_root(tmp)
    _coco_list(root).write_text("images/seq1/0.bmp 10,12,16,17,0\nimages/seq1/1.bmp 10,12,16,17,-1\n")
    return ["--data-root", str(root)]


def _stmenet_train_ckpt(tmp) -> str:
    identity = {"name": "stmenet", "kwargs": {"variant": "itsdt"}}
    return str(_official_file(tmp, "best.pt", {"format": ck.FORMAT, "identity": identity, "model": {}}))


def _results_unknown_image(tmp) -> list[str]:
    root = _coco_root(tmp)
    results = _write(tmp / "eval_results.json", json.dumps(_dets(999)))
    return ["--data-root", str(root), "--results", str(results)]


CASES = [
    # STMENet training list
    Case("list-missing", lambda tmp: CocoClipDataset(tmp / "coco_train_ITSDT.txt"), DataError,
         "list file not found", "coco_train_ITSDT.txt"),
    Case("list-data-root-missing", _list_data_root_missing, DataError, "data root not found", "no_such_root"),
    Case("list-empty", _lines(Path("empty.txt"), "\n\n"), DataError, "empty split", "empty.txt"),
    Case("list-binary", lambda tmp: read_txt_list(_write(tmp / "list.txt", b"\xff\xd8\xff\xe0 JFIF\x00")),
         DataError, "", "list.txt"),
    Case("list-box-4-fields", _lines(Path("bad.txt"), "a/0.bmp 1,2,3,4,0\na/1.bmp 1,2,3,4\n"), DataError,
         "malformed box", "bad.txt:2"),
    Case("list-box-not-a-number", _lines(Path("bad.txt"), "a/0.bmp 1,2,x,4,0\n"), DataError,
         "malformed box", "bad.txt:1"),
    Case("list-box-float", _lines(Path("bad.txt"), "a/0.bmp 1.5,2,3,4,0\n"), DataError, "malformed box",
         "bad.txt:1"),
    Case("list-box-spaces", _lines(Path("bad.txt"), "a/0.bmp 1, 2, 3, 4, 0\n"), DataError, "malformed box",
         "bad.txt:1"),
    Case("list-negative-class", _lines(Path("bad.txt"), "a/0.bmp 1,2,3,4,-1\n"), DataError, "class",
         "bad.txt:1"),
    Case("list-inverted-box", _lines(Path("bad.txt"), "a/0.bmp 1,2,3,4,0 9,9,3,4,0\n"), DataError, "x2",
         "bad.txt:1"),
    Case("list-huge-number", _lines(Path("bad.txt"), "a/0.bmp 1,2,3,99999999999999999999999,0\n"), DataError,
         "", "bad.txt:1"),
    Case("list-foreign-absolute-path", _list_foreign_abs_path, DataError, "cannot remap", "/home/someone"),
    Case("list-frame-missing", _list_frame_missing, DataError, "frame not found", "seq1/2.bmp"),
    Case("list-corrupt-image", _list_corrupt_image, DataError, "cannot read image", "seq1/1.bmp"),
    Case("list-zero-byte-image", _list_zero_byte_image, DataError, "cannot read image", "seq1/1.bmp"),
    Case("list-frame-sizes-differ", _list_frame_sizes_differ, DataError, "differs from the key frame",
         "seq1/1.bmp"),
    Case("list-frame-name-not-index", _list_frame_name_not_index, DataError, "not an integer index",
         "frame_a.bmp"),
    # STMENet evaluation json
    Case("json-missing", _json_missing, DataError, "not found", "instances_val2017.json"),
    Case("json-malformed", _json_malformed, DataError, "not a readable json", "instances_test2017.json"),
    Case("json-not-an-object", _json_not_object, DataError, "must be an object", "instances_test2017.json"),
    Case("json-no-images", _json_without("images"), DataError, "no 'images'", "instances_test2017.json"),
    Case("json-no-annotations", _json_without("annotations"), DataError, "no 'annotations'",
         "instances_test2017.json"),
    Case("json-empty-split", _json_empty_split, DataError, "empty split", "instances_test2017.json"),
    Case("json-unknown-image-id", _json_unknown_image_id, DataError, "image_id 999",
         "instances_test2017.json"),
    Case("json-image-entry-broken", _json_image_entry_broken, DataError, "lacks 'id' or 'file_name'",
         "instances_test2017.json"),
    Case("json-image-missing", _json_image_missing, DataError, "not found", "seq1/3.bmp"),
    Case("json-corrupt-image", _json_corrupt_image, DataError, "cannot read image", "seq1/0.bmp"),
    Case("json-size-disagrees", _json_size_disagrees, DataError, "says 640x480", "seq1/0.bmp"),
    Case("json-data-root-missing", _json_data_root_missing, DataError, "data root not found", "no_such_root"),
    Case("json-repeated-image-id", _json_edit(lambda c: c["images"][2].update(id=1)), DataError,
         r"image id 1 is repeated \(image entries 0 and 2\)", "instances_test2017.json"),
    Case("json-image-id-not-an-integer", _json_edit(lambda c: c["images"][1].update(id="2")), DataError,
         "image entry 1 has id '2'", "instances_test2017.json"),
    Case("json-no-categories", _json_edit(lambda c: c.pop("categories")), DataError, "no 'categories' list",
         "instances_test2017.json"),
    Case("json-unknown-category", _json_edit(lambda c: c["annotations"][1].update(category_id=7)), DataError,
         "annotation 1 has category_id 7, which is not in 'categories'", "instances_test2017.json"),
    Case("json-repeated-category-id", _json_edit(lambda c: c["categories"].append({"id": 1, "name": "b"})),
         DataError, r"category id 1 is repeated \(category entries 0 and 1\)", "instances_test2017.json"),
    Case("json-box-non-positive-size", _json_edit(lambda c: c["annotations"][2].update(bbox=[10, 12, 0, 5])),
         DataError, "annotation 2 has a box of non-positive size", "instances_test2017.json"),
    Case("json-box-outside-image", _json_edit(lambda c: c["annotations"][3].update(bbox=[60, 12, 6, 5])),
         DataError, "annotation 3 box .* lies outside its 64x64 image", "instances_test2017.json"),
    Case("json-annotation-ids-zero", _json_annotation_ids_zero, kind="ok"),
    # converter (through its CLI)
    Case("convert-json-missing",
         lambda tmp: (coco_to_txt.main, ["--json", str(tmp / "instances_train2017.json"), "--root", "",
                                         "--out", str(tmp / "o.txt")]),
         match="COCO json not found", name="instances_train2017.json", kind="cli"),
    Case("convert-bad-bbox", _convert_cli(lambda c: c["annotations"][0].update(bbox=[1, 2, 3])),
         match="malformed bbox", name="instances_test2017.json", kind="cli"),
    Case("convert-annotation-without-bbox", _convert_cli(lambda c: c["annotations"][2].pop("bbox")),
         match="annotation 2 lacks", name="instances_test2017.json", kind="cli"),
    Case("convert-file-name-with-space",
         _convert_cli(lambda c: c["images"][1].update(file_name="images/seq 1/1.bmp")),
         match="image entry 1 file_name 'images/seq 1/1.bmp' holds whitespace",
         name="instances_test2017.json", kind="cli"),
    # NUDT-MIRSDT
    Case("nudt-root-missing", lambda tmp: NUDTTestSequences(tmp / "NUDT-MIRSDT"), DataError,
         "data root not found", "NUDT-MIRSDT"),
    Case("nudt-split-missing", _nudt_split_missing, DataError, "split file not found", "val.txt"),
    Case("nudt-split-empty", _nudt_split_empty, DataError, "empty split", "test.txt"),
    Case("nudt-split-malformed-line", lambda tmp: read_split(_write(tmp / "test.txt", "Sequence1/a\n/x\n")),
         DataError, "malformed line", "test.txt:2"),
    Case("nudt-split-binary", _nudt_split_binary, DataError, "", "test.txt"),
    Case("nudt-sequence-missing", _nudt_sequence_folder_missing, DataError, "folder not found", "Sequence99"),
    Case("nudt-mask-count", _nudt_mask_count, DataError, "7 masks for 8 frames", "Sequence1/masks"),
    Case("nudt-mask-root-missing", _nudt_mask_root_missing, DataError, "mask root not found", "clean_root"),
    Case("nudt-shorter-than-clip", _nudt_too_short_for_test, DataError, "shorter than the 40-frame clip",
         "Sequence1"),
    Case("nudt-too-short-to-train", _nudt_too_short_for_training, DataError, "too short", "Sequence1"),
    Case("nudt-frame-sizes-differ", _nudt_frame_sizes_differ, DataError, "differs", "images/00005.png"),
    Case("nudt-corrupt-frame", _nudt_corrupt_frame, DataError, "cannot read image", "images/00003.png"),
    Case("nudt-zero-byte-mask", _nudt_zero_byte_mask, DataError, "cannot read image", "masks/00002.png"),
    Case("nudt-patch-larger-than-frames", _nudt_patch_too_big, ConfigError, "smaller than the 128x128 crop",
         "Sequence1"),
    # models (tensor in, tensor out: plain ValueError naming the expected layout)
    Case("deeppro-t-not-40", _deeppro_t, ValueError, r"T must equal seqlen=40", "[1, 1, 20, 16, 16]"),
    Case("deeppro-channels", _deeppro_channels, ValueError, r"\[B, 1, 40, H, W\]", "[1, 3, 40, 16, 16]"),
    Case("deeppro-rank", _deeppro_rank, ValueError, r"\[B, 1, 40, H, W\]", "[1, 40, 16, 16]"),
    Case("deeppro-frames-below-4x4", _deeppro_tiny_frames, ValueError, "at least 4x4", "3x16"),
    Case("stmenet-hw-not-multiple-of-32", _stmenet_not_32, ValueError, "multiples of 32", "H=100"),
    Case("stmenet-rank", _stmenet_rank, ValueError, "5-D input", "(1, 3, 64, 64)"),
    Case("stmenet-channels", _stmenet_channels, ValueError, "3 channels", "(1, 1, 5, 64, 64)"),
    # official checkpoints (nets.load_official: --weights of the evaluation scripts)
    Case("weights-deeppro-plus-into-deeppro", _plus_into_deeppro, ValueError, "do not fit DeepPro",
         "DeepPro-Plus_best_model.pth"),
    Case("weights-irdst-into-itsdt", _irdst_into_itsdt, ValueError, "IRDST STMENet variant",
         "STME_IRDST.pth"),
    Case("weights-itsdt-into-irdst", _itsdt_into_irdst, ValueError, "ITSDT/DAUB STMENet variant",
         "STME_ITSDT.pth"),
    Case("weights-truncated", _official_truncated, ValueError, "not a readable PyTorch checkpoint",
         "DeepPro_best_model.pth"),
    Case("weights-not-a-checkpoint", _official_not_a_checkpoint, ValueError,
         "not a (readable )?PyTorch checkpoint", "frame_00001.png"),
    Case("weights-no-tensors", _official_no_tensors, ValueError, "no tensors", "optimizer_only.pth"),
    Case("weights-missing", _official_missing, FileNotFoundError, "not found", "best_model.pth"),
    Case("weights-unsafe-pickle", _official_unsafe_pickle, ValueError,
         "cannot be loaded safely|not a readable PyTorch checkpoint", "pickled_object.pth"),
    # training checkpoints (utils.checkpoint: --resume, best.pt)
    Case("ckpt-truncated", _train_ckpt_truncated, CheckpointError, "truncated or corrupt", "last.pt"),
    Case("ckpt-empty", _train_ckpt_empty, CheckpointError, "empty checkpoint", "last.pt"),
    Case("ckpt-not-a-training-checkpoint", _train_ckpt_foreign, CheckpointError, "not a training checkpoint",
         "best_model.pth"),
    Case("ckpt-not-a-checkpoint", _train_ckpt_not_a_checkpoint, CheckpointError, "not a PyTorch checkpoint",
         "frame_00001.png"),
    Case("ckpt-corrupt", _train_ckpt_corrupt, CheckpointError, "corrupt checkpoint .*digest", "last.pt"),
    Case("ckpt-unsafe-pickle", _train_ckpt_unsafe, CheckpointError, "cannot be loaded safely", "evil.pt"),
    Case("ckpt-other-model", _train_ckpt_other_model, CheckpointError,
         r"is for stmenet\(variant=irdst\).*stmenet\(variant=itsdt\)", "best.pt"),
    Case("ckpt-weights-do-not-fit", _train_ckpt_weights_do_not_fit, CheckpointError, "do not fit this model",
         "best.pt"),
    # metrics
    Case("metrics-gt-missing", _metrics_gt_missing, DataError, "COCO json not found",
         "instances_test2017.json"),
    Case("metrics-gt-malformed", _metrics_gt_malformed, DataError, "not a readable json", "gt.json"),
    Case("metrics-gt-no-categories", _metrics_gt_no_categories, DataError, "no 'categories' list",
         "instances_test2017.json"),
    Case("metrics-dets-malformed", _metrics_dets_malformed, DataError, "malformed json", "results.json"),
    Case("metrics-dets-not-a-list", _metrics_dets_not_list, DataError, "must be a list", "results.json"),
    Case("metrics-dets-missing-keys", _metrics_dets_missing_keys, DataError, "needs keys", "results.json"),
    Case("metrics-dets-unknown-image", _metrics_dets_unknown_image, DataError,
         r"image ids not in.*\[999\]; first at entry 0", "results.json"),
    Case("metrics-dets-unknown-category", _metrics_dets_unknown_category, DataError,
         r"category ids \[5\] are not in .*first at entry 0", "results.json"),
    Case("metrics-dets-nan-score", _metrics_dets_edit(score=math.nan), DataError,
         "entry 2 has a non-finite score nan", "results.json"),
    Case("metrics-dets-infinite-bbox", _metrics_dets_edit(bbox=[10, 12, math.inf, 5]), DataError,
         r"entry 2 has a non-finite bbox \[10.0, 12.0, inf, 5.0\]", "results.json"),
    Case("metrics-dets-negative-size", _metrics_dets_edit(bbox=[10, 12, -6, 5]), DataError,
         "entry 2 bbox .* has a negative width or height", "results.json"),
    Case("metrics-dets-image-id-not-an-integer", _metrics_dets_edit(image_id="3"), DataError,
         "entry 2 needs an integer image_id", "results.json"),
    Case("metrics-dets-bad-bbox", _metrics_dets_bad_bbox, DataError, "bbox", "results.json"),
    Case("metrics-empty-gt-annotated", _metrics_empty_gt_annotated, DataError, "no images to score",
         "instances_test2017.json"),
    Case("metrics-empty-detections", _metrics_empty_detections, kind="ok"),
    Case("metrics-empty-gt-all", _metrics_empty_gt_all, kind="ok"),
    Case("pd-fa-empty-gt", _pd_fa_empty_gt, kind="ok"),
    Case("pd-fa-shapes-differ", _pd_fa_shapes_differ, ConfigError, "same shape", "[3, 16, 15]"),
    # PR files (plot_pr.py)
    Case("pr-file-missing", _pr_file_cli(None), match="PR file not found", name="STMENet_pr.txt", kind="cli"),
    Case("pr-file-not-numbers", _pr_file_cli("0.9\t0.8\tabc\t"), match="not a number", name="STMENet_pr.txt",
         kind="cli"),
    Case("pr-file-wrong-count", _pr_file_cli("0.9\t0.8\t0.7\t"), match="101 tab-separated values, found 3",
         name="STMENet_pr.txt", kind="cli"),
    Case("pr-file-binary", _pr_file_cli(b"\xff\xfe\x00\x01"), match="", name="STMENet_pr.txt", kind="cli"),
    # synthetic generator (make_synthetic.py)
    Case("synth-size-zero", _synth_cli("--size", "0"), match="--size >= 16x16", name="--size", kind="cli"),
    Case("synth-size-too-small-for-targets",
         _synth_cli("--format", "coco", "--style", "itsdt", "--size", "24"),
         match="too small for itsdt-style targets", name="--size 24x24", kind="cli"),
    Case("synth-size-not-a-size", _synth_cli("--size", "x"), match="--size", name="'x'", kind="cli"),
    Case("synth-snr-range-reversed", _synth_cli("--snr-range", "6", "2"), match="0 < LO <= HI",
         name="--snr-range", kind="cli"),
    Case("synth-frames-zero", _synth_cli("--frames", "0"), match="--frames >= 1", name="--frames",
         kind="cli"),
    Case("synth-targets-reversed", _synth_cli("--targets", "3-1"), match="0 <= A <= B", name="--targets",
         kind="cli"),
    Case("synth-num-seqs-malformed", _synth_cli("--num-seqs", "4,1"), match="TRAIN,VAL,TEST",
         name="--num-seqs", kind="cli"),
    # training engine
    Case("train-nan-loss", _engine_nan_loss, NonFiniteLossError,
         r"iteration 2/2: non-finite loss .* dataset items \[", "--skip-nonfinite"),
    Case("train-run-folder-taken", _engine_run_exists, ConfigError, "exists: pass --resume auto", "last.pt"),
    Case("train-resume-missing", _engine_resume_missing, CheckpointError, "checkpoint not found", "old_run"),
    Case("train-resume-other-model", _engine_resume_other_model, CheckpointError,
         r"is for tiny\(width=16\), this run builds tiny\(width=32\)", "last.pt"),
    Case("train-nan-gradients", _engine_nan_gradients, NonFiniteLossError,
         r"iteration 1/2: non-finite gradients \(loss .*\) on the batch of dataset items \[",
         "--skip-nonfinite"),
    Case("train-nan-weights", _engine_nan_weights, NonFiniteLossError,
         "epoch 1: the model weights hold NaN/inf .*not saved", "0.weight"),
    Case("train-batch-of-one", _engine_batch_of_one, ConfigError,
         r"leaves one value per channel in BatchNorm layer '1'", "--batch-size 1"),
    Case("train-run-folder-locked", _engine_folder_locked, ConfigError, r"in use by PID \d+ on host", "run"),
    Case("train-earlier-run-without-last", _engine_earlier_run_without_last, ConfigError,
         "exists .*no last.pt to resume", "best.pt"),
    Case("train-resume-into-other-run", _engine_resume_into_other_run, ConfigError,
         "holds another run's checkpoints", "--exist-ok"),
    # json values of the wrong type (found by the fuzzers below)
    Case("convert-image-id-not-a-number", _convert_cli(lambda c: c["annotations"][1].update(image_id=[2])),
         match="annotation 1", name="instances_test2017.json", kind="cli"),
    Case("convert-bbox-infinite", _convert_infinite_bbox, match="annotation 0 has a malformed bbox",
         name="instances_test2017.json", kind="cli"),
    Case("json-annotation-not-an-object", _json_annotation_not_object, DataError, "annotation 1",
         "instances_test2017.json"),
    Case("metrics-gt-annotation-without-image-id", _metrics_gt_annotation_without_image_id, DataError,
         r"annotations? (entry )?1", "instances_test2017.json"),
    Case("metrics-dets-bbox-null", _metrics_dets_bbox_null, DataError, "bbox", "results.json"),
    # STMENet scripts
    Case("script-train-data-root-missing",
         _script("train_ITSDT", lambda tmp: ["--data-root", str(tmp / "ITSDT")]),
         match="data root not found", name="ITSDT", kind="cli"),
    Case("script-train-input-size", _script("train_IRDST", lambda tmp: ["--input-size", "500"]),
         match="--input-size must be a positive multiple of 32", name="500", kind="cli"),
    Case("script-train-no-annotations", _script("train_DAUB", lambda tmp: ["--data-root", str(tmp)]),
         match="train json not found", name="instances_train2017.json", kind="cli"),
    Case("script-train-negative-class", _script("train_ITSDT", _negative_class_root),
         match="class index -1|negative class", name="coco_train_ITSDT.txt", kind="cli"),
    Case("script-eval-data-root-missing",
         _script("vid_map_coco_ITSDT", lambda tmp: ["--data-root", str(tmp / "ITSDT"), "--weights", "w.pt"]),
         match="data root not found", name="ITSDT", kind="cli"),
    Case("script-eval-no-weights", _script("vid_map_coco_IRDST", lambda tmp: ["--data-root", str(tmp)]),
         match="exactly one of --weights", name="--results", kind="cli"),
    Case("script-eval-weights-missing",
         _script("vid_map_coco_DAUB", lambda tmp: ["--data-root", str(_coco_root(tmp)),
                                                   "--weights", str(tmp / "best.pt")]),
         match="checkpoint not found", name="best.pt", kind="cli"),
    Case("script-eval-weights-not-a-checkpoint",
         _script("vid_map_coco_ITSDT", lambda tmp: ["--data-root", str(_coco_root(tmp)), "--weights",
                                                    str(_save(tmp / "0.bmp", np.zeros((8, 8))))]),
         match="neither a checkpoint", name="0.bmp", kind="cli"),
    Case("script-eval-irdst-weights-into-itsdt",
         _script("vid_map_coco_ITSDT", lambda tmp: ["--data-root", str(_coco_root(tmp)), "--weights",
                                                    _irdst_weights(tmp)]),
         match="IRDST STMENet variant", name="STME_IRDST.pth", kind="cli"),
    Case("script-eval-deeppro-checkpoint",
         _script("vid_map_coco_ITSDT", lambda tmp: ["--data-root", str(_coco_root(tmp)), "--weights",
                                                    _deeppro_train_ckpt(tmp)]),
         match=r"checkpoint is for deeppro\(seqlen=40\), not STMENet", name="best.pt", kind="cli"),
    Case("script-eval-input-size",
         _script("vid_map_coco_ITSDT", lambda tmp: ["--weights", "w.pt", "--input-size", "100"]),
         match="--input-size must be a positive multiple of 32", name="100", kind="cli"),
    Case("script-eval-results-unknown-image", _script("vid_map_coco_ITSDT", _results_unknown_image),
         match=r"image ids not in.*\[999\]", name="eval_results.json", kind="cli"),
    # DeepPro scripts
    Case("script-nudt-train-data-root-missing",
         _nudt_script("train_NUDT", lambda tmp: ["--data-root", str(tmp / "NUDT-MIRSDT")]),
         match="data root not found", name="NUDT-MIRSDT", kind="cli"),
    Case("script-nudt-train-seqlen", _nudt_script("train_NUDT", lambda tmp: ["--seqlen", "2"]),
         match="--seqlen must be >= 4", name="2", kind="cli"),
    Case("script-nudt-train-patch-larger-than-resize",
         _nudt_script("train_NUDT", lambda tmp: ["--patch", "300", "--resize", "256"]),
         match="larger than the --resize", name="--patch 300", kind="cli"),
    Case("script-nudt-train-sequence-too-short",
         _nudt_script("train_NUDT", lambda tmp: ["--data-root", str(_nudt_root(tmp, frames=3)),
                                                 "--val-split", "none"]),
         match="too short for training clips", name="Sequence1", kind="cli"),
    Case("script-nudt-train-holdout-too-large",
         _nudt_script("train_NUDT", lambda tmp: ["--data-root", str(_nudt_root(tmp, frames=8))]),
         match="leaves no training sequence", name="--val-holdout 8", kind="cli"),
    Case("script-deeppro-plus-weights-as-deeppro",
         _nudt_script("test_deeppro", lambda tmp: ["--model", "deeppro", "--data-root",
                                                   str(_nudt_root(tmp, frames=40)),
                                                   "--weights", _authors_plus_weights(tmp)]),
         match=r"do not fit --model deeppro \(the keys look like deeppro_plus\)",
         name="DeepPro-Plus_best_model.pth", kind="cli"),
    Case("script-deeppro-weights-missing",
         _nudt_script("test_deeppro", lambda tmp: ["--weights", str(tmp / "best_model.pth")]),
         match="checkpoint not found", name="best_model.pth", kind="cli"),
    Case("script-deeppro-stmenet-checkpoint",
         _nudt_script("test_deeppro", lambda tmp: ["--weights", _stmenet_train_ckpt(tmp)]),
         match=r"is for stmenet\(variant=itsdt\), not a DeepPro model", name="best.pt", kind="cli"),
    Case("script-deeppro-data-root-missing",
         _nudt_script("test_deeppro", lambda tmp: ["--weights", _deeppro_train_ckpt(tmp),
                                                   "--data-root", str(tmp / "NUDT-MIRSDT")]),
         match="data root not found", name="NUDT-MIRSDT", kind="cli"),
    Case("script-deeppro-sequences-shorter-than-40",
         _nudt_script("test_deeppro", lambda tmp: ["--weights", _deeppro_train_ckpt(tmp),
                                                   "--data-root", str(_nudt_root(tmp, frames=12))]),
         match="shorter than the 40-frame clip", name="Sequence1", kind="cli"),
    Case("script-deeppro-seqlen-not-40",
         _nudt_script("test_deeppro", lambda tmp: ["--weights", _authors_plus_weights(tmp), "--seqlen", "20",
                                                   "--stride", "18", "--data-root",
                                                   str(_nudt_root(tmp, frames=40))]),
         match="do not fit", name="DeepPro-Plus_best_model.pth", kind="cli"),
]


def _one_line(msg: str, case: Case) -> None:
    assert msg.strip() and "\n" not in msg.strip(), f"message is not one line: {msg!r}"
    assert "Traceback" not in msg
    # torch's own advice for unreadable files (re-run with weights_only=False) is unsafe for a user to follow
    assert "weights_only" not in msg, f"message passes on torch's unsafe advice: {msg!r}"
    assert "\x1b" not in msg, f"message holds terminal escape codes: {msg!r}"
    if case.match:
        assert re.search(case.match, msg), f"{msg!r} does not match {case.match!r}"
    if case.name:
        assert case.name in msg, f"{msg!r} does not name {case.name!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case: Case, tmp_path, capsys):
    if case.kind == "ok":
        case.provoke(tmp_path)
        return
    if case.kind == "raise":
        with pytest.raises(Exception) as err:  # noqa: B017 - the exact type is checked below
            case.provoke(tmp_path)
        assert isinstance(err.value, case.exc), f"{type(err.value).__name__}: {err.value}"
        _one_line(str(err.value), case)
        return
    main, argv = case.provoke(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    out = capsys.readouterr()
    assert exit_info.value.code == 2, out.err
    assert "Traceback" not in out.out + out.err
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), out.err
    _one_line(lines[-1][len("error: "):], case)


def test_catalogue_is_documented():
    text = DOC.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"{DOC.name} does not list {missing}"
    assert len({c.id for c in CASES}) == len(CASES) >= 20


# --------------------------------------------------------------------------------------------------------
# Fuzzing the parsers: a failure is a one-line ToolboxError naming the file, never a deep traceback
# --------------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_NUMBER = st.one_of(st.integers(-10, 10_000), st.integers(), st.just("x"), st.just(""), st.just("-"),
                    st.floats(allow_nan=True).map(repr), _TEXT)
_BOX = st.lists(_NUMBER, min_size=0, max_size=7).map(lambda vals: ",".join(map(str, vals)))
_PATH = st.one_of(st.just("images/seq1/0.bmp"), st.just("/home/public/DAUB/images/a/3.bmp"), _TEXT)
_LIST_LINE = st.one_of(
    st.tuples(_PATH, st.lists(_BOX, max_size=3)).map(lambda t: " ".join([t[0], *t[1]])),
    _TEXT,
)


def _expect_clean_failure(fn: Callable[[], object], name: str) -> None:
    """Run `fn`; success is fine, a ToolboxError must be one line naming `name`, anything else fails."""
    try:
        fn()
    except ToolboxError as err:
        msg = str(err)
        assert "\n" not in msg and name in msg, msg
    except Exception as err:  # noqa: BLE001 - anything else is a finding
        raise AssertionError(f"{type(err).__name__} leaked: {err}") from err


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(lines=st.lists(_LIST_LINE, max_size=5), data_root=st.booleans())
@example(lines=["images/seq1/0.bmp 1,2,3,99999999999999999999999,0"], data_root=False)
def test_fuzz_txt_list(fuzz_dir, lines, data_root):
    path = fuzz_dir / "fuzz_list.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _expect_clean_failure(lambda: read_txt_list(path, fuzz_dir if data_root else None), "fuzz_list.txt")


@FUZZ
@given(lines=st.lists(st.one_of(_TEXT, _PATH, st.just("Sequence3/Mix/00001.mat")), max_size=5))
def test_fuzz_split_file(fuzz_dir, lines):
    path = fuzz_dir / "fuzz_split.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _expect_clean_failure(lambda: read_split(path), "fuzz_split.txt")


@FUZZ
@given(text=st.one_of(_TEXT, st.lists(st.one_of(st.floats(), _TEXT), max_size=103).map(
    lambda v: "\t".join(map(str, v)))))
def test_fuzz_pr_file(fuzz_dir, text):
    path = fuzz_dir / "fuzz_pr.txt"
    path.write_text(text, encoding="utf-8")
    _expect_clean_failure(lambda: read_pr_txt(path), "fuzz_pr.txt")


_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(), _TEXT)
_JSONISH = st.recursive(_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_TEXT, inner, max_size=3)),
                        max_leaves=8)
_ID = st.one_of(st.integers(0, 4), st.lists(st.integers(0, 2), max_size=2), _JSONISH)
_IMAGE = st.one_of(st.fixed_dictionaries({}, optional={
    "id": _ID, "file_name": st.one_of(st.sampled_from(["images/seq1/0.bmp", "images/seq1/1.bmp", "a.bmp"]),
                                      _JSONISH),
    "width": st.one_of(st.just(64), _JSONISH), "height": st.one_of(st.just(64), _JSONISH)}), _JSONISH)
_BBOX = st.one_of(st.lists(st.one_of(st.integers(-5, 70), st.floats(), _TEXT), min_size=3, max_size=5),
                  _JSONISH)
_ANN = st.one_of(st.fixed_dictionaries({}, optional={
    "image_id": _ID, "bbox": _BBOX, "category_id": st.one_of(st.just(1), _JSONISH),
    "score": st.one_of(st.floats(0, 1), _JSONISH), "area": _JSONISH, "iscrowd": st.just(0), "id": _ID}),
    _JSONISH)
_COCO = st.one_of(
    st.fixed_dictionaries({}, optional={"images": st.one_of(st.lists(_IMAGE, max_size=4), _JSONISH),
                                        "annotations": st.one_of(st.lists(_ANN, max_size=4), _JSONISH),
                                        "categories": st.one_of(st.just([{"id": 1}]), _JSONISH)}),
    _JSONISH)


_KNOWN_BAD = {"images": [{"id": 1, "file_name": "images/seq1/0.bmp"}],
              "annotations": [{"image_id": [1], "bbox": [1, 2, 3, 4], "category_id": 1}]}


@FUZZ
@given(coco=_COCO)
@example(coco=_KNOWN_BAD)
@example(coco=dict(_KNOWN_BAD, annotations=[{"image_id": 1, "bbox": [math.inf, 2, 3, 4], "category_id": 1}]))
def test_fuzz_coco_converter(coco):
    _expect_clean_failure(lambda: coco_to_lines(coco, "/data/", "fuzz.json"), "fuzz.json")


@pytest.fixture(scope="module")
def fuzz_coco_root(tmp_path_factory) -> Path:
    return _coco_root(tmp_path_factory.mktemp("fuzz_coco"), frames=2)


@FUZZ
@given(coco=_COCO)
def test_fuzz_coco_json_file(fuzz_coco_root, coco):
    path = fuzz_coco_root / "fuzz_instances.json"
    path.write_text(json.dumps(coco), encoding="utf-8")
    out = fuzz_coco_root / "fuzz.txt"
    _expect_clean_failure(lambda: coco_to_txt.convert(path, "", out), "fuzz_instances.json")


@FUZZ
@given(coco=_COCO)
@example(coco={"images": [{}], "annotations": [{}]})
def test_fuzz_coco_eval_clips(fuzz_coco_root, coco):
    path = fuzz_coco_root / "fuzz_eval.json"
    path.write_text(json.dumps(coco), encoding="utf-8")
    _expect_clean_failure(lambda: list(CocoEvalClips(path, input_size=32, num_frames=2, protocol="all")),
                          "fuzz_eval.json")


@FUZZ
@given(coco=_COCO)
@example(coco={"images": [], "annotations": [{}], "categories": [{"id": 1}]})
def test_fuzz_coco_ground_truth(fuzz_coco_root, coco):
    path = fuzz_coco_root / "fuzz_gt.json"
    path.write_text(json.dumps(coco), encoding="utf-8")
    _expect_clean_failure(lambda: coco_box_metrics(path, [], protocol="all"), "fuzz_gt.json")


@FUZZ
@given(dets=st.one_of(st.lists(_ANN, max_size=4), _JSONISH))
@example(dets=[{"image_id": 1, "category_id": 1, "bbox": None, "score": 0.5}])
def test_fuzz_detections(fuzz_coco_root, dets):
    path = fuzz_coco_root / "fuzz_results.json"
    path.write_text(json.dumps(dets), encoding="utf-8")
    _expect_clean_failure(lambda: coco_box_metrics(_coco_json(fuzz_coco_root), path), "fuzz_results.json")
