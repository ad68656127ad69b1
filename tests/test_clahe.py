"""CLAHE measured, not only offered: audit.clahe_comparison (issue 11, notebook 07 section 2b)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbook.audit import checks as A
from cxrbook.audit import runs as AU
from cxrbook.data import metadata
from cxrbook.evaluation import metrics as M
from cxrbook.evaluation import records as R
from cxrbook.data import splits as sp

from cxrbook.audit import text as AR
from cxrbook.audit import plots as AP
from cxrbook.data.pipeline import load_arrays
from cxrbook.data.synthetic import make_fake_collections

CLASSES = ("normal", "covid")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = make_fake_collections(tmp_path_factory.mktemp("clahe"), n_patients=6, image_size=48, seed=5,
                                 defects=False)
    splits = sp.patient_split(sp.select(metadata.load_all(root), "covid_vs_normal", "all"), seed=0)
    # flip the labels of a third of the patients: the generated lungs are otherwise so easy that both
    # variants score AUC 1 and a swapped comparison would go unnoticed
    flip = splits["patient_id"].isin(splits["patient_id"].drop_duplicates().sample(frac=1 / 3, random_state=0))
    splits.loc[flip, "label"] = splits.loc[flip, "label"].map({"covid": "normal", "normal": "covid"})
    cache = tmp_path_factory.mktemp("clahe_cache")
    plain = load_arrays(splits, 32, cache_dir=cache, progress=False)
    reused = AU.train_and_score(plain, CLASSES, arch="logreg", seed=1, n_boot=50, name="reused")
    result = A.clahe_comparison(splits, CLASSES, image_size=32, archs=("logreg",), seed=1, n_boot=50,
                                cache_dir=cache, plain=plain)
    return splits, plain, reused, result, cache


def test_same_test_images_paired_difference_matches_the_two_runs(comparison):
    _, plain, _, result, _ = comparison
    runs = result["runs"]["logreg"]
    assert result["data"]["clahe"].clahe and not result["data"]["plain"].clahe
    assert np.array_equal(runs["plain"].image_path_test, runs["clahe"].image_path_test)
    # CLAHE changed the pixels the second model saw
    assert not np.array_equal(result["data"]["clahe"].test.x, plain.test.x)
    p = result["paired"]["logreg"]
    assert p["auc_a"] == pytest.approx(runs["clahe"].metric("roc_auc")["value"])
    assert p["auc_b"] == pytest.approx(runs["plain"].metric("roc_auc")["value"])
    assert p["diff"] == pytest.approx(p["auc_a"] - p["auc_b"])
    assert p["ci95"][0] <= p["ci95"][1]
    assert p["auc_a"] != p["auc_b"]  # the data make the two variants differ, so a swap would show
    expected = M.paired_auc_test(runs["clahe"].y_test, runs["clahe"].scores_test, runs["plain"].scores_test,
                                 runs["plain"].patient_test, n_boot=50, seed=1)
    assert p["ci95"] == pytest.approx(expected["ci95"])


def test_probe_runs_on_clahe_images_and_sentence_reads_the_numbers(comparison):
    _, _, _, result, _ = comparison
    pc, pp = result["probe"]["clahe"], result["probe"]["plain"]
    assert pc["n_test"] == pp["n_test"] == len(result["data"]["clahe"].test)
    assert pc["confusion_matrix"] != pp["confusion_matrix"]  # the probe saw the CLAHE pixels
    text = AR.clahe_sentence(result)
    p = result["paired"]["logreg"]
    assert f"{p['diff']:+.3f}" in text and R.fmt(pc["accuracy"]) in text
    summary = AR.clahe_summary(result)
    assert summary["paired_clahe_minus_plain"]["logreg"]["diff"] == p["diff"]
    assert set(summary["source_probe"]) == {"plain", "clahe"}
    table = AR.clahe_table(result)
    assert list(table["measure"])[0] == "logreg test roc_auc" and table["difference"].iloc[0] == round(p["diff"], 3)


def test_a_reused_plain_run_is_used_and_checked(comparison):
    splits, plain, reused, _, cache = comparison
    result = A.clahe_comparison(splits, CLASSES, image_size=32, archs=("logreg",), seed=1, n_boot=50,
                                cache_dir=cache, plain=plain, plain_runs={"logreg": reused})
    assert result["runs"]["logreg"]["plain"] is reused
    other = AU.subset_run(reused, np.arange(len(reused.y_test)) > 0, "fewer", n_boot=20, seed=0)
    with pytest.raises(ValueError, match="tested on other images"):
        A.clahe_comparison(splits, CLASSES, image_size=32, archs=("logreg",), seed=1, n_boot=50,
                           cache_dir=cache, plain=plain, plain_runs={"logreg": other})


def test_clahe_figure_is_saved(comparison, tmp_path):
    from cxrbook.plots import savefig
    _, _, _, result, _ = comparison
    assert savefig(AP.plot_clahe(result, "CLAHE measured"), tmp_path, "07_clahe").stat().st_size > 1000
