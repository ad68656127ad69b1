"""Notebook 09's study (cxrbook.lungs): paired differences, external comparison, reuse of 07, the paragraph."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cxrbook.audit.runs import metric_difference, scored_run
from cxrbook.lungs import study as L
from cxrbook.lungs.text import direction, learned, lungs_paragraph

CLASSES = ("normal", "covid")


def _run(scores, threshold=0.5, name="r", paths=None):
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    pids = np.array(["a", "a", "b", "c", "c", "d", "e", "f"])
    paths = paths if paths is not None else np.array([f"{i}.png" for i in range(8)])
    return scored_run(name, "logreg", CLASSES, threshold, y, np.asarray(scores, float), pids, paths,
                      n_boot=300, seed=0)


# --------------------------------------------------------------------------- paired differences

def test_a_paired_difference_resamples_the_same_patients():
    a = _run([0.1, 0.2, 0.6, 0.7, 0.9, 0.4, 0.3, 0.8])
    paired = metric_difference(a, a, n_boot=300, seed=0, metrics=("roc_auc", "sensitivity"), paired=True)
    assert paired["roc_auc"] == {"value": 0.0, "ci95": [0.0, 0.0], "ci_method": "bca_paired",
                                 "ci_flag": "constant_resamples"}
    # patients are matched by id with or without paired=True (issue 15 section 3): the same run differs by
    # exactly 0, and a run on other patients is resampled independently of it
    assert metric_difference(a, a, n_boot=300, seed=0, metrics=("roc_auc",))["roc_auc"]["ci95"] == [0.0, 0.0]
    elsewhere = scored_run("e", "logreg", CLASSES, 0.5, a.y_test, a.scores_test,
                           np.char.add("other:", a.patient_test.astype(str)), a.image_path_test, n_boot=300, seed=0)
    unpaired = metric_difference(a, elsewhere, n_boot=300, seed=0, metrics=("roc_auc",))
    assert unpaired["roc_auc"]["ci95"][1] - unpaired["roc_auc"]["ci95"][0] > 0.1
    b = _run([0.1, 0.2, 0.3, 0.7, 0.9, 0.8, 0.3, 0.8])
    d = metric_difference(b, a, n_boot=300, seed=0, metrics=("sensitivity",), paired=True)
    assert d["sensitivity"]["value"] == pytest.approx(0.25)
    other = _run([0.1] * 8, paths=np.array([f"x{i}.png" for i in range(8)]))
    with pytest.raises(ValueError, match="same test images"):
        metric_difference(other, a, paired=True)


def test_external_comparison_measures_each_collection_at_each_models_threshold():
    rows = pd.DataFrame({"collection": ["hannover"] * 4 + ["nih"] * 6,
                         "patient_id": ["h1", "h1", "h2", "h3", "n1", "n2", "n3", "n4", "n5", "n6"],
                         "image_path": [f"e{i}.png" for i in range(10)]})
    cropped, uncropped = _run([0.5] * 8, threshold=0.5), _run([0.5] * 8, threshold=0.3)
    s_crop = np.array([0.9, 0.8, 0.2, 0.6, 0.1, 0.2, 0.7, 0.1, 0.4, 0.6])
    s_whole = np.array([0.9, 0.8, 0.4, 0.6, 0.4, 0.4, 0.7, 0.4, 0.4, 0.6])
    out = L.external_comparison(rows, cropped, uncropped, s_crop, s_whole, n_boot=300, seed=0)
    assert out["hannover"]["metric"] == "sensitivity" and out["nih"]["metric"] == "specificity"
    assert (out["hannover"]["n_images"], out["hannover"]["n_patients"]) == (4, 3)
    assert out["hannover"]["cropped"]["value"] == pytest.approx(3 / 4)    # 0.2 < 0.5
    assert out["hannover"]["uncropped"]["value"] == pytest.approx(1.0)   # 0.4 >= 0.3
    assert out["nih"]["cropped"]["value"] == pytest.approx(4 / 6)        # 0.7, 0.6 >= 0.5
    assert out["nih"]["uncropped"]["value"] == pytest.approx(0.0)        # every score >= 0.3
    assert out["nih"]["difference"]["value"] == pytest.approx(4 / 6)
    lo, hi = out["nih"]["difference"]["ci95"]
    assert 0 < lo <= 4 / 6 <= hi
    same = L.external_comparison(rows, cropped, cropped, s_crop, s_crop, n_boot=300, seed=0)
    assert same["nih"]["difference"]["ci95"] == [0.0, 0.0]


def test_fallback_counts_per_collection():
    regions = pd.DataFrame({"source": ["a", "a", "a", "b"], "right_fallback": [True, False, True, False],
                            "left_fallback": [True, True, False, False]})
    assert L.fallback_counts(regions) == {"a": {"images": 3, "right": 2, "left": 2, "either": 3},
                                          "b": {"images": 1, "right": 0, "left": 0, "either": 0}}


def test_reusing_07s_model_is_refused_unless_everything_matches(tmp_path):
    out = tmp_path / "outputs"
    (out / "models").mkdir(parents=True)
    (out / "metrics").mkdir()
    paths = SimpleNamespace(outputs=out, models=out / "models", metrics=out / "metrics")
    data = SimpleNamespace(image_size=64, train=[0] * 5, val=[0] * 2, test=[0] * 3)
    kw = dict(n_boot=10, seed=42, profile="smoke", epochs=2)
    run, why = L.reuse_audit_run(paths, "covid_vs_normal", "all", "custom_cnn", data, CLASSES, **kw)
    assert run is None and "custom_cnn__normals_all.keras is missing" in why
    (paths.models / "custom_cnn__normals_all.keras").write_bytes(b"")
    (paths.metrics / "custom_cnn__normals_all.json").write_text(json.dumps(
        {"n_test": 3, "extra": {"n_train": 5, "n_val": 9}, "metrics": {}}))
    (out / "audit.json").write_text(json.dumps({"task": "covid_vs_normal", "profile": "smoke", "seed": 7,
                                                "arch": "custom_cnn", "image_size": 64, "epochs": 2}))
    run, why = L.reuse_audit_run(paths, "covid_vs_normal", "all", "custom_cnn", data, CLASSES, **kw)
    assert run is None and "{'seed': 7}" in why
    audit = json.loads((out / "audit.json").read_text())
    (out / "audit.json").write_text(json.dumps({**audit, "seed": 42}))
    run, why = L.reuse_audit_run(paths, "covid_vs_normal", "all", "custom_cnn", data, CLASSES, **kw)
    assert run is None and "sizes (5, 9, 3)" in why
    assert L.audit_probe(paths, task="covid_vs_normal", profile="smoke", seed=42, image_size=64, n_boot=10) is None


# --------------------------------------------------------------------------- the paragraph, every branch

def _e(v, lo, hi):
    return {"value": v, "ci95": [lo, hi]}


def _summary(auc_lo):
    return {"metrics": {"roc_auc": _e(0.9, auc_lo, 0.99)}}


def _run_entry(nih=(0.0, -0.1, 0.1), hann=(0.0, -0.1, 0.1), whole_lo=0.8, crop_lo=0.8, external=True):
    run = {"uncropped": _summary(whole_lo), "cropped": _summary(crop_lo),
           "difference": {"roc_auc": _e(0.0, -0.05, 0.05)}}
    if external:
        run["external"] = {
            "nih": {"metric": "specificity", "uncropped": _e(0.1, 0.05, 0.15), "cropped": _e(0.1 + nih[0], 0, 1),
                    "difference": _e(*nih)},
            "hannover": {"metric": "sensitivity", "uncropped": _e(0.9, 0.8, 0.95), "cropped": _e(0.9 + hann[0], 0, 1),
                         "difference": _e(*hann)}}
    return run


def _record(iou=(0.0, -0.02, 0.02), runs=None, fallback=None, probe=True, fell_back=None):
    side = {m: _e(0.7, 0.6, 0.8) for m in ("iou_mean", "map50", "map50_95")}
    probe_entry = {"accuracy": _e(0.9, 0.85, 0.95), "chance_majority_share": 0.55, "confounded": probe}
    return {"min_confidence": 0.5,
            "detector": {"held_out": {"n_images": 31, "n_patients": 15, "detector": side, "mean_box": side,
                                      "difference": {"iou_mean": _e(*iou) if iou else _e(None, None, None)},
                                      "fell_back": fell_back if fell_back is not None else {"right": 3, "left": 1}}},
            "fallback": fallback if fallback is not None else {"nih": {"images": 10, "either": 4},
                                                               "cohen": {"images": 10, "either": 1}},
            "runs": runs if runs is not None else {"all": {"custom_cnn": _run_entry()}},
            "source_probe": {"uncropped": probe_entry, "cropped": probe_entry} if probe is not None else {}}


@pytest.mark.parametrize("iou, said", [((0.09, 0.07, 0.12), "it beats the mean box"),
                                       ((0.0, -0.02, 0.02), "it does not beat the mean box"),
                                       ((-0.05, -0.08, -0.01), "it is worse than the mean box"),
                                       (None, "could not be measured")])
def test_paragraph_detector_verdict(iou, said):
    text = lungs_paragraph(_record(iou=iou))
    assert said in text
    assert sum(v in text for v in ("beats the mean box", "does not beat", "is worse than", "could not be")) == 1
    assert "4 of its 62 held-out lung boxes" in text


def test_paragraph_detector_without_fallback_on_held_out_images():
    assert "Every one of its 62 held-out lung boxes reached confidence 0.5" in lungs_paragraph(
        _record(fell_back={"right": 0, "left": 0}))


def test_paragraph_fallback_names_each_collection_and_the_least_sure():
    text = lungs_paragraph(_record())
    assert "nih 4 of 10 (40%)" in text and "cohen 1 of 10 (10%)" in text and "least sure of itself on nih" in text
    none = lungs_paragraph(_record(fallback={"nih": {"images": 10, "either": 0}, "cohen": {"images": 5, "either": 0}}))
    assert "no crop used the mean box" in none and "least sure" not in none
    tie = lungs_paragraph(_record(fallback={"nih": {"images": 10, "either": 5}, "cohen": {"images": 4, "either": 2},
                                            "hannover": {"images": 4, "either": 1}}))
    assert "least sure of itself on nih and cohen (equally)" in tie
    every = lungs_paragraph(_record(fallback={"nih": {"images": 3, "either": 3}, "cohen": {"images": 4, "either": 4}}))
    assert "in every image of every collection at least one lung box is the mean box" in every
    assert "least sure" not in every


@pytest.mark.parametrize("nih, said", [((0.2, 0.1, 0.3), "specificity on NIH adult normals rose"),
                                       ((-0.2, -0.3, -0.1), "specificity on NIH adult normals fell"),
                                       ((0.0, -0.1, 0.1), "specificity on NIH adult normals did not measurably change")])
def test_paragraph_external_specificity(nih, said):
    text = lungs_paragraph(_record(runs={"all": {"custom_cnn": _run_entry(nih=nih)}}))
    assert said in text
    moved = {"rose": "raised NIH specificity for 1, lowered it for 0 and did not measurably change it for 0",
             "fell": "raised NIH specificity for 0, lowered it for 1 and did not measurably change it for 0",
             "did not measurably change":
                 "raised NIH specificity for 0, lowered it for 0 and did not measurably change it for 1"}
    assert moved[direction(_e(*nih))] in text and "Of the 1 of 1 models" in text


@pytest.mark.parametrize("whole_lo, crop_lo, which", [(0.45, 0.8, "trained on whole images did not"),
                                                      (0.8, 0.4, "trained on crops did not"),
                                                      (0.3, 0.4, "trained on whole images and on crops did not")])
def test_paragraph_does_not_read_a_model_that_learned_nothing(whole_lo, crop_lo, which):
    text = lungs_paragraph(_record(runs={"all": {"custom_cnn": _run_entry(nih=(0.2, 0.1, 0.3), whole_lo=whole_lo,
                                                                           crop_lo=crop_lo)}}))
    assert which in text and "rose" not in text
    assert "None of the 1 models here separated the classes" in text


def test_paragraph_counts_only_readable_models_and_says_when_external_is_missing():
    runs = {"all": {"custom_cnn": _run_entry(nih=(0.2, 0.1, 0.3)), "logreg": _run_entry(whole_lo=0.4)},
            "adult": {"custom_cnn": _run_entry(nih=(-0.2, -0.3, -0.1)), "logreg": _run_entry(external=False)}}
    text = lungs_paragraph(_record(runs=runs))
    assert "Of the 2 of 4 models whose numbers can be read" in text
    assert "raised NIH specificity for 1, lowered it for 1" in text
    assert "It was not measured on the external collections." in text
    assert "With normals=adult, the custom_cnn's internal AUC did not measurably change" in text


def test_paragraph_source_probe_both_ways_and_absent():
    yes = lungs_paragraph(_record(probe=True))
    no = lungs_paragraph(_record(probe=False))
    assert "still tells the collections apart on the lung crops" in yes and "body size and age" in yes
    assert "no longer beats chance" in no and "does not show the shortcut is gone" in no
    assert "source probe" not in lungs_paragraph(_record(probe=None))


def test_paragraph_is_markdown_bullets_with_no_placeholder_left():
    text = lungs_paragraph(_record())
    lines = text.splitlines()
    assert [ln[:4] for ln in lines] == ["- **"] * 4
    assert "{" not in text and "nan" not in text.lower() and "None" not in text


def test_learned_needs_an_auc_interval_above_one_half():
    assert learned(_summary(0.51)) and not learned(_summary(0.5)) and not learned({"metrics": {}})
    assert not learned({"metrics": {"roc_auc": {"value": 0.9, "ci95": [None, None]}}})


def test_validate_lungs_names_what_is_missing():
    rec = {**_record(), "task": "t", "profile": "smoke", "seed": 1, "n_bootstrap": 10, "margin": 0.1, "boxes": {},
           "paragraph": "p"}
    for side in ("detector", "mean_box", "difference"):
        rec["detector"]["held_out"][side] = {m: _e(0.1, 0.0, 0.2) for m in ("iou_mean", "map50", "map50_95")}
    L.validate_lungs(rec)
    del rec["detector"]["held_out"]["difference"]["map50"]
    with pytest.raises(ValueError, match="difference.map50 is missing"):
        L.validate_lungs(rec)
    with pytest.raises(ValueError, match="lacks 'paragraph'"):
        L.validate_lungs({k: v for k, v in rec.items() if k != "paragraph"})


def test_cropped_pixels_are_each_files_crop_and_are_cached(tmp_path):
    from PIL import Image

    from cxrbook.data.images import load_gray, prepare
    from cxrbook.models.detection import crop_to_region
    rng = np.random.default_rng(0)
    regions = {}
    for i in range(5):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (60 + 10 * i, 80), dtype=np.uint8)).save(path)
        regions[str(path)] = np.array([0.1 * i / 5, 0.2, 0.9, 0.8 + 0.04 * i])
    crops = L.cropped_pixels(regions, 16, False, tmp_path / "cache", workers=3)
    for p, region in regions.items():
        np.testing.assert_array_equal(crops[p], prepare(crop_to_region(load_gray(p), region), 16))
    (tmp_path / "im0.png").unlink()  # a second call reads the cache and decodes nothing
    again = L.cropped_pixels(regions, 16, False, tmp_path / "cache")
    assert all(np.array_equal(again[p], crops[p]) for p in regions)
    moved = {**regions, str(tmp_path / "im1.png"): np.array([0.0, 0.0, 0.5, 0.5])}   # another region: another key
    from cxrbook.data.images import UnreadableImage
    with pytest.raises(UnreadableImage):
        L.cropped_pixels(moved, 16, False, tmp_path / "cache")   # needs im0 again, which is gone
