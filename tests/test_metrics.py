"""Tests of cxrbook.evaluation.metrics: thresholds, metrics vs scikit-learn, patient bootstrap, records, plots."""

from __future__ import annotations

import json
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxrbook.evaluation import metrics as M
from cxrbook.evaluation import records as R
from cxrbook.evaluation import metric_plots as MP  # noqa: E402

BIN = ("normal", "covid")
TRI = ("covid", "other_pneumonia", "normal")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def binary_data(n: int = 200, seed: int = 1, images_per_patient: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # ties on purpose
    pid = np.array([f"p{i // images_per_patient}" for i in range(n)])
    return y, s, pid


def three_class_data(n: int = 180, seed: int = 2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pid = np.array([f"q{i // 2}" for i in range(n)])
    return y, p, pid


# --------------------------------------------------------------------------- threshold / labels

def test_one_sigmoid_column_is_thresholded_and_a_constant_model_is_degenerate():
    """Our code thresholds an (n, 1) sigmoid column; argmax over it would predict class 0 everywhere."""
    from cxrbook.inference import predict as P
    from cxrbook.inference.saved_model import to_probabilities
    scores = np.full((50, 1), 0.9)                 # (n, 1) sigmoid output, like model.predict
    assert M.predict_labels(scores, threshold=0.5).tolist() == [1] * 50
    assert M.predict_labels(scores.ravel(), 0.5).tolist() == [1] * 50
    varied = np.array([[0.1], [0.6], [0.4], [0.95]])
    assert M.predict_labels(varied, threshold=0.5).tolist() == [0, 1, 0, 1]
    assert M.predict_labels(varied, threshold=0.05).tolist() == [1, 1, 1, 1]
    # the CLI's decision from (1 - p, p) probabilities uses the threshold too, not argmax
    probs = to_probabilities(varied, 2)
    assert P.decide(probs, ("normal", "covid"), 0.3) == ["normal", "covid", "covid", "covid"]
    assert P.decide(to_probabilities(scores, 2), ("normal", "covid"), 0.95) == ["normal"] * 50
    # a model whose scores are constant: every image positive, and the report says it is degenerate
    y = np.r_[np.zeros(25, int), np.ones(25, int)]
    pid = np.array([f"p{i // 2}" for i in range(50)])
    m = M.compute_metrics(y, scores, BIN, threshold=0.5)
    assert m["confusion_matrix"] == [[0, 25], [0, 25]]
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0 and m["roc_auc"] == 0.5
    assert m["accuracy"] == 0.5
    assert math.isnan(m["npv"])                    # no negative predictions: undefined, no error
    report = M.evaluate(y, scores, pid, BIN, threshold=0.5, n_boot=200, seed=0)
    assert report["confusion_matrix"] == [[0, 25], [0, 25]]
    assert report["metrics"]["sensitivity"]["value"] == 1.0
    assert report["metrics"]["specificity"]["value"] == 0.0
    assert report["metrics"]["roc_auc"]["value"] == 0.5
    assert "constant scores" in report["degenerate"]                  # the model is named degenerate ...
    assert report["metrics"]["roc_auc"]["ci95"] == [0.5, 0.5]          # ... its AUC is 0.5 in every sample
    assert report["metrics"]["roc_auc"]["ci_flag"] == "zero_width"      # flagged with that reason, not hidden
    for name in ("sensitivity", "specificity"):   # its proportions have real intervals: 25 of 25 is not certainty
        lo, hi = report["metrics"][name]["ci95"]
        assert hi - lo > 0.05 and "ci_flag" not in report["metrics"][name], name
    record = R.metrics_record(report, "constant", "covid_vs_normal", "none", threshold_rule="fixed")
    assert record["degenerate"] == report["degenerate"]
    assert R.fmt(record["metrics"]["roc_auc"]).endswith("‡")


def test_predict_labels_requires_threshold_for_one_column_and_argmaxes_many():
    with pytest.raises(ValueError):
        M.predict_labels(np.array([0.2, 0.8]))
    with pytest.raises(ValueError):
        M.predict_labels(np.array([[0.2], [0.8]]))
    assert M.predict_labels(np.array([0.2, 0.5, 0.8]), 0.5).tolist() == [0, 1, 1]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert M.predict_labels(p).tolist() == [0, 2]
    with pytest.raises(ValueError):
        M.compute_metrics([0, 1], [0.2, 0.8], BIN)        # binary without threshold


def test_choose_threshold_separable_and_finite():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.05, 0.2, 0.3, 0.41, 0.7, 0.8, 0.95])
    t = M.choose_threshold(y, s)
    assert t == pytest.approx((0.41 + 0.7) / 2)        # the middle of the gap, not the score 0.7
    pred = M.predict_labels(s, t)
    assert np.array_equal(pred, y)
    assert M.choose_threshold(y, s, rule="fixed") == 0.5
    # scores all identical: the only cut is "everything positive", halfway between the score and 0
    t2 = M.choose_threshold([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3])
    assert t2 == pytest.approx(0.15)
    with pytest.raises(ValueError):
        M.choose_threshold(y, s, rule="median")
    with pytest.raises(ValueError, match="finite"):
        M.choose_threshold(y, np.r_[s[:-1], np.nan])


def test_choose_threshold_ties_go_to_closest_to_half():
    # Youden's J is 0.5 at the cut below 0.9 (0.8) and at the cut below 0.2 (0.15): the tie goes to 0.8,
    # the cut closer to 0.5
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.7, 0.9])
    cuts = {0.95: 0.9, 0.8: 0.7, 0.45: 0.2, 0.15: 0.1}   # midpoint cut -> the lowest score it calls positive
    js = {c: np.mean(s[y == 1] >= c) - np.mean(s[y == 0] >= c) for c in cuts}
    best = max(js.values())
    tied = [c for c, j in js.items() if abs(j - best) < 1e-12]
    assert sorted(tied) == [0.15, 0.8]
    assert M.choose_threshold(y, s) == pytest.approx(0.8)


def test_youden_threshold_lies_midway_between_validation_scores_so_no_decision_can_flip():
    """On many random validation sets: the threshold is never an observed score, it keeps the decisions
    of the best ROC point, and moving every score by less than half the gap around the threshold (an
    engine's float error) changes no ``>=`` decision on validation."""
    from sklearn.metrics import roc_curve
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(6, 60))
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), int(rng.integers(1, 4)))  # ties too
        t = M.choose_threshold(y, s)
        assert not np.any(np.isclose(s, t, rtol=0, atol=1e-12)), (trial, t)
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
        j_at_t = np.mean(s[y == 1] >= t) - np.mean(s[y == 0] >= t)
        assert j_at_t == pytest.approx((tpr - fpr)[np.isfinite(thr)].max(), abs=1e-12), trial
        gap = np.min(np.abs(s - t))
        for sign in (-1, 1):
            jitter = sign * 0.99 * gap * rng.random(len(s))
            assert np.array_equal(s + jitter >= t, s >= t), trial


# --------------------------------------------------------------------------- metrics vs sklearn

def test_binary_metrics_match_sklearn():
    y, s, _ = binary_data()
    t = 0.5
    pred = (s >= t).astype(int)
    m = M.compute_metrics(y, s, BIN, threshold=t)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = cm.ravel()
    assert m["confusion_matrix"] == cm.tolist()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["brier"] == pytest.approx(brier_score_loss(y, s))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["accuracy"] == pytest.approx(np.trace(cm) / len(y))
    # ECE against the reliability table
    rc = MP.reliability_curve(y, s)
    ok = rc["count"] > 0
    ece = (rc.loc[ok, "count"] * (rc.loc[ok, "mean_predicted"] - rc.loc[ok, "observed_fraction"]).abs()
           ).sum() / len(y)
    assert m["ece"] == pytest.approx(ece)
    assert rc["count"].sum() == len(y) and len(rc) == 10


def test_binary_accepts_class_names_and_undefined_metrics_are_nan():
    y = np.array(["normal", "covid", "covid"])
    m = M.compute_metrics(y, [0.1, 0.9, 0.6], BIN, threshold=0.5)
    assert m["accuracy"] == 1.0
    only_neg = M.compute_metrics([0, 0, 0], [0.1, 0.2, 0.3], BIN, threshold=0.5)
    for name in ("roc_auc", "pr_auc", "sensitivity", "ppv", "f1"):
        assert math.isnan(only_neg[name]), name
    assert only_neg["specificity"] == 1.0


def test_three_class_metrics_match_sklearn():
    y, p, _ = three_class_data()
    m = M.compute_metrics(y, p, TRI)
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=[0, 1, 2])
    assert m["confusion_matrix"] == cm.tolist()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["accuracy"] == pytest.approx(np.trace(cm) / len(y))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, labels=[0, 1, 2]))
    rec = recall_score(y, pred, average=None)
    for i, c in enumerate(TRI):
        assert m[f"sensitivity_{c}"] == pytest.approx(rec[i])
        assert m[f"auc_{c}"] == pytest.approx(roc_auc_score(y == i, p[:, i]))
        # one-vs-rest specificity: class c against the rest, binarised
        assert m[f"specificity_{c}"] == pytest.approx(recall_score(y == i, pred == i, pos_label=False))


@pytest.mark.parametrize("classes", [BIN, TRI])
def test_vectorized_weighted_metrics_equal_sklearn_with_sample_weight(classes):
    y, s, _ = binary_data(120, seed=5) if len(classes) == 2 else three_class_data(120, seed=5)
    pred = M.predict_labels(s, 0.5) if len(classes) == 2 else s.argmax(axis=1)
    rng = np.random.default_rng(0)
    W = rng.integers(0, 3, size=(4, len(y))).astype(float)
    W[0] = 1.0
    vec = M._weighted_metrics(W, y, s, pred, classes)  # white-box check of the vectorised twin
    # unit weights == compute_metrics (which uses sklearn)
    point = M.compute_metrics(y, s, classes, 0.5)
    for name, vals in vec.items():
        assert vals[0] == pytest.approx(point[name], abs=1e-12), name
    # integer weights == sklearn with sample_weight == the repeated-image resample
    for b in range(1, 4):
        idx = np.repeat(np.arange(len(y)), W[b].astype(int))
        rep = M.compute_metrics(y[idx], s[idx], classes, 0.5)
        for name, vals in vec.items():
            assert vals[b] == pytest.approx(rep[name], abs=1e-12, nan_ok=True), name
        if len(classes) == 2:
            assert vec["roc_auc"][b] == pytest.approx(roc_auc_score(y, s, sample_weight=W[b]))
            assert vec["pr_auc"][b] == pytest.approx(average_precision_score(y, s, sample_weight=W[b]))


# --------------------------------------------------------------------------- intervals

def test_every_metric_gets_the_interval_the_coverage_study_chose():
    """The record's intervals are those of cxrbook.evaluation.intervals, metric by metric (the methods
    tests/test_interval_coverage.py checks at the boundary), and each names its method."""
    from cxrbook.evaluation import intervals as I
    y, s, pid = binary_data(150, seed=11, images_per_patient=3)
    rep = M.evaluate(y, s, pid, BIN, threshold=0.45, n_boot=300, seed=4)
    ci = {n: m["ci95"] for n, m in rep["metrics"].items()}
    method = {n: m["ci_method"] for n, m in rep["metrics"].items()}
    pred = s >= 0.45
    for name, mask, hits in (("accuracy", np.ones(len(y), bool), pred == y), ("sensitivity", y == 1, pred),
                             ("specificity", y == 0, ~pred), ("ppv", pred, y == 1), ("npv", ~pred, y == 0)):
        assert ci[name] == pytest.approx(list(I.proportion_ci(*I.patient_counts(hits[mask], pid[mask])))), name
        assert method[name] == "wilson_deff"
    assert ci["roc_auc"] == pytest.approx(list(I.auc_ci(y == 1, s, pid))) and method["roc_auc"] == "hanley_mcneil_deff"
    assert ci["brier"] == pytest.approx(list(I.mean_ci((s - y) ** 2, pid, n_boot=300, seed=4)))
    assert method["brier"] == "bootstrap_t_log"
    boot = I.patient_bootstrap_ci(lambda W: {n: v for n, v in M._weighted_metrics(W, y, s, pred.astype(int), BIN)
                                             .items() if n in ("f1", "pr_auc")}, pid, n_boot=300, seed=4)
    for name in ("f1", "pr_auc"):
        assert ci[name] == pytest.approx(list(boot[name])) and method[name] == "bca_patients"
    assert ci["ece"] == [None, None] and method["ece"] == "none"   # no interval holds for the binned ECE
    assert set(method.values()) <= set(R.CI_METHODS)
    y3, p3, pid3 = three_class_data()
    rep3 = M.evaluate(y3, p3, pid3, TRI, n_boot=200, seed=0)["metrics"]
    for i, c in enumerate(TRI):
        pred3 = p3.argmax(1)
        assert rep3[f"specificity_{c}"]["ci95"] == pytest.approx(
            list(I.proportion_ci(*I.patient_counts(pred3[y3 != i] != i, pid3[y3 != i]))))
        assert rep3[f"auc_{c}"]["ci95"] == pytest.approx(list(I.auc_ci(y3 == i, p3[:, i], pid3)))
    assert rep3["macro_auc"]["ci_method"] == rep3["macro_f1"]["ci_method"] == "bca_patients"


def test_no_proportion_interval_has_zero_width_even_at_0_and_1():
    """A perfect classifier and a constant one: every proportion gets a real interval (0 of n gives an upper
    bound above 0), only the constant model's AUC is zero-width, and it is flagged degenerate."""
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    pid = np.array([f"p{i // 2}" for i in range(60)])
    perfect = M.evaluate(y, np.where(y == 1, 0.9, 0.1), pid, BIN, threshold=0.5, n_boot=200, seed=0)
    constant = M.evaluate(y, np.full(60, 0.7), pid, BIN, threshold=0.5, n_boot=200, seed=0)
    for rep in (perfect, constant):
        for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
            m = rep["metrics"][name]
            if m["value"] is None:
                continue
            lo, hi = m["ci95"]
            assert hi - lo > 0.01 and "ci_flag" not in m, (name, m)
    assert perfect["metrics"]["sensitivity"]["ci95"][1] == 1.0 and perfect["degenerate"] is None
    assert constant["metrics"]["specificity"]["value"] == 0.0 and constant["metrics"]["specificity"]["ci95"][1] > 0
    assert constant["metrics"]["roc_auc"] == {"value": 0.5, "ci95": [0.5, 0.5], "ci_method": "hanley_mcneil_deff",
                                              "ci_flag": "zero_width"}
    assert "constant" in constant["degenerate"]



def test_scores_constant_up_to_float_noise_are_scored_as_constant():
    """Random MobileNetV2 features in the smoke profile give scores that differ by ~1e-7: below
    degenerate_reason's tolerance, so the model is degenerate, and its AUC is the constant model's 0.5
    with the zero-width flag, not an interval around a ranking of float noise (it once read 0.52 [0.40, 0.64])."""
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    pid = np.array([f"p{i // 2}" for i in range(60)])
    noisy = 0.3 + 3e-7 * np.random.default_rng(0).random(60) + 1e-7 * y     # the positives slightly higher
    rep = M.evaluate(y, noisy, pid, BIN, threshold=0.3 + 1.5e-7, n_boot=200, seed=0)
    assert "constant" in rep["degenerate"]
    assert rep["metrics"]["roc_auc"]["value"] == 0.5 and rep["metrics"]["roc_auc"]["ci_flag"] == "zero_width"
    constant = M.evaluate(y, np.full(60, noisy[0]), pid, BIN, threshold=0.3 + 1.5e-7, n_boot=200, seed=0)
    assert rep["confusion_matrix"] == constant["confusion_matrix"]
    for name, m in rep["metrics"].items():   # the same report as truly constant scores (Brier, ECE: to rounding)
        assert m["value"] == pytest.approx(constant["metrics"][name]["value"], abs=1e-12), name
        assert m["ci95"] == pytest.approx(constant["metrics"][name]["ci95"], abs=1e-12), name

def test_clustered_images_widen_the_interval():
    # 30 single-image patients all classified correctly, one patient with 50 images all missed
    y = np.r_[np.ones(50, int), np.tile([0, 1], 15)]
    s = np.r_[np.full(50, 0.2), np.tile([0.1, 0.9], 15)]
    pid_patient = np.r_[["big"] * 50, [f"s{i}" for i in range(30)]]
    pid_image = np.arange(len(y))                 # every image its own "patient"
    ci_p = M.evaluate(y, s, pid_patient, BIN, threshold=0.5, n_boot=200, seed=0)["metrics"]
    ci_i = M.evaluate(y, s, pid_image, BIN, threshold=0.5, n_boot=200, seed=0)["metrics"]
    width = lambda m: m["accuracy"]["ci95"][1] - m["accuracy"]["ci95"][0]  # noqa: E731
    assert width(ci_p) > 2 * width(ci_i)
    assert width(ci_p) > 0.4


def test_intervals_reproducible_with_seed():
    y, s, _ = binary_data(80, seed=7)
    pid = np.arange(len(y))
    a = M.evaluate(y, s, pid, BIN, 0.5, n_boot=200, seed=11)["metrics"]
    b = M.evaluate(y, s, pid, BIN, 0.5, n_boot=200, seed=11)["metrics"]
    c = M.evaluate(y, s, pid, BIN, 0.5, n_boot=200, seed=12)["metrics"]
    assert a == b
    assert a["f1"] != c["f1"] and a["brier"] != c["brier"]       # the bootstraps move with the seed ...
    assert a["sensitivity"] == c["sensitivity"]                   # ... the Wilson interval does not


def test_bootstrap_skips_undefined_resamples():
    # 2 positive patients among 12: many resamples have no positive image -> PR AUC undefined there
    y = np.r_[np.zeros(10, int), np.ones(2, int)]
    s = np.r_[np.linspace(0.05, 0.6, 10), [0.7, 0.4]]
    ci = M.evaluate(y, s, np.arange(12), BIN, 0.5, n_boot=300, seed=0)["metrics"]
    for name in ("pr_auc", "roc_auc"):
        lo, hi = ci[name]["ci95"]
        assert 0.0 <= lo <= hi <= 1.0, name


def test_evaluate_is_fast():
    y, s, pid = binary_data(1000, seed=3, images_per_patient=2)
    start = time.perf_counter()
    M.evaluate(y, s, pid, BIN, 0.5, n_boot=2000, seed=0)
    y3, p3, pid3 = three_class_data(600)
    M.evaluate(y3, p3, pid3, TRI, n_boot=2000, seed=0)
    assert time.perf_counter() - start < 10.0


# --------------------------------------------------------------------------- paired test

def test_paired_auc_identical_models():
    y, s, pid = binary_data()
    r = M.paired_auc_test(y, s, s.copy(), pid, n_boot=300, seed=0)
    assert r["diff"] == 0.0 and r["p_value"] == 1.0
    assert r["ci95"] == [0.0, 0.0]


def test_paired_auc_clearly_better_model():
    y, weak, pid = binary_data(240, seed=4)
    rng = np.random.default_rng(9)
    strong = np.clip(0.1 + 0.8 * y + rng.normal(0, 0.05, len(y)), 0, 1)
    r = M.paired_auc_test(y, strong, weak, pid, n_boot=500, seed=0)
    assert r["auc_a"] > r["auc_b"]
    assert r["diff"] == pytest.approx(r["auc_a"] - r["auc_b"])
    assert r["ci95"][0] > 0 and r["p_value"] < 0.01
    y3, p3, pid3 = three_class_data()
    r3 = M.paired_auc_test(y3, p3, p3, pid3, n_boot=100)
    assert r3["auc_a"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"))
    assert r3["p_value"] == 1.0


# --------------------------------------------------------------------------- records

def _record(**kw):
    y, s, pid = binary_data()
    report = M.evaluate(y, s, pid, BIN, threshold=0.47, n_boot=100, seed=0)
    return R.metrics_record(report, "densenet121", "covid_vs_normal", "imagenet",
                            extra={"image_size": 224, "seed": 42}, threshold_rule="youden", **kw)


def test_record_schema_and_round_trip(tmp_path):
    rec = _record()
    for key in R.REQUIRED_KEYS:
        assert key in rec
    assert rec["threshold_rule"] == "youden" and rec["extra"]["n_bootstrap"] == 100
    rec["metrics"]["ppv"] = {"value": float("nan"), "ci95": [float("nan"), None]}
    path = R.save_metrics(rec, tmp_path / "metrics" / "densenet121.json")
    text = path.read_text()
    assert "NaN" not in text and json.loads(text) == json.loads(json.dumps(json.loads(text), sort_keys=True))
    assert list(json.loads(text)) == sorted(json.loads(text))
    loaded = R.load_metrics(path)
    assert loaded["metrics"]["ppv"] == {"value": None, "ci95": [None, None]}
    assert loaded["metrics"]["roc_auc"] == rec["metrics"]["roc_auc"]
    assert loaded["confusion_matrix"] == rec["confusion_matrix"]
    y3, p3, pid3 = three_class_data()
    rec3 = R.metrics_record(M.evaluate(y3, p3, pid3, TRI, n_boot=50), "m", "three_class", "random")
    assert rec3["threshold"] is None and rec3["threshold_rule"] == "argmax"
    R.validate_record(rec3)


def test_validate_record_rejections():
    rec = _record()
    bad = {k: v for k, v in rec.items() if k != "threshold"}
    with pytest.raises(ValueError, match="threshold"):
        R.validate_record(bad)
    bad = json.loads(json.dumps(rec))
    del bad["metrics"]["roc_auc"]["ci95"]
    with pytest.raises(ValueError, match="roc_auc"):
        R.validate_record(bad)
    bad = json.loads(json.dumps(rec))
    bad["metrics"]["accuracy"]["value"] = 0.929     # the published bug: not trace/n
    bad["metrics"]["accuracy"]["ci95"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="accuracy"):
        R.validate_record(bad)
    bad = json.loads(json.dumps(rec))
    bad["threshold"] = None
    with pytest.raises(ValueError, match="threshold"):
        R.validate_record(bad)


def test_metrics_table_and_markdown():
    rec = _record()
    table = R.metrics_table([rec, {**rec, "model": "resnet50"}])
    assert list(table["model"]) == ["densenet121", "resnet50"]
    assert {"task", "weights", "n_test", "threshold", "roc_auc"} <= set(table.columns)
    assert pd.Series(table["roc_auc"]).str.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]").all()
    md = R.table_markdown(table)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| model |") and set(lines[1]) <= set("|-") and len(lines) == 4


def test_classification_report_df():
    df = M.classification_report_df([0, 1, 1, 0], [0, 1, 0, 0], BIN)
    assert {"normal", "covid", "macro avg"} <= set(df.index)
    assert df.loc["covid", "recall"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- plots

def _assert_labelled(fig):
    assert (fig._suptitle and fig._suptitle.get_text()) or any(ax.get_title() for ax in fig.axes)
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel(), ax
        assert ax.get_ylabel(), ax


def test_plots_return_titled_labelled_figures(tmp_path):
    from cxrbook.plots import savefig
    y, s, _ = binary_data()
    y3, p3, _ = three_class_data()
    m = M.compute_metrics(y, s, BIN, 0.5)
    figs = {
        "cm": MP.plot_confusion(m["confusion_matrix"], BIN, "Confusion (test)"),
        "rocpr": MP.plot_roc_pr(y, s, BIN, "ROC / PR (test)"),
        "rocpr3": MP.plot_roc_pr(y3, p3, TRI, "ROC / PR three-class"),
        "rel": MP.plot_reliability(y, s, "Reliability (test)"),
        "overlay": MP.plot_roc_overlay({"a": (y, s), "b": (y, 1 - s)}, "ROC overlay"),
    }
    for name, fig in figs.items():
        assert isinstance(fig, matplotlib.figure.Figure), name
        _assert_labelled(fig)
        assert savefig(fig, tmp_path, name).exists()
    roc_ax = figs["rocpr"].axes[0]
    assert roc_ax.get_xlabel() == "False positive rate (1 - specificity)"
    assert len(figs["rocpr3"].axes[0].get_lines()) == 4       # 3 classes + chance line
