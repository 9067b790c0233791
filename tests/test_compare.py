"""compare.py on a tiny setting: two models, hand-made results files, a published PR folder; the tables hold
the measured and the published rows (marked), the figures are written, bad files give one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import compare
from utils.coco_metrics import write_pr_txt
from utils.compare import Collection, add_published, add_published_tables, add_results, load_published_tables
from utils.errors import DataError


def _precision(ap: float) -> list[float]:
    """101 precisions with mean `ap`: constant up to some recall, then 0."""
    n = int(round(ap * 101))
    return [1.0] * n + [0.0] * (101 - n)


@pytest.fixture()
def inputs(tmp_path):
    det = tmp_path / "eval_itsdt" / "metrics.json"
    det.parent.mkdir()
    det.write_text(json.dumps({"dataset": "ITSDT", "ap50": 0.6789, "P": 0.8123, "R": 0.7234, "F1": 0.7653,
                               "precision_50": _precision(0.6789)}))
    seg = tmp_path / "eval_nudt" / "results.json"
    seg.parent.mkdir()
    fa = [1.0, 1e-3, 4.321e-5, 1e-6]
    seg.write_text(json.dumps({
        "model": "deeppro", "dataset": "NUDT-MIRSDT",
        "summary": {"all": {"pd": 0.9612, "fa": 4.321e-5, "auc": 0.9876},
                    "low_snr": {"pd": 0.9034, "fa": 5.5e-5, "auc": 0.9711}},
        "pooled": {"all": {"fa": fa, "pd": [1.0, 0.99, 0.9612, 0.5], "auc": 0.9876}}}))
    pr_dir = tmp_path / "published" / "ITSDT"
    write_pr_txt(pr_dir / "ACM.txt", _precision(0.5538))
    return {"det": det, "seg": seg, "pr_dir": pr_dir, "out": tmp_path / "out"}


def test_compare_writes_tables_and_figures(inputs):
    record = compare.main(["--models", "deeppro_plus,resunet-dtum", "--speed-size", "8", "--speed-runs", "1",
                           "--fast", "off",
                           "--results", f"ours={inputs['det']}",
                           "--results", f"DeepPro (ours)={inputs['seg']}",
                           "--published", str(inputs["pr_dir"]), "--out", str(inputs["out"])])
    out = inputs["out"]
    md = (out / "compare.md").read_text()
    saved = json.loads((out / "compare.json").read_text())
    assert saved["complexity"] == json.loads(json.dumps(record["complexity"]))
    for name in ("pr_ITSDT.png", "roc_NUDT-MIRSDT.png"):
        assert (out / name).stat().st_size > 10_000

    measured = {r["method"]: r for r in record["complexity"] if r["source"] == "measured"}
    assert set(measured) == {"deeppro_plus", "resunet_dtum"}
    assert measured["deeppro_plus"]["params"] == 70_913 and measured["resunet_dtum"]["params"] == 298_305
    assert measured["deeppro_plus"]["macs_input"] == [1, 1, 40, 480, 720]
    assert measured["resunet_dtum"]["macs_input"] == [1, 1, 5, 480, 720]
    assert all(r["fps"] > 0 and r["speed"]["input"][3:] == [8, 8] for r in measured.values())
    # the papers' counts: thop-style MACs per output frame and fp32 kilobytes at 480x720
    published = {r["method"]: r for r in record["complexity"] if r["source"] != "measured"}
    for ours, theirs in (("deeppro_plus", "DeepPro-Plus"), ("resunet_dtum", "Res-UNet+DTUM")):
        assert round(measured[ours]["gmacs_thop"], 1) == published[theirs]["gmacs_thop"]
        assert round(measured[ours]["params_kb"]) == published[theirs]["params_kb"]
    assert {"STDMANet", "Res-U+RFR"} <= set(published)  # published-only rows
    assert all(r["source"].startswith("published") for r in published.values())

    lines = md.splitlines()
    assert any(ln.startswith("| deeppro_plus | measured | 70,913 |") for ln in lines)
    assert any(ln.startswith("| STDMANet | *published: DeepPro paper* |") and "503.800" in ln for ln in lines)
    assert "| ITSDT | ours | measured | 67.89 | 81.23 | 72.34 | 76.53 |" in lines
    assert "| ITSDT | ACM | *published: PR file (STMENet paper)* | 55.45 | – | – | – |" in lines
    assert "| NUDT-MIRSDT | all | DeepPro (ours) | measured | 96.12 | 4.32 | 0.9876 |" in lines
    assert "| NUDT-MIRSDT | low_snr | DeepPro (ours) | measured | 90.34 | 5.50 | 0.9711 |" in lines
    noise = "| NUDT-MIRSDT-Noise | all | STDMANet | *published: DeepPro paper* | 51.65 | 1.95 | 0.8766 |"
    assert noise in lines
    assert set(record["figures"]) == {"pr ITSDT", "roc NUDT-MIRSDT"}


def test_no_speed_leaves_frames_per_second_empty(inputs):
    record = compare.main(["--models", "deeppro", "--no-speed", "--out", str(inputs["out"])])
    row = next(r for r in record["complexity"] if r["source"] == "measured")
    assert row["fps"] is None and row["speed"] is None
    assert "skipped: --no-speed" in (inputs["out"] / "compare.md").read_text()
    assert record["figures"] == {}


def test_authors_eval_logs_reproduce_the_readme_table(ref_dir):
    """Pd / Fa at 0.5 and AUC read from the authors' logs equal the README numbers we transcribed."""
    coll = Collection()
    tables = load_published_tables()
    add_published(coll, ref_dir / "deeppro", tables)
    logs = {(r["method"], r["dataset"], r["subset"]): r for r in coll.segmentation}
    assert len(logs) == 8  # 2 models x 2 datasets x (all, low SNR)
    readme = Collection()
    add_published_tables(readme, tables)
    checked = 0
    for r in readme.segmentation:
        log = logs.get((r["method"], r["dataset"], r["subset"]))
        if log is None:
            continue
        assert round(100 * log["pd"], 2) == pytest.approx(100 * r["pd"], abs=1e-9)
        assert round(1e5 * log["fa"], 2) == pytest.approx(1e5 * r["fa"], abs=1e-9)
        assert round(log["auc"], 4) == pytest.approx(r["auc"], abs=1e-9)
        checked += 1
    assert checked == 6
    assert set(coll.roc_curves) == {"NUDT-MIRSDT", "NUDT-MIRSDT-Noise"}


def test_published_pr_files_give_ap50(ref_dir):
    coll = Collection()
    add_published(coll, ref_dir / "published" / "ITSDT", load_published_tables())
    row = next(r for r in coll.detection if r["method"] == "STMENet")
    assert row["source"] == "published: PR file (STMENet paper)"
    assert row["ap50"] == pytest.approx(float(np.mean(coll.pr_curves["ITSDT"]["STMENet (published)"])))


def test_bad_results_files_are_one_line_errors(tmp_path):
    coll = Collection()
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"dataset": "x", "rows": []}))
    with pytest.raises(DataError, match=r"other\.json: neither a metrics\.json"):
        add_results(coll, "x", bad)
    bad.write_text(json.dumps({"dataset": "x", "precision_50": [0.0] * 101, "ap50": "high", "P": 0, "R": 0,
                               "F1": 0}))
    with pytest.raises(DataError, match="'ap50' must be a finite number"):
        add_results(coll, "x", bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a readable json"):
        add_results(coll, "x", bad)
    with pytest.raises(DataError, match="not found"):
        add_results(coll, "x", tmp_path / "missing.json")
    log = tmp_path / "DeepPro.txt"
    log.write_text("nothing here")
    with pytest.raises(DataError, match="PR file"):
        add_published(coll, log.parent, load_published_tables())


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    from utils.cli import run_main

    with pytest.raises(SystemExit) as exc:
        run_main(compare.main, ["--models", "nonet", "--no-speed", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'nonet'" in err[0]
