"""Train DeepPro / DeepPro-Plus on NUDT-MIRSDT or NUDT-MIRSDT-Noise (the authors' recipe as defaults).

    python train_NUDT.py --data-root /data/NUDT-MIRSDT --model deeppro
    python train_NUDT.py --data-root /data/NUDT-MIRSDT-Noise --mask-root /data/NUDT-MIRSDT --dataset noise
    python train_NUDT.py          # no data: a small synthetic NUDT-MIRSDT-style dataset is generated once

Details and the validation-based model selection: utils/deeppro_train.py. Evaluate with test_deeppro.py.
"""

from __future__ import annotations

from utils.cli import run_main
from utils.deeppro_train import AUTHORS_RECIPE, main


def cli(argv: list[str] | None = None):
    return main(AUTHORS_RECIPE, argv, "Train DeepPro / DeepPro-Plus on NUDT-MIRSDT (-Noise)", "train_NUDT.py")


if __name__ == "__main__":
    run_main(cli)
