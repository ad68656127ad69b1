"""ONNX export and ONNX Runtime scoring: every saved model type scores as Keras does, and
scoring never imports TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrbook.models import backbones
from cxrbook.inference import saved_model as inference
from cxrbook.models import architectures as models
from cxrbook.data import pipeline
from cxrbook.models import training
from cxrbook.data.images import thumbnails

SIDECAR = {"classes": ["normal", "covid"], "threshold": 0.5, "task": "covid_vs_normal",
           "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False}, "weights": "none (test)"}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _gray(size: int, n: int = 8, seed: int = 5) -> np.ndarray:
    """Synthetic chest X-rays (n, s, s) uint8 of both labels: a stand-in for a validation split."""
    from cxrbook.data.synthetic import chest_image
    rng = np.random.default_rng(seed)
    return np.stack([chest_image(("normal", "covid")[i % 2], rng, size) for i in range(n)])


def _inputs(size: int, n: int = 4) -> np.ndarray:
    """Synthetic chest X-rays (gray in three channels, as the models take them: floats in [0, 255]) and one
    image of colour noise, whose channels differ, so a channel-order mistake cannot hide."""
    from cxrbook.data.synthetic import chest_image
    rng = np.random.default_rng(3)
    gray = [chest_image(("normal", "covid")[i % 2], rng, size) for i in range(n - 1)]
    colour = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    return np.concatenate([pipeline.to_rgb_float(np.stack(gray)), colour])


def _trained_cnn(builder: str, size: int, n_classes: int):
    """A CNN trained one epoch, so BatchNorm statistics and weights are not at their initial values."""
    x = _inputs(size, 16)
    y = np.arange(16) % n_classes
    model = getattr(models, builder)(size, augment=True, seed=0, n_classes=n_classes)
    training.fit(model, x, y, x, y, epochs=1, batch_size=8, verbose=0)
    return model


def _transfer(backbone: str, size: int):
    base = backbones.build_backbone(backbone, size, "none", seed=0)
    head = models.transfer_head(int(base.output_shape[-1]), units=16, seed=0)
    if backbone == "MobileNetV2":
        # randomly initialised MobileNetV2 features are ~1e-12 (they vanish through the blocks):
        # scale the head so its scores differ and the comparison means something
        dense = head.get_layer("head_dense")
        dense.kernel.assign(dense.kernel * 1e11)
    return models.full_transfer_model(base, head)


def _assert_parity(model, tmp: Path, size: int, classes: list[str]) -> float:
    from cxrbook.models.onnx_export import LOGIT_TOLERANCE
    side = {**SIDECAR, "classes": classes, "image_size": size}
    path = training.save_model(model, tmp / f"{model.name}.keras", sidecar=side, onnx=True, parity=_gray(size))
    entry = json.loads(path.with_suffix(".json").read_text())["onnx"]
    assert entry["file"] == path.with_suffix(".onnx").name and entry["opset"] > 0
    parity = entry["parity"]  # checked on the stored sample, in logit space
    assert parity["n"] == 8 and "stored with the model" in parity["inputs"]
    assert parity["max_abs_logit_diff"] <= LOGIT_TOLERANCE and parity["decision_agreement"] == 1.0
    scorer = inference.load_model(path)
    assert scorer.engine == "onnx"
    x = _inputs(size)
    expected = inference.to_probabilities(model.predict(x, verbose=0), len(classes))
    assert np.ptp(expected, axis=0).max() > 1e-4, "scores must differ between inputs to compare anything"
    got = scorer.probabilities(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    diff = float(np.abs(got - expected).max())
    print(f"\nparity {model.name}: max |ONNX - Keras| {diff:.2e} on {len(x)} inputs (export check: max |logit "
          f"diff| {parity['max_abs_logit_diff']:.2e} on {parity['n']} stored images)")
    return diff


@pytest.mark.slow
@pytest.mark.parametrize("builder,n_classes", [("custom_cnn", 2), ("custom_cnn", 3), ("improved_cnn", 2)])
def test_cnn_onnx_scores_equal_keras(tmp_path, builder, n_classes):
    classes = ["normal", "covid"] if n_classes == 2 else ["covid", "other_pneumonia", "normal"]
    _assert_parity(_trained_cnn(builder, 32, n_classes), tmp_path, 32, classes)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,size", [("VGG16", 32), ("DenseNet121", 32), ("ResNet50V2", 32),
                                           ("InceptionV3", 75), ("MobileNetV2", 32)])
def test_transfer_model_onnx_scores_equal_keras(tmp_path, backbone, size):
    """Each backbone joined with a head as notebooks 05/06 save it (random weights: the graph is what counts)."""
    _assert_parity(_transfer(backbone, size), tmp_path, size, SIDECAR["classes"])


@pytest.mark.slow
def test_saved_model_is_exported_once_on_first_use(tmp_path, monkeypatch):
    model = models.custom_cnn(32, augment=True, seed=0)
    stale = tmp_path / "old.onnx"
    stale.write_bytes(b"an export of an earlier model")
    path = training.save_model(model, tmp_path / "old.keras", sidecar={**SIDECAR, "image_size": 32})  # the default
    assert "onnx" not in json.loads(path.with_suffix(".json").read_text())
    assert not stale.exists(), "an export of an earlier model saved under this name must not survive the save"
    scorer = inference.load_model(path)
    assert path.with_suffix(".onnx").is_file()
    assert json.loads(path.with_suffix(".json").read_text())["onnx"]["file"] == "old.onnx"
    x = _inputs(32)
    np.testing.assert_allclose(scorer.probabilities(x), inference.to_probabilities(model.predict(x, verbose=0), 2),
                               atol=1e-5)

    import cxrbook.models.onnx_export as X

    def must_not_export(*args, **kwargs):
        raise AssertionError("exported again although the ONNX file is current")

    monkeypatch.setattr(X, "export_in_subprocess", must_not_export)
    inference.load_model(path)
    os.utime(path, (2e9, 2e9))  # a newer modification time alone changes nothing: bound by SHA-256
    inference.load_model(path)
    other = training.save_model(models.custom_cnn(32, augment=True, seed=1), tmp_path / "other.keras",
                                sidecar={**SIDECAR, "image_size": 32})
    path.write_bytes(other.read_bytes())  # another model under this name, its old export and sidecar kept
    with pytest.raises(AssertionError, match="exported again"):  # the SHA-256 differs: exported again
        inference.load_model(path)


def test_failed_first_use_export_names_the_model_and_the_childs_error(tmp_path):
    """The export runs in a child process; its failure must still say which file and why, not a traceback."""
    import zipfile
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as z:  # a sound zip that Keras cannot load
        z.writestr("config.json", json.dumps({"class_name": "NoSuchModel", "config": {}}))
        z.writestr("metadata.json", json.dumps({"keras_version": "3"}))
        z.writestr("model.weights.h5", b"\x00" * 64)
    bad.with_suffix(".json").write_text(json.dumps({**SIDECAR, "image_size": 16}))
    with pytest.raises(ValueError) as e:
        inference.load_model(bad)
    msg = str(e.value)
    assert f"cannot export {bad} to ONNX" in msg and "NoSuchModel" in msg and "Traceback" not in msg
    assert not bad.with_suffix(".onnx").exists()


def _logreg(tmp: Path) -> tuple[Path, object, np.ndarray]:
    from cxrbook.evaluation import experiment
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 40, 40, 1)).astype(np.uint8)
    y = np.arange(20) % 2
    x[y == 1] //= 2  # learnable
    clf = experiment.fit_pixel_logreg(x, y, size=8)
    path = experiment.save_pixel_logreg(clf, tmp / "logreg_pixels.joblib", {
        **SIDECAR, "image_size": 40, "thumbnail_size": 8, "weights": "none (classical)",
        "backbone": "logreg_pixels"}, parity=x)
    return path, clf, x


def test_pixel_logreg_onnx_scores_equal_sklearn(tmp_path):
    path, clf, x = _logreg(tmp_path)
    from cxrbook.models.onnx_export import LOGIT_TOLERANCE
    entry = json.loads(path.with_suffix(".json").read_text())["onnx"]
    assert entry["file"] == "logreg_pixels.onnx" and entry["parity"]["max_abs_logit_diff"] <= LOGIT_TOLERANCE
    assert entry["parity"]["inputs"] == "20 validation images' thumbnails"
    scorer = inference.load_model(path)
    assert scorer.engine == "onnx" and not scorer.has_gradcam
    expected = clf.predict_proba(thumbnails(x, 8))
    assert expected[:, 1].std() > 0.05  # a fitted model, not a constant
    np.testing.assert_allclose(scorer.probabilities(pipeline.to_rgb_float(x)), expected, rtol=0, atol=1e-5)
    assert scorer.probabilities_and_heatmaps(pipeline.to_rgb_float(x[:1]))[1] is None


def test_pixel_logreg_three_classes_and_no_export_from_the_pickle(tmp_path):
    from cxrbook.evaluation import experiment
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    x = (rng.integers(0, 120, (30, 24, 24, 1)) + 60 * y[:, None, None, None]).astype(np.uint8)
    clf = experiment.fit_pixel_logreg(x, y, size=8)
    side = {**SIDECAR, "classes": ["covid", "other_pneumonia", "normal"], "threshold": None, "image_size": 24,
            "thumbnail_size": 8}
    path = experiment.save_pixel_logreg(clf, tmp_path / "lr3.joblib", side)
    scorer = inference.load_model(path)
    np.testing.assert_allclose(scorer.probabilities(pipeline.to_rgb_float(x)), clf.predict_proba(thumbnails(x, 8)),
                               rtol=0, atol=1e-5)
    path.with_suffix(".onnx").unlink()  # as saved before ONNX existed: never exported from the pickle here
    with pytest.raises(ValueError, match="re-save it from notebook 06"):
        inference.load_model(path)
    assert not path.with_suffix(".onnx").exists()


@pytest.mark.slow
def test_predict_scores_without_importing_tensorflow(tmp_path):
    """``predict`` (CLI, scores only) on a CNN and on the logistic regression imports neither TensorFlow, Keras
    nor scikit-learn."""
    from PIL import Image
    cnn = training.save_model(_trained_cnn("custom_cnn", 32, 2), tmp_path / "cnn.keras",
                              sidecar={**SIDECAR, "image_size": 32}, onnx=True)  # exported, as after a first use
    logreg, _, x = _logreg(tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(x[0, ..., 0]).save(image)
    code = ("import sys\n"
            "from cxrbook.__main__ import main\n"
            f"for m in ({str(cnn)!r}, {str(logreg)!r}):\n"
            f"    assert main(['predict', {str(image)!r}, '--model', m, '--no-gradcam']) == 0\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', "
            "'sklearn'))\n"
            "assert not bad, bad[:5]\n"
            "print('OK')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.strip().endswith("OK")
    assert r.stdout.count("P(covid)=") == 2


@pytest.mark.slow
def test_backbone_features_onnx_equal_keras_and_are_cached_apart(tmp_path, monkeypatch):
    from test_models import write_images
    splits = write_images(tmp_path / "images")
    data = pipeline.load_arrays(splits, 32, cache_dir=tmp_path / "cache", progress=False)
    kw = dict(cache_dir=tmp_path / "cache", progress=False, seed=1)
    fast = backbones.cached_features("VGG16", 32, "none", data, engine="onnx", **kw)
    slow = backbones.cached_features("VGG16", 32, "none", data, engine="keras", **kw)
    assert fast.key != slow.key and not fast.hit and not slow.hit
    for split, feats in fast.items():
        np.testing.assert_allclose(feats, slow[split], rtol=0, atol=1e-5)
        assert np.abs(feats).max() > 1e-3  # random VGG16 features are not all zero
    exported = list((tmp_path / "cache").glob("onnx_*.onnx"))
    assert len(exported) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("backbone rebuilt although its export is cached")

    monkeypatch.setattr(backbones, "build_backbone", must_not_run)
    (fast.path).unlink()  # features gone, exported backbone kept: ONNX Runtime alone recomputes them
    again = backbones.cached_features("VGG16", 32, "none", data, engine="onnx", **kw)
    np.testing.assert_array_equal(again.train, fast.train)
    with pytest.raises(ValueError, match="engine must be one of"):
        backbones.cached_features("VGG16", 32, "none", data, engine="numpy", **kw)
