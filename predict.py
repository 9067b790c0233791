"""Run a trained model on a frame folder, a video or a synthetic sequence and show what it finds.

    python predict.py --weights runs/stmenet_itsdt/best.pt --source data/itsdt/images/3 --out runs/predict
    python predict.py --weights best_model.pth --source clip.mp4 --out runs/predict --format gif
    python predict.py --weights runs/deeppro_nudt/best.pt --source synth:nudt --out runs/predict

Writes to --out: prediction.mp4 (or .gif) with the detections drawn (STMENet: boxes with scores; DeepPro:
the outline of the thresholded probability map and a cross at each component's centroid; truth in magenta
when the source has it), detections.json and detections.txt (per frame, image pixels), contact_sheet.png
(a few frames spread over the stream). Frames are streamed: memory does not grow with the video's length.

Weights: a checkpoint of this toolbox (best.pt / last.pt; its EMA weights) or the authors' released
weights (STMENet state dict, DeepPro `best_model.pth`); the model is recognised from the file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nets.fast import for_evaluation
from utils.bridge import prob_map_components
from utils.cli import run_main
from utils.config import (
    REQUIRED,
    Config,
    bit_depth_option,
    box_mapping_option,
    fast_option,
    option,
    parse_config,
)
from utils.data.roots import COCO_STYLES
from utils.distributed import resolve_device
from utils.inference import DetectorStream, Frame, SegmenterStream, open_source
from utils.video import VideoWriter
from utils.visualize import (
    DETECTOR_LEGEND,
    SEGMENTER_LEGEND,
    ContactSheet,
    annotate,
    auto_scale,
    centroid_points,
)
from utils.weights import load_weights


@dataclass
class PredictConfig(Config):
    """Prediction options"""

    weights: str = option(REQUIRED, "our checkpoint or the authors' weights", required=True)
    source: str = option(REQUIRED, "frame folder (also a NUDT-MIRSDT Sequence<N> folder: its masks become "
                         "the truth), video file, or synth[:STYLE] with STYLE nudt, itsdt, irdst, daub",
                         required=True)
    out: str = option("runs/predict", "output folder")
    model: str = option("auto", "model of --weights (auto: read from the file)")
    variant: str = option("itsdt", "STMENet variant tried first for the authors' weights",
                          choices=COCO_STYLES)
    gt_json: str = option("", "COCO json with truth boxes for the frames of --source")
    gt_root: str = option("", "root that --gt-json file names are relative to (empty: the json's folder)",
                          aliases=("--data-root",))
    format: str = option("mp4", "annotated video format (mp4: H.264 where available)", choices=("mp4", "gif"))
    video: bool = option(True, "write the annotated video (--no-video: detections and contact sheet only)")
    fps: float | None = option(None, "video frame rate (none: the source's, else 10)")
    scale: int = option(0, "enlarge frames by this integer factor (0 = auto: shorter side >= 360 px, at "
                        "most x4)")
    sheet_frames: int = option(8, "frames on the contact sheet")
    sheet_columns: int = option(4, "contact sheet columns")
    tile_width: int = option(320, "contact sheet tile width (px)")
    max_frames: int = option(0, "stop after this many frames (0 = all)")
    conf_threshold: float = option(0.5, "detector score threshold", aliases=("--conf-thres",))
    nms_threshold: float = option(0.3, "detector NMS IoU threshold", aliases=("--nms-thres",))
    input_size: int | None = option(None, "detector input side, N or NxN (multiple of 32; none: the "
                                    "checkpoint's, else 512)", size="square")
    batch_size: int = option(4, "detector clips per forward pass")
    threshold: float = option(0.5, "segmenter probability threshold")
    stride: int = option(36, "segmenter clip stride (the test protocol's 36)")
    seed: int = option(0, "seed of a synth source")
    frames: int | None = option(None, "frames of a synth source (none: the style's)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    fast: str = fast_option()
    box_mapping: str = box_mapping_option()
    bit_depth_rule: str = bit_depth_option()
    ema: bool = option(True, "the EMA weights of our checkpoints (--no-ema: the raw weights)")
    progress: bool = option(True, "show a progress bar")

    def validate(self) -> None:
        self.at_least(0, "max_frames", "scale")
        self.at_least(1, "sheet_frames", "sheet_columns", "tile_width", "batch_size")
        self.within(0.0, 1.0, "threshold", "conf_threshold", "nms_threshold")


class DetectionLog:
    """detections.json (written incrementally, valid json once closed) and detections.txt, both streamed
    into temporary files that replace the previous ones only when `close()` completes them (`abort()`
    drops them)."""

    def __init__(self, out: Path, header: dict, segmenter: bool):
        self.paths = [out / "detections.json", out / "detections.txt"]
        self.temps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in self.paths]
        self.json = open(self.temps[0], "w", encoding="utf-8")
        self.txt = open(self.temps[1], "w", encoding="utf-8")
        head = json.dumps(header, indent=1)[:-2]  # reopen the object to append "frames"
        self.json.write(head + ',\n "frames": [')
        cols = "frame x1 y1 x2 y2 score" + (" cx cy pixels" if segmenter else " class")
        self.txt.write(f"# {cols}  (image pixels, x2 / y2 exclusive)\n")
        self.first = True
        self.count = 0

    def add(self, frame: Frame, dets: list[dict]) -> None:
        rec = {"index": frame.index, "name": frame.name, "detections": dets}
        self.json.write(("\n  " if self.first else ",\n  ") + json.dumps(rec))
        self.first = False
        for d in dets:
            extra = ([*d["centroid"], d["pixels"]] if "centroid" in d else [d["class"]])
            vals = [*d["bbox"], d["score"], *extra]
            self.txt.write(f"{frame.index} " + " ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                                         for v in vals) + "\n")
        self.count += len(dets)

    def close(self) -> None:
        self.json.write("\n ]\n}\n")
        self.json.close()
        self.txt.close()
        for tmp, path in zip(self.temps, self.paths):
            os.replace(tmp, path)

    def abort(self) -> None:
        self.json.close()
        self.txt.close()
        for tmp in self.temps:
            tmp.unlink(missing_ok=True)


def detector_records(dets: np.ndarray) -> list[dict]:
    return [{"bbox": [round(float(v), 2) for v in row[:4]], "score": round(float(row[4]), 6),
             "class": int(row[5])} for row in dets]


def draw(frame: Frame, scale: int, caption: str, dets: np.ndarray | None = None,
         prob: np.ndarray | None = None, comps: list[dict] | None = None,
         threshold: float = 0.5) -> np.ndarray:
    """The annotated frame: predictions in green, truth in magenta."""
    t = frame.truth
    if prob is not None:  # segmenter: mask outline + centroid crosses; truth mask and centroids
        pts = np.array([c["centroid"] for c in comps], np.float64).reshape(-1, 2) + 0.5
        truth = {}
        if t is not None and t.centroids is not None:
            truth = {"truth_points": centroid_points(t.centroids)}
        elif t is not None:
            truth = {"truth_mask": t.mask, "truth_boxes": t.boxes}
        return annotate(frame.rgb, scale=scale, mask=prob >= threshold, points=pts, caption=caption, **truth)
    return annotate(frame.rgb, scale=scale, boxes=dets[:, :4], scores=dets[:, 4], caption=caption,
                    truth_boxes=t.box_truth() if t is not None else None)


def predict(args: PredictConfig) -> dict:
    device = resolve_device(args.device)
    loaded = load_weights(args.weights, args.model, variant=args.variant, prefer_ema=args.ema)
    model = loaded.model.to(device).eval()
    fast_model = for_evaluation(model, args.fast)
    source = open_source(args.source, args.gt_json or None, args.gt_root or None, args.seed, args.frames,
                         args.bit_depth_rule)
    if args.gt_json and getattr(source, "gt_matched", None) == 0:
        print(f"warning: no frame of {args.source} is an image of {args.gt_json} (another split, or file "
              "names relative to another root: pass --gt-root); no truth is drawn")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if loaded.is_detector:
        size = args.input_size or int(loaded.train_config.get("input_size") or 512)
        stream = DetectorStream(fast_model, size, int(getattr(model, "num_frames", 5)), args.conf_threshold,
                                args.nms_threshold, args.batch_size, device, args.box_mapping)
        settings = {"input_size": size, "conf_thres": args.conf_threshold, "nms_thres": args.nms_threshold}
    else:
        stream = SegmenterStream(fast_model, int(getattr(model, "seqlen", 40)), args.stride, device)
        settings = {"threshold": args.threshold, "clip_stride": args.stride}
    print(f"{loaded.name} ({loaded.source}) on {device}; source {args.source}")
    coords = "image pixels; bbox [x1, y1, x2, y2] with x2, y2 exclusive"
    if not loaded.is_detector:
        coords += "; centroid [x, y] = mean pixel column / row"
    header = {"model": loaded.name, "weights": str(args.weights), "weights_source": loaded.source,
              "source": str(args.source), **settings, "coordinates": coords}
    log = DetectionLog(out, header, not loaded.is_detector)
    fps = args.fps or getattr(source, "fps", 0) or 10.0
    video_path = out / f"prediction.{args.format}"
    video = VideoWriter(video_path, fps) if args.video else None
    sheet = ContactSheet(args.sheet_frames, args.tile_width, args.sheet_columns,
                         legend=DETECTOR_LEGEND if loaded.is_detector else SEGMENTER_LEGEND)
    total = len(source) or None
    if args.max_frames:
        total = min(total or args.max_frames, args.max_frames)
    scale = args.scale
    t0 = time.perf_counter()
    n_frames = 0

    def finish(pairs) -> None:
        nonlocal scale
        for frame, pred in pairs:
            if loaded.is_detector:
                recs = detector_records(pred)
                kwargs = {"dets": pred}
            else:
                recs = prob_map_components(pred, args.threshold)
                kwargs = {"prob": pred, "comps": recs, "threshold": args.threshold}
            log.add(frame, recs)
            if video is None and not sheet.wants(frame.index):
                continue
            scale = scale or auto_scale(frame.hw)
            caption = f"{source.name} #{frame.index}  {loaded.name}: {len(recs)}"
            img = draw(frame, scale, caption, **kwargs)
            if video is not None:
                video.write(img)
            sheet.offer(frame.index, img)

    try:
        with tqdm(total=total, unit="frame", desc="predicting", disable=not args.progress,
                  dynamic_ncols=True) as bar:
            for frame in source:
                if args.max_frames and n_frames >= args.max_frames:
                    break
                finish(stream.push(frame))
                n_frames += 1
                bar.update(1)
            finish(stream.flush())
    except BaseException:  # nothing half-written replaces an earlier run's files
        log.abort()
        if video is not None:
            video.abort()
        raise
    log.close()
    if video is not None:
        video.close()
        video_path = video.path
    elapsed = time.perf_counter() - t0
    sheet_path = sheet.save(out / "contact_sheet.png") if sheet.kept else None
    summary = {"frames": n_frames, "detections": log.count, "seconds": round(elapsed, 2),
               "frames_per_second": round(n_frames / elapsed, 2) if elapsed > 0 else None,
               "video": str(video_path) if video is not None else None,
               "detections_json": str(out / "detections.json"), "detections_txt": str(out / "detections.txt"),
               "contact_sheet": str(sheet_path) if sheet_path else None}
    print(f"{n_frames} frames, {log.count} detections in {elapsed:.1f} s "
          f"({summary['frames_per_second']} frames/s)")
    for key in ("video", "detections_json", "detections_txt", "contact_sheet"):
        if summary[key]:
            print(f"  {key.replace('_', ' ')}: {summary[key]}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    return predict(parse_config(PredictConfig(), argv, __doc__.split("\n\n")[0], "predict.py"))


if __name__ == "__main__":
    run_main(main)
