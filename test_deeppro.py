"""Evaluate DeepPro / DeepPro-Plus on the NUDT-MIRSDT(-Noise) test sequences (the authors' protocol).

    python test_deeppro.py --data-root /data/NUDT-MIRSDT --weights runs/deeppro_nudt/best.pt
    python test_deeppro.py --data-root /data/NUDT-MIRSDT --weights best_model.pth   # official weights

Writes OUT/eval.txt (the authors' log layout), OUT/results.json and OUT/roc.png and prints Pd (%),
Fa (x1e-5) and AUC of the low-SNR, high-SNR and all sequences. Protocol: utils/deeppro_eval.py.
"""

from __future__ import annotations

from utils.cli import run_main
from utils.deeppro_eval import main


def cli(argv: list[str] | None = None):
    return main(argv, prog="test_deeppro.py")


if __name__ == "__main__":
    run_main(cli)
