"""Trust audit on generated images whose answer is known.

A bright square marker in the top-left corner (outside any central box) is
planted on the images of one source, and that source holds mostly COVID-19
images: the source probe must find the marker, and a model trained with the
central box blanked must still separate the classes, which the audit must flag.
Without the marker, the blanked model must fall to chance and not be flagged.
The logistic-regression audit model keeps these tests to seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cxrbook.audit import checks as A
from cxrbook.audit import runs as AU

from cxrbook.audit import text as AR
from cxrbook.audit import plots as AP
from cxrbook.audit import subgroups as SG
from cxrbook.evaluation import metrics as M
from cxrbook.atomic import to_jsonable
from cxrbook.evaluation import records as R
from cxrbook.config import Paths
from cxrbook.data.pipeline import CachedData, SplitArrays
from cxrbook.data.synthetic import chest_image

SIZE = 32
CLASSES = ("normal", "covid")


def _split_arrays(images, labels, pids, sources, split):
    return SplitArrays(x=np.stack(images)[..., None].astype(np.uint8), labels=np.array(labels),
                       patient_id=np.array(pids), image_path=np.array([f"/{split}/{p}.png" for p in pids]),
                       source=np.array(sources))


def make_data(marker: bool, n=(160, 60, 80), seed: int = 0, signal_in_lungs: bool = True) -> CachedData:
    """Synthetic splits. Source "marked" holds 90 % covid, "plain" 10 % covid.

    ``marker``: the marked source gets a bright 5x5 square in the top-left corner.
    ``signal_in_lungs``: covid images carry chest_image's lung opacities (else all look normal).
    """
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in zip(("train", "val", "test"), n):
        imgs, labs, pids, srcs = [], [], [], []
        for i in range(count):
            source = "marked" if i % 2 == 0 else "plain"
            covid = rng.random() < (0.9 if source == "marked" else 0.1)
            img = chest_image("covid" if covid and signal_in_lungs else "normal", rng, SIZE)
            if marker and source == "marked":
                img[1:6, 1:6] = 255
            imgs.append(img)
            labs.append("covid" if covid else "normal")
            pids.append(f"{split}{i}")
            srcs.append(source)
        splits[split] = _split_arrays(imgs, labs, pids, srcs, split)
    return CachedData(train=splits["train"], val=splits["val"], test=splits["test"], key=f"synthetic{marker}{seed}",
                      path=None, hit=False, image_size=SIZE, clahe=False)


# --------------------------------------------------------------------------- masks

def test_apply_mask_blanks_exactly_the_box_with_one_constant():
    x = np.arange(2 * 10 * 10, dtype=np.uint8).reshape(2, 10, 10, 1)
    assert AU.center_box(10, 0.6) == (2, 8)
    blanked = AU.apply_mask(x, "center_blanked", 0.6, fill=7)
    kept = AU.apply_mask(x, "center_only", 0.6, fill=7)
    inside = np.zeros((10, 10), bool)
    inside[2:8, 2:8] = True
    assert (blanked[:, inside] == 7).all() and (blanked[:, ~inside] == x[:, ~inside]).all()
    assert (kept[:, ~inside] == 7).all() and (kept[:, inside] == x[:, inside]).all()
    assert (AU.apply_mask(x, "none") == x).all() and x[0, 5, 5, 0] == 55  # input untouched
    with pytest.raises(ValueError, match="strictly between"):
        AU.apply_mask(x, "center_blanked", 1.0)
    with pytest.raises(ValueError, match="unknown mask"):
        AU.apply_mask(x, "lungs", 0.5)


# --------------------------------------------------------------------------- probe

def test_source_probe_finds_the_planted_marker():
    probe = A.source_probe(make_data(marker=True), size=SIZE, n_boot=200, seed=0)
    assert probe["accuracy"]["value"] > 0.95
    assert probe["accuracy"]["ci95"][0] > probe["chance_majority_share"] + A.MARGIN
    assert probe["confounded"] is True
    assert "confounded with the source" in AR.probe_sentence(probe)


def test_source_probe_without_marker_is_not_flagged():
    # same sources, no marker, no lung signal: nothing in the pixels tells the sources apart
    probe = A.source_probe(make_data(marker=False, signal_in_lungs=False), size=SIZE, n_boot=200, seed=0)
    assert probe["confounded"] is False
    assert probe["accuracy"]["value"] < 0.7
    assert "does not clearly beat chance" in AR.probe_sentence(probe)


# --------------------------------------------------------------------------- lungs hidden

def test_marker_outside_the_center_survives_blanking_and_is_flagged():
    data = make_data(marker=True)
    res = A.masking_experiment(data, CLASSES, fraction=0.8, arch="logreg", seed=0, n_boot=200)
    auc = {m: r.metric("roc_auc")["value"] for m, r in res["runs"].items()}
    assert auc["center_blanked"] > 0.8, auc  # the marker alone separates the classes
    assert res["shortcut_suspected"] is True
    assert "well above chance" in AR.masking_sentence(res)
    table = AR.masking_table(res)
    assert list(table["variant"]) == [AU.MASK_LABELS[m] for m in AU.MASKS]


def test_lung_signal_only_falls_to_chance_when_center_blanked():
    data = make_data(marker=False)
    res = A.masking_experiment(data, CLASSES, fraction=0.8, arch="logreg", seed=0, n_boot=200)
    auc = {m: r.metric("roc_auc")["value"] for m, r in res["runs"].items()}
    assert auc["none"] > 0.9 and auc["center_only"] > 0.9, auc  # the lung opacities are inside the box
    assert auc["center_blanked"] < 0.75, auc
    assert res["shortcut_suspected"] is False
    assert "not clearly above chance" in AR.masking_sentence(res)


def test_reused_unmasked_run_is_not_retrained():
    data = make_data(marker=False, n=(60, 30, 30))
    base = AU.train_and_score(data, CLASSES, arch="logreg", seed=0, n_boot=50, name="given")
    res = A.masking_experiment(data, CLASSES, fraction=0.6, arch="logreg", seed=0, n_boot=50, unmasked=base)
    assert res["runs"]["none"] is base


# --------------------------------------------------------------------------- differences and normals

def test_metric_difference_of_a_run_with_itself_is_exactly_zero_and_signs_are_right():
    good = AU.train_and_score(make_data(marker=False), CLASSES, arch="logreg", seed=0, n_boot=100)
    bad = AU.train_and_score(make_data(marker=False, signal_in_lungs=False), CLASSES, arch="logreg", seed=0,
                            n_boot=100)
    assert np.ptp(M.bootstrap_draws(bad.y_test, bad.scores_test, bad.patient_test, CLASSES, bad.threshold,
                                    n_boot=50)["accuracy"]) > 0   # its metrics vary between resamples
    d = AU.metric_difference(bad, bad, n_boot=300, seed=0)
    for m in AU.headline_metrics(CLASSES):        # one draw for both: every resample differs by exactly 0
        assert d[m]["value"] == 0 and d[m]["ci95"] == [0.0, 0.0], (m, d[m])
    d = AU.metric_difference(good, bad, n_boot=300, seed=0)
    assert d["roc_auc"]["value"] > 0.3 and d["roc_auc"]["ci95"][0] > 0


def test_a_test_set_inside_another_is_resampled_with_it():
    """The adult-only test set lies inside the all-normals one: the two runs' metrics must be computed on
    ONE draw of patients from the union, so the shared patients move both together and the difference's
    interval is narrower than independent draws of the two sets would make it."""
    data = make_data(marker=False, n=(120, 60, 120), signal_in_lungs=False)   # no signal: accuracy varies
    run = AU.train_and_score(data, CLASSES, arch="logreg", seed=0, n_boot=50)
    inner = AU.subset_run(run, np.arange(len(run.y_test)) < 80, "first 80 test patients", 50, 0)
    assert set(inner.patient_test) < set(run.patient_test)
    d = AU.metric_difference(inner, run, n_boot=400, seed=3)
    da, db = M.joint_bootstrap_draws([AU.scored_set(inner), AU.scored_set(run)], CLASSES, n_boot=400, seed=3)
    ia, ib = (M.bootstrap_draws(r.y_test, r.scores_test, r.patient_test, CLASSES, r.threshold, n_boot=400, seed=k)
              for r, k in ((inner, 3), (run, 4)))
    for m in ("accuracy", "roc_auc"):
        # paired: the resampled metrics of the two nested sets move together (independent draws: ~0)
        assert np.corrcoef(da[m], db[m])[0, 1] > 0.5, m
        independent = np.percentile(ia[m] - ib[m], [2.5, 97.5])
        lo, hi = d[m]["ci95"]
        assert lo <= d[m]["value"] <= hi and hi - lo < 0.7 * (independent[1] - independent[0]), (m, d[m], independent)
        assert d[m]["ci_method"] == "bca_paired"


def _fake_clean(tmp_path) -> pd.DataFrame:
    """A clean table over written PNGs: adult covid (cohen), few adult normals, many pediatric normals
    (brighter, so they are easy to tell apart)."""
    from PIL import Image
    rng = np.random.default_rng(1)
    rows = []
    plan = [("covid", "cohen", "adult", 40), ("normal", "cohen", "adult", 12), ("normal", "pediatric", "pediatric", 40)]
    for label, source, age_group, n in plan:
        for i in range(n):
            img = chest_image(label, rng, SIZE)
            if source == "pediatric":
                img = np.clip(img.astype(int) + 60, 0, 255).astype(np.uint8)
            path = tmp_path / f"{source}_{label}_{i}.png"
            Image.fromarray(img).save(path)
            rows.append({"image_path": str(path), "patient_id": f"{source}:{label}{i}", "source": source,
                         "label": label, "age_group": age_group, "view": "PA", "sex": "F"})
    return pd.DataFrame(rows)


def test_compare_normals_end_to_end_on_written_images(tmp_path):
    clean = _fake_clean(tmp_path)
    res = A.compare_normals(clean, "covid_vs_normal", image_size=SIZE, epochs=1, seed=0, n_boot=100, arch="logreg",
                            cache_dir=tmp_path / "cache")
    assert set(res["runs"]) == {"adult", "all", "all_on_adult_test"}
    assert res["runs"]["adult"].info["n_pediatric_test"] == 0
    assert res["runs"]["all"].info["n_pediatric_test"] > 0
    sub = res["runs"]["all_on_adult_test"]
    assert set(sub.image_path_test) <= set(res["runs"]["all"].image_path_test)
    # the premise of the paired difference: every adult-only test patient is an all-normals test patient
    assert set(res["runs"]["adult"].patient_test) <= set(res["runs"]["all"].patient_test)
    assert res["difference"] == AU.metric_difference(res["runs"]["adult"], res["runs"]["all"], n_boot=100, seed=0)
    assert not any("pediatric" in p for p in sub.image_path_test)
    table = AR.normals_table(res)
    assert list(table["run"])[-1] == "difference adult - all"
    text = AR.normals_sentence(res)
    assert "Difference adult - all" in text and str(res["runs"]["all"].report["n_test"]) in text
    summary = A.run_summary(res)
    json.dumps(to_jsonable(summary), allow_nan=False)


# --------------------------------------------------------------------------- groups and calibration

def test_group_performance_reports_too_few_and_computes_the_rest():
    rng = np.random.default_rng(0)
    n = 60
    rows = pd.DataFrame({"label": ["covid" if i % 2 else "normal" for i in range(n)],
                         "patient_id": [f"p{i}" for i in range(n)],
                         "view": ["PA"] * 40 + ["AP"] * 12 + ["AP Supine"] * 5 + [None] * 3})
    rows.loc[40:51, "label"] = "covid"  # AP: one class only
    y = (rows["label"] == "covid").to_numpy()
    scores = np.clip(y * 0.6 + rng.uniform(0, 0.4, n), 0, 1)
    t = SG.group_performance(rows, scores, "view", CLASSES, 0.5, n_boot=100, seed=0,
                            combine={"AP or AP Supine": ["AP", "AP Supine"]})
    by = t.set_index("group")
    assert by.loc["PA", "status"] == "ok" and by.loc["PA", "roc_auc"] == pytest.approx(1.0)
    assert by.loc["PA", "n_images"] == 40 and by.loc["PA", "n_covid"] == 20
    assert by.loc["AP", "status"] == "too few (one class only)" and math.isnan(by.loc["AP", "roc_auc"])
    assert by.loc["AP Supine", "status"].startswith("too few (< 10")
    assert by.loc["unknown", "n_images"] == 3
    assert by.loc["AP or AP Supine", "n_images"] == 17 and by.loc["AP or AP Supine", "status"] == "ok"


def _write_model_outputs(paths: Paths, name: str, splits: pd.DataFrame, scores: np.ndarray) -> None:
    test = splits[splits["split"] == "test"].reset_index(drop=True)
    y = (test["label"] == "covid").astype(int).to_numpy()
    rep = M.evaluate(y, scores, test["patient_id"], CLASSES, threshold=0.5, n_boot=50, seed=0)
    R.save_metrics(R.metrics_record(rep, model=name, task="covid_vs_normal", weights="none", threshold_rule="fixed"),
                   paths.metrics / f"{name}.json")
    df = test[["split", "image_path", "patient_id", "source", "label"]].copy()
    df["score_covid"] = scores
    df.to_csv(paths.metrics / f"{name}_scores.csv", index=False)


def test_groups_and_calibration_from_scores_files(tmp_path):
    paths = Paths(data=tmp_path, outputs=tmp_path)
    paths.metrics.mkdir()
    n = 40
    splits = pd.DataFrame({"image_path": [f"/x/{i}.png" for i in range(n)],
                           "patient_id": [f"p{i // 2}" for i in range(n)],
                           "source": "cohen", "label": ["covid" if i % 4 < 2 else "normal" for i in range(n)],
                           "split": "test", "view": ["PA" if i < 30 else "AP" for i in range(n)],
                           "sex": ["M" if i < 24 else "F" for i in range(n)]})
    y = (splits["label"] == "covid").to_numpy()
    _write_model_outputs(paths, "sharp", splits, np.where(y, 0.9, 0.1))
    _write_model_outputs(paths, "vague", splits, np.where(y, 0.6, 0.4))
    assert SG.scored_models(paths, "covid_vs_normal") == ["sharp", "vague"]
    assert SG.scored_models(paths, "three_class") == []
    g = SG.groups_for_models(paths, ["sharp", "vague"], splits, n_boot=50, seed=0)
    assert set(g["attribute"]) == {"view", "sex"}
    assert (g[(g["group"] == "PA")]["status"] == "ok").all()
    assert "view=PA (30 images: 14 normal, 16 covid, none pediatric): both models separate" in AR.groups_sentence(g)
    cal = SG.calibration(paths, ["sharp", "vague"], n_boot=50, seed=0)
    assert cal["models"]["sharp"]["ece"]["value"] == pytest.approx(0.1)
    assert cal["models"]["vague"]["ece"]["value"] == pytest.approx(0.4)
    assert cal["models"]["sharp"]["brier"]["value"] == pytest.approx(0.01)
    assert "0.100 (sharp)" in AR.calibration_sentence(cal)
    out = A.save_audit({"groups": g, "calibration": SG.calibration_summary(cal), "nan": float("nan")},
                       tmp_path / "audit.json")
    saved = json.loads(out.read_text())
    assert saved["nan"] is None and "not a diagnosis" in saved["note"]
    assert saved["calibration"]["models"]["vague"]["reliability"][0]["count"] == 0


def test_audit_figures_have_titles(tmp_path):
    from cxrbook.plots import savefig
    data = make_data(marker=True, n=(60, 30, 40))
    res = A.masking_experiment(data, CLASSES, fraction=0.6, arch="logreg", seed=0, n_boot=50)
    probe = A.source_probe(data, size=SIZE, n_boot=50)
    for name, fig in (("mask", AP.plot_masking(res, data.test.x[0], "masking")),
                      ("probe", AP.plot_probe(probe, "probe"))):
        assert savefig(fig, tmp_path, f"07_{name}").is_file()


@pytest.mark.slow
def test_train_and_score_runs_the_reference_cnn():
    data = make_data(marker=True, n=(40, 20, 20))
    run = AU.train_and_score(data, CLASSES, arch="custom_cnn", epochs=1, batch_size=16, seed=0, n_boot=50,
                            mask="center_blanked", mask_fraction=0.6)
    assert run.report["n_test"] == 20 and 0 <= run.threshold <= 1
    assert set(run.summary()["metrics"]) == set(AU.headline_metrics(CLASSES))
