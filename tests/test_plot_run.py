"""plot_run.py: Pd-Fa curves read back from the eval.txt layout and json files, training logs to curves."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

import plot_run
from utils.logs import authors_trainlog_to_csv, read_eval_txt
from utils.metrics import pd_fa, pool_pd_fa
from utils.report import write_eval_txt


def _results() -> dict:
    rng = np.random.default_rng(0)
    prob = rng.random((3, 16, 16)).astype(np.float32)
    truth = np.zeros((3, 16, 16), bool)
    truth[:, 5, 7] = True
    prob[:, 5, 7] = 0.97
    seqs = {"Sequence47": pd_fa(prob[:2], truth[:2]), "Sequence85": pd_fa(prob[2:], truth[2:])}
    return {"per_sequence": seqs, "low_snr": pool_pd_fa([seqs["Sequence47"]]),
            "high_snr": pool_pd_fa([seqs["Sequence85"]]), "all": pool_pd_fa(list(seqs.values())), "iou": 0.5}


def test_read_eval_txt_gives_back_the_pooled_curves(tmp_path):
    res = _results()
    write_eval_txt(tmp_path / "eval.txt", res)
    for group in ("all", "low_snr", "high_snr"):
        fa, pd, auc = read_eval_txt(tmp_path / "eval.txt", group)
        np.testing.assert_allclose(fa, res[group]["fa"], rtol=1e-6)
        np.testing.assert_allclose(pd, res[group]["pd"])
        assert auc == pytest.approx(res[group]["auc"], abs=1e-5)


def test_roc_from_every_file_kind(tmp_path, ref_dir):
    res = _results()
    write_eval_txt(tmp_path / "eval.txt", res)
    (tmp_path / "results.json").write_text(json.dumps({"model": "deeppro", "pooled": {
        "all": {k: np.asarray(res["all"][k]).tolist() for k in ("fa", "pd")} | {"auc": res["all"]["auc"]}}}))
    published = ref_dir / "deeppro" / "eval_DeepPro_NUDT-MIRSDT.txt"
    fa, pd, auc = read_eval_txt(published)
    assert len(fa) == 27 and auc == pytest.approx(0.99728) and pd[16] == pytest.approx(1703 / 1729)
    out = plot_run.main(["roc", f"ours={tmp_path / 'eval.txt'}", str(tmp_path / "results.json"),
                         str(published), "--out", str(tmp_path / "roc.png")])
    assert Image.open(out).size[0] > 100


def test_training_curves_from_the_authors_log(tmp_path, ref_dir):
    log = ref_dir / "deeppro" / "trainlog_DeepPro_NUDT-MIRSDT.txt"
    csv_path = authors_trainlog_to_csv(log, tmp_path / "authors.csv")
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "epoch,lr,train_loss,train_iou,val_loss,val_iou" and len(rows) == 33
    assert rows[1].startswith("1,0.001,") and plot_run.main(["train", str(log), "--out",
                                                             str(tmp_path / "authors.png")]).is_file()


def test_train_writes_beside_the_run_by_default(tmp_path, capsys):
    run = tmp_path / "stmenet_itsdt"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"dataset": "ITSDT"}))
    (run / "train_log.csv").write_text("epoch,train_loss,map50\n1,2.0,0.1\n2,1.0,0.3\n3,0.5,0.4\n")
    out = plot_run.main(["train", str(run)])
    assert out == run / "training_curves.png" and out.is_file()
    assert Image.open(out).format == "PNG" and f"wrote {out}" in capsys.readouterr().out
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp file left behind
    eval_txt = tmp_path / "eval" / "eval.txt"
    eval_txt.parent.mkdir()
    write_eval_txt(eval_txt, _results())
    assert plot_run.main(["roc", str(eval_txt), "--group", "low_snr"]) == eval_txt.parent / "roc_low_snr.png"


def test_help_states_every_default(capsys):
    for sub in ("train", "roc"):
        with pytest.raises(SystemExit):
            plot_run.parse_args([sub, "--help"])
        options = capsys.readouterr().out.split("options:")[1]
        entries = re.split(r"\n  (?=-)", options)[1:]  # one per option, with its wrapped help lines
        assert len(entries) >= 4 and entries[0].startswith("-h")
        for entry in entries[1:]:
            assert "(default: " in " ".join(entry.split()), entry
