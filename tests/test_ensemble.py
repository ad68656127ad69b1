"""Notebook 06's soft-voting ensemble (issue 11): members and weights from validation only, soft-voting
arithmetic, degenerate members left out, ensemble.json round trip, and predict/evaluate scoring it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbook.models import ensemble as ENS
from cxrbook.evaluation import ensemble_choice as EC
from cxrbook.config import Paths

BIN = ("normal", "covid")


# --------------------------------------------------------------------------- soft voting

def test_soft_voting_is_the_weighted_mean_of_probabilities():
    a, b = np.array([0.2, 0.9, 0.4]), np.array([0.6, 0.3, 0.4])
    assert np.allclose(ENS.combine([a, b], [0.75, 0.25]), [0.3, 0.75, 0.4])
    assert np.allclose(ENS.combine([a, b], [3, 1]), [0.3, 0.75, 0.4])       # weights are normalised
    pa = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    pb = np.array([[0.1, 0.6, 0.3], [0.5, 0.3, 0.2]])
    got = ENS.combine([pa, pb], [0.5, 0.5])
    assert np.allclose(got, [[0.4, 0.4, 0.2], [0.3, 0.2, 0.5]]) and np.allclose(got.sum(1), 1)
    with pytest.raises(ValueError, match="shapes"):
        ENS.combine([a, pa], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        ENS.combine([a, b], [1, -1])


# --------------------------------------------------------------------------- greedy choice on validation

def _val_set(rng: np.random.Generator, n: int = 200):
    """Labels and three models: a and b see independent halves of the signal, c is noise."""
    y = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    sig1, sig2 = rng.normal(size=n), rng.normal(size=n)
    a = 1 / (1 + np.exp(-(1.2 * y + sig1)))
    b = 1 / (1 + np.exp(-(1.2 * y + sig2)))
    c = rng.uniform(size=n)
    return y, {"a": a, "b": b, "c": c}


def test_greedy_selection_averages_complementary_models_and_ignores_noise():
    from sklearn.metrics import roc_auc_score
    y, s = _val_set(np.random.default_rng(0))
    choice = EC.choose_members({n: (y, v) for n, v in s.items()}, BIN)
    assert set(choice.members) == {"a", "b"} and "c" not in choice.members
    assert sum(choice.weights) == pytest.approx(1)
    steps_weights = {n: choice.steps.count(n) / len(choice.steps) for n in choice.members}
    assert dict(zip(choice.members, choice.weights)) == pytest.approx(steps_weights)
    # the kept ensemble is at least as good on validation as every member and as the plain mean of a and b
    ens = choice.combine(s)
    assert choice.validation_auc == pytest.approx(roc_auc_score(y, ens))
    assert choice.validation_auc >= max(roc_auc_score(y, s["a"]), roc_auc_score(y, s["b"]),
                                        roc_auc_score(y, (s["a"] + s["b"]) / 2)) - 1e-12
    assert choice.best_member == max(("a", "b"), key=lambda n: roc_auc_score(y, s[n]))
    table = choice.table.set_index("model")
    assert table.loc["c", "weight"] == 0 and table.loc["a", "weight"] > 0


def test_greedy_steps_add_a_weaker_but_complementary_model():
    """a and b are the two best single models but nearly copies of each other; c is weaker alone but sees
    other signal, d is noise. Sorted initialisation starts from {a, b}; the greedy steps must bring c in."""
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    shared, other = 1.0 * y + rng.normal(size=400), 0.8 * y + rng.normal(size=400)
    s = {"a": shared + rng.normal(scale=0.05, size=400), "b": shared + rng.normal(scale=0.05, size=400),
         "c": other, "d": rng.normal(size=400)}
    s = {n: 1 / (1 + np.exp(-v)) for n, v in s.items()}
    assert set(sorted(s, key=lambda n: -roc_auc_score(y, s[n]))[:2]) == {"a", "b"}
    choice = EC.choose_members({n: (y, v) for n, v in s.items()}, BIN)
    assert set(choice.steps[:2]) == {"a", "b"} and "c" in choice.members and "d" not in choice.members
    assert choice.validation_auc > roc_auc_score(y, (s["a"] + s["b"]) / 2) + 0.02


def test_three_class_choice_uses_macro_auc():
    rng = np.random.default_rng(1)
    y = np.arange(150) % 3
    def probs(noise):
        z = np.eye(3)[y] * 1.5 + rng.normal(scale=noise, size=(150, 3))
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    choice = EC.choose_members({"p": (y, probs(1.0)), "q": (y, probs(1.0)), "r": (y, probs(1.5))},
                               ("covid", "other_pneumonia", "normal"))
    assert choice.metric == "macro_auc" and len(choice.members) >= 2
    assert choice.combine({"p": probs(1), "q": probs(1), "r": probs(1)}).shape == (150, 3)


def test_degenerate_and_excluded_models_are_never_members():
    """A constant model (AUC 0.5) would enter as one of the two best when the others are worse than chance."""
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    good = 1 / (1 + np.exp(-(2 * y + rng.normal(size=100))))
    poor = 1 / (1 + np.exp(-(-0.5 * y + rng.normal(size=100))))   # below chance
    worse = 1 / (1 + np.exp(-(-1.0 * y + rng.normal(size=100))))
    val = {"good": (y, good), "constant": (y, np.full(100, 0.7)), "poor": (y, poor), "worse": (y, worse)}
    choice = EC.choose_members(val, BIN)
    assert "constant" not in choice.members
    assert "constant scores" in choice.table.set_index("model").loc["constant", "excluded"]
    choice = EC.choose_members(val, BIN, exclude={"poor": "not saved"})
    assert "poor" not in choice.members and choice.table.set_index("model").loc["poor", "excluded"] == "not saved"
    with pytest.raises(ValueError, match="at least two usable"):
        EC.choose_members({"good": (y, good), "constant": (y, np.full(100, 0.7))}, BIN)


# --------------------------------------------------------------------------- test data never chooses

def _saved_scores(tmp_path: Path, make_data, val: dict, test: dict, y_val, y_test) -> tuple[Paths, object]:
    """Score CSVs written by experiment.evaluate_and_save, as notebooks 04-06 write them."""
    from cxrbook.evaluation.experiment import evaluate_and_save
    data = make_data(["normal", "covid"], [BIN[v] for v in y_val], [BIN[v] for v in y_test])
    paths = Paths.resolve(data_dir=tmp_path, output_dir=tmp_path / "out")
    for name in val:
        evaluate_and_save(name, val[name], test[name], data, BIN, task="covid_vs_normal", weights="none",
                          paths=paths, n_bootstrap=20, seed=0, figure_prefix="t", figures=False)
    return paths, data


def test_members_and_weights_come_from_validation_only(tmp_path, label_only_data):
    """Model "t" is perfect on test and noise on validation: it must not be chosen, and rewriting every
    test score (the notebook's flow: scores read back from the CSVs) must change nothing."""
    rng = np.random.default_rng(3)
    y_val, y_test = np.r_[np.zeros(40, int), np.ones(40, int)], np.r_[np.zeros(30, int), np.ones(30, int)]
    sig = lambda y, k: 1 / (1 + np.exp(-(k * y + rng.normal(size=len(y)))))  # noqa: E731
    val = {"a": sig(y_val, 1.5), "b": sig(y_val, 1.2), "t": rng.uniform(size=80)}
    test = {"a": sig(y_test, 0.2), "b": sig(y_test, 0.2), "t": 0.1 + 0.8 * y_test + rng.uniform(0, 0.05, 60)}
    paths, data = _saved_scores(tmp_path, label_only_data, val, test, y_val, y_test)

    def choose():
        rows, scores = EC.load_member_scores(paths, ["a", "b", "t"], BIN, "val", data.val.image_path)
        return EC.choose_members({n: (rows["label"].to_numpy(), s) for n, s in scores.items()}, BIN)

    first = choose()
    assert "t" not in first.members and set(first.members) == {"a", "b"}
    for name in ("a", "b", "t"):   # scramble every test score on disk
        csv = paths.metrics / f"{name}_scores.csv"
        df = pd.read_csv(csv)
        test_rows = df["split"] == "test"
        df.loc[test_rows, "score_covid"] = rng.uniform(size=int(test_rows.sum()))
        df.to_csv(csv, index=False)
    second = choose()
    assert (second.members, second.weights, second.steps) == (first.members, first.weights, first.steps)
    with pytest.raises(ValueError, match="other val images"):
        EC.load_member_scores(paths, ["a"], BIN, "val", data.val.image_path[::-1])


# --------------------------------------------------------------------------- ensemble.json

def _fake_member(folder: Path, name: str, suffix: str = ".keras", image_size: int = 32, clahe: bool = False,
                 classes=BIN, weights: str = "none") -> str:
    """A model file and its sidecar (the file's bytes are never read by these checks)."""
    (folder / f"{name}{suffix}").write_bytes(b"model")
    (folder / f"{name}.json").write_text(json.dumps({
        "classes": list(classes), "image_size": image_size, "threshold": 0.5, "task": "covid_vs_normal",
        "preprocessing": {"clahe": clahe}, "weights": weights, **({"thumbnail_size": 8} if suffix == ".joblib" else {})}))
    return f"{name}{suffix}"


def _choice(members, weights) -> EC.Choice:
    table = pd.DataFrame({"model": members, "validation roc_auc": [0.8] * len(members), "excluded": "",
                          "weight": weights})
    return EC.Choice(list(members), list(weights), 0.85, members[0], "roc_auc", list(members), table)


def test_save_and_load_round_trip(tmp_path):
    files = {"vgg16": _fake_member(tmp_path, "vgg16"),
             "logreg_pixels": _fake_member(tmp_path, "logreg_pixels", ".joblib", weights="none (classical)")}
    choice = _choice(["vgg16", "logreg_pixels"], [0.75, 0.25])
    side = EC.sidecar_for(tmp_path, files, choice, "covid_vs_normal")
    path = ENS.save_ensemble(tmp_path / "ensemble.json", [files[n] for n in choice.members], [3, 1], 0.42, side)
    spec = ENS.load_ensemble(path)
    assert spec["kind"] == "ensemble" and spec["members"] == ["vgg16.keras", "logreg_pixels.joblib"]
    assert spec["member_weights"] == pytest.approx([0.75, 0.25]) and spec["threshold"] == pytest.approx(0.42)
    assert spec["classes"] == list(BIN) and spec["image_size"] == 32 and spec["task"] == "covid_vs_normal"
    assert spec["weights"] == "none; none (classical)" and "Caruana" in spec["chosen_by"]["method"]
    assert spec["chosen_by"]["data"] == "validation split only"
    assert ENS.is_ensemble(path) and not ENS.is_ensemble(tmp_path / "vgg16.json")
    assert ENS.member_names(spec) == ["vgg16", "logreg_pixels"]
    got = ENS.score_members(spec, {"vgg16": [0.2, 0.8], "logreg_pixels": np.array([[0.4, 0.6], [1.0, 0.0]]),
                                   "other": [9, 9]})
    assert np.allclose(got, [0.75 * 0.2 + 0.25 * 0.6, 0.75 * 0.8])
    with pytest.raises(ValueError, match="no scores for ensemble member logreg_pixels"):
        ENS.score_members(spec, {"vgg16": [0.2, 0.8]})


def test_save_refuses_members_that_cannot_share_one_input(tmp_path):
    a = _fake_member(tmp_path, "a")
    b = _fake_member(tmp_path, "b", image_size=64)
    c = _fake_member(tmp_path, "c", classes=("covid", "other_pneumonia", "normal"))
    side = {"classes": list(BIN), "image_size": 32, "preprocessing": {"clahe": False}, "task": "covid_vs_normal"}
    for members, match in (([a, b], "64 px"), ([a, c], "classes"), ([a, "missing.keras"], "does not exist"),
                           ([a, "../a.keras"], "file name")):
        with pytest.raises(ValueError, match=match):
            ENS.save_ensemble(tmp_path / "e.json", members, [1, 1], 0.5, side)
    with pytest.raises(ValueError, match="no threshold"):
        ENS.save_ensemble(tmp_path / "e.json", [a], [1], None, side)
    assert not (tmp_path / "e.json").exists()
    with pytest.raises(ValueError, match="not an ensemble"):
        ENS.load_ensemble(tmp_path / "a.json")


def test_member_files_lists_why_a_model_cannot_be_a_member(tmp_path):
    _fake_member(tmp_path, "vgg16", image_size=80)
    _fake_member(tmp_path, "logreg_pixels", ".joblib", image_size=80)
    _fake_member(tmp_path, "custom_cnn", image_size=64)
    files, left = EC.member_files(tmp_path, ["custom_cnn", "custom_cnn_improved", "vgg16", "logreg_pixels"],
                                  BIN, image_size=80)
    assert files == {"vgg16": "vgg16.keras", "logreg_pixels": "logreg_pixels.joblib"}
    assert "64 px" in left["custom_cnn"] and "no saved model file" in left["custom_cnn_improved"]


# --------------------------------------------------------------------------- predict / evaluate

SIZE = 32


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> Path:
    """Two tiny untrained CNNs (different architectures, so different scores) saved as notebooks save them."""
    from cxrbook.models import architectures as models
    from cxrbook.models import training
    folder = tmp_path_factory.mktemp("models")
    for name, net in (("m1", models.custom_cnn(SIZE, augment=False, seed=0)),
                      ("m2", models.improved_cnn(SIZE, augment=False, seed=1))):
        training.save_model(net, folder / f"{name}.keras", sidecar={
            "classes": list(BIN), "image_size": SIZE, "threshold": 0.5, "task": "covid_vs_normal",
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
            "weights": "none (test)", "backbone": name})
    side = {"classes": list(BIN), "image_size": SIZE, "preprocessing": {"clahe": False}, "task": "covid_vs_normal",
            "weights": "none (test)"}
    ENS.save_ensemble(folder / "ensemble.json", ["m1.keras", "m2.keras"], [0.25, 0.75], 0.5, side)
    return folder


@pytest.mark.slow
def test_predict_scores_the_ensemble_as_the_weighted_mean_of_its_members(two_models, tmp_path):
    from PIL import Image

    from cxrbook.inference import predict as P
    from cxrbook.inference.folder import evaluate_folder
    from cxrbook.inference.saved_model import load_model
    from cxrbook.data.synthetic import chest_image
    rng = np.random.default_rng(0)
    for i, label in enumerate(("covid", "normal", "covid")):
        Image.fromarray(chest_image(label, rng, 64)).save(tmp_path / f"x{i}.png")
    files = sorted(tmp_path.glob("x*.png"))
    x = np.stack([P.preprocess_file(f, {"image_size": SIZE})[1] for f in files])
    m1, m2 = (load_model(two_models / f"{n}.keras") for n in ("m1", "m2"))
    ens = load_model(two_models / "ensemble.json")
    p1, p2 = m1.probabilities(x), m2.probabilities(x)
    assert not np.allclose(p1, p2)                                     # the members disagree
    assert np.allclose(ens.probabilities(x), 0.25 * p1 + 0.75 * p2)
    assert ens.name == "ensemble" and ens.threshold == 0.5 and ens.classes == list(BIN) and ens.image_size == SIZE
    probs, heat = ens.probabilities_and_heatmaps(x)
    h1, h2 = m1.probabilities_and_heatmaps(x)[1], m2.probabilities_and_heatmaps(x)[1]
    assert np.allclose(probs, 0.25 * p1 + 0.75 * p2) and np.allclose(heat, 0.25 * h1 + 0.75 * h2)
    rows = P.predict_files(ens, files, out_dir=tmp_path / "cams", echo=None)
    assert [r["status"] for r in rows] == ["ok"] * 3 and all(Path(r["overlay"]).is_file() for r in rows)
    assert [r["probabilities"]["covid"] for r in rows] == pytest.approx(list(0.25 * p1[:, 1] + 0.75 * p2[:, 1]))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\n" + "".join(f"{f.name},{lab}\n" for f, lab in
                                                   zip(files, ("covid", "normal", "covid"))))
    summary = evaluate_folder(ens, tmp_path, labels_csv=labels, out_dir=tmp_path.with_name(tmp_path.name + "-eval"),
                              n_boot=20, echo=None)  # --out may not sit inside --images
    assert summary["n_scored"] == 3 and summary["metrics"]["model"] == "ensemble"


@pytest.mark.slow
def test_an_ensemble_with_a_pixel_classifier_scores_and_draws_its_cnn_heatmap(two_models, tmp_path):
    """The pixel logistic regression has no Grad-CAM: the ensemble's heatmap is its CNN member's alone."""
    from cxrbook.evaluation import experiment as X
    from cxrbook.inference.saved_model import load_model
    from cxrbook.data.synthetic import chest_image
    rng = np.random.default_rng(5)
    y = np.arange(24) % 2
    gray = np.stack([chest_image(BIN[v], rng, SIZE) for v in y])[..., None]
    X.save_pixel_logreg(X.fit_pixel_logreg(gray, y, size=8), two_models / "px.joblib", sidecar={
        "classes": list(BIN), "image_size": SIZE, "thumbnail_size": 8, "threshold": 0.5, "task": "covid_vs_normal",
        "weights": "none (classical)", "preprocessing": {"clahe": False}})
    side = {"classes": list(BIN), "image_size": SIZE, "preprocessing": {"clahe": False}, "task": "covid_vs_normal"}
    path = ENS.save_ensemble(two_models / "with_px.json", ["m1.keras", "px.joblib"], [0.6, 0.4], 0.5, side)
    x = np.repeat(gray[:4].astype(np.float32), 3, axis=-1)
    m1, px, ens = (load_model(p) for p in (two_models / "m1.keras", two_models / "px.joblib", path))
    assert np.allclose(ens.probabilities(x), 0.6 * m1.probabilities(x) + 0.4 * px.probabilities(x))
    assert not np.allclose(px.probabilities(x), m1.probabilities(x))
    probs, heat = ens.probabilities_and_heatmaps(x)
    assert np.allclose(heat, m1.probabilities_and_heatmaps(x)[1])


# --------------------------------------------------------------------------- notebook 08

def test_external_validation_scores_the_ensemble_from_its_members(fake_data, tmp_path, label_only_data):
    """Notebook 08 (external_scores.score_models) enters the ensemble as the weighted mean of its members' scores,
    at the ensemble's stored threshold, beside its internal record; it is not listed as 'not scored'."""
    from cxrbook.evaluation import experiment as X6
    from cxrbook.data import external_collections as X
    from cxrbook.external import scores as XS
    ext = X.load_external(X.resolve_external_dir(fake_data))
    paths = Paths.resolve(fake_data, tmp_path / "out")
    rng = np.random.default_rng(6)
    y = np.arange(40) % 2
    x = rng.integers(0, 255, (40, 64, 64, 1), dtype=np.uint8)
    data = label_only_data(["normal", "covid"], ["normal", "covid"] * 3, ["normal", "covid"] * 3)
    for name, seed in (("lr_a", 0), ("lr_b", 1), ("ensemble", 2)):
        X6.evaluate_and_save(name, rng.uniform(size=6), rng.uniform(size=6), data, BIN, task="covid_vs_normal",
                             weights="none", paths=paths, n_bootstrap=20, seed=0, figure_prefix="t", figures=False)
        if name != "ensemble":
            X6.save_pixel_logreg(X6.fit_pixel_logreg(x, np.roll(y, seed), size=8), paths.models / f"{name}.joblib",
                                 sidecar={"classes": list(BIN), "image_size": 64, "thumbnail_size": 8,
                                          "threshold": 0.5, "task": "covid_vs_normal", "weights": "none (classical)"})
    side = {"classes": list(BIN), "image_size": 64, "preprocessing": {"clahe": False}, "task": "covid_vs_normal",
            "weights": "none (classical)", "display_name": "Soft-voting ensemble of 2 (chosen on validation)"}
    ENS.save_ensemble(paths.models / "ensemble.json", ["lr_a.joblib", "lr_b.joblib"], [0.3, 0.7], 0.47, side)
    scored = XS.score_models(paths, "covid_vs_normal", ext, n_boot=20, seed=0, echo=lambda s: None)
    by = {e["model"]: e for e in scored.entries}
    assert set(by) == {"lr_a", "lr_b", "ensemble"} and "ensemble" not in scored.not_scored
    rows, s = scored.scores["ensemble"]
    assert np.allclose(s, 0.3 * scored.scores["lr_a"][1] + 0.7 * scored.scores["lr_b"][1])
    hann = (rows["collection"] == "hannover").to_numpy()
    assert by["ensemble"]["threshold"] == 0.47
    assert by["ensemble"]["external"]["sensitivity"]["value"] == pytest.approx(np.mean(s[hann] >= 0.47))
    assert by["ensemble"]["internal"] == XS.internal_metrics(paths.metrics, "ensemble")
    assert by["ensemble"]["display_name"].startswith("Soft-voting ensemble")
