"""Notebook 08's external validation: loaders, the never-train guard, thresholds, score cache, CLI agreement.

All on generated data (``conftest.fake_data`` writes ``external/`` in the real layout); the
real-data path runs in ``test_workbook.py`` when CXR_DATA_DIR is set.
"""

from __future__ import annotations

import json
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
    assert scored.seconds["logreg_pixels"] >= 0
    # a rerun reads the cached scores; a changed model file is scored again
    arrays = X.external_arrays(ext, 64, cache_dir=paths.cache)
    sm = XS.saved_models(paths.models, "covid_vs_normal")[0]
    again, hit = XS.model_scores(sm, arrays, paths.cache)
    assert hit and np.array_equal(again, s)
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


def test_paragraph_leaves_out_a_constant_model():
    """A model that scores every image the same (random MobileNetV2 features) is not 'the worst specificity'."""
    def m(v, lo, hi):
        return {"value": v, "ci95": [lo, hi]}

    def entry(name, spec_ext, auc, degenerate=None):
        return {"model": name, "display_name": name, "weights": "none", "normals": "all", "image_size": 64,
                "threshold": 0.5, "degenerate": degenerate,
                "internal": {"sensitivity": m(0.95, 0.9, 1.0), "specificity": m(0.94, 0.9, 0.98), "roc_auc": auc},
                "external": {"sensitivity": m(0.96, 0.9, 1.0), "specificity": spec_ext, "roc_auc": m(0.6, 0.5, 0.7)}}

    record = {"collections": {"hannover": {"n_images": 10, "n_patients": 5}, "nih": {"n_images": 8, "n_patients": 4,
                                                                                     "image_side_px": 64}},
              "models": [entry("informative", m(0.2, 0.1, 0.3), m(0.97, 0.95, 0.99)),
                         entry("constant", m(0.0, 0.0, 0.0), m(0.52, 0.5, 0.55), "constant scores (spread 2.0e-08)")]}
    text = XR.external_paragraph(record)
    assert "lowest external specificity, informative's" in text
    assert "constant is left out of these ranges, as in notebook 06: constant scores" in text
    assert "On 1 model trained" in text and "specificity was 0.20." in text  # the range is the informative one only
