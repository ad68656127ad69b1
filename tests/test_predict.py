"""``python -m cxrbook predict|evaluate`` end to end on a tiny model trained here, plus the ONNX and
Keras engines checked against each other. Bad inputs must give messages, never tracebacks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrbook.evaluation import records as R
from cxrbook.inference import predict as P
from cxrbook.inference.saved_model import load_model
from cxrbook.workflow import cli as CLI

SIZE = 32
DIAG = "not a diagnosis"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _train(tmp: Path, name: str, builder: str = "custom_cnn", augment: bool = True, n_classes: int = 2,
           return_model: bool = False):
    from cxrbook.models import architectures as models
    from cxrbook.models import training
    from cxrbook.data.synthetic import chest_image
    rng = np.random.default_rng(0)
    labels = ["normal", "covid"] if n_classes == 2 else ["covid", "other_pneumonia", "normal"]
    y = np.arange(24) % n_classes
    x = np.stack([chest_image(labels[i] if n_classes == 3 else ("normal", "covid")[i], rng, SIZE) for i in y])
    build = getattr(models, builder)
    model = build(SIZE, augment=augment, seed=0, n_classes=n_classes)
    training.fit(model, x[..., None], y, x[..., None], y, epochs=1, batch_size=8, verbose=0)
    path = training.save_model(model, tmp / f"{name}.keras", sidecar={
        "classes": labels, "image_size": SIZE, "threshold": 0.5, "task": "covid_vs_normal",
        "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
        "weights": "none (test)", "backbone": builder})
    return (path, model) if return_model else path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """The workbook's reference CNN (with its augmentation layers), 32 px, one epoch."""
    return _train(tmp_path_factory.mktemp("model"), "tiny_cnn")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    from cxrbook.data.synthetic import chest_image
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    g = chest_image("covid", rng, 80)
    files = {"gray": d / "gray.png", "rgb": d / "rgb.jpg", "rgba": d / "rgba.png", "b16": d / "b16.png",
             "text": d / "text.png", "empty": d / "empty.jpg", "missing": d / "missing.png"}
    Image.fromarray(g).save(files["gray"])
    Image.fromarray(np.dstack([g, g, g])).save(files["rgb"])
    Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]), "RGBA").save(files["rgba"])
    Image.fromarray(g.astype(np.uint16) * 257).save(files["b16"])
    files["text"].write_text("not an image\n")
    files["empty"].write_bytes(b"")
    return files


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrbook", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


# --------------------------------------------------------------------------- predict

def test_predict_scores_good_images_and_explains_bad_ones(model_path, images, tmp_path):
    out = tmp_path / "overlays"
    r = cli("predict", *images.values(), "--model", model_path, "--out", out)
    assert r.returncode == CLI.EXIT_SOME_FAILED, r.stderr  # 3 of the 7 inputs are bad
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for key in ("gray", "rgb", "rgba", "b16"):
        line = next(ln for ln in lines if ln.startswith(str(images[key]) + ":"))
        assert "P(covid)=" in line and "->" in line and DIAG in line
        overlay = out / f"{images[key].stem}_gradcam.png"
        assert overlay.is_file()
        with Image.open(overlay) as im:
            assert im.text["Disclaimer"] == "research tool, not a diagnosis"
            assert im.mode == "RGB"
    assert f"{images['text']}: not scored: the file is not in any image format" in r.stdout
    assert f"{images['empty']}: not scored: the file has zero bytes" in r.stdout
    assert f"{images['missing']}: not scored: the listed image file does not exist" in r.stdout
    assert "4 of 7 images scored" in r.stdout and DIAG in lines[-1]


def test_predict_exit_codes(model_path, images, tmp_path):
    r = cli("predict", images["text"], images["missing"], "--model", model_path, "--out", tmp_path)
    assert r.returncode == 1 and "0 of 2 images scored" in r.stdout and "Traceback" not in r.stderr
    r = cli("predict", images["gray"], "--model", tmp_path / "nope.keras")
    assert r.returncode == 2 and "nope.keras does not exist" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.keras"
    bad.write_text("junk")
    bad.with_suffix(".json").write_text(json.dumps({"classes": ["normal", "covid"], "image_size": SIZE, "threshold": 0.5}))
    r = cli("predict", images["gray"], "--model", bad)
    assert r.returncode == 2 and "bad.keras" in r.stderr and "Traceback" not in r.stderr


def test_overlay_beside_the_original_and_an_unwritable_place(model_path, images, tmp_path, monkeypatch):
    import errno

    from cxrbook import atomic
    src = tmp_path / "xray.png"
    src.write_bytes(images["gray"].read_bytes())
    scorer = load_model(model_path)
    rows = P.predict_files(scorer, [src], echo=None)
    assert rows[0]["overlay"] == str(tmp_path / "xray_gradcam.png") and Path(rows[0]["overlay"]).is_file()
    # a folder where the overlay should go is left alone: the overlay takes the next free name
    Path(rows[0]["overlay"]).unlink()
    Path(rows[0]["overlay"]).mkdir()
    rows = P.predict_files(scorer, [src], echo=None)
    assert rows[0]["overlay"] == str(tmp_path / "xray_2_gradcam.png") and Path(rows[0]["overlay"]).is_file()
    # a read-only folder (simulated: tests run as root, which ignores file modes): reported, scores still given
    real_open = os.open

    def read_only(path, *a, **k):
        if Path(path).parent == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(atomic.os, "open", read_only)
    rows = P.predict_files(scorer, [src], echo=None)
    assert rows[0]["status"] == "ok" and rows[0]["predicted"] in ("normal", "covid") and rows[0]["overlay_failed"]
    assert rows[0]["overlay"] is None and "read-only file system writing" in rows[0]["message"]
    assert "pass --out DIR" in rows[0]["message"]


def test_predict_images_dataframe_for_the_notebook(model_path, images, tmp_path):
    df = P.predict_images(model_path, None, [images["gray"], images["text"]], out_dir=tmp_path, echo=None)
    assert list(df["status"]) == ["ok", "unreadable"]
    assert df.loc[0, "P(normal)"] + df.loc[0, "P(covid)"] == pytest.approx(1.0)
    assert (df["note"] == "research tool, not a diagnosis").all()
    assert df.loc[1, "reason"] == "not_an_image"


def test_cold_predict_timing(model_path, images, tmp_path):
    """Scores only (ONNX Runtime, no TensorFlow); an overlay would load Keras. Speed goals live in make bench."""
    t0 = time.perf_counter()
    r = cli("predict", images["gray"], "--model", model_path, "--out", tmp_path, "--no-gradcam")
    cold = time.perf_counter() - t0
    many = [images["gray"]] * 10
    t0 = time.perf_counter()
    r10 = cli("predict", *many, "--model", model_path, "--out", tmp_path, "--no-gradcam")
    per_extra = (time.perf_counter() - t0 - cold) / 9
    print(f"\ncold predict (process start + model load + 1 image, scores only): {cold:.2f} s; "
          f"about {max(per_extra, 0):.3f} s per further image")
    assert r.returncode == 0 and r10.returncode == 0
    assert cold < 15


# --------------------------------------------------------------------------- evaluate

def _folder(images: dict, root: Path) -> Path:
    (root / "covid").mkdir(parents=True)
    (root / "normal" / "deeper").mkdir(parents=True)
    (root / "covid" / "a.png").write_bytes(images["gray"].read_bytes())
    (root / "covid" / "b.png").write_bytes(images["b16"].read_bytes())
    (root / "normal" / "c.png").write_bytes(images["rgba"].read_bytes())
    (root / "normal" / "deeper" / "d.jpg").write_bytes(images["rgb"].read_bytes())
    (root / "normal" / "broken.png").write_text("oops")
    (root / "normal" / "a_gradcam.png").write_bytes(images["gray"].read_bytes())  # our own output: skipped
    return root


def test_evaluate_with_labels_writes_predictions_unreadable_and_metrics(model_path, images, tmp_path):
    root = _folder(images, tmp_path / "imgs")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label,patient_id\ncovid/a.png,covid,p1\nb.png,covid,p1\n"
                      "normal/c.png,normal,p2\nnormal/deeper/d.jpg,normal,p3\nghost.png,normal,p4\n")
    out = tmp_path / "out"
    r = cli("evaluate", "--model", model_path, "--images", root, "--labels", labels, "--out", out,
            "--n-bootstrap", 50)
    assert r.returncode == CLI.EXIT_SOME_FAILED, r.stderr  # broken.png unreadable, ghost.png not found
    assert "Traceback" not in r.stdout + r.stderr and DIAG in r.stdout
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(x["file"] for x in rows) == ["covid/a.png", "covid/b.png", "normal/c.png", "normal/deeper/d.jpg"]
    assert set(rows[0]) == {"file", "score_normal", "score_covid", "predicted_label", "threshold", "note"}
    assert all(x["note"] == "research tool, not a diagnosis" for x in rows)
    with open(out / "unreadable.csv") as f:
        bad = list(csv.DictReader(f))
    assert [(b["file"], b["reason"]) for b in bad] == [("normal/broken.png", "not_an_image")]
    record = R.load_metrics(out / "metrics.json")
    assert record["n_test"] == 4 and record["n_patients"] == 3 and record["threshold"] == 0.5
    assert record["threshold_rule"] == "stored in the model sidecar"
    assert record["extra"]["note"] == "research tool, not a diagnosis"
    assert record["extra"]["n_labels_without_scored_image"] == 1


def test_evaluate_without_patient_ids_and_without_labels(model_path, images, tmp_path):
    root = _folder(images, tmp_path / "imgs")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\ncovid/a.png,covid\ncovid/b.png,covid\nnormal/c.png,normal\nd.jpg,normal\n")
    r = cli("evaluate", "--model", model_path, "--images", root, "--labels", labels, "--out", tmp_path / "o1",
            "--n-bootstrap", 50)
    assert r.returncode == CLI.EXIT_SOME_FAILED, r.stderr  # the folder holds broken.png
    assert "every image is treated as its own patient" in r.stdout
    record = R.load_metrics(tmp_path / "o1" / "metrics.json")
    assert record["n_patients"] == 4 and "own patient" in record["extra"]["patients"]
    r = cli("evaluate", "--model", model_path, "--images", root, "--out", tmp_path / "o2")
    assert r.returncode == CLI.EXIT_SOME_FAILED and not (tmp_path / "o2" / "metrics.json").exists()
    assert (tmp_path / "o2" / "predictions.csv").is_file()


def test_evaluate_bad_inputs_give_messages(model_path, images, tmp_path):
    root = _folder(images, tmp_path / "imgs")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\ncovid/a.png,COVID-19\n")
    r = cli("evaluate", "--model", model_path, "--images", root, "--labels", labels, "--out", tmp_path / "o")
    assert r.returncode == 2 and "COVID-19" in r.stderr and str(labels) in r.stderr and "Traceback" not in r.stderr
    labels.write_text("file,diagnosis\na.png,covid\n")
    r = cli("evaluate", "--model", model_path, "--images", root, "--labels", labels, "--out", tmp_path / "o")
    assert r.returncode == 2 and "lacks column" in r.stderr
    r = cli("evaluate", "--model", model_path, "--images", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert r.returncode == 2 and "nowhere does not exist" in r.stderr
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_text("no")
    r = cli("evaluate", "--model", model_path, "--images", only_bad, "--out", tmp_path / "o3")
    assert r.returncode == 1 and "unreadable: 1" in r.stdout


# --------------------------------------------------------------------------- engine and preprocessing

@pytest.mark.slow
def test_keras_engine_loads_and_agrees(tmp_path):
    """The Keras engine and the ONNX engine (with its lazily loaded Keras Grad-CAM) give the same answers."""
    path = _train(tmp_path, "imp", "improved_cnn", augment=True)
    x = np.random.default_rng(3).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    slow, fast = load_model(path, engine="keras"), load_model(path, engine="onnx")
    assert slow.engine == "keras" and fast.engine == "onnx"
    ps, hs = slow.probabilities_and_heatmaps(x)
    pf, hf = fast.probabilities_and_heatmaps(x)
    np.testing.assert_allclose(pf, ps, atol=1e-5)
    np.testing.assert_allclose(hf, hs, atol=1e-4)


def test_engine_choice_and_unusable_models(model_path, tmp_path):
    assert load_model(model_path).engine == "onnx"
    with pytest.raises(ValueError, match="engine must be one of"):
        load_model(model_path, engine="numpy")
    side = tmp_path / "m.json"
    side.write_text("{}")
    (tmp_path / "m.keras").write_text("x")
    with pytest.raises(ValueError, match=r"m.json: field 'classes' is missing"):
        load_model(tmp_path / "m.keras")


def test_preprocessing_matches_the_training_pipeline(images):
    from cxrbook.data import pipeline
    for clahe in (False, True):
        side = {"image_size": SIZE, "preprocessing": {"clahe": clahe}}
        for key in ("gray", "rgba", "b16"):
            _, x = P.preprocess_file(images[key], side)
            ref = pipeline.to_rgb_float(pipeline._decode(str(images[key]), SIZE, clahe)[None])[0]
            np.testing.assert_array_equal(x, ref)


def test_predict_overlay_is_the_notebook_figures_blend():
    """predict's overlay PNG and notebook 05's Grad-CAM grid draw the heatmap with one function."""
    from matplotlib import colormaps

    from cxrbook.models import overlay
    gray = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))   # wide enough: no rescaling
    heat = np.tile(np.linspace(0, 1, 512, dtype=np.float32)[:, None], (1, 512))
    img = np.asarray(overlay.overlay_image(gray, heat, "caption"))[:512]
    np.testing.assert_array_equal(img, overlay.blend(gray, heat))
    expected = np.round(0.6 * gray[..., None] + 0.4 * colormaps["jet"](heat)[..., :3] * 255)
    np.testing.assert_allclose(img, expected, atol=1)


def test_cli_lists_predict_and_evaluate():
    r = cli("--help")
    assert r.returncode == 0 and "predict" in r.stdout and "evaluate" in r.stdout
    r = cli("predict", "--help")
    assert "not a diagnosis" in r.stdout.lower()


def test_binary_model_without_threshold_is_refused(model_path, images, tmp_path):
    """No silent 0.5: a binary model must carry its validation-chosen threshold."""
    import json
    import shutil
    bare = tmp_path / "bare.keras"
    shutil.copy(model_path, bare)
    side = json.loads(model_path.with_suffix(".json").read_text())
    side["threshold"] = None
    bare.with_suffix(".json").write_text(json.dumps(side))
    r = cli("predict", str(next(iter(images.values()))), "--model", str(bare), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no decision threshold" in r.stderr and "Traceback" not in r.stderr
