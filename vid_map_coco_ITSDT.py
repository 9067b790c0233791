"""Evaluate STMENet on the ITSDT-15K test set (COCO mAP, AP50, P, R, F1, PR file and plot).

    python vid_map_coco_ITSDT.py --data-root /path/to/ITSDT-15K --weights runs/stmenet_itsdt/best.pt
    python vid_map_coco_ITSDT.py --data-root /path/to/ITSDT-15K --weights STME_ITSDT.pth   # authors' weights
    python vid_map_coco_ITSDT.py --data-root /path/to/ITSDT-15K --results eval_results.json  # score only
    python vid_map_coco_ITSDT.py --help

Without --data-root the synthetic itsdt-style set is used (generated once); see utils/detector_eval.py.
"""

from utils.cli import run_main
from utils.detector_eval import DetectorEvalConfig
from utils.detector_eval import main as eval_main

DEFAULTS = DetectorEvalConfig(style="itsdt", variant="itsdt")


def main(argv: list[str] | None = None):
    return eval_main(DEFAULTS, argv, __doc__.split("\n\n")[0], "vid_map_coco_ITSDT.py")


if __name__ == "__main__":
    run_main(main)
