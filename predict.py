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

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nets.fast import FAST_MODES, for_evaluation
from utils.bridge import prob_map_components
from utils.cli import run_main
from utils.distributed import resolve_device
from utils.errors import ConfigError
from utils.inference import DetectorStream, Frame, SegmenterStream, load_model, open_source
from utils.visualize import ContactSheet, VideoWriter, annotate, auto_scale, centroid_points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="our checkpoint or the authors' weights")
    p.add_argument("--source", required=True,
                   help="frame folder (also a NUDT-MIRSDT Sequence<N> folder: its masks become the truth), "
                        "video file, or synth[:STYLE] with STYLE nudt (default), itsdt, irdst, daub")
    p.add_argument("--out", default="runs/predict", help="output folder")
    p.add_argument("--model", default="auto", choices=("auto", "stmenet", "deeppro", "deeppro_plus"),
                   help="model family of --weights (auto: read from the file)")
    p.add_argument("--variant", default="itsdt", choices=("itsdt", "daub", "irdst"),
                   help="STMENet variant tried first for the authors' weights")
    p.add_argument("--gt-json", default=None, help="COCO json with truth boxes for the frames of --source")
    p.add_argument("--data-root", default=None, help="root that --gt-json file names are relative to "
                                                     "(default: the json's folder)")
    p.add_argument("--format", default="mp4", choices=("mp4", "gif"), help="annotated video format")
    p.add_argument("--no-video", action="store_true", help="write detections and the contact sheet only")
    p.add_argument("--fps", type=float, default=None, help="video frame rate (default: the "
                                                                        "source's, else 10)")
    p.add_argument("--fourcc", default="mp4v", help="OpenCV codec of MP4 output (avc1 where available)")
    p.add_argument("--scale", type=int, default=0, help="enlarge frames by this integer factor (0 = auto: "
                                                        "shorter side >= 360 px, at most x4)")
    p.add_argument("--sheet-frames", type=int, default=8, help="frames on the contact sheet")
    p.add_argument("--sheet-columns", type=int, default=4, help="contact sheet columns")
    p.add_argument("--tile-width", type=int, default=320, help="contact sheet tile width (px)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = all)")
    p.add_argument("--conf-thres", type=float, default=0.5, help="STMENet score threshold")
    p.add_argument("--nms-thres", type=float, default=0.3, help="STMENet NMS IoU threshold")
    p.add_argument("--input-size", type=int, default=None,
                   help="STMENet input side (multiple of 32; default: the checkpoint's, else 512)")
    p.add_argument("--batch-size", type=int, default=4, help="STMENet clips per forward pass")
    p.add_argument("--threshold", type=float, default=0.5, help="DeepPro probability threshold")
    p.add_argument("--stride", type=int, default=36, help="DeepPro clip stride (the test protocol's 36)")
    p.add_argument("--seed", type=int, default=0, help="seed of a synth source")
    p.add_argument("--frames", type=int, default=None, help="frames of a synth source")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--fast", choices=FAST_MODES, default="auto",
                   help="inference path: fast (nets.fast, same outputs within ~1e-7) or eager; auto = fast "
                        "on the CPU, eager elsewhere")
    p.add_argument("--no-ema", action="store_true", help="raw weights of our checkpoints instead of the EMA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.max_frames < 0 or args.scale < 0 or min(args.sheet_frames, args.sheet_columns, args.tile_width,
                                                    args.batch_size) < 1:
        raise ConfigError("--max-frames and --scale must be >= 0; --sheet-frames, --sheet-columns, "
                          "--tile-width and --batch-size >= 1")
    if not 0.0 <= args.threshold <= 1.0 or not 0.0 <= args.conf_thres <= 1.0:
        raise ConfigError("--threshold and --conf-thres must lie in [0, 1]")
    return args


class DetectionLog:
    """detections.json (written incrementally, valid json once closed) and detections.txt."""

    def __init__(self, out: Path, header: dict, segmenter: bool):
        self.json = open(out / "detections.json", "w", encoding="utf-8")
        self.txt = open(out / "detections.txt", "w", encoding="utf-8")
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


def predict(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    loaded = load_model(args.weights, args.model, args.variant, prefer_ema=not args.no_ema)
    model = loaded.model.to(device).eval()
    fast_model = for_evaluation(model, args.fast)
    source = open_source(args.source, args.gt_json, args.data_root, args.seed, args.frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if loaded.is_detector:
        size = args.input_size or int(loaded.train_config.get("input_size") or 512)
        stream = DetectorStream(fast_model, size, int(getattr(model, "num_frames", 5)), args.conf_thres,
                                args.nms_thres, args.batch_size, device)
        settings = {"input_size": size, "conf_thres": args.conf_thres, "nms_thres": args.nms_thres}
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
    video = None if args.no_video else VideoWriter(video_path, fps, args.fourcc)
    sheet = ContactSheet(args.sheet_frames, args.tile_width, args.sheet_columns)
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
        with tqdm(total=total, unit="frame", desc="predicting", disable=args.no_progress,
                  dynamic_ncols=True) as bar:
            for frame in source:
                if args.max_frames and n_frames >= args.max_frames:
                    break
                finish(stream.push(frame))
                n_frames += 1
                bar.update(1)
            finish(stream.flush())
    finally:
        log.close()
        if video is not None:
            video.close()
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
    return predict(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
