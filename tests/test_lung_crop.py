"""``predict --crop-lungs`` and models trained on lung crops (cxrbook.inference.lung_crop).

A random-initialised detector stands in for notebook 09's (saved with ``min_confidence`` 1, so
the mean box is used: the path every unsure detection takes; its own boxes are noise); the
classifier is an untrained 32 px CNN. What is checked is the plumbing: the same crop as
notebook 09's, refusals and warnings, and that a crop-trained model is never scored whole.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbook.__main__ import main
from cxrbook.inference.saved_model import load_model

SIZE = 32
MEAN_BOX = np.array([[0.1, 0.15, 0.45, 0.85], [0.55, 0.15, 0.9, 0.85]])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from cxrbook.data.images import file_sha256
    from cxrbook.data.synthetic import chest_image
    from cxrbook.models import architectures, training
    from cxrbook.models.detection import DetectorConfig, build_detector, save_detector

    tmp = tmp_path_factory.mktemp("crop")
    models = tmp / "models"
    det = models / "lung_crops" / "lung_detector.weights.h5"
    config = DetectorConfig(image_size=64, backbone="resnet_small", head_layers=1, epochs=0, seed=0)
    save_detector(build_detector(config), config, det, mean_box=MEAN_BOX, margin=0.1, min_confidence=1.0)
    side = {"classes": ["normal", "covid"], "image_size": SIZE, "threshold": 0.5, "task": "covid_vs_normal",
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
            "weights": "none (test)", "backbone": "custom_cnn"}
    cnn = architectures.custom_cnn(SIZE, augment=False, seed=0, n_classes=2)
    whole = training.save_model(cnn, models / "whole.keras", sidecar=side)
    crop = training.save_model(cnn, models / "lung_crops" / "crop.keras", sidecar={**side, "lung_crop": {
        "detector": det.name, "detector_sha256": file_sha256(det), "margin": 0.1, "min_confidence": 1.0}})
    rng = np.random.default_rng(3)
    image = tmp / "images" / "chest.png"
    image.parent.mkdir()
    Image.fromarray(np.pad(chest_image("covid", rng, 160), ((20, 20), (0, 40)), constant_values=30)).save(image)
    return {"tmp": tmp, "detector": det, "whole": whole, "crop": crop, "image": image, "cnn": cnn}


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--engine", "keras", "--no-gradcam"])


def test_a_crop_trained_model_is_cropped_as_notebook_09_crops(setup, capsys, tmp_path):
    from cxrbook.data.images import load_gray, prepare
    from cxrbook.inference import predict as P
    from cxrbook.inference.lung_crop import cropper_for
    from cxrbook.lungs import study as L
    from cxrbook.models.detection import crop_to_region, load_detector

    assert _predict(setup["image"], "--model", setup["crop"]) == 0
    out = capsys.readouterr()
    assert "lungs: cropped to x" in out.out and "the mean box stands in" in out.out
    assert "warning" not in out.err
    # notebook 09's way: the detector on the training cache's pixels, then crop_pixels from the file
    from cxrbook.data.pipeline import load_arrays
    model, meta = load_detector(setup["detector"])
    table = pd.DataFrame({"image_path": [str(setup["image"])], "patient_id": ["p"], "label": ["covid"],
                          "source": ["x"], "split": ["test"]})
    cached = load_arrays(table, 64, cache_dir=tmp_path, progress=False)
    regions = L.detect_regions(model, *L.all_images(cached), meta["mean_box"], margin=0.1, min_confidence=1.0)
    region = regions[[f"crop_{c}" for c in L.COORDS]].to_numpy(float)[0]
    notebook = L.crop_pixels(str(setup["image"]), region, SIZE)
    # predict's way
    scorer = load_model(setup["crop"], engine="keras")
    cropper, warnings = cropper_for(setup["crop"], scorer.sidecar)
    assert warnings == []
    row = P.predict_files(scorer, [setup["image"]], overlays=False, crop=cropper, echo=None)[0]
    np.testing.assert_allclose(row["lungs"]["region"], region, atol=1e-4)
    gray, x = P.preprocess_file(setup["image"], scorer.sidecar, crop=cropper)
    np.testing.assert_array_equal(x[..., 0], notebook)
    assert gray.shape != load_gray(setup["image"]).shape        # the crop, not the whole image
    whole = prepare(load_gray(setup["image"]), SIZE)
    assert not np.array_equal(notebook, whole)
    expected = setup["cnn"].predict(np.repeat(notebook[None, ..., None].astype("float32"), 3, -1), verbose=0)[0, 0]
    assert row["probabilities"]["covid"] == pytest.approx(float(expected), abs=1e-5)
    np.testing.assert_array_equal(crop_to_region(load_gray(setup["image"]), region), gray)


def test_a_crop_trained_model_without_its_detector_is_refused(setup, tmp_path, capsys):
    lone = tmp_path / "lone"
    lone.mkdir()
    for suffix in (".keras", ".json"):
        shutil.copy(setup["crop"].with_suffix(suffix), lone / f"crop{suffix}")
    assert _predict(setup["image"], "--model", lone / "crop.keras") == 2
    err = capsys.readouterr().err
    assert "was trained on lung crops" in err and "no lung detector was found" in err and "--detector" in err
    assert main(["evaluate", "--model", str(lone / "crop.keras"), "--images", str(setup["image"].parent),
                 "--engine", "keras", "--out", str(tmp_path / "ev")]) == 2
    # never scored on whole images, whoever calls
    from cxrbook.app.scoring import discover
    from cxrbook.inference import predict as P
    sidecar = json.loads((lone / "crop.json").read_text())
    with pytest.raises(ValueError, match="trained on lung crops"):
        P.preprocess_file(setup["image"], sidecar)
    assert "crop" not in discover(lone) and "whole" in discover(setup["whole"].parent)


def test_crop_lungs_on_a_whole_image_model_warns_and_a_missing_detector_is_refused(setup, capsys):
    assert _predict(setup["image"], "--model", setup["whole"], "--crop-lungs") == 0
    out = capsys.readouterr()
    assert "was trained on whole images, not lung crops" in out.err and "lungs: cropped to" in out.out
    assert _predict(setup["image"], "--model", setup["whole"]) == 0
    assert "lungs:" not in capsys.readouterr().out
    assert _predict(setup["image"], "--model", setup["whole"], "--detector", setup["tmp"] / "no.weights.h5") == 2
    assert "no.weights.h5 do not exist" in capsys.readouterr().err


def test_another_detector_than_the_models_is_named(setup, capsys, tmp_path):
    other = tmp_path / "other.weights.h5"
    shutil.copy(setup["detector"], other)
    shutil.copy(setup["detector"].with_name("lung_detector.json"), tmp_path / "other.json")
    with open(other, "ab") as f:
        f.write(b"\0")  # another file (HDF5 ignores trailing bytes)
    assert _predict(setup["image"], "--model", setup["crop"], "--detector", other) == 0
    assert "is not the one crop.keras was trained with" in capsys.readouterr().err


def test_evaluate_crops_a_folder_like_predict(setup, tmp_path, capsys):
    assert main(["evaluate", "--model", str(setup["crop"]), "--images", str(setup["image"].parent),
                 "--engine", "keras", "--out", str(tmp_path / "ev")]) == 0
    score = float(pd.read_csv(tmp_path / "ev" / "predictions.csv")["score_covid"].iloc[0])
    capsys.readouterr()
    from cxrbook.inference import predict as P
    from cxrbook.inference.lung_crop import cropper_for
    scorer = load_model(setup["crop"], engine="keras")
    row = P.predict_files(scorer, [setup["image"]], overlays=False, crop=cropper_for(setup["crop"], scorer.sidecar)[0],
                          echo=None)[0]
    assert score == pytest.approx(row["probabilities"]["covid"], abs=1e-5)


def test_a_bad_lung_crop_entry_is_refused(setup, tmp_path):
    from cxrbook.inference.lung_crop import crop_settings
    good = json.loads(setup["crop"].with_suffix(".json").read_text())["lung_crop"]
    assert crop_settings({"lung_crop": good})["margin"] == 0.1
    for bad, msg in (({**good, "detector": "../../x.weights.h5"}, "bare .weights.h5 file name"),
                     ({**good, "margin": 5}, "must lie in"), ({"detector": good["detector"]}, "unusable")):
        with pytest.raises(ValueError, match=msg):
            crop_settings({"lung_crop": bad})


def test_a_lung_crop_with_nothing_in_it_is_not_scored(setup, tmp_path, capsys):
    img = np.full((200, 200), 50, np.uint8)
    img[:4, :4] = 200   # the file is not constant, its lung region is
    Image.fromarray(img).save(tmp_path / "flat.png")
    assert _predict(tmp_path / "flat.png", "--model", setup["crop"]) == 1
    out = capsys.readouterr().out
    assert "not scored" in out and "its lung crop (" in out and "is all of value 50" in out
