"""`python -m utils.synth ...`: the make_synthetic.py command line."""

from utils.cli import run_main
from utils.synth.dataset import main

run_main(main)
