"""task=four_class: covid / viral / bacterial pneumonia / normal from pathogen_type (issue 11)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbook.data import metadata
from cxrbook.evaluation import metrics as M
from cxrbook.evaluation import records as R
from cxrbook.data import splits as sp
from cxrbook.data.synthetic import make_fake_collections

FOUR = ("covid", "viral_pneumonia", "bacterial_pneumonia", "normal")


@pytest.fixture(scope="module")
def four_class_tidy(tmp_path_factory) -> pd.DataFrame:
    """Generated collections with 6 viral and 6 bacterial non-COVID pneumonia patients added."""
    root = make_fake_collections(tmp_path_factory.mktemp("four"), n_patients=6, seed=1, defects=False,
                                 pathogen_patients=6)
    return metadata.load_all(root)


def test_four_class_task_is_declared():
    assert sp.classes_for("four_class") == FOUR


def test_select_relabels_by_pathogen_and_counts_what_it_leaves_out(four_class_tidy):
    tidy = four_class_tidy[four_class_tidy["label"] != "unknown"]
    selected = sp.select(tidy, "four_class", "all")
    assert set(selected["label"]) == set(FOUR)
    # every viral / bacterial row is a non-COVID pneumonia of that pathogen
    for cls, kind in (("viral_pneumonia", "viral"), ("bacterial_pneumonia", "bacterial")):
        rows = selected[selected["label"] == cls]
        assert (rows["pathogen_type"] == kind).all() and len(rows) > 0
    left_out = sp.excluded_by_task(tidy, "four_class", "all")
    # fungal (Pneumocystis) and unspecified ("Pneumonia") are left out, counted, never silent
    assert set(left_out["pathogen_type"]) == {"fungal", "unspecified"}
    assert left_out["images"].sum() + len(selected) == len(tidy)
    assert left_out["images"].dtype.kind == "i"


def test_four_class_split_has_every_class_in_every_split(four_class_tidy):
    tidy = four_class_tidy[four_class_tidy["label"] != "unknown"]
    splits = sp.patient_split(sp.select(tidy, "four_class", "all"), seed=42)
    sp.check_no_leak(splits)
    counts = sp.class_counts(splits)
    assert list(counts.columns.get_level_values(1)[:3]) == ["train", "val", "test"]
    assert all(dtype.kind == "i" for dtype in counts.dtypes)
    assert (counts.loc[list(FOUR), "images"] > 0).all().all()


def test_split_leaving_a_class_empty_is_refused_with_names_and_counts(fake_data):
    # the default generated data has a single SARS patient: one viral patient cannot reach val and test
    tidy = metadata.load_all(fake_data)
    tidy = tidy[tidy["label"] != "unknown"]
    with pytest.raises(ValueError) as err:
        sp.patient_split(sp.select(tidy, "four_class", "all"), seed=42)
    msg = str(err.value)
    assert "class 'viral_pneumonia' is empty in val and test" in msg
    assert "train 2 images / 1 patients, val 0 images / 0 patients" in msg
    assert "task='three_class'" in msg
    assert "bacterial_pneumonia" not in msg  # three bacterial patients: present everywhere


def test_four_class_metrics_have_per_class_sensitivity_with_intervals():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    logits = rng.normal(size=(100, 4)) + 2 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = M.evaluate(y, p, [f"p{i // 2}" for i in range(100)], FOUR, n_boot=100, seed=0)
    rec = R.metrics_record(report, "m", "four_class", "none")
    for c in FOUR:
        entry = rec["metrics"][f"sensitivity_{c}"]
        lo, hi = entry["ci95"]
        assert lo is not None and hi is not None and lo <= hi
    assert np.array(rec["confusion_matrix"]).shape == (4, 4)
