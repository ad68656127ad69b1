"""The seeds' own backbones (DenseNet169, ResNet152V2, ResNet101), selectable in notebook 06 (issue 11)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbook.models import backbones
from cxrbook.models import layers
from cxrbook.data import metadata
from cxrbook.evaluation import records as R
from cxrbook.data import splits as sp
from cxrbook.config import Paths
from cxrbook.data.pipeline import load_arrays
from cxrbook.workflow.runner import coerce_parameter, run
from cxrbook.data.synthetic import make_fake_collections

SEED_BACKBONES = ("DenseNet169", "ResNet152V2", "ResNet101")


@pytest.mark.parametrize("name", SEED_BACKBONES)
def test_seed_backbone_preprocessing_and_last_block(name):
    constructor, preprocess, min_size = backbones.BACKBONES[name]
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    layer = layers.ImagenetPreprocess(backbones.PREPROCESS_MODE[name])
    np.testing.assert_allclose(np.asarray(layer(x)), preprocess(x.copy()), rtol=1e-5, atol=1e-3)
    base = constructor(include_top=False, weights=None, input_shape=(min_size, min_size, 3), pooling="avg")
    assert backbones.LAST_BLOCK[name] in [layer.name for layer in base.layers]


def test_list_parameters_from_the_command_line_reach_notebooks_as_lists():
    assert coerce_parameter("DenseNet169,ResNet101", "[]") == ["DenseNet169", "ResNet101"]
    assert coerce_parameter("DenseNet169", "[]") == ["DenseNet169"]
    assert coerce_parameter(["VGG16"], "[]") == ["VGG16"]
    assert coerce_parameter("a,b", '"covid_vs_normal"') == "a,b"  # a string parameter stays a string


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = make_fake_collections(tmp_path_factory.mktemp("bb"), n_patients=4, image_size=48, seed=3,
                                 defects=False)
    paths = Paths.resolve(root, tmp_path_factory.mktemp("bb_out"))
    tidy = metadata.load_all(root)
    splits = sp.patient_split(sp.select(tidy, "covid_vs_normal", "all"), seed=0)
    data = load_arrays(splits, 32, cache_dir=paths.cache, progress=False)
    return data, sp.classes_for("covid_vs_normal"), paths


@pytest.mark.parametrize("name", SEED_BACKBONES)
def test_train_transfer_with_each_seed_backbone(tiny_task, name):
    from cxrbook.evaluation import experiment as E
    data, classes, paths = tiny_task
    res = E.train_transfer(name, data, classes, weights="none", paths=paths, epochs=1, batch_size=16, seed=0)
    assert res.scores_test.shape == (len(data.test),) and np.isfinite(res.scores_test).all()
    assert res.scores_val.shape == (len(data.val),)


@pytest.mark.slow
def test_notebook_06_runs_seed_backbones_given_as_a_comma_list(fake_data, tmp_path):
    out = tmp_path / "out"
    run(profile="smoke", only=["01", "02", "03", "04", "05"], data_dir=str(fake_data), output_dir=str(out),
        extra={"weights": "none"}, html_index=False)
    # the string the CLI gives for `-p backbones=DenseNet169,ResNet101` (runner._literal keeps it a str)
    manifest = run(profile="smoke", only=["06"], data_dir=str(fake_data), output_dir=str(out),
                   extra={"weights": "none", "backbones": "DenseNet169,ResNet101", "image_size": 32},
                   html_index=False)
    assert manifest["notebooks"][0]["parameters"]["backbones"] == ["DenseNet169", "ResNet101"]
    table = pd.read_csv(out / "comparison.csv")
    assert {"densenet169", "resnet101"} <= set(table["model"])
    for name in ("densenet169", "resnet101"):
        R.validate_record(R.load_metrics(out / "metrics" / f"{name}.json"))
        assert (out / "models" / f"{name}.keras").is_file()
