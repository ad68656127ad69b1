"""The model's track record sentence (``cxrbook.inference.track_record``): true for every branch of the numbers.

Records are written through the workbook's own schema functions (``records.metrics_record``) from
confusion matrices chosen here, so each number in a sentence can be checked against its source.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrbook.evaluation import records as R
from cxrbook.inference.track_record import ci_text, pct, track_record

BINARY = ["normal", "covid"]
THREE = ["covid", "other_pneumonia", "normal"]


def metric(value, lo=None, hi=None) -> dict:
    """A metric entry as the workbook writes it (``ci_flag`` where the interval is suspect)."""
    return R.metric_entry(value, [lo, hi])


def binary_record(tmp: Path, name: str, cm, sens_ci=(0.85, 0.98), spec_ci=(0.76, 0.93), threshold=0.5,
                  classes=BINARY) -> dict:
    (tn, fp), (fn, tp) = cm
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    n = tn + fp + fn + tp
    report = {"n_test": n, "n_patients": n // 2, "classes": classes, "threshold": threshold,
              "confusion_matrix": cm,
              "metrics": {"accuracy": metric((tp + tn) / n), "sensitivity": metric(sens, *sens_ci),
                          "specificity": metric(spec, *spec_ci)}}
    rec = R.metrics_record(report, model=name, task="covid_vs_normal", weights="none")
    R.save_metrics(rec, tmp / "metrics" / f"{name}.json")
    return rec


def external(tmp: Path, name: str, sens, spec, threshold=0.5, sens_ci=(0.30, 0.50), spec_ci=(0.02, 0.09),
             image_size=64) -> None:
    rec = {"schema_version": 1, "collections": {
        "hannover": {"n_images": 243, "n_patients": 71, "label": "covid", "measures": "sensitivity"},
        "nih": {"n_images": 500, "n_patients": 200, "label": "normal", "measures": "specificity", "image_side_px": 64}},
        "models": [{"model": name, "threshold": threshold, "image_size": image_size,
                    "external": {"sensitivity": metric(sens, *sens_ci), "specificity": metric(spec, *spec_ci)}}]}
    (tmp / "external.json").write_text(json.dumps(rec))


def test_binary_with_both_records(tmp_path):
    binary_record(tmp_path, "cnn", [[60, 10], [3, 47]])
    external(tmp_path, "cnn", 0.4, 0.06)
    tr = track_record(tmp_path, "cnn", BINARY, 0.5, image_size=64)
    assert tr.sentence == (
        "Track record: On its internal test set (120 images of 60 patients, held out from the collections it was "
        "trained on) it called 47 of 50 COVID-19 images COVID-19 (94%, 95% CI 85-98%) and called 60 of 70 normal "
        "images normal (86%, 95% CI 76-93%); on 243 COVID-19 X-rays of 71 patients from Hannover, a hospital it "
        "never saw, it called 40% COVID-19 (95% CI 30-50%), and on 500 pre-pandemic adult normal X-rays of 200 NIH "
        "patients it called 94% COVID-19 (95% CI 91-98%).")
    assert tr.internal["sensitivity"].count == 47 and tr.internal["sensitivity"].total == 50
    assert tr.as_dict()["external"]["measures"]["specificity"]["value"] == 0.06


def test_missing_files_are_said_not_invented(tmp_path):
    tr = track_record(tmp_path, "cnn", BINARY, 0.5)
    assert tr.internal is None and tr.external is None
    assert "No internal test result is recorded for this model (outputs/metrics/cnn.json is missing)" in tr.sentence
    assert "outputs/external.json, written by notebook 08, is missing" in tr.sentence
    assert "%" not in tr.sentence
    binary_record(tmp_path, "cnn", [[60, 10], [3, 47]])
    external(tmp_path, "another_model", 0.4, 0.06)
    tr = track_record(tmp_path, "cnn", BINARY, 0.5)
    assert "outputs/external.json has no entry for this model" in tr.sentence and tr.external is None
    (tmp_path / "metrics" / "cnn.json").write_text("{not json")
    tr = track_record(tmp_path, "cnn", BINARY, 0.5)
    assert "outputs/metrics/cnn.json is unreadable" in tr.sentence


def test_missing_interval_and_flags(tmp_path):
    binary_record(tmp_path, "cnn", [[70, 0], [0, 50]], sens_ci=(None, None), spec_ci=(1.0, 1.0))
    tr = track_record(tmp_path, "cnn", BINARY, 0.5)
    assert "called 50 of 50 COVID-19 images COVID-19 (100%, no interval recorded)" in tr.sentence
    assert ("called 70 of 70 normal images normal (100%, 95% CI 100-100%, a zero-width interval: every resample "
            "gave the same value)") in tr.sentence


@pytest.mark.parametrize("value,text", [(0.0, "0%"), (1.0, "100%"), (0.004, "under 1%"), (0.996, "over 99%"),
                                        (0.005, "under 1%"), (0.5, "50%"), (0.945, "94%"), (None, "n/a")])
def test_percentages_never_round_to_0_or_100(value, text):
    assert pct(value) == text


def test_intervals_round_outward():
    assert ci_text(0.853, 0.976) == "95% CI 85-98%"
    assert ci_text(0.0, 0.004) == "95% CI 0-1%"
    assert ci_text(0.996, 1.0) == "95% CI 99-100%"
    assert ci_text(0.85, 0.98) == "95% CI 85-98%"  # exact bounds stay where they are
    assert ci_text(None, 0.5) == "no interval recorded"


def test_zero_and_hundred_percent_external(tmp_path):
    binary_record(tmp_path, "cnn", [[60, 10], [3, 47]])
    external(tmp_path, "cnn", 1.0, 0.0, sens_ci=(1.0, 1.0), spec_ci=(0.0, 0.0), image_size=150)
    s = track_record(tmp_path, "cnn", BINARY, 0.5, image_size=150).sentence
    assert "it called 100% COVID-19 (95% CI 100-100%, a zero-width interval" in s
    assert "of 200 NIH patients, 64 px thumbnails this 150 px model sees upsampled it called 100% COVID-19" in s


def test_threshold_mismatch_is_said(tmp_path):
    binary_record(tmp_path, "cnn", [[60, 10], [3, 47]], threshold=0.41)
    external(tmp_path, "cnn", 0.4, 0.06, threshold=0.41)
    s = track_record(tmp_path, "cnn", BINARY, 0.5).sentence
    assert "(measured at threshold 0.410, while this model now decides at 0.500)" in s
    assert s.count("measured at threshold 0.410") == 2  # internal and external both


def test_undefined_value_and_counts_that_disagree(tmp_path):
    rec = binary_record(tmp_path, "cnn", [[60, 10], [3, 47]])
    rec["metrics"]["sensitivity"] = {"value": 0.9, "ci95": [0.8, 0.95]}  # not 47/50: counts are not shown
    rec["metrics"]["specificity"] = {"value": None, "ci95": [None, None]}
    (tmp_path / "metrics" / "cnn.json").write_text(json.dumps(rec))
    s = track_record(tmp_path, "cnn", BINARY, 0.5).sentence
    assert "called 90% of COVID-19 images COVID-19 (95% CI 80-95%)" in s and "47 of 50" not in s
    assert "has no recorded specificity for normal images" in s


def test_multiclass(tmp_path):
    cm = [[18, 1, 1], [2, 15, 3], [0, 2, 28]]
    report = {"n_test": 70, "n_patients": 40, "classes": THREE, "threshold": None, "confusion_matrix": cm,
              "metrics": {"accuracy": metric(61 / 70), "sensitivity_covid": metric(0.9, 0.8, 0.97),
                          "sensitivity_other_pneumonia": metric(0.75, 0.6, 0.9),
                          "sensitivity_normal": metric(28 / 30, 0.85, 1.0)}}
    R.save_metrics(R.metrics_record(report, model="m3", task="three_class", weights="none"),
                   tmp_path / "metrics" / "m3.json")
    s = track_record(tmp_path, "m3", THREE, None).sentence
    assert ("named 18 of 20 COVID-19 images COVID-19 (90%, 95% CI 80-97%), named 15 of 20 other pneumonia images "
            "other pneumonia (75%, 95% CI 60-90%) and named 28 of 30 normal images normal (93%, 95% CI 85-100%)") in s
    assert "no such result exists for this multi-class model" in s and "(measured at" not in s


def test_classes_that_differ_from_the_model(tmp_path):
    binary_record(tmp_path, "cnn", [[60, 10], [3, 47]])
    s = track_record(tmp_path, "cnn", ["normal", "pneumonia"], 0.5).sentence
    assert "No usable internal test result" in s and "47 of 50" not in s


def test_ensemble_reads_its_own_records(tmp_path):
    binary_record(tmp_path, "ensemble", [[65, 5], [5, 45]])
    external(tmp_path, "ensemble", 0.5, 0.1)
    s = track_record(tmp_path, "ensemble", BINARY, 0.5).sentence
    assert "called 45 of 50 COVID-19 images" in s and "from Hannover" in s


def test_every_percentage_in_a_sentence_comes_from_the_record(tmp_path):
    """Random confusion matrices: each count and percentage printed is recomputable from the record."""
    import re

    import numpy as np
    rng = np.random.default_rng(0)
    for i in range(200):
        tp, fn, tn, fp = (int(v) for v in rng.integers(0, 40, 4))
        if tp + fn == 0 or tn + fp == 0:
            continue
        binary_record(tmp_path, "m", [[tn, fp], [fn, tp]], sens_ci=(None, None), spec_ci=(None, None))
        s = track_record(tmp_path, "m", BINARY, 0.5).sentence
        for count, total, p in re.findall(r"called (\d+) of (\d+) \S+ images \S+ \(([^,]+),", s):
            v = int(count) / int(total)
            assert p == pct(v)
            if p.endswith("%") and p[:-1].isdigit():
                assert abs(int(p[:-1]) - 100 * v) <= 0.5 + 1e-9
                assert (int(p[:-1]) in (0, 100)) == (v in (0.0, 1.0))
