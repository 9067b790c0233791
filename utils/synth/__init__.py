"""Synthetic moving infrared small-target sequences, written in the real on-disk formats.

    python make_synthetic.py --format nudt --out data/nudt_synth --preview
    python make_synthetic.py --format nudt --noise --out data/nudt_synth_noise   # Noise variant
    python make_synthetic.py --format coco --style itsdt --out data/itsdt_synth
    python -m utils.synth --help                                                # the same command line

Modules: `scene` (dataset styles, backgrounds, jitter, target tracks and spots), `render` (one sequence:
frames, truth, realised SNR; the Noise variant), `dataset` (plan the splits, write the NUDT-MIRSDT or COCO
layout, the command line). A seed gives the same bytes in every file, and a sequence does not depend on how
many others are written.
"""

from utils.synth.dataset import (
    SeqPlan,
    SynthConfig,
    build_parser,
    config_from_args,
    generate,
    main,
    plan_sequences,
)
from utils.synth.render import render_sequence
from utils.synth.scene import NUDT_LOW_SNR, NUDT_LOW_SNR_NUMBERS, NUDT_TEST_NUMBERS, STYLES, Rendered, Style

__all__ = ["NUDT_LOW_SNR", "NUDT_LOW_SNR_NUMBERS", "NUDT_TEST_NUMBERS", "STYLES", "Rendered", "SeqPlan",
           "Style", "SynthConfig", "build_parser", "config_from_args", "generate", "main", "plan_sequences",
           "render_sequence"]
