"""Notebook 08's external validation: loaders, the never-train guard, thresholds, score cache, CLI agreement.

All on generated data (``conftest.fake_data`` writes ``external/`` in the real layout); the
real-data path runs in ``test_workbook.py`` when CXR_DATA_DIR is set.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbook.data import external_collections as X
from cxrbook.external import text as XR
from cxrbook.external import scores as XS
from cxrbook.evaluation import metrics as M
from cxrbook.evaluation import records as R
from cxrbook.config import DataNotFoundError, Paths
from cxrbook.data.synthetic import make_fake_external

CLASSES = ["normal", "covid"]


@pytest.fixture(scope="module")
def ext(fake_data) -> pd.DataFrame:
    return X.load_external(X.resolve_external_dir(fake_data))


def _logreg(path: Path, threshold: float, seed: int = 0) -> Path:
    """A fitted pixel logistic regression saved like notebook 06's (with its ONNX graph), with its sidecar."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cxrbook.evaluation.experiment import save_pixel_logreg
    rng = np.random.default_rng(seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))
    clf.fit(rng.uniform(0, 255, (40, 32 * 32)), np.arange(40) % 2)
    return save_pixel_logreg(clf, path, {
        "classes": CLASSES, "image_size": 64, "thumbnail_size": 32, "threshold": threshold,
        "task": "covid_vs_normal", "weights": "none (classical)", "backbone": "logreg_pixels"})


def _internal_record(paths: Paths, name: str) -> None:
    rng = np.random.default_rng(1)
    y, s = np.arange(20) % 2, rng.uniform(0, 1, 20)
    rep = M.evaluate(y, s, np.arange(20) // 2, CLASSES, threshold=0.5, n_boot=20, seed=0)
    R.save_metrics(R.metrics_record(rep, model=name, task="covid_vs_normal", weights="none"),
                   paths.metrics / f"{name}.json")


# --------------------------------------------------------------------------- loaders

def test_loaders_read_the_real_layout(ext, fake_data):
    assert set(ext["collection"]) == {"hannover", "nih"}
    assert (ext.loc[ext["collection"] == "hannover", "label"] == "covid").all()
    assert (ext.loc[ext["collection"] == "nih", "label"] == "normal").all()
    assert ext["patient_id"].str.match(r"^(hannover|nih):").all()
    assert all(Path(p).is_file() for p in ext["image_path"])
    h = pd.read_csv(fake_data / "external" / "hannover-covid" / "data.csv", dtype=str)
    n = pd.read_csv(fake_data / "external" / "nih-adult-normal" / "metadata.csv", dtype=str)
    summary = X.collections_summary(ext)
    assert summary["hannover"]["n_images"] == len(h) and summary["nih"]["n_images"] == len(n)
    assert summary["hannover"]["n_patients"] == h["patient_id"].nunique() < len(h)
    assert summary["nih"]["image_side_px"] == 64


def test_missing_folders_are_named(tmp_path, monkeypatch, fake_data):
    monkeypatch.setenv(X.EXTERNAL_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="nowhere.*CXR_EXTERNAL_DIR"):
        X.resolve_external_dir(fake_data)
    monkeypatch.delenv(X.EXTERNAL_ENV)
    assert X.resolve_external_dir(fake_data) == (fake_data / "external").resolve()
    (tmp_path / "ext").mkdir()
    with pytest.raises(DataNotFoundError, match="hannover-covid"):
        X.load_hannover(tmp_path / "ext")


def test_bad_rows_fail_with_file_and_row(tmp_path):
    ext_dir = make_fake_external(tmp_path, n_patients=3)
    meta = ext_dir / "nih-adult-normal" / "metadata.csv"
    df = pd.read_csv(meta, dtype=str)
    df.loc[1, "finding"] = "Pneumonia"
    df.to_csv(meta, index=False)
    with pytest.raises(ValueError, match=r"metadata.csv: row\(s\) \[3\].*Pneumonia"):
        X.load_nih(ext_dir)
    png = next((ext_dir / "hannover-covid" / "png").glob("*.png"))
    png.unlink()
    with pytest.raises(FileNotFoundError, match=png.stem):
        X.load_hannover(ext_dir)


# --------------------------------------------------------------------------- never used for training

def test_external_images_never_reach_training(fake_data, ext):
    """load_all, cleaning and every split of every task/normals protocol hold no external image."""
    from cxrbook.data.cleaning import clean
    from cxrbook.data.metadata import load_all
    from cxrbook.data.splits import patient_split, select
    external_root = str((fake_data / "external").resolve())
    tidy = load_all(fake_data)
    paths = pd.Series(tidy["image_path"]).map(lambda p: str(Path(p).resolve()))
    assert not paths.str.startswith(external_root).any()
    assert not set(ext["image_path"]) & set(tidy["image_path"])
    kept, _ = clean(tidy)
    for task in ("covid_vs_normal", "three_class"):
        for normals in ("all", "adult"):
            split = patient_split(select(kept, task, normals), seed=0)
            assert not split["image_path"].map(lambda p: str(Path(p).resolve())).str.startswith(external_root).any()


def test_threshold_is_the_sidecars_and_scores_are_cached(fake_data, ext, tmp_path):
    paths = Paths.resolve(fake_data, tmp_path / "out")
    model = _logreg(paths.models / "logreg_pixels.joblib", threshold=0.5)
    _internal_record(paths, "logreg_pixels")
    _internal_record(paths, "orphan_model")  # metrics without a model file: listed, not dropped
    quiet = {"n_boot": 30, "seed": 5, "echo": lambda s: None}
    _, s = XS.score_models(paths, "covid_vs_normal", ext, **quiet).scores["logreg_pixels"]
    # store a threshold that decides at least one image differently from 0.5, between two scores
    u = np.unique(s)
    below = u[u < 0.5]
    t = float((below[-2] + below[-1]) / 2 if len(below) >= 2 else (u[len(below)] + u[len(below) + 1]) / 2)
    assert np.sum(s >= t) != np.sum(s >= 0.5)
    side = json.loads(model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**side, "threshold": t}))
    scored = XS.score_models(paths, "covid_vs_normal", ext, **quiet)
    (entry,) = scored.entries
    assert entry["threshold"] == t
    rows, s = scored.scores["logreg_pixels"]
    hann = (rows["collection"] == "hannover").to_numpy()
    assert entry["external"]["sensitivity"]["value"] == pytest.approx(np.mean(s[hann] >= t))
    assert entry["external"]["specificity"]["value"] == pytest.approx(np.mean(s[~hann] < t))
    assert entry["internal"] == XS.internal_metrics(paths.metrics, "logreg_pixels")
    assert "orphan_model" in scored.not_scored
    # a rerun reads the cached scores (the echo says so); a changed model file is scored again
    said = []
    rerun = XS.score_models(paths, "covid_vs_normal", ext, n_boot=30, seed=5, echo=said.append)
    assert len(said) == 1 and said[0].endswith("cached scores"), said
    assert rerun.entries == scored.entries
    arrays = X.external_arrays(ext, 64, cache_dir=paths.cache)
    sm = XS.saved_models(paths.models, "covid_vs_normal")[0]
    again, hit = XS.model_scores(sm, arrays, paths.cache)
    assert hit and np.array_equal(again, s)
    # a truncated cache file (an interrupted writer of old) is scored again, not a crash
    cache = paths.cache / "external_scores" / f"{XS.score_cache_key(sm, arrays)}.npz"
    cache.write_bytes(cache.read_bytes()[:40])
    again, hit = XS.model_scores(sm, arrays, paths.cache)
    assert not hit and np.array_equal(again, s)
    assert XS.model_scores(sm, arrays, paths.cache)[1]        # and written whole again
    _logreg(model, threshold=t, seed=9)
    _, hit = XS.model_scores(XS.saved_models(paths.models, "covid_vs_normal")[0], arrays, paths.cache)
    assert not hit


def test_record_schema_and_generated_paragraph(fake_data, ext, tmp_path):
    paths = Paths.resolve(fake_data, tmp_path / "out")
    _logreg(paths.models / "logreg_pixels.joblib", threshold=0.5)
    _internal_record(paths, "logreg_pixels")
    scored = XS.score_models(paths, "covid_vs_normal", ext, n_boot=30, seed=5, echo=lambda s: None)
    record = XS.external_record("covid_vs_normal", "smoke", 5, 30, ext, scored.entries)
    path = XS.save_external(record, tmp_path / "external.json")
    back = json.loads(path.read_text())
    XS.validate_external(back)
    assert back["collections"]["nih"]["measures"] == "specificity"
    e = back["models"][0]
    assert set(e["internal"]) == set(e["external"]) == {"sensitivity", "specificity", "roc_auc"}
    spec = e["external"]["specificity"]["value"]
    assert f"{spec:.2f}" in back["paragraph"] and "64x64" in back["paragraph"] and "source" in back["paragraph"]
    broken = json.loads(json.dumps(back))
    del broken["models"][0]["external"]["specificity"]
    with pytest.raises(ValueError, match=r"models\[0\]\.external\.specificity"):
        XS.validate_external(broken)


# --------------------------------------------------------------------------- the CLI agrees with notebook 08

def _keras_cnn(path: Path, paths: Paths) -> Path:
    from cxrbook.models import architectures as models
    from cxrbook.models import training
    model = models.custom_cnn(64, augment=True, seed=3)
    return training.save_model(model, path, sidecar={
        "classes": CLASSES, "image_size": 64, "task": "covid_vs_normal", "threshold": 0.5,
        "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
        "weights": "none (trained from scratch)", "backbone": "custom_cnn"})


@pytest.mark.parametrize("kind", ["keras", "joblib"])
def test_evaluate_cli_gives_the_notebooks_numbers(fake_data, ext, tmp_path, kind):
    paths = Paths.resolve(fake_data, tmp_path / "out")
    path = _keras_cnn(paths.models / "custom_cnn.keras", paths) if kind == "keras" else \
        _logreg(paths.models / "logreg_pixels.joblib", threshold=0.5)
    # a threshold inside the score range, so that both metrics are neither 0 nor 1 by construction
    sm = XS.saved_models(paths.models, "covid_vs_normal")[0]
    s, _ = XS.model_scores(sm, X.external_arrays(ext, 64, cache_dir=paths.cache), paths.cache)
    side = json.loads(path.with_suffix(".json").read_text())
    u = np.unique(s)  # midway between two scores: decisions cannot hinge on the last bit of a float
    side["threshold"] = float((u[len(u) // 2 - 1] + u[len(u) // 2]) / 2)
    path.with_suffix(".json").write_text(json.dumps(side))
    _internal_record(paths, path.stem)
    (entry,) = XS.score_models(paths, "covid_vs_normal", ext, n_boot=40, seed=7, echo=lambda s: None).entries
    external_dir = X.resolve_external_dir(fake_data)
    for collection, metric in (("hannover", "sensitivity"), ("nih", "specificity")):
        labels = X.write_labels_csv(ext, collection, tmp_path / f"{collection}.csv")
        out = tmp_path / f"cli_{collection}"
        r = subprocess.run([sys.executable, "-m", "cxrbook", "evaluate", "--model", str(path),
                            "--images", str(X.images_folder(external_dir, collection)), "--labels", str(labels),
                            "--out", str(out), "--n-bootstrap", "40", "--seed", "7"],
                           capture_output=True, text=True, timeout=300)  # default engine (ONNX) vs 08's Keras
        assert r.returncode == 0, r.stderr[-2000:]
        cli = R.load_metrics(out / "metrics.json")
        assert cli["threshold"] == pytest.approx(entry["threshold"], abs=1e-12)
        assert cli["n_test"] == int((ext["collection"] == collection).sum())
        assert cli["metrics"][metric]["value"] == pytest.approx(entry["external"][metric]["value"], abs=1e-12)
        assert cli["metrics"][metric]["ci95"] == pytest.approx(entry["external"][metric]["ci95"], abs=1e-12)


def _m(v, lo, hi):
    return {"value": v, "ci95": [lo, hi]}


def _entry(name, *, sens=(0.95, 0.90, 1.0), spec=(0.94, 0.90, 0.98), ext_sens=(0.96, 0.90, 1.0),
           ext_spec=(0.20, 0.10, 0.30), auc=(0.97, 0.95, 0.99), normals="all", threshold=0.5):
    return {"model": name, "display_name": name, "weights": "none", "normals": normals, "image_size": 64,
            "threshold": threshold, "scored_as": XS.SCORED_AS["binary" if threshold is not None else "multi"],
            "internal": {"sensitivity": _m(*sens), "specificity": _m(*spec), "roc_auc": _m(*auc)},
            "external": {"sensitivity": _m(*ext_sens), "specificity": _m(*ext_spec), "roc_auc": _m(0.6, 0.5, 0.7)}}


def _record(*entries, n_nih=8):
    return {"collections": {"hannover": {"n_images": 10, "n_patients": 5},
                            "nih": {"n_images": n_nih, "n_patients": 4, "image_side_px": 64}},
            "models": list(entries)}


def _counted(text: str, metric: str) -> tuple[int, int, int]:
    """(below, compared, inside) as the paragraph states them for ``metric``."""
    import re
    m = re.search(rf"External {metric} lay below the internal 95% interval for (\d+) of (\d+) models?", text)
    inside = re.search(rf"External {metric} lay below.*?inside it for (\d+)\.", text)
    return int(m.group(1)), int(m.group(2)), int(inside.group(1))


def _check_counts(record: dict, text: str) -> None:
    """Every count the paragraph states, recomputed here from the numbers."""
    entries = ([e for e in record["models"] if e["normals"] == "all"] or
               [e for e in record["models"] if e["normals"] == "adult"] or record["models"])
    entries = [e for e in entries if not XR.constant_model(e)]
    for metric in ("sensitivity", "specificity"):
        pairs = [(e["internal"][metric], e["external"][metric]) for e in entries]
        pairs = [(i, x) for i, x in pairs if x["value"] is not None and None not in i["ci95"]]
        below = sum(x["value"] < i["ci95"][0] for i, x in pairs)
        inside = sum(i["ci95"][0] <= x["value"] <= i["ci95"][1] for i, x in pairs)
        assert _counted(text, metric) == (below, len(pairs), inside), (metric, text)


def test_position_of_every_branch():
    inner = _m(0.95, 0.90, 0.99)
    assert XR.position(inner, _m(0.80, 0.70, 0.85)) == "below_apart"   # intervals apart
    assert XR.position(inner, _m(0.88, 0.80, 0.92)) == "below"         # point below, intervals overlap
    assert XR.position(inner, _m(0.90, 0.85, 0.95)) == "within"        # on the bound counts as inside
    assert XR.position(inner, _m(0.995, 0.98, 1.0)) == "above"
    assert XR.position(_m(0.5, 0.4, 0.6), _m(0.9, 0.8, 1.0)) == "above_apart"
    assert XR.position(_m(0.95, None, None), _m(0.5, 0.4, 0.6)) == "not_compared"   # no internal interval
    assert XR.position(inner, _m(None, None, None)) == "not_compared"
    assert XR.position(inner, _m(0.80, None, None)) == "below"          # no external interval: not "apart"


def test_fell_below_counts_what_it_says_when_intervals_overlap():
    """The README's case: two models' external sensitivity sits below their internal interval, which their
    own external intervals still overlap. The old sentence said "0 of 9"."""
    record = _record(_entry("DenseNet121", sens=(0.986, 0.951, 1.0), ext_sens=(0.942, 0.90, 0.97)),
                     _entry("ResNet50V2", sens=(0.986, 0.951, 1.0), ext_sens=(0.938, 0.89, 0.97)),
                     _entry("VGG16", sens=(0.95, 0.90, 1.0), ext_sens=(0.96, 0.92, 0.99)))
    text = XR.external_paragraph(record)
    _check_counts(record, text)
    assert "External sensitivity lay below the internal 95% interval for 2 of 3 models (DenseNet121, ResNet50V2); " \
           "the two intervals overlap in each case; inside it for 1." in text
    # specificity fell with the intervals apart for all three: the transfer sentence says so, with who
    assert "for all of them the external interval lies entirely below" in text
    assert "For 3 of 3 models (DenseNet121, ResNet50V2, VGG16) an external specificity interval lies entirely " \
           "below the internal one: those internal numbers did not hold" in text
    assert "children's normals" in text                                   # trained with all normals


def test_overlapping_or_uncompared_intervals_never_say_the_numbers_held():
    overlap = _record(_entry("A", spec=(0.60, 0.05, 0.90), ext_spec=(0.10, 0.02, 0.30),
                             sens=(0.95, 0.90, 1.0), ext_sens=(0.85, 0.70, 0.95)))
    text = XR.external_paragraph(overlap)
    _check_counts(overlap, text)
    assert "held" not in text.replace("not hold", "") and "cannot show whether the internal numbers hold" in text
    inside = _record(_entry("A", spec=(0.60, 0.05, 0.90), ext_spec=(0.10, 0.02, 0.30)))
    text = XR.external_paragraph(inside)
    _check_counts(inside, text)
    assert "Every external estimate lies inside its internal 95% interval" in text and "weak evidence" in text
    none = _record(_entry("A", sens=(0.9, None, None), spec=(0.9, None, None)))
    text = XR.external_paragraph(none)
    assert "could not be set against an internal interval for 1 model (A)" in text
    assert "No external number could be set against an internal interval" in text
    assert "lay below" not in text and "held" not in text


def test_missing_internal_interval_is_counted_apart():
    record = _record(_entry("A", sens=(0.99, 0.95, 1.0), ext_sens=(0.90, 0.85, 0.94)),
                     _entry("B", sens=(0.99, None, None), ext_sens=(0.50, 0.40, 0.60)))
    text = XR.external_paragraph(record)
    _check_counts(record, text)
    assert "External sensitivity lay below the internal 95% interval for 1 of 1 model (A)" in text
    assert "External sensitivity could not be set against an internal interval for 1 model (B)" in text


def test_one_model_rose_above_and_grammar():
    record = _record(_entry("Solo", sens=(0.60, 0.50, 0.70), ext_sens=(0.90, 0.80, 0.95),
                            spec=(0.90, 0.85, 0.95), ext_spec=(0.91, 0.86, 0.96)))
    text = XR.external_paragraph(record)
    _check_counts(record, text)
    assert text.startswith("On 1 model trained with all normals (pediatric included),")
    assert "lay below the internal 95% interval for 0 of 1 model; above it for 1 (Solo), 1 of them with the " \
           "intervals apart; inside it for 0." in text
    assert "For 1 of 1 model (Solo) an external sensitivity interval lies entirely above the internal one" in text
    assert "did not hold" not in text and "weak evidence" not in text


def test_adult_only_run_is_not_called_all_normals():
    """normals=adult only: the ranges describe those models as trained with adult normals, and no sentence
    claims a model separated children's normals from adults' COVID-19."""
    record = _record(_entry("custom_cnn__normals_adult", normals="adult", ext_spec=(0.30, 0.20, 0.40)))
    text = XR.external_paragraph(record)
    _check_counts(record, text)
    assert text.startswith("On 1 model trained with adult normals only,")
    assert "all normals" not in text.split(". ")[0] and "children" not in text
    assert "no model trained the same way with all normals was scored on the same images" in text


def test_unknown_normals_are_said_as_unknown():
    """Models whose sidecar records no training normals: the ranges say so, and no sentence claims pediatric
    normals were in their training."""
    record = _record(_entry("old_model", normals="unknown", ext_spec=(0.30, 0.20, 0.40)))
    text = XR.external_paragraph(record)
    _check_counts(record, text)
    assert text.startswith("On 1 model whose training normals are not recorded,")
    assert "children" not in text


def test_zero_events_are_counted_as_images():
    """External specificity 0 (every NIH normal called COVID-19) and 1 (none): the count of images is said."""
    worst = _record(_entry("A", ext_spec=(0.0, 0.0, 0.15)), _entry("B", ext_spec=(1.0, 0.85, 1.0)), n_nih=12)
    text = XR.external_paragraph(worst)
    _check_counts(worst, text)
    assert "A's 0.000 [0.000, 0.150] (internal 0.940 [0.900, 0.980]), means it called all of the 12 " in text
    best = _record(_entry("B", ext_spec=(1.0, 0.85, 1.0)), n_nih=12)
    assert "it called none of the 12 pre-pandemic" in XR.external_paragraph(best)
    some = _record(_entry("C", ext_spec=(0.75, 0.5, 0.9)), n_nih=12)
    assert "it called 3 of the 12 pre-pandemic" in XR.external_paragraph(some)


def test_paragraph_leaves_out_a_constant_model():
    """A model that scores every image the same (random MobileNetV2 features) is not 'the worst specificity'."""
    constant = _entry("constant", ext_spec=(0.0, 0.0, 0.0), auc=(0.52, 0.5, 0.55))   # AUC 0.52 on test:
    constant["degenerate"] = "constant scores (spread 2.0e-08)"        # 06 judged it on validation scores
    record = _record(_entry("informative", ext_spec=(0.2, 0.1, 0.3)), constant)
    text = XR.external_paragraph(record)
    _check_counts(record, text)
    assert "lowest external specificity, informative's" in text
    assert "constant is left out of these ranges, as in notebook 06: constant scores (spread 2.0e-08)." in text
    assert "On 1 model trained" in text and "specificity was 0.20." in text   # the range is the informative one only
    old = _entry("old", ext_spec=(0.0, 0.0, 0.0), auc=(0.5, 0.5, 0.5))   # a record without the field: AUC 0.5
    assert "old is left out of these ranges, as in notebook 06: every internal test image scored the same" in \
        XR.external_paragraph(_record(_entry("informative"), old))


def test_multi_class_models_are_said_to_be_read_covid_vs_rest():
    record = _record(_entry("custom_cnn__three_class", threshold=None))
    text = XR.external_paragraph(record)
    assert "reads COVID-19 vs the rest" in text and "(the argmax for multi-class models)" in text
    assert "reads COVID-19 vs the rest" not in XR.external_paragraph(_record(_entry("binary")))


def test_normals_sentence_reads_the_paired_difference():
    adult = _entry("cnn__normals_adult", normals="adult", ext_spec=(0.47, 0.40, 0.53), ext_sens=(0.63, 0.49, 0.73))
    partner = _entry("cnn__normals_all", ext_spec=(0.06, 0.04, 0.09), ext_sens=(0.93, 0.87, 0.96))
    d = {"specificity": {"value": 0.404, "ci95": [0.35, 0.46]}, "sensitivity": {"value": -0.29, "ci95": [-0.4, -0.2]},
         "roc_auc": {"value": 0.001, "ci95": [-0.01, 0.012]}}
    adult["paired_with_all_normals"] = {"model": "cnn__normals_all", **d}
    text = XR.normals_sentence(_record(partner, adult))
    assert "(higher, difference +0.404 [+0.350, +0.460] excludes 0)" in text
    assert "(lower, difference -0.290 [-0.400, -0.200] excludes 0)" in text
    assert "covers 0, so no difference is shown" in text and "trades sensitivity for specificity" in text
    d["specificity"]["ci95"] = [-0.01, 0.46]                               # overlapping 0: no claim of a trade
    text = XR.normals_sentence(_record(partner, adult))
    assert "trades" not in text and "higher" not in text


def test_paired_external_comparison_is_paired_on_the_same_patients():
    """adult - all on the same external images: metrics.metric_differences on each collection; a model
    against itself differs by exactly 0."""
    rng = np.random.default_rng(0)
    n = 60
    rows = pd.DataFrame({"collection": ["hannover"] * 24 + ["nih"] * 36,
                         "label": ["covid"] * 24 + ["normal"] * 36,
                         "patient_id": [f"h{i // 2}" for i in range(24)] + [f"n{i // 3}" for i in range(36)],
                         "image_path": [f"/x/{i}.png" for i in range(n)]})
    y = (rows["label"] == "covid").to_numpy()
    a, b = np.clip(0.5 + 0.3 * y + rng.normal(0, 0.2, n), 0, 1), np.clip(0.6 + 0.1 * y + rng.normal(0, 0.2, n), 0, 1)
    same = XS.paired_external(rows, (a, 0.5), (a, 0.5), CLASSES, n_boot=200, seed=1)
    assert all(same[m]["value"] == 0 and same[m]["ci95"] == [0.0, 0.0] for m in XS.METRICS)
    d = XS.paired_external(rows, (a, 0.55), (b, 0.45), CLASSES, n_boot=200, seed=1)
    hann = (rows["collection"] == "hannover").to_numpy()
    pid = rows["patient_id"].to_numpy()
    expected = M.metric_differences(M.ScoredSet(y[~hann].astype(int), a[~hann], pid[~hann], 0.55),
                                    M.ScoredSet(y[~hann].astype(int), b[~hann], pid[~hann], 0.45),
                                    CLASSES, ["specificity"], n_boot=200, seed=1)["specificity"]
    assert d["specificity"] == expected
    entries = [{"model": "m__normals_adult", "normals": "adult", "threshold": 0.55},
               {"model": "m__normals_all", "normals": "all", "threshold": 0.45}]
    XS.pair_normals(entries, {"m__normals_adult": (rows, a), "m__normals_all": (rows, b)},
                    {"m__normals_adult": CLASSES, "m__normals_all": CLASSES}, n_boot=200, seed=1)
    assert entries[0]["paired_with_all_normals"] == {"model": "m__normals_all", **d}
    assert "paired_with_all_normals" not in entries[1]


def test_data_fingerprint_covers_the_external_collections(tmp_path, monkeypatch):
    """The run manifest's data hash changes when an external image is added, resized or its table edited,
    wherever the external folder is ($CXR_EXTERNAL_DIR or <data>/external)."""
    from cxrbook.data.synthetic import make_fake_collections
    from cxrbook.workflow.manifest import data_fingerprint
    monkeypatch.delenv(X.EXTERNAL_ENV, raising=False)
    root = make_fake_collections(tmp_path / "data", n_patients=3, seed=0, defects=False)
    base = data_fingerprint(root)
    assert data_fingerprint(root) == base                                 # stable
    png = next((root / "external" / "nih-adult-normal" / "images").glob("*.png"))
    png.write_bytes(png.read_bytes() + b"\0")                              # resized
    resized = data_fingerprint(root)
    assert resized != base
    table = root / "external" / "hannover-covid" / "data.csv"
    table.write_bytes(table.read_bytes().replace(b",ap", b",pa", 1))      # same size, other bytes
    assert data_fingerprint(root) != resized
    moved = Path(shutil.move(str(root / "external"), tmp_path / "elsewhere"))
    assert data_fingerprint(root) != resized                               # gone from <data>/external
    monkeypatch.setenv(X.EXTERNAL_ENV, str(moved))
    assert data_fingerprint(root) == data_fingerprint(root) != base

