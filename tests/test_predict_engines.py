"""Which engine runs each saved model type of the workbook, and that both give Keras' scores (issue 10).

For every model a notebook saves (04: custom and improved CNN; 05: VGG16 transfer; 06: each backbone
joined with its head), built small with random weights and saved with ``models.save_model``: either the
NumPy engine loads it and matches Keras within 1e-5, or it raises ``predict.UnsupportedModel`` and
``engine="auto"`` falls back to Keras with the same scores. Which of the two is asserted per type, so a
silent change (a model quietly leaving the fast path, or a new layer quietly mis-implemented) fails here,
and the ``predict`` module docstring must list each type under the engine that really runs it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from cxrbook import predict as P

CLASSES = ["normal", "covid"]
# model type -> (builder name, image size, engine that runs it)
EXPECTED = {
    "custom_cnn": ("custom_cnn", 32, "numpy"),
    "improved_cnn": ("improved_cnn", 32, "numpy"),
    "vgg16": ("VGG16", 32, "numpy"),
    "densenet121": ("DenseNet121", 32, "keras"),
    "resnet50v2": ("ResNet50V2", 32, "keras"),
    "inceptionv3": ("InceptionV3", 75, "keras"),
    "mobilenetv2": ("MobileNetV2", 32, "keras"),
}
DOC_NAMES = {"custom_cnn": "custom CNN", "improved_cnn": "improved CNN", "vgg16": "VGG16",
             "densenet121": "DenseNet121", "resnet50v2": "ResNet50V2", "inceptionv3": "InceptionV3",
             "mobilenetv2": "MobileNetV2"}


def _build_and_save(tmp_path, name: str):
    """(saved path, in-memory Keras model) of one model type, as its notebook saves it."""
    from cxrbook import models
    builder, size, _ = EXPECTED[name]
    if builder in models.BACKBONES:
        backbone = models.build_backbone(builder, size, "none", seed=0)
        head = models.transfer_head(int(backbone.output_shape[-1]), seed=0)
        if builder == "MobileNetV2":
            # randomly initialised MobileNetV2 features are ~1e-12 (they vanish through the blocks):
            # scale the head so its scores differ and the comparison means something
            dense = head.get_layer("head_dense")
            dense.kernel.assign(dense.kernel * 1e11)
        model = models.full_transfer_model(backbone, head)
        preprocessing = {"grayscale_to_rgb": True, "range": "0-255", "clahe": False,
                         "inside_model": f"{builder} preprocess_input"}
    else:
        model = getattr(models, builder)(size, seed=0)
        preprocessing = {"grayscale_to_rgb": True, "range": "0-255", "clahe": False}
    path = models.save_model(model, tmp_path / f"{name}.keras", sidecar={
        "classes": CLASSES, "image_size": size, "task": "covid_vs_normal", "threshold": 0.5,
        "preprocessing": preprocessing, "weights": "none", "backbone": builder})
    return path, model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_saved_model_type_runs_on_its_declared_engine(tmp_path, name):
    path, model = _build_and_save(tmp_path, name)
    size, engine = EXPECTED[name][1], EXPECTED[name][2]
    x = np.random.default_rng(1).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
    reference = P.to_probabilities(model.predict(x, batch_size=4, verbose=0), 2)
    assert reference[:, 1].max() - reference[:, 1].min() > 1e-6, "scores must differ to compare anything"
    if engine == "numpy":
        fast = P.load_scorer(path, engine="numpy")
        assert fast.engine == "numpy"
        np.testing.assert_allclose(fast.probabilities(x), reference, atol=1e-5)
        assert P.load_scorer(path, engine="auto").engine == "numpy"
    else:
        with pytest.raises(P.UnsupportedModel):
            P.NumpyModel(path)
        with pytest.raises(ValueError, match="NumPy engine cannot run"):
            P.load_scorer(path, engine="numpy")
        auto = P.load_scorer(path, engine="auto")
        assert auto.engine == "keras"
        np.testing.assert_allclose(auto.probabilities(x), reference, atol=1e-5)


def _docstring_lists() -> dict[str, str]:
    """The 'NumPy:' and 'Keras:' lines under 'Engine coverage' in the predict module docstring."""
    doc = P.__doc__ or ""
    assert "Engine coverage" in doc, "the predict docstring must say which engine runs which model"
    section = doc.split("Engine coverage", 1)[1]
    lines = {}
    for engine in ("NumPy", "Keras"):
        m = re.search(rf"^\s*{engine}:(.*?)(?=^\s*\w+:|\n\n|\Z)", section, re.M | re.S)
        assert m, f"no '{engine}:' line under 'Engine coverage'"
        lines[engine.lower()] = " ".join(m.group(1).split())
    return lines


def test_predict_docstring_names_the_engine_of_each_model_type():
    lines = _docstring_lists()
    for name, (_, _, engine) in EXPECTED.items():
        other = "keras" if engine == "numpy" else "numpy"
        assert DOC_NAMES[name] in lines[engine], f"{DOC_NAMES[name]} should be listed under {engine}"
        assert DOC_NAMES[name] not in lines[other], f"{DOC_NAMES[name]} is wrongly listed under {other}"
