"""Train STMENet on IRDST with the authors' recipe; every value can be changed on the command line.

    python train_IRDST.py --data-root /path/to/IRDST     # images/ + instances_*2017.json
    python train_IRDST.py     # without a dataset: synthetic irdst-style data
    python train_IRDST.py --help

Writes runs/<model>_irdst/ (best.pt, last.pt, train_log.csv, training curves); see utils/detector_train.py.
"""

from utils.cli import run_main
from utils.detector_train import DetectorConfig
from utils.detector_train import main as train_main

DEFAULTS = DetectorConfig(style="irdst", variant="irdst")


def main(argv: list[str] | None = None):
    return train_main(DEFAULTS, argv, __doc__.split("\n\n")[0], "train_IRDST.py")


if __name__ == "__main__":
    run_main(main)
