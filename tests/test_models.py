"""Reference CNN, transfer-learning helpers, feature cache and model saving."""

from __future__ import annotations


import keras
import numpy as np
import pytest
from conftest import run_on_backend

from cxrbook.models import backbones
from cxrbook.models import layers
from cxrbook.models import architectures as models
from cxrbook.data import pipeline
from cxrbook.models import training


def write_images(root, n=12, seed=0):
    """Tiny generated grayscale PNGs and a splits table over them."""
    import pandas as pd
    from PIL import Image
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = root / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (48, 40)).astype(np.uint8)).save(path)
        rows.append({"image_path": str(path), "patient_id": f"p{i}", "source": "synthetic",
                     "label": ("normal", "covid")[i % 2], "split": ("train", "train", "val", "test")[i % 4]})
    return pd.DataFrame(rows)


def test_reference_cnn_has_published_parameter_count():
    model = models.custom_cnn(150, augment=True)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == model.count_params() == models.REFERENCE_CNN_PARAMS_150 == 8_777_089
    assert model.output_shape == (None, 1)
    assert model.loss == "binary_crossentropy" and isinstance(model.optimizer, keras.optimizers.RMSprop)
    three = models.custom_cnn(150, augment=False, n_classes=3)
    assert three.output_shape == (None, 3)
    assert three.count_params() == 8_777_089 - 33 + 3 * 33


@pytest.mark.slow
def test_custom_cnn_trains_one_step_on_torch_backend():
    code = (
        "import keras, numpy as np, json\n"
        "from cxrbook.models import architectures as models\n"
        "assert keras.backend.backend() == 'torch', keras.backend.backend()\n"
        "m = models.custom_cnn(150)\n"
        "x = np.random.default_rng(0).uniform(0, 255, (4, 150, 150, 3)).astype('float32')\n"
        "out = m.train_on_batch(x, np.array([0, 1, 0, 1.0]), return_dict=True)\n"
        "print(json.dumps({'backend': keras.backend.backend(), 'loss': float(out['loss']),\n"
        "                  'params': m.count_params()}))\n"
    )
    result = run_on_backend(code, "torch")
    assert result["backend"] == "torch" and np.isfinite(result["loss"]) and result["params"] == 8_777_089


def test_predict_scores_shapes_and_fit_with_class_weights():
    rng = np.random.default_rng(0)
    feats, y = rng.normal(size=(40, 8)).astype("float32"), np.array([0] * 30 + [1] * 10)
    head = models.transfer_head(8, units=16)
    hist = training.fit(head, feats, y, feats[:10], y[:10], epochs=2, batch_size=16, verbose=0)
    assert {"loss", "val_loss", "auc", "val_auc"} <= set(hist.history)
    scores = training.predict_scores(head, feats)
    assert scores.shape == (40,) and np.all((scores >= 0) & (scores <= 1))
    head3 = models.transfer_head(8, n_classes=3, units=16)
    y3 = np.arange(40) % 3
    training.fit(head3, feats, y3, feats[:9], y3[:9], epochs=1, batch_size=16, verbose=0)
    assert training.predict_scores(head3, feats).shape == (40, 3)
    fig = training.plot_history(hist, "head on random features")
    assert fig._suptitle.get_text() == "head on random features"
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch"]


def test_preprocess_layer_matches_keras_functions():
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    for name, (_, preprocess, _) in backbones.BACKBONES.items():
        layer = layers.ImagenetPreprocess(backbones.PREPROCESS_MODE[name])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), preprocess(x.copy()), atol=1e-4,
                                   err_msg=name)


def test_resolve_weights(tmp_path):
    assert backbones.resolve_weights("none") is None
    assert backbones.resolve_weights("imagenet") == "imagenet"
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        backbones.resolve_weights(str(missing))
    present = tmp_path / "w.h5"
    present.write_bytes(b"x")
    assert backbones.resolve_weights(present) == str(present.resolve())


def test_imagenet_offline_raises_clear_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match=r"no internet / cannot download ImageNet weights for VGG16.*"
                                           r"weights='none' explicitly"):
        backbones.build_backbone("VGG16", 32, "imagenet")


def test_cached_features_run_the_backbone_once(tmp_path, monkeypatch):
    splits = write_images(tmp_path / "images")
    data = pipeline.load_arrays(splits, 32, cache_dir=tmp_path / "cache", progress=False)
    first = backbones.cached_features("MobileNetV2", 32, "none", data, cache_dir=tmp_path / "cache", progress=False)
    assert not first.hit and first.train.shape == (len(data.train), 1280)

    def must_not_run(*args, **kwargs):
        raise AssertionError("backbone built on a cache hit")

    monkeypatch.setattr(backbones, "build_backbone", must_not_run)
    monkeypatch.setattr(backbones, "extract_features", must_not_run)
    second = backbones.cached_features("MobileNetV2", 32, "none", data, cache_dir=tmp_path / "cache")
    assert second.hit and second.key == first.key
    for split, feats in first.items():
        np.testing.assert_array_equal(feats, second[split])


def test_transfer_model_saves_reloads_and_fine_tunes(tmp_path):
    backbone = backbones.build_backbone("VGG16", 32, "none")
    assert not backbone.trainable_weights
    head = models.transfer_head(int(backbone.output_shape[-1]), units=8)
    model = models.full_transfer_model(backbone, head)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    before = training.predict_scores(model, x)
    assert before.shape == (3,)
    side = {"classes": ["normal", "covid"], "image_size": 32, "preprocessing": {"clahe": False},
            "threshold": 0.5, "weights": "none", "task": "covid_vs_normal", "backbone": "VGG16"}
    path = training.save_model(model, tmp_path / "m.keras", side)
    loaded, sidecar = training.load_model(path)
    np.testing.assert_allclose(training.predict_scores(loaded, x), before, rtol=1e-5, atol=1e-6)
    assert {k: sidecar[k] for k in side} == side and sidecar["keras_backend"] == keras.backend.backend()
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=r"m\.json"):
        training.load_model(path)

    models.fine_tune(model, "VGG16", lr=1e-5)
    base = models._base_of(model)
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}
    assert np.isclose(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), 1e-5)


def test_augmented_cnn_saves_and_reloads(tmp_path):
    """Models from notebook 04 hold the augmentation layer; they must reload (Keras 3.15's own
    RandomShear config does not round-trip, one reason for layers.ReferenceAugmentation)."""
    model = models.custom_cnn(32, augment=True, seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    path = training.save_model(model, tmp_path / "cnn.keras", {"classes": ["normal", "covid"], "image_size": 32})
    again, side = training.load_model(path)
    np.testing.assert_allclose(training.predict_scores(again, x), training.predict_scores(model, x), atol=1e-6)
    assert side["image_size"] == 32
    from cxrbook.models.gradcam import gradcam
    heat = gradcam(again, x)  # reloaded Sequential: its symbolic conv output is stale, gradcam must cope
    assert heat.shape == (3, 32, 32) and np.isfinite(heat).all()
    np.testing.assert_allclose(heat, gradcam(model, x), atol=1e-5)
    neg = gradcam(again, x, class_index=0)  # the other direction, so one of the two maps is non-zero
    np.testing.assert_allclose(neg, gradcam(model, x, class_index=0), atol=1e-5)
    assert max(heat.max(), neg.max()) > 0
