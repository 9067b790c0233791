"""The DTUM authors' NUDT-MIRSDT evaluation protocol (train.py `validation`, write_results.py): thresholds,
sequence groups, their ROC file, and Pd / Fa / AUC per group recomputed from its counts.

    >>> roc = read_dtum_roc("Epoch20_ROC_ShootingRules.txt")
    >>> scores = dtum_scores(roc["per_sequence"])
    >>> value_at(scores["all"], "pd", 0.5), value_at(scores["all"], "fa", 0.5), scores["all"]["auc"]

Per frame and threshold the authors count targets, detected targets and false-alarm pixels (ShootingRules;
`utils.metrics.pd_fa` is the border-correct version of that rule); a group pools the counts of its
sequences: Pd = sum(detected) / sum(targets), Fa = sum(false pixels) / sum(pixels), AUC = trapezoidal area
of Pd over Fa across the thresholds (sklearn's `auc(Fa, Pd)`; Fa not normalised). Their summary line is
at threshold 0.5.

The ROC file holds, per sequence (`Seq47results:`) and per group (`Low SNR results:\tAUC:...`,
`High SNR results`, `Final results`), one line per threshold
`Th_Seg = %e:\tPD:[detected/targets, pd]\tFA:[false pixels, fa]`. It does not print the number of pixels
of a sequence; `read_dtum_roc` recovers it from the false-pixel count and the printed rate and checks it
against every line of the sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from utils.errors import ConfigError, DataError, read_text
from utils.metrics import pool_pd_fa
from utils.segmentation import LOW_SNR_SEQUENCES

__all__ = [
    "DTUM_GROUPS",
    "DTUM_HIGH_SNR",
    "DTUM_LOW_SNR",
    "DTUM_TEST_SEQUENCES",
    "DTUM_THRESHOLDS",
    "DTUM_THRESHOLDS_INTERMEDIATE",
    "dtum_scores",
    "read_dtum_roc",
]

# The 50 thresholds of the final test (train.py `validation`, `Th_Seg`), in their order; p >= th detects.
DTUM_THRESHOLDS = (
    0.0, 1e-30, 1e-20, 1e-19, 1e-18, 1e-17, 1e-16, 1e-15, 1e-14, 1e-13, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8,
    1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65,
    0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 0.999999,
    0.9999999, 1.0,
)  # fmt: skip
# The 16 thresholds of the validations at intermediate epochs (epoch < epochs - 1).
DTUM_THRESHOLDS_INTERMEDIATE = (0.0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9,
                                0.95, 1.0)  # fmt: skip
DTUM_LOW_SNR = tuple(LOW_SNR_SEQUENCES)  # SNR <= 3 (write_results.py `low_snr3`)
DTUM_HIGH_SNR = (85, 86, 87, 88, 89, 90, 91, 93, 94, 95, 96, 97)  # `high_snr3`
DTUM_TEST_SEQUENCES = DTUM_LOW_SNR + DTUM_HIGH_SNR  # the 20 test sequences, in the ROC file's order
DTUM_GROUPS = {"low_snr": DTUM_LOW_SNR, "high_snr": DTUM_HIGH_SNR, "all": DTUM_TEST_SEQUENCES}

_GROUP_TITLES = {"Low SNR results": "low_snr", "High SNR results": "high_snr", "Final results": "all"}
_SEQ_TITLE = re.compile(r"^Seq(\d+)results:$")
_GROUP_TITLE = re.compile(r"^(Low SNR results|High SNR results|Final results):\s*AUC:(\S+)$")
_LINE = re.compile(r"^Th_Seg = (\S+):\s+PD:\[(\d+)/(\d+), (\S+)\]\s+FA:\[(\d+), (\S+)\]$")
_RATE_RTOL = 1e-6  # '%e' prints 7 significant digits


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a number") from None


def _parse_blocks(path: str, text: str) -> list[tuple[str, int, float, list[tuple]]]:
    """[(kind 'seq' | group key, sequence number or 0, printed AUC or nan, rows)] in file order; a row is
    (threshold, detected, targets, false pixels, printed fa)."""
    blocks: list[tuple[str, int, float, list[tuple]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        where = f"{path}: line {lineno}"
        seq, group, row = _SEQ_TITLE.match(line), _GROUP_TITLE.match(line), _LINE.match(line)
        if seq:
            blocks.append(("seq", int(seq.group(1)), float("nan"), []))
        elif group:
            blocks.append((_GROUP_TITLES[group.group(1)], 0, _number(group.group(2), where), []))
        elif row and blocks:
            th, fa = _number(row.group(1), where), _number(row.group(6), where)
            tp, targets, false = (int(row.group(i)) for i in (2, 3, 5))
            if tp > targets:
                raise DataError(f"{where}: {tp} detected targets out of {targets}")
            blocks[-1][3].append((th, tp, targets, false, fa))
        else:
            raise DataError(f"{where}: not a line of the DTUM ROC layout ({line[:60]!r})")
    return blocks


def _pixel_count(path: str, seq: int, rows: list[tuple]) -> int:
    """The pixels of a sequence from its false-pixel counts and printed rates, checked on every line."""
    false = np.array([r[3] for r in rows], dtype=np.int64)
    rate = np.array([r[4] for r in rows], dtype=np.float64)
    k = int(np.argmax(false))
    if false[k] <= 0 or not rate[k] > 0:
        raise DataError(f"{path}: Seq{seq} has no false-alarm pixels, so its pixel count cannot be recovered")
    pixels = int(round(false[k] / rate[k]))
    if not np.allclose(false / pixels, rate, rtol=_RATE_RTOL, atol=0.0):
        raise DataError(f"{path}: Seq{seq}: the printed Fa rates do not fit one pixel count")
    return pixels


def read_dtum_roc(path: str | Path) -> dict:
    """Read the authors' `Epoch*_ROC_ShootingRules.txt`.

    Returns {"thresholds": float64 [K], "per_sequence": {seq number: counts}, "published": {group: counts
    + "auc"}}, where counts are `utils.metrics.pd_fa`-style dicts (thresholds, tp, targets, fa_pixels,
    pixels as int64 [K], pd, fa), pixels recovered as described in the module docstring (the group blocks
    keep the printed `fa` instead). Bad content raises a one-line DataError naming the file.
    """
    name = str(path)
    blocks = _parse_blocks(name, read_text(path))
    if not any(kind == "seq" for kind, *_ in blocks):
        raise DataError(f"{name}: no 'SeqNresults:' block (not a DTUM ROC file?)")
    thresholds = None
    per_sequence: dict[int, dict] = {}
    published: dict[str, dict] = {}
    for kind, seq, auc_value, rows in blocks:
        label = f"Seq{seq}" if kind == "seq" else kind
        if not rows:
            raise DataError(f"{name}: the {label} block has no Th_Seg lines")
        thr = np.array([r[0] for r in rows], dtype=np.float64)
        if thresholds is None:
            thresholds = thr
        elif not np.array_equal(thr, thresholds):
            raise DataError(f"{name}: the {label} block has other thresholds than the first block")
        targets = np.array([r[2] for r in rows], dtype=np.int64)
        if np.any(targets != targets[0]):
            raise DataError(f"{name}: the {label} block changes its number of targets between thresholds")
        counts = {"thresholds": thr, "tp": np.array([r[1] for r in rows], dtype=np.int64), "targets": targets,
                  "fa_pixels": np.array([r[3] for r in rows], dtype=np.int64)}
        if kind == "seq":
            if seq in per_sequence:
                raise DataError(f"{name}: Seq{seq} appears twice")
            pixels = _pixel_count(name, seq, rows)
            counts["pixels"] = np.full(thr.size, pixels, dtype=np.int64)
            with np.errstate(divide="ignore", invalid="ignore"):
                counts["pd"] = np.where(targets > 0, counts["tp"] / np.maximum(targets, 1), np.nan)
            counts["fa"] = counts["fa_pixels"] / pixels
            per_sequence[seq] = counts
        else:
            if kind in published:
                raise DataError(f"{name}: two '{kind}' blocks")
            with np.errstate(divide="ignore", invalid="ignore"):
                counts["pd"] = np.where(targets > 0, counts["tp"] / np.maximum(targets, 1), np.nan)
            counts["fa"] = np.array([r[4] for r in rows], dtype=np.float64)
            counts["auc"] = auc_value
            published[kind] = counts
    return {"thresholds": thresholds, "per_sequence": per_sequence, "published": published}


def dtum_scores(per_sequence: Mapping[int, Mapping],
                groups: Mapping[str, Iterable[int]] | None = None) -> dict:
    """Pd / Fa / AUC per group, pooled from per-sequence counts (`read_dtum_roc(...)["per_sequence"]` or
    `utils.metrics.pd_fa` results keyed by sequence number).

    Returns {group: `pool_pd_fa` result (thresholds, tp, targets, fa_pixels, pixels, pd, fa, auc)} for
    `groups` (default: DTUM_GROUPS, i.e. low_snr, high_snr and all 20 test sequences). Every sequence of a
    group must be present.
    """
    groups = DTUM_GROUPS if groups is None else groups
    out = {}
    for key, members in groups.items():
        members = tuple(members)
        missing = [s for s in members if s not in per_sequence]
        if missing:
            raise ConfigError(f"dtum_scores: group {key!r} needs sequences {missing} that were not scored")
        out[key] = pool_pd_fa([per_sequence[s] for s in members])
    return out
