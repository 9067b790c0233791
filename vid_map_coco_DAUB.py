"""Evaluate STMENet on the DAUB test set (COCO mAP, AP50, P, R, F1, PR file and plot).

    python vid_map_coco_DAUB.py --data-root /path/to/DAUB --weights runs/stmenet_daub/best.pt
    python vid_map_coco_DAUB.py --data-root /path/to/DAUB --weights STME_DAUB.pth   # authors' weights
    python vid_map_coco_DAUB.py --data-root /path/to/DAUB --results eval_results.json  # score only
    python vid_map_coco_DAUB.py --help

Without --data-root the synthetic daub-style set is used (generated once); see utils/detector_eval.py.
"""

from utils.cli import run_main
from utils.detector_eval import DetectorEvalConfig
from utils.detector_eval import main as eval_main

DEFAULTS = DetectorEvalConfig(style="daub", variant="daub")


def main(argv: list[str] | None = None):
    return eval_main(DEFAULTS, argv, __doc__.split("\n\n")[0], "vid_map_coco_DAUB.py")


if __name__ == "__main__":
    run_main(main)
