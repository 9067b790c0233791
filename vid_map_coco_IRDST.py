"""Evaluate STMENet on the IRDST test set (COCO mAP, AP50, P, R, F1, PR file and plot).

    python vid_map_coco_IRDST.py --data-root /path/to/IRDST --weights runs/stmenet_irdst/best.pt
    python vid_map_coco_IRDST.py --data-root /path/to/IRDST --weights STME_IRDST.pth   # authors' weights
    python vid_map_coco_IRDST.py --data-root /path/to/IRDST --results eval_results.json  # score only
    python vid_map_coco_IRDST.py --help

Without --data-root the synthetic irdst-style set is used (generated once); see utils/detector_eval.py.
"""

from utils.cli import run_main
from utils.detector_eval import DetectorEvalConfig
from utils.detector_eval import main as eval_main

DEFAULTS = DetectorEvalConfig(style="irdst", variant="irdst")


def main(argv: list[str] | None = None):
    return eval_main(DEFAULTS, argv, __doc__.split("\n\n")[0], "vid_map_coco_IRDST.py")


if __name__ == "__main__":
    run_main(main)
