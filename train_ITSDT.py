"""Train STMENet on ITSDT-15K with the authors' recipe; every value can be changed on the command line.

    python train_ITSDT.py --data-root /path/to/ITSDT-15K     # images/ + instances_*2017.json
    python train_ITSDT.py     # without a dataset: synthetic itsdt-style data
    python train_ITSDT.py --help

Writes runs/<model>_itsdt/ (best.pt, last.pt, train_log.csv, training curves); see utils/detector_train.py.
"""

from utils.cli import run_main
from utils.detector_train import DetectorConfig
from utils.detector_train import main as train_main

DEFAULTS = DetectorConfig(style="itsdt", variant="itsdt")


def main(argv: list[str] | None = None):
    return train_main(DEFAULTS, argv, __doc__.split("\n\n")[0], "train_ITSDT.py")


if __name__ == "__main__":
    run_main(main)
