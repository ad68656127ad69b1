"""Saved models -> ONNX files that ``cxrbook.inference.saved_model`` runs without TensorFlow or scikit-learn.

Export goes through Keras 3 ``model.export(path, format="onnx")`` (tf2onnx on the
TensorFlow backend) with a fixed opset and a dynamic batch dimension. The graph
is the model's inference call: augmentation layers (``layers.ReferenceAugmentation``)
and Dropout are identity in it, BatchNorm uses its moving statistics. Every
export is checked at once: ONNX Runtime and Keras score ``N_CHECK`` random
images, and the largest absolute difference is recorded (an export that
disagrees by more than ``TOLERANCE`` raises instead of being saved).

Keras exports need TensorFlow (imported inside the functions that need it);
the files they write do not. Callers: ``inference`` (a ``.keras`` model's ``.onnx``,
made on its first use and recorded in the sidecar) and ``training.save_model(...,
onnx=True)``, both through ``export_in_subprocess``, and
``cached_export`` (frozen backbones for feature extraction, cached per backbone,
size and weights).

The pixel logistic regression (StandardScaler + LogisticRegression on
thumbnails) is written as a five-node ONNX graph by ``export_pixel_logreg``
(skl2onnx is not needed for so small a model), checked against
``predict_proba`` the same way, so scoring it does not import scikit-learn
(~1.3 s here).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..atomic import atomic_write, write_json

if TYPE_CHECKING:
    import keras

OPSET = 15          # tf2onnx 1.17's default; fixed so the files do not change with its default
N_CHECK = 4         # random images scored by both Keras and ONNX Runtime after each export
TOLERANCE = 1e-4    # largest accepted |ONNX - Keras| (float32 round-off is ~1e-7 on our models)
EXPORT_CACHE_VERSION = 1

# Environment of the export child (``export_in_subprocess``). With protobuf's
# default upb implementation a message keeps every sub-message ever written into
# it in its arena until the message itself is freed. tf2onnx rewrites each
# node's attributes, weight tensors included, after every one of its 12 graph
# optimizers (2 rounds here), and deep-copies the graph before each so that a
# failing optimizer can be skipped: stepping through ResNet50V2 at 224 px, each
# optimizer added ~90 MiB (its weights) that was never freed. The pure-Python
# implementation shares the tensors' bytes and frees what is replaced; what is
# left is TensorFlow's freezing and grappler (~2.3 GiB for ResNet50V2).
# Measured with /usr/bin/time (random weights, one run each; the machine's 2
# cores were shared, so wall times vary by ~10 s between runs; the ONNX files
# hold the same nodes and weights, differing only in names of merged constants):
#   model (px)           peak RSS upb -> python    wall s upb -> python
#   ResNet50V2 (224)         8.0 -> 2.5 GiB            19 -> 29
#   ResNet50V2 (80, smoke)   7.7 -> 2.3 GiB            15 -> 16
#   InceptionV3 (224)        7.1 -> 2.3 GiB            29 -> 27
#   VGG16 (224)              3.8 -> 1.8 GiB            12 -> 11
#   DenseNet121 (224)        2.6 -> 2.1 GiB            21 -> 32
#   MobileNetV2 (224)        1.8 -> 1.3 GiB             9 -> 14
#   custom_cnn (150)         2.6 -> 1.4 GiB            13 -> 10
# The implementation is chosen when protobuf is first imported, so it is set
# for the child process only (``training.save_model`` and a model's first use in
# ``inference`` export through it); exports run in-process (``cached_export``,
# the frozen bases of ``engine="onnx"`` features) keep the upb peak.
PROTOBUF_ENV = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}


def export_onnx(model: keras.Model, path: str | os.PathLike, seed: int = 0) -> dict:
    """Export ``model`` (one image input (s, s, c)) to ``path`` and check it against Keras.

    Returns what the sidecar records: ``file`` (name), ``opset``,
    ``max_abs_diff_vs_keras`` over ``n_check_inputs`` random [0, 255] images and
    the tf2onnx / onnxruntime versions. Raises ValueError when the difference
    exceeds ``TOLERANCE`` (nothing is left at ``path`` then).
    """
    import keras
    import tf2onnx

    path = Path(path)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(f"model {model.name!r} must take one (batch, height, width, channels) input, "
                         f"got input shape {shape}")
    spec = keras.InputSpec(shape=(None, *shape[1:]), dtype="float32", name="image")
    with atomic_write(path) as tmp:   # in place only once checked; a failed check leaves nothing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's np.object probe under NumPy 2
            model.export(str(tmp), format="onnx", verbose=False, input_signature=[spec], opset_version=OPSET)
        x = np.random.default_rng(seed).uniform(0, 255, (N_CHECK, *shape[1:])).astype(np.float32)
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        info = _check(tmp, path, x, expected, f"Keras model {model.name!r}", "keras",
                      "use engine='keras' for this model")
    return {**info, "tf2onnx_version": tf2onnx.__version__}


def _check(tmp: Path, path: Path, x: np.ndarray, expected: np.ndarray, what: str, reference: str,
           hint: str) -> dict:
    """Score ``x`` with ONNX Runtime on ``tmp`` (to become ``path``); ValueError unless it matches ``expected``
    (from ``reference``)."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.max(np.abs(got.reshape(expected.shape) - expected)))
    if not diff <= TOLERANCE:
        raise ValueError(f"ONNX export of {what} disagrees with {reference} by {diff:.2e} (> {TOLERANCE:g}); {hint}")
    return {"file": path.name, "opset": OPSET, f"max_abs_diff_vs_{reference}": diff, "n_check_inputs": len(x),
            "onnxruntime_version": onnxruntime.__version__}


def export_saved_model(model_path: str | os.PathLike) -> dict:
    """Export a saved ``.keras`` model to the ``.onnx`` beside it and record it in its sidecar.

    For models saved before ``save_model`` exported ONNX itself: loads the model
    with Keras (TensorFlow, once), exports, checks, and adds the ``onnx`` entry
    to ``<model>.json``. Returns that entry.
    """
    import keras

    from . import layers  # noqa: F401  registers the custom layers, so saved models load
    model_path = Path(model_path)
    info = export_onnx(keras.saving.load_model(model_path), model_path.with_suffix(".onnx"))
    record_in_sidecar(model_path, info)
    return info


def record_in_sidecar(model_path: str | os.PathLike, info: dict) -> None:
    """Add (or replace) the ``onnx`` entry of the JSON sidecar beside ``model_path``."""
    side = Path(model_path).with_suffix(".json")
    sidecar = json.loads(side.read_text())
    write_json({**sidecar, "onnx": info}, side)   # atomic: the sidecar holds the threshold


def export_pixel_logreg(clf, path: str | os.PathLike, seed: int = 0) -> dict:
    """Write a fitted ``experiment.fit_pixel_logreg`` pipeline (StandardScaler + LogisticRegression) as ONNX.

    Graph: thumbnails (n, d) -> (x - mean) / scale -> x @ coef.T + intercept ->
    Sigmoid (binary: P(positive), (n, 1)) or Softmax (multinomial, (n, k)).
    Checked against ``clf.predict_proba`` on ``N_CHECK`` random thumbnails;
    returns the sidecar's ``onnx`` entry (ValueError if they disagree).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scaler, logreg = clf[0], clf[-1]
    if len(clf) != 2 or type(scaler).__name__ != "StandardScaler" or type(logreg).__name__ != "LogisticRegression":
        raise ValueError(f"expected StandardScaler + LogisticRegression, got {[type(s).__name__ for s in clf]}")
    d = int(logreg.coef_.shape[1])
    mean = np.zeros(d) if scaler.mean_ is None else scaler.mean_
    scale = np.ones(d) if scaler.scale_ is None else scaler.scale_
    binary = logreg.coef_.shape[0] == 1
    consts = [numpy_helper.from_array(np.asarray(a, np.float32), name) for name, a in
              (("mean", mean), ("scale", scale), ("coef_t", logreg.coef_.T), ("intercept", logreg.intercept_))]
    nodes = [helper.make_node("Sub", ["thumbnails", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "scale"], ["standard"]),
             helper.make_node("MatMul", ["standard", "coef_t"], ["logits0"]),
             helper.make_node("Add", ["logits0", "intercept"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probabilities"]) if binary else
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "pixel_logreg", [helper.make_tensor_value_info("thumbnails", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, logreg.coef_.shape[0]])],
        initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    x = np.random.default_rng(seed).uniform(0, 255, (N_CHECK, d)).astype(np.float32)
    proba = clf.predict_proba(x)
    with atomic_write(path) as tmp:   # in place only once checked
        onnx.save(model, str(tmp))
        info = _check(tmp, Path(path), x, proba[:, 1:] if binary else proba, "the pixel logistic regression",
                      "sklearn", "score it with joblib (cxrbook.evaluation.experiment.pixel_logreg_scores)")
    return info


def cached_export(build: Callable[[], keras.Model], spec: dict, cache_dir: str | os.PathLike) -> Path:
    """The ONNX file of ``build()``, exported once per ``spec`` and kept under ``cache_dir``.

    ``spec`` must identify the model completely (e.g. backbone, image size,
    weights id with the seed for random weights); Keras, tf2onnx and the opset
    are added to the key. ``build`` runs only on a miss. A JSON beside the file
    records the spec and the export check.
    """
    import keras
    import tf2onnx
    full = {**spec, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__, "opset": OPSET,
            "version": EXPORT_CACHE_VERSION}
    key = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"onnx_{key}.onnx"
    if not path.is_file():
        info = export_onnx(build(), path)
        write_json({"spec": full, "export": info}, path.with_suffix(".json"), sort_keys=False)
    return path


class ExportError(RuntimeError):
    """An export child process failed; ``details`` holds the end of its error output."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


def export_in_subprocess(model_path: str | os.PathLike, timeout: int = 1800) -> dict:
    """:func:`export_saved_model` in a fresh Python process; returns the sidecar's ``onnx`` entry.

    In its own process the export's memory is returned to the system when it
    ends, instead of staying in a notebook's kernel, and the child runs with
    protobuf's pure-Python implementation, which cuts the peak (ResNet50V2 at
    224 px: 8.0 -> 2.5 GiB; see the note at ``PROTOBUF_ENV``). Raises
    :class:`ExportError` (a RuntimeError) naming the model and the child's last
    error line, with the end of its error output attached as ``details``.
    """
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "cxrbook.models.onnx_export", str(model_path)], capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, **PROTOBUF_ENV})
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        raise ExportError(f"ONNX export of {model_path} failed: {lines[-1] if lines else f'exit {r.returncode}'}",
                          details=r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])



if __name__ == "__main__":  # python -m cxrbook.models.onnx_export MODEL.keras: export it, print its sidecar entry
    import sys
    os.environ.update(PROTOBUF_ENV)  # before anything imports protobuf (nothing has yet): see PROTOBUF_ENV
    print(json.dumps(export_saved_model(sys.argv[1]), sort_keys=True))
