"""Notebook 09's cropping study (evaluation/lungs): regions, crops, paired differences, the paragraph."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbook.audit_runs import RunResult
from cxrbook.evaluation.lungs import crop_gray, lung_region, lungs_paragraph, paired_difference


def test_lung_region_is_the_union_widened_and_clipped():
    boxes = np.array([[[0.1, 0.2, 0.4, 0.8], [0.6, 0.1, 0.9, 0.7]]])
    np.testing.assert_allclose(lung_region(boxes, 0.0), [[0.1, 0.1, 0.9, 0.8]])
    np.testing.assert_allclose(lung_region(boxes, 0.1), [[0.02, 0.03, 0.98, 0.87]])
    np.testing.assert_allclose(lung_region(boxes, 0.5), [[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="margin"):
        lung_region(boxes, -0.1)


def test_crop_gray_takes_the_region_of_the_full_image():
    gray = np.arange(100 * 200, dtype=np.uint8).reshape(100, 200)
    crop = crop_gray(gray, (0.25, 0.5, 0.75, 1.0))
    assert crop.shape == (50, 100)
    assert crop[0, 0] == gray[50, 50]
    assert crop_gray(gray, (0.5, 0.5, 0.5, 0.5)).shape == (1, 1)


def _run(scores, threshold=0.5):
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    from cxrbook.metrics import evaluate
    pids = np.array(["a", "a", "b", "c", "c", "d", "e", "f"])
    report = evaluate(y, scores, pids, ("normal", "covid"), threshold=threshold, n_boot=200, seed=0)
    return RunResult(name="r", arch="logreg", mask="none", mask_fraction=0.6, classes=("normal", "covid"),
                     threshold=threshold, y_test=y, scores_test=np.asarray(scores, float), patient_test=pids,
                     image_path_test=np.array([f"{i}.png" for i in range(8)]), report=report, n_train=1, n_val=1,
                     seconds=0.0)


def test_paired_difference_of_a_run_with_itself_is_exactly_zero():
    a = _run([0.1, 0.2, 0.6, 0.7, 0.9, 0.4, 0.3, 0.8])
    d = paired_difference(a, a, ("roc_auc", "sensitivity"), n_boot=200, seed=0)
    assert d["roc_auc"]["value"] == 0.0 and d["roc_auc"]["ci95"] == [0.0, 0.0]
    b = _run([0.1, 0.2, 0.3, 0.7, 0.9, 0.8, 0.3, 0.8])
    d = paired_difference(b, a, ("sensitivity",), n_boot=200, seed=0)
    assert d["sensitivity"]["value"] == pytest.approx(0.25)


def _entry(v, lo, hi):
    return {"value": v, "ci95": [lo, hi]}


def _record(iou_diff, nih_diff, auc_lo, confounded):
    run = {"uncropped": {"metrics": {"roc_auc": _entry(0.9, auc_lo, 0.99)}},
           "cropped": {"metrics": {"roc_auc": _entry(0.9, 0.8, 0.99)}},
           "external": {"nih": {"uncropped": _entry(0.1, 0.05, 0.15), "cropped": _entry(0.1 + nih_diff[0], 0, 1),
                                "difference": _entry(*nih_diff)}}}
    probe = {"accuracy": _entry(0.9, 0.85, 0.95), "chance_majority_share": 0.5, "confounded": confounded}
    side = {m: _entry(0.7, 0.6, 0.8) for m in ("iou_mean", "map50", "map50_95")}
    return {"detector": {"held_out": {"n_images": 31, "n_patients": 15, "detector": side, "mean_box": side,
                                      "difference": {"iou_mean": _entry(*iou_diff)}}},
            "fallback": {"nih": {"images": 10, "either": 4}, "cohen": {"images": 10, "either": 1}},
            "runs": {"all": {"custom_cnn": run}},
            "source_probe": {"uncropped": probe, "cropped": probe}}


@pytest.mark.parametrize("iou_diff, verdict", [((0.09, 0.07, 0.12), "it beats the mean box"),
                                                ((0.0, -0.02, 0.02), "does not beat the mean box"),
                                                ((-0.05, -0.08, -0.01), "is worse than the mean box")])
def test_paragraph_detector_verdict(iou_diff, verdict):
    assert verdict in lungs_paragraph(_record(iou_diff, (0.0, -0.1, 0.1), 0.8, True))


@pytest.mark.parametrize("nih, said", [((0.2, 0.1, 0.3), "rose with cropping"),
                                       ((-0.2, -0.3, -0.1), "fell with cropping"),
                                       ((0.0, -0.1, 0.1), "did not measurably change")])
def test_paragraph_external_specificity(nih, said):
    text = lungs_paragraph(_record((0.0, -0.02, 0.02), nih, 0.8, True))
    assert said in text and "least confident collection is nih: 4 of 10" in text


def test_paragraph_does_not_read_a_model_that_learned_nothing():
    text = lungs_paragraph(_record((0.0, -0.02, 0.02), (0.2, 0.1, 0.3), 0.45, True))
    assert "did not separate the classes" in text and "rose with cropping" not in text


def test_paragraph_source_probe_both_ways():
    yes = lungs_paragraph(_record((0.0, -0.02, 0.02), (0.0, -0.1, 0.1), 0.8, True))
    no = lungs_paragraph(_record((0.0, -0.02, 0.02), (0.0, -0.1, 0.1), 0.8, False))
    assert "can still tell the collections apart" in yes and "inside the lungs" in yes
    assert "no longer beats chance" in no and "inside the lungs" not in no
