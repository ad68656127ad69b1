"""The multi-class tasks the README offers (``three_class``, ``four_class``) through every notebook, 01-08.

On generated data (with viral and bacterial non-COVID pneumonia patients, so four_class can split).
Notebook 07 writes ``audit__<task>.json``, notebook 08 ``external__<task>.json``: the binary run's
``audit.json`` / ``external.json`` (the README's tables) are never overwritten by another task. In 08 a
multi-class model is tested as COVID-19 vs the rest, and the record and paragraph say so.
"""

from __future__ import annotations

import json

import pytest

from cxrbook.data.splits import classes_for
from cxrbook.data.synthetic import make_fake_collections
from cxrbook.evaluation import records as R
from cxrbook.external import scores as XS
from cxrbook.models import ensemble as ENS
from cxrbook.workflow.runner import run


@pytest.fixture(scope="module")
def pathogen_data(tmp_path_factory):
    return make_fake_collections(tmp_path_factory.mktemp("multiclass"), n_patients=6, seed=1, defects=False,
                                 pathogen_patients=6)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["three_class", "four_class"])
def test_multiclass_task_runs_every_notebook(pathogen_data, tmp_path, task):
    out = tmp_path / "out"
    run(profile="smoke", only=[f"{i:02d}" for i in range(1, 9)], data_dir=str(pathogen_data), output_dir=str(out),
        extra={"weights": "none", "task": task}, html_index=False)
    classes = list(classes_for(task))
    # 04-06: argmax models with per-class sensitivity and one-vs-rest specificity, the ensemble
    for name in ("custom_cnn", "vgg16", "densenet121", "logreg_pixels", "ensemble"):
        rec = R.load_metrics(out / "metrics" / f"{name}__{task}.json")
        assert rec["classes"] == classes and rec["threshold"] is None and rec["task"] == task
        assert len(rec["confusion_matrix"]) == len(classes) and "macro_auc" in rec["metrics"]
        assert all(f"sensitivity_{c}" in rec["metrics"] and f"specificity_{c}" in rec["metrics"] for c in classes)
    assert (out / "figures" / f"06_roc_overlay__{task}.png").is_file()
    ensemble = ENS.load_ensemble(out / "models" / f"ensemble__{task}.json")
    assert ensemble["classes"] == classes and ensemble["threshold"] is None and len(ensemble["members"]) >= 2
    for table in ("comparison", "paired_auc_tests", "published_claims"):
        assert (out / f"{table}__{task}.csv").is_file(), table
    # 07: the audit of this task, beside (not over) the binary one
    audit = json.loads((out / f"audit__{task}.json").read_text())
    assert audit["task"] == task and audit["normals"]["difference"]["macro_auc"]["ci95"][0] is not None
    assert not (out / "audit.json").exists() and not (out / "published_claims.csv").exists()
    # 08: every saved model of the task tested as COVID-19 vs the rest, said in the record and the paragraph
    ext = json.loads((out / f"external__{task}.json").read_text())
    XS.validate_external(ext)
    assert not (out / "external.json").exists()
    by = {e["model"]: e for e in ext["models"]}
    assert {f"custom_cnn__{task}", f"ensemble__{task}", f"custom_cnn__normals_adult__{task}"} <= set(by)
    for name, e in by.items():
        assert e["threshold"] is None and e["scored_as"] == XS.SCORED_AS["multi"], name
        internal = R.load_metrics(out / "metrics" / f"{name}.json")["metrics"]
        assert e["internal"]["specificity"] == internal["specificity_covid"], name
        assert e["internal"]["sensitivity"] == internal["sensitivity_covid"], name
        for metric in ("sensitivity", "specificity", "roc_auc"):
            m = e["external"][metric]
            assert m["value"] is not None and None not in m["ci95"], (name, metric)
    assert "paired_with_all_normals" in by[f"custom_cnn__normals_adult__{task}"]
    assert "reads COVID-19 vs the rest" in ext["paragraph"]
    if task == "three_class":   # 03 leaves no generated image out: it says so instead of an empty table
        nb = json.loads((out / "notebooks" / "03_segregation_and_splits.ipynb").read_text())
        shown = json.dumps([o for cell in nb["cells"] for o in cell.get("outputs", [])])
        assert "Empty DataFrame" not in shown and "no cleaned image is left out of this task" in shown
