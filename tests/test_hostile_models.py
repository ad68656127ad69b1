"""Model files a user hands us must never run code (issue 15 §4, issue 16 item 1), and the project's own loaders
must not crash on a truncated file.

A crafted ``.joblib`` (a pickle whose payload writes a marker file) beside a valid sidecar goes through
``python -m cxrbook predict``, ``evaluate`` and notebook 08's scoring; the marker must never appear. Each
test first shows that the payload does write the marker when unpickled, so it can fail."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_saved_model import pixel_logreg

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SRC = Path(__file__).resolve().parents[1] / "src" / "cxrbook"


class Payload:
    """Unpickling this runs ``exec(code)``: what a hostile model file does."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def hostile_joblib(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Payload(f"open({str(marker)!r}, 'w').write('code ran')")))
    return path


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrbook", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV)


@pytest.fixture
def xray(tmp_path) -> Path:
    from cxrbook.data.synthetic import chest_image
    (tmp_path / "imgs").mkdir()
    path = tmp_path / "imgs" / "x.png"
    Image.fromarray(chest_image("covid", np.random.default_rng(0), 64)).save(path)
    return path


def _proves_payload_runs(path: Path, marker: Path) -> None:
    """The crafted file does write the marker when unpickled (in a child process), so the tests below can fail."""
    r = subprocess.run([sys.executable, "-c", f"import joblib; joblib.load({str(path)!r})"], capture_output=True,
                       text=True, timeout=120)
    assert marker.read_text() == "code ran", r.stderr[-2000:]
    marker.unlink()


@pytest.mark.parametrize("onnx", ["from_another_model", "none", "its_own"])
def test_a_crafted_joblib_never_runs_in_predict_or_evaluate(tmp_path, xray, onnx):
    """Beside the valid sidecar (and the .onnx) of a real pixel logistic regression, the .joblib is replaced by a
    pickle that writes a marker: predict and evaluate exit 2 saying to re-save the model; the marker never appears."""
    folder = tmp_path / "models"
    model = pixel_logreg(folder, "logreg_pixels")
    other = pixel_logreg(tmp_path / "other", "logreg_pixels", seed=3)
    marker = tmp_path / "MARKER"
    hostile_joblib(model, marker)
    _proves_payload_runs(model, marker)
    if onnx == "from_another_model":
        shutil.copy(other.with_suffix(".onnx"), model.with_suffix(".onnx"))
    elif onnx == "none":
        model.with_suffix(".onnx").unlink()
    for args in (("predict", xray, "--model", model, "--out", tmp_path / "o"),
                 ("predict", xray, "--model", model, "--engine", "keras", "--no-gradcam"),
                 ("evaluate", "--model", model, "--images", tmp_path / "imgs", "--out", tmp_path / "e")):
        r = cli(*args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "re-save it from notebook 06" in r.stderr and str(model) in r.stderr and "Traceback" not in r.stderr
        assert not marker.exists(), f"{args[0]} ran code from {model}"


def test_a_crafted_joblib_with_a_consistent_sidecar_is_still_never_unpickled(tmp_path, xray):
    """Even a sidecar that binds the crafted .joblib to an ONNX graph by hash only gets that graph scored:
    the pickle itself is never read."""
    from cxrbook.data.images import file_sha256
    model = pixel_logreg(tmp_path, "px")
    marker = tmp_path / "MARKER"
    hostile_joblib(model, marker)
    side = json.loads(model.with_suffix(".json").read_text())
    side["onnx"]["model_sha256"] = file_sha256(model)
    model.with_suffix(".json").write_text(json.dumps(side))
    r = cli("predict", xray, "--model", model, "--no-gradcam")
    assert r.returncode == 0 and "P(covid)=" in r.stdout, r.stderr
    assert not marker.exists()


def test_notebook_08_scoring_never_unpickles_and_goes_on(fake_data, tmp_path):
    """Notebook 08's ``score_models``: the crafted model is listed as not scored with the reason, the marker
    never appears, and the other model is still scored."""
    from cxrbook.config import Paths
    from cxrbook.data import external_collections as X
    from cxrbook.evaluation import metrics as M
    from cxrbook.evaluation import records as R
    from cxrbook.external import scores as XS
    paths = Paths.resolve(fake_data, tmp_path / "out")
    ext = X.load_external(X.resolve_external_dir(fake_data))
    for name in ("logreg_pixels", "good"):
        pixel_logreg(paths.models, name, image_size=64)
        rep = M.evaluate(np.arange(20) % 2, np.linspace(0, 1, 20), np.arange(20), ["normal", "covid"],
                         threshold=0.5, n_boot=20, seed=0)
        R.save_metrics(R.metrics_record(rep, model=name, task="covid_vs_normal", weights="none"),
                       paths.metrics / f"{name}.json")
    marker = tmp_path / "MARKER"
    hostile = hostile_joblib(paths.models / "logreg_pixels.joblib", marker)
    _proves_payload_runs(hostile, marker)
    lines: list[str] = []
    scored = XS.score_models(paths, "covid_vs_normal", ext, n_boot=20, seed=0, echo=lines.append)
    assert not marker.exists()
    assert [e["model"] for e in scored.entries] == ["good"]
    assert "re-save it from notebook 06" in scored.not_scored["logreg_pixels"]
    assert any(ln.startswith("logreg_pixels") and "not scored" in ln for ln in lines)
    sm = XS.saved_models(paths.models, "covid_vs_normal")[0]
    with pytest.raises(ValueError, match="never from its .joblib"):
        XS.model_scores(sm, X.external_arrays(ext, 64, cache_dir=paths.cache), paths.cache)
    assert not marker.exists()


def test_no_loader_in_src_can_run_code():
    """What the before-stop hook greps for: nothing in src unpickles, allows pickles in NumPy or turns off
    Keras' safe mode (the one joblib call left is ``joblib.dump`` at save)."""
    pattern = re.compile(r"joblib\.load|pickle\.loads?\(|allow_pickle\s*=\s*True|safe_mode\s*=\s*False|"
                         r"enable_unsafe_deserialization")
    found = [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in sorted(SRC.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
    np_loads = [f"{p.relative_to(SRC)}:{i}" for p in sorted(SRC.rglob("*.py"))
                for i, line in enumerate(p.read_text().splitlines(), 1) if "np.load(" in line]
    assert np_loads == [], "read .npz files through data.pipeline.read_npz (headers checked, no pickles)"


# --------------------------------------------------------------------------- truncated or foreign caches

def test_a_truncated_image_cache_is_rebuilt_not_a_crash(tmp_path):
    from cxrbook.data import pipeline
    from test_models import write_images
    splits = write_images(tmp_path / "images")
    first = pipeline.load_arrays(splits, 32, cache_dir=tmp_path / "cache", progress=False)
    data = first.path.read_bytes()
    for broken in (data[: len(data) // 2], data[:100], b"PK\x03\x04" + b"\x00" * 50):
        first.path.write_bytes(broken)
        with pytest.warns(UserWarning, match="unreadable"):
            again = pipeline.load_arrays(splits, 32, cache_dir=tmp_path / "cache", progress=False)
        assert not again.hit and np.array_equal(again.train.x, first.train.x)
        assert pipeline.load_arrays(splits, 32, cache_dir=tmp_path / "cache", progress=False).hit


def test_a_truncated_external_score_cache_is_scored_again(fake_data, tmp_path):
    from cxrbook.config import Paths
    from cxrbook.data import external_collections as X
    from cxrbook.external import scores as XS
    paths = Paths.resolve(fake_data, tmp_path / "out")
    ext = X.load_external(X.resolve_external_dir(fake_data))
    pixel_logreg(paths.models, "logreg_pixels", image_size=64)
    arrays = X.external_arrays(ext, 64, cache_dir=paths.cache)
    sm = XS.saved_models(paths.models, "covid_vs_normal")[0]
    s, hit = XS.model_scores(sm, arrays, paths.cache)
    (cache,) = (paths.cache / "external_scores").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:60])
    again, hit = XS.model_scores(sm, arrays, paths.cache)
    assert not hit and np.array_equal(again, s)
    assert XS.model_scores(sm, arrays, paths.cache)[1]


def test_read_npz_refuses_pickles_and_arrays_larger_than_their_file(tmp_path):
    from cxrbook.data.pipeline import read_npz
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        read_npz(tmp_path / "obj.npz")
    npy = io.BytesIO()  # a sound archive whose array header claims 10**11 bytes, followed by 10
    np.lib.format.write_array_header_1_0(npy, {"descr": "|u1", "fortran_order": False, "shape": (10**11,)})
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("x.npy", npy.getvalue() + bytes(10))
    with pytest.raises(ValueError, match="claims 100,000,000,000 bytes but its member holds"):
        read_npz(tmp_path / "big.npz")
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros(10**7, np.uint8))
    with pytest.raises(ValueError, match="more than the 1,000 allowed"):
        read_npz(tmp_path / "bomb.npz", max_bytes=1000)


# --------------------------------------------------------------------------- a .keras archive with code in it

LAMBDA_MODEL = """
import sys, keras
inp = keras.Input((16, 16, 3))
x = keras.layers.Lambda(lambda t: (open(MARKER, 'w').write('code ran'), t)[1])(inp)
x = keras.layers.GlobalAveragePooling2D()(x)
out = keras.layers.Dense(1, activation='sigmoid')(x)
keras.Model(inp, out).save(sys.argv[1])
"""


@pytest.mark.slow
def test_a_keras_archive_with_a_lambda_layer_runs_no_code(tmp_path, xray):
    """A ``.keras`` holding a Lambda layer whose function writes a marker: predict refuses it with Keras'
    safe mode on both engines (the ONNX export's child included); with safe mode off the code would run."""
    model, marker = tmp_path / "m.keras", tmp_path / "MARKER"
    r = subprocess.run([sys.executable, "-c", LAMBDA_MODEL.replace("MARKER", repr(str(marker))), str(model)],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    marker.unlink(missing_ok=True)  # building it ran the function once
    model.with_suffix(".json").write_text(json.dumps({"classes": ["normal", "covid"], "image_size": 16,
                                                      "threshold": 0.5, "normals": "all"}))
    unsafe = ("import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1], safe_mode=False); "
              "m(np.zeros((1, 16, 16, 3), 'float32'))")
    r = subprocess.run([sys.executable, "-c", unsafe, str(model)], capture_output=True, text=True, timeout=300,
                       env=ENV)
    assert marker.exists(), f"the crafted archive must run its code when safe mode is off: {r.stderr[-2000:]}"
    marker.unlink()
    for engine in ("onnx", "keras"):
        r = cli("predict", xray, "--model", model, "--engine", engine, "--no-gradcam")
        assert r.returncode == 2 and "safe_mode" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert not marker.exists(), f"engine {engine} ran code from {model}"
