"""``saved_model.load_model``: one loader for every saved model, its sidecar checked field by field, its ONNX
file bound by SHA-256, and the export's parity check in logit space on stored validation images.

Most tests use a stand-in ``.keras`` (a zip Keras never opens, since its ONNX file is bound to it) and a
hand-built ONNX graph, so they need neither TensorFlow nor training; the ones marked slow use Keras."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cxrbook.inference import saved_model as SM
from cxrbook.models import ensemble as ENS
from cxrbook.models import onnx_export as OX
from cxrbook.models.sidecar import InvalidSidecar, confound_warning

BIN = ["normal", "covid"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


# --------------------------------------------------------------------------- stand-in models (no TensorFlow)

def onnx_image_graph(path: Path, size: int, n_out: int = 1, bias: float = -1.0) -> Path:
    """An ONNX classifier of (n, size, size, 3) images: channel means -> dense -> sigmoid (1 output) or softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.linspace(0.5, 1.5, 3 * n_out).reshape(3, n_out) * 2 / 255
    nodes = [helper.make_node("ReduceMean", ["image"], ["means"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["means", "w"], ["z0"]),
             helper.make_node("Add", ["z0", "b"], ["z"]),
             helper.make_node("Sigmoid" if n_out == 1 else "Softmax", ["z"], ["p"], **({} if n_out == 1 else
                                                                                         {"axis": 1}))]
    graph = helper.make_graph(
        nodes, "stand_in", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, size, size, 3])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, n_out])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "w"),
                     numpy_helper.from_array(np.full(n_out, bias, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stand_in_keras(folder: Path, name: str = "m", size: int = 32, n_out: int = 1, **side) -> Path:
    """``<name>.keras`` (a zip Keras would not load), its ONNX export bound to it by hash, and a sidecar."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps({"name": name}))
        z.writestr("model.weights.h5", name.encode() * 8)
    onnx = onnx_image_graph(path.with_suffix(".onnx"), size, n_out)
    sidecar = {"classes": BIN if n_out == 1 else ["covid", "other_pneumonia", "normal"][:n_out],
               "image_size": size, "threshold": 0.5, "task": "covid_vs_normal", "normals": "all",
               "preprocessing": {"clahe": False}, "weights": "none (test)",
               "onnx": {"file": onnx.name, "sha256": sha(onnx), "model_sha256": sha(path)}, **side}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def edit_sidecar(model: Path, **fields) -> Path:
    side = json.loads(model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**side, **fields}))  # json writes float('nan') as NaN
    return model.with_suffix(".json")


def pixel_logreg(folder: Path, name: str = "px", seed: int = 0, **side) -> Path:
    from cxrbook.evaluation import experiment as X
    from cxrbook.data.synthetic import chest_image
    rng = np.random.default_rng(seed)
    y = np.arange(24) % 2
    gray = np.stack([chest_image(BIN[v], rng, 32) for v in y])[..., None]
    return X.save_pixel_logreg(X.fit_pixel_logreg(gray, y, size=8), folder / f"{name}.joblib", {
        "classes": BIN, "image_size": 32, "thumbnail_size": 8, "threshold": 0.5, "task": "covid_vs_normal",
        "weights": "none (classical)", "preprocessing": {"clahe": False}, "normals": "all", **side}, parity=gray)


def images(n: int = 4, size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


# --------------------------------------------------------------------------- one object from a path

def test_load_model_gives_one_object_for_every_kind(tmp_path):
    keras_path = stand_in_keras(tmp_path, "cnn")
    px = pixel_logreg(tmp_path, "px")
    ens = ENS.save_ensemble(tmp_path / "ensemble.json", ["cnn.keras", "px.joblib"], [3, 1], 0.4,
                            {"classes": BIN, "image_size": 32, "preprocessing": {"clahe": False},
                             "task": "covid_vs_normal"})
    cnn, lr, vote = (SM.load_model(p) for p in (keras_path, px, ens))
    assert (cnn.kind, cnn.engine, cnn.name, cnn.has_gradcam) == ("keras", "onnx", "cnn", True)
    assert (lr.kind, lr.engine, lr.name, lr.has_gradcam) == ("pixel_logreg", "onnx", "px", False)
    assert (vote.kind, vote.name, vote.threshold, vote.image_size) == ("ensemble", "ensemble", 0.4, 32)
    assert [m.name for m in vote.members] == ["cnn", "px"] and vote.classes == BIN
    for m in (cnn, lr, vote):
        assert m.normals == "all" and m.caution == confound_warning({"normals": "all"})
    x = images()
    np.testing.assert_allclose(vote.probabilities(x), 0.75 * cnn.probabilities(x) + 0.25 * lr.probabilities(x))
    assert np.ptp(cnn.probabilities(x)[:, 1]) > 0 and np.ptp(lr.probabilities(x)[:, 1]) > 0
    with pytest.raises(ValueError, match="engine must be one of"):
        SM.load_model(keras_path, engine="tflite")
    with pytest.raises(ValueError, match="expected a .keras model"):
        SM.load_model(tmp_path / "cnn.onnx")


# --------------------------------------------------------------------------- sidecar fields

NAN = float("nan")
BAD_FIELDS = [
    ("threshold", NAN), ("threshold", "NaN"), ("threshold", "abc"), ("threshold", 2.0), ("threshold", -1),
    ("threshold", True), ("threshold", None),
    ("classes", ["covid"]), ("classes", ["covid", "covid"]), ("classes", "covid"), ("classes", [0, 1]),
    ("classes", ["normal", "covid", "other_pneumonia"]),         # 3 classes for one sigmoid output
    ("image_size", 0), ("image_size", -5), ("image_size", "x"), ("image_size", 100000), ("image_size", 32.0),
    ("image_size", True), ("image_size", 64),                     # 64 px for a 32 px model
    ("normals", "children"), ("normals", 1), ("preprocessing", {"clahe": "yes"}), ("preprocessing", "clahe"),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_sidecar_fields_are_refused_naming_the_json_and_the_field(tmp_path, field, value):
    model = stand_in_keras(tmp_path)
    side = edit_sidecar(model, **{field: value})
    with pytest.raises(InvalidSidecar) as e:
        SM.load_model(model)
    assert e.value.field == field and e.value.path == str(side)
    assert str(side) in str(e.value) and repr(field) in str(e.value)


def test_classes_must_match_the_outputs_and_the_thumbnails_the_graph(tmp_path):
    three = stand_in_keras(tmp_path, "three", n_out=3, threshold=None)
    assert SM.load_model(three).classes == ["covid", "other_pneumonia", "normal"]
    edit_sidecar(three, classes=BIN, threshold=0.5)
    with pytest.raises(InvalidSidecar, match="lists 2 classes but three.onnx has 3 outputs"):
        SM.load_model(three)
    px = pixel_logreg(tmp_path)
    edit_sidecar(px, thumbnail_size=16)  # the graph takes 8 x 8 thumbnails
    with pytest.raises(InvalidSidecar, match="thumbnail_size"):
        SM.load_model(px)
    edit_sidecar(px, thumbnail_size=8, image_size=100000)
    with pytest.raises(InvalidSidecar, match="image_size"):
        SM.load_model(px)


def test_a_multi_class_model_ignores_a_stored_threshold_and_normals_may_be_absent(tmp_path):
    three = stand_in_keras(tmp_path, "three", n_out=3, threshold=0.3)
    assert SM.load_model(three).threshold is None
    side = json.loads(three.with_suffix(".json").read_text())
    del side["normals"]
    three.with_suffix(".json").write_text(json.dumps(side))
    m = SM.load_model(three)
    assert m.normals == "unknown" and "training normals unknown" in m.caution


def xray_png(path: Path) -> Path:
    """A generated chest X-ray PNG (64 px; predict refuses tiny or constant images)."""
    from PIL import Image

    from cxrbook.data.synthetic import chest_image
    Image.fromarray(chest_image("covid", np.random.default_rng(0), 64)).save(path)
    return path


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrbook", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV)


def test_predict_and_evaluate_exit_2_naming_the_json_and_the_field(tmp_path):
    (tmp_path / "imgs").mkdir()
    image = xray_png(tmp_path / "imgs" / "x.png")
    model = stand_in_keras(tmp_path / "m")
    assert cli("predict", image, "--model", model, "--no-gradcam").returncode == 0  # the good model scores
    for field, value in (("threshold", NAN), ("image_size", 100000), ("classes", ["a", "b", "c"])):
        stand_in_keras(tmp_path / "m")
        side = edit_sidecar(model, **{field: value})
        r = cli("predict", image, "--model", model, "--no-gradcam")
        assert r.returncode == 2, r.stdout + r.stderr
        assert str(side) in r.stderr and f"'{field}'" in r.stderr and "Traceback" not in r.stderr
    r = cli("evaluate", "--model", model, "--images", tmp_path / "imgs", "--out", tmp_path / "out")
    assert r.returncode == 2 and str(side) in r.stderr and "'classes'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "predictions.csv").exists()


# --------------------------------------------------------------------------- ensemble.json

def _members(folder: Path, normals=("all", "all")) -> Path:
    for name, n in zip(("m1", "m2"), normals):
        stand_in_keras(folder, name, **({"normals": n} if n else {}))
        if not n:
            side = json.loads((folder / f"{name}.json").read_text())
            del side["normals"]
            (folder / f"{name}.json").write_text(json.dumps(side))
    return ENS.save_ensemble(folder / "ensemble.json", ["m1.keras", "m2.keras"], [1, 1], 0.5,
                             {"classes": BIN, "image_size": 32, "preprocessing": {"clahe": False},
                              "task": "covid_vs_normal"})


def _edit_spec(path: Path, **fields) -> None:
    spec = json.loads(path.read_text())
    path.write_text(json.dumps({**spec, **fields}))


BAD_SPECS = [
    ("member_weights", [NAN, 1.0]), ("member_weights", [0.0, 1.0]), ("member_weights", [-1.0, 2.0]),
    ("member_weights", ["a", 1.0]), ("member_weights", [1.0]), ("threshold", "NaN"), ("threshold", 2.0),
    ("members", ["../m1.keras", "m2.keras"]), ("members", [None, "m2.keras"]),
    ("members", ["sub/m1.keras", "m2.keras"]), ("members", ["inner.json", "m2.keras"]),
    ("normals", "adult"),  # its members say all
]


@pytest.mark.parametrize("field,value", BAD_SPECS, ids=[f"{f}={v!r}" for f, v in BAD_SPECS])
def test_ensemble_json_refuses_bad_weights_members_and_normals(tmp_path, field, value):
    path = _members(tmp_path)
    assert SM.load_model(path).kind == "ensemble"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m1.keras").write_bytes((tmp_path / "m1.keras").read_bytes())
    (tmp_path / "sub" / "m1.json").write_text((tmp_path / "m1.json").read_text())
    (tmp_path / "inner.json").write_text(path.read_text())
    _edit_spec(path, **{field: value})
    with pytest.raises(ValueError) as e:
        SM.load_model(path)
    assert str(path) in str(e.value) and (field in str(e.value) or "member" in str(e.value))


def test_ensemble_members_may_not_be_absolute_or_links_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside"
    stand_in_keras(outside, "m1")
    folder = tmp_path / "models"
    path = _members(folder)
    _edit_spec(path, members=[str(outside / "m1.keras"), "m2.keras"])
    with pytest.raises(ValueError, match="must be a .keras/.joblib file name"):
        SM.load_model(path)
    (folder / "m1.keras").unlink()
    (folder / "m1.keras").symlink_to(outside / "m1.keras")
    _edit_spec(path, members=["m1.keras", "m2.keras"])
    with pytest.raises(ValueError, match="link leading out of"):
        SM.load_model(path)
    (folder / "m3.keras").symlink_to(folder / "m2.keras")  # a link inside the folder is fine
    (folder / "m3.json").write_text((folder / "m2.json").read_text())
    _edit_spec(path, members=["m3.keras", "m2.keras"])
    (folder / "m3.onnx").write_bytes((folder / "m2.onnx").read_bytes())
    assert SM.load_model(path).members[0].name == "m3"


def test_ensemble_records_its_members_normals_and_predict_says_them(tmp_path):
    path = _members(tmp_path / "adult", ("adult", "adult"))
    assert json.loads(path.read_text())["normals"] == "adult"
    assert SM.load_model(path).caution == confound_warning({"normals": "adult"})
    image = xray_png(tmp_path / "x.png")
    r = cli("predict", image, "--model", path, "--no-gradcam")
    assert r.returncode == 0 and confound_warning({"normals": "adult"}) in r.stdout
    with pytest.raises(ValueError, match="different normals"):
        _members(tmp_path / "mixed", ("all", "adult"))
    assert not (tmp_path / "mixed" / "ensemble.json").exists()
    unknown = _members(tmp_path / "unknown", (None, None))
    assert "normals" not in json.loads(unknown.read_text()) and SM.load_model(unknown).normals == "unknown"
    old = _members(tmp_path / "old", ("adult", "adult"))  # saved before the ensemble recorded normals
    spec = json.loads(old.read_text())
    del spec["normals"]
    old.write_text(json.dumps(spec))
    assert SM.load_model(old).normals == "adult" and ENS.load_ensemble(old)["normals"] == "adult"


# --------------------------------------------------------------------------- binding by SHA-256

def test_the_onnx_file_is_bound_by_hash_not_modification_time(tmp_path, monkeypatch):
    exported = []
    monkeypatch.setattr(OX, "export_in_subprocess", lambda p, **kw: exported.append(p) or {})
    model = stand_in_keras(tmp_path / "a", "m")
    os.utime(model, (2e9, 2e9))  # newer than its export: an mtime rule would export again
    SM.load_model(model)
    assert exported == []
    other = stand_in_keras(tmp_path / "b", "m", n_out=1)
    onnx_image_graph(other.with_suffix(".onnx"), 32, bias=2.0)
    model.with_suffix(".onnx").write_bytes(other.with_suffix(".onnx").read_bytes())  # another model's export
    with pytest.raises(ValueError, match="m.onnx is not the ONNX file m.json records"):
        SM.load_model(model)  # exported again (here a stub that exports nothing), never scored from the stray file
    assert exported == [model]
    px = pixel_logreg(tmp_path / "c")
    px.with_suffix(".onnx").write_bytes(other.with_suffix(".onnx").read_bytes())
    with pytest.raises(ValueError, match="px.onnx is not the ONNX file px.json records.*re-save it from notebook 06"):
        SM.load_model(px)
    assert exported == [model]  # a .joblib is never exported here


# --------------------------------------------------------------------------- parity in logit space

def test_compare_outputs_works_in_logit_space():
    p = np.array([[0.9999], [0.2], [0.6]])
    off = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + [[1.0], [0], [0]])))  # a logit error of 1 on the first image
    assert np.abs(off - p).max() < 1e-4  # what the old probability tolerance let pass
    r = OX.compare_outputs(off, p, threshold=0.5)
    assert not r["passed"] and r["max_abs_logit_diff"] == pytest.approx(1.0, abs=1e-6)
    assert OX.compare_outputs(p, p, 0.5)["passed"]
    rounded = np.float32(1 - 1e-6) + np.float32(6e-8)  # float32 rounding near 1 moves the logit by ~0.06
    assert OX.compare_outputs(np.array([[rounded]]), np.array([[np.float32(1 - 1e-6)]]), 0.5)["passed"]
    small = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + 2e-3)))
    assert not OX.compare_outputs(small, p, 0.5)["passed"]
    flip = OX.compare_outputs(np.array([[0.5001], [0.3]]), np.array([[0.4999], [0.3]]), threshold=0.5)
    assert flip["n_decisions_differ"] == 1 and flip["decision_agreement"] == 0.5
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert OX.compare_outputs(three, three)["passed"]
    assert not OX.compare_outputs(three * [1.01, 1, 1] / (three * [1.01, 1, 1]).sum(1, keepdims=True), three)["passed"]


def test_a_perturbed_onnx_graph_fails_the_parity_check(tmp_path):
    import onnx
    from onnx import numpy_helper
    from cxrbook.data.images import thumbnails
    from cxrbook.evaluation import experiment as X
    rng = np.random.default_rng(0)
    y = np.arange(30) % 2
    gray = (rng.integers(0, 200, (30, 24, 24)) + 40 * y[:, None, None]).astype(np.uint8)
    clf = X.fit_pixel_logreg(gray[..., None], y, size=8)
    path = tmp_path / "px.onnx"
    entry = OX.export_pixel_logreg(clf, path, thumbnails(gray, 8), threshold=0.5)
    assert entry["parity"]["max_abs_logit_diff"] <= OX.LOGIT_TOLERANCE and entry["sha256"] == sha(path)
    x = thumbnails(gray, 8)
    expected = clf.predict_proba(x)[:, 1:]
    graph = onnx.load(str(path))
    b = next(t for t in graph.graph.initializer if t.name == "intercept")
    b.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b) + np.float32(0.01), "intercept"))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(graph, str(bad))
    with pytest.raises(ValueError, match="largest logit difference 0.01"):
        OX.check_parity(bad, x, expected, threshold=0.5, inputs="validation images", what="px", reference="sklearn")
    assert OX.check_parity(path, x, expected, threshold=0.5, inputs="v", what="px", reference="s")["n"] == 30


def _parity_file(model: Path, images: np.ndarray, outputs: np.ndarray, model_sha: str | None = None) -> dict:
    np.savez(OX.parity_path(model), images=images, outputs=outputs)
    return {"image_size": 32, "parity_sample": {"file": OX.parity_path(model).name, "n": len(images),
                                                "sha256": sha(OX.parity_path(model)),
                                                "model_sha256": model_sha or sha(model)}}


def test_the_parity_sample_is_bound_to_its_model_and_checked(tmp_path):
    model = stand_in_keras(tmp_path)
    good = np.zeros((4, 32, 32), np.uint8)
    out = np.full((4, 1), 0.3, np.float32)
    sample = OX.read_parity_sample(model, _parity_file(model, good, out), sha(model))
    assert sample.images.shape == (4, 32, 32) and "stored with the model" in sample.source
    assert OX.read_parity_sample(model, {"image_size": 32}, sha(model)) is None  # none listed: generated images
    with pytest.raises(ValueError, match="is not the model its sidecar .* was saved with"):
        OX.read_parity_sample(model, _parity_file(model, good, out, model_sha="0" * 64), sha(model))
    listed = _parity_file(model, good, out)
    np.savez(OX.parity_path(model), images=good, outputs=out + 0.1)  # another sample under its name
    with pytest.raises(ValueError, match="is not the one saved with m.keras"):
        OX.read_parity_sample(model, listed, sha(model))
    for images, outputs in ((np.zeros((4, 16, 16), np.uint8), out), (np.zeros((40, 32, 32), np.uint8),
                                                                     np.zeros((40, 1))),
                            (good.astype(np.float32), out), (good, np.full((4, 1), np.nan)), (good, out + 2)):
        with pytest.raises(ValueError, match="malformed"):
            OX.read_parity_sample(model, _parity_file(model, images, outputs), sha(model))
    np.savez(OX.parity_path(model), images=np.array([{"a": 1}], dtype=object), outputs=out)
    entry = {"model_sha256": sha(model), "sha256": sha(OX.parity_path(model))}
    with pytest.raises(ValueError, match="Python objects"):
        OX.read_parity_sample(model, {"image_size": 32, "parity_sample": entry}, sha(model))
    assert OX.parity_images(np.arange(100 * 4).astype(np.uint8).reshape(100, 2, 2)).shape == (32, 2, 2)


@pytest.mark.slow
def test_keras_export_is_checked_on_the_stored_validation_images(tmp_path):
    """A real CNN saved with a parity sample: the first-use export (child process, safe_mode) compares ONNX with
    the stored Keras outputs in logit space and records it; a perturbed stored output fails the export."""
    from cxrbook.data.synthetic import chest_image
    from cxrbook.models import architectures as models
    from cxrbook.models import training
    rng = np.random.default_rng(2)
    val = np.stack([chest_image(BIN[i % 2], rng, 32) for i in range(40)])
    side = {"classes": BIN, "image_size": 32, "threshold": 0.5, "task": "covid_vs_normal", "normals": "all",
            "preprocessing": {"clahe": False}, "weights": "none (test)"}
    path = training.save_model(models.custom_cnn(32, augment=True, seed=0), tmp_path / "cnn.keras", side,
                               parity=val)
    recorded = json.loads(path.with_suffix(".json").read_text())["parity_sample"]
    assert recorded["n"] == 32 and recorded["model_sha256"] == sha(path)
    m = SM.load_model(path)
    entry = m.sidecar["onnx"]
    assert entry["model_sha256"] == sha(path) and entry["sha256"] == sha(path.with_suffix(".onnx"))
    assert entry["parity"]["n"] == 32 and "stored with the model" in entry["parity"]["inputs"]
    assert entry["parity"]["max_abs_logit_diff"] <= OX.LOGIT_TOLERANCE
    print(f"\ncustom_cnn export: max |logit diff| {entry['parity']['max_abs_logit_diff']:.2e} on 32 stored images")
    with np.load(OX.parity_path(path)) as z:
        images, outputs = z["images"], z["outputs"]
    logit = np.log(outputs / (1 - outputs)) + 0.01
    np.savez(OX.parity_path(path), images=images, outputs=(1 / (1 + np.exp(-logit))).astype(np.float32))
    path.with_suffix(".onnx").unlink()
    with pytest.raises(ValueError, match="is not the one saved with cnn.keras"):  # the file is bound by hash
        SM.load_model(path)
    side = json.loads(path.with_suffix(".json").read_text())  # a consistent record of wrong outputs
    side["parity_sample"]["sha256"] = sha(OX.parity_path(path))
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match="cannot export .* disagrees with the Keras outputs stored at save"):
        SM.load_model(path)
    assert not path.with_suffix(".onnx").exists()
