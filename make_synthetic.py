"""Write a small synthetic dataset in the NUDT-MIRSDT or COCO-video layout (see utils/synth/).

    python make_synthetic.py --format nudt --out data/nudt_synth --preview
    python make_synthetic.py --format coco --style itsdt --out data/itsdt_synth
"""

from utils.cli import run_main
from utils.synth import main

if __name__ == "__main__":
    run_main(main)
