"""Grad-CAM on flat and nested (transfer) models, both backends, and its figures."""

from __future__ import annotations


import keras
import numpy as np
import pytest
from conftest import run_on_backend

from cxrbook.models import backbones
from cxrbook.models import gradcam
from cxrbook.models import layers
from cxrbook.models import architectures as models
from cxrbook.models import overlay


def images(n=3, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def check(maps, n, size):
    assert maps.shape == (n, size, size) and maps.dtype == np.float32
    assert np.all(np.isfinite(maps)) and maps.min() >= 0 and maps.max() <= 1


def test_gradcam_on_reference_cnn():
    model = models.custom_cnn(32, augment=True)
    conv, path = gradcam.find_conv_layer(model)
    assert conv.name == "conv4" and len(path) == 1
    check(gradcam.gradcam(model, images()), 3, 32)
    check(gradcam.gradcam(model, images(), layer_name="conv2", class_index=0), 3, 32)
    gray = images()[..., :1].astype(np.uint8)
    check(gradcam.gradcam(model, gray), 3, 32)  # grayscale uint8 is converted to RGB floats


def test_gradcam_on_nested_transfer_model_and_softmax():
    backbone = backbones.build_backbone("MobileNetV2", 64, "none")
    model = models.full_transfer_model(backbone, models.transfer_head(1280, n_classes=3, units=8))
    conv, path = gradcam.find_conv_layer(model)
    assert conv.name == "Conv_1" and len(path) == 3  # full model > backbone > base
    check(gradcam.gradcam(model, images(2, 64)), 2, 64)
    check(gradcam.gradcam(model, images(2, 64), class_index=[0, 2]), 2, 64)


def test_nested_gradcam_equals_flat_model():
    backbone = backbones.build_backbone("VGG16", 64, "none")
    head = models.transfer_head(512, units=8)
    full = models.full_transfer_model(backbone, head)
    base = models._base_of(full)
    flat = keras.Model(base.inputs, head(base.outputs[0]))  # same weights, no nesting
    x = images(2, 64)
    preprocessed = keras.ops.convert_to_numpy(layers.ImagenetPreprocess("caffe")(x))
    np.testing.assert_allclose(gradcam.gradcam(full, x), gradcam.gradcam(flat, preprocessed), atol=1e-5)


@pytest.mark.slow
def test_gradcam_on_torch_backend():
    code = (
        "import keras, numpy as np, json\n"
        "from cxrbook.models import architectures as models, gradcam\n"
        "m = models.custom_cnn(32, augment=False)\n"
        "x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype('float32')\n"
        "h = gradcam.gradcam(m, x)\n"
        "print(json.dumps({'backend': keras.backend.backend(), 'shape': list(h.shape),\n"
        "                  'finite': bool(np.isfinite(h).all()), 'min': float(h.min()), 'max': float(h.max())}))\n"
    )
    out = run_on_backend(code, "torch")
    assert out["backend"] == "torch" and out["shape"] == [2, 32, 32] and out["finite"]
    assert 0 <= out["min"] and out["max"] <= 1


def test_overlay_and_grid():
    gray = images(1)[0, ..., 0].astype(np.uint8)
    rgb = overlay.blend(gray, np.linspace(0, 1, 16 * 16).reshape(16, 16))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    n = 8
    x = images(n)[..., :1].astype(np.uint8)
    heat = np.random.default_rng(1).uniform(0, 1, (n, 32, 32)).astype("float32")
    y_true = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.3, 0.4, 0.6])
    fig = gradcam.plot_gradcam_grid(x, heat, y_true, scores, ("normal", "covid"), "CNN (random init)",
                                    max_per_group=3)
    assert fig._suptitle.get_text() == "CNN (random init)"
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 8 and all("P(covid)=" in t for t in titles)
