"""Saved models -> ONNX files that ``cxrbook.inference.saved_model`` runs without TensorFlow or scikit-learn.

Export goes through Keras 3 ``model.export(path, format="onnx")`` (tf2onnx on the
TensorFlow backend) with a fixed opset and a dynamic batch dimension. The graph
is the model's inference call: augmentation layers (``layers.ReferenceAugmentation``)
and Dropout are identity in it, BatchNorm uses its moving statistics.

Every export is checked before it is kept (:func:`check_parity`), in logit space, on
real validation images: ``training.save_model(..., parity=...)`` stores up to
``PARITY_MAX`` validation images and the Keras outputs on them beside the model
(``<name>.parity.npz``, :func:`write_parity_sample`), and the export compares ONNX
Runtime's outputs on those images with the stored ones. A model saved without a sample
is checked on generated chest images instead, and the sidecar says so. Probabilities
are compared as logits (log-odds; centred log-probabilities for softmax models): a
trained CNN scores many images near 0 or 1, where a probability tolerance hides large
errors (a logit error of 1 at P = 0.9999 changes P by 6e-5). An export passes when
every logit differs by at most ``LOGIT_TOLERANCE`` plus the float32 rounding of the
probability itself (``_rounding_allowance``); the sidecar's ``onnx`` entry records the
largest difference, the inputs used and how many decisions at the stored threshold
(argmax for more classes) agree.

Binding: the entry also records the SHA-256 of the ``.onnx`` written and of the model
file it was made from (``sha256``, ``model_sha256``), so a later load can tell that the
pair still belongs together without trusting modification times.

Keras exports need TensorFlow (imported inside the functions that need it);
the files they write do not. Callers: ``inference.saved_model`` (a ``.keras`` model's
``.onnx``, made on its first use and recorded in the sidecar) and
``training.save_model(..., onnx=True)``, both through ``export_in_subprocess``, whose
child loads the ``.keras`` archive with Keras' ``safe_mode=True`` (no Python code from
the file); and ``cached_export`` (frozen backbones for feature extraction, cached per
backbone, size and weights).

The pixel logistic regression (StandardScaler + LogisticRegression on
thumbnails) is written as a five-node ONNX graph by ``export_pixel_logreg``
(skl2onnx is not needed for so small a model) when it is saved, checked against
``predict_proba`` the same way, so scoring it imports neither scikit-learn nor its
pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import keras

OPSET = 15          # tf2onnx 1.17's default; fixed so the files do not change with its default
N_CHECK = 4         # random inputs of a frozen backbone's feature check (``cached_export``)
TOLERANCE = 1e-4    # largest accepted |ONNX - Keras| of backbone features (float32 round-off is ~1e-6 here)
EXPORT_CACHE_VERSION = 1
PARITY_MAX = 32     # validation images stored beside a model for its export check
PARITY_SUFFIX = ".parity.npz"
N_GENERATED = 8     # generated chest images checked when a model was saved without a parity sample
# Largest accepted |logit(ONNX) - logit(Keras)| beyond the float32 rounding of the probabilities.
# The two engines run the same float32 arithmetic in another order: on the workbook's two CNNs and
# five transfer models (tests/test_onnx.py prints it; random or one-epoch weights) the largest logit
# difference on the stored images was 2.4e-7, and on 32 real validation images of a smoke run's
# trained custom CNN, VGG16 and InceptionV3 1.1e-6, 1.6e-6 and 1.2e-7. 1e-3 leaves about three
# orders of magnitude for other weights, deeper graphs and other CPUs, and is still 1000x below the
# logit error of ~1 that the old probability check on noise images let pass; at the threshold it
# can move a decision only for a score within 0.00025 (in probability) of it. (The pixel logistic
# regression's 3e-4 against scikit-learn in that run came from P = 0.9992 rounded to float32,
# which ``_rounding_allowance`` covers.)
LOGIT_TOLERANCE = 1e-3
_ULP = 2.0 ** -24   # float32 spacing just below 1.0: the rounding of a stored probability

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


# --------------------------------------------------------------------------- parity in logit space

def _logits(p: np.ndarray) -> np.ndarray:
    """Log-odds of (n, 1) sigmoid outputs, or centred log-probabilities of (n, k) softmax outputs (float64)."""
    p = np.asarray(p, np.float64)
    if p.shape[1] == 1:
        p = np.clip(p, 1e-30, 1 - _ULP)  # P rounded to exactly 1.0 in float32 has no finite logit
        return np.log(p) - np.log1p(-p)
    logp = np.log(np.clip(p, 1e-30, 1.0))
    return logp - logp.mean(axis=1, keepdims=True)


def _rounding_allowance(p: np.ndarray) -> np.ndarray:
    """How far a logit can move when each engine's float32 probability is rounded (two ulps each way).

    d logit = dP / (P (1 - P)), and a float32 P in [0.5, 1) is stored to within 2^-24: near P = 1 a
    rounding alone moves the logit by ~1e-7 / (1 - P), e.g. 0.06 at P = 1 - 1e-6. For softmax
    outputs the log-probabilities are rounded relatively (2^-24 each) and centring adds k of them.
    """
    p = np.asarray(p, np.float64)
    if p.shape[1] == 1:
        q = np.clip(p, 1e-30, 1 - _ULP)
        return 4 * _ULP / (q * (1 - q))
    return np.full(p.shape, 4 * _ULP * (p.shape[1] + 1))


def _decisions(p: np.ndarray, threshold: float | None) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.shape[1] == 1:
        return p[:, 0] >= (0.5 if threshold is None else threshold)
    if p.shape[1] == 2 and threshold is not None:
        return p[:, 1] >= threshold
    return p.argmax(axis=1)


def compare_outputs(got: np.ndarray, expected: np.ndarray, threshold: float | None = None) -> dict:
    """Two engines' probabilities on the same images, compared in logit space.

    ``got``/``expected``: (n, 1) sigmoid or (n, k) softmax outputs. Returns ``max_abs_logit_diff``,
    ``worst_excess`` (largest difference beyond ``LOGIT_TOLERANCE`` + rounding; <= 0 passes),
    ``passed``, and ``decision_agreement`` / ``n_decisions_differ`` at ``threshold`` (a binary
    model's P(positive) >= threshold; argmax otherwise).
    """
    got = np.asarray(got, np.float64).reshape(np.shape(expected))
    expected = np.asarray(expected, np.float64)
    if expected.ndim != 2 or not len(expected):
        raise ValueError(f"expected (n, outputs) probabilities, got shape {expected.shape}")
    if not (np.isfinite(got).all() and np.isfinite(expected).all()):
        return {"max_abs_logit_diff": None, "worst_excess": None, "passed": False, "decision_agreement": None,
                "n_decisions_differ": None, "threshold": threshold, "n": len(expected)}
    diff = np.abs(_logits(got) - _logits(expected))
    excess = diff - (LOGIT_TOLERANCE + np.maximum(_rounding_allowance(got), _rounding_allowance(expected)))
    differ = int(np.sum(_decisions(got, threshold) != _decisions(expected, threshold)))
    return {"max_abs_logit_diff": float(diff.max()), "worst_excess": float(excess.max()),
            "passed": bool(excess.max() <= 0), "decision_agreement": 1 - differ / len(expected),
            "n_decisions_differ": differ, "threshold": threshold, "n": len(expected)}


def check_parity(onnx_path: str | os.PathLike, x: np.ndarray, expected: np.ndarray, *, threshold: float | None,
                 inputs: str, what: str, reference: str) -> dict:
    """Score ``x`` with ONNX Runtime on ``onnx_path`` and compare with ``expected`` (:func:`compare_outputs`).

    Returns the sidecar's ``parity`` entry (``inputs`` says which images were used); ValueError naming
    ``what`` when a logit differs by more than the tolerance.
    """
    import onnxruntime
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: np.asarray(x, np.float32)})[0]
    expected = np.asarray(expected, np.float32)
    if got.size != expected.size:
        raise ValueError(f"ONNX export of {what} gives {got.shape} outputs where {reference} gave {expected.shape}")
    result = compare_outputs(got, expected.reshape(len(expected), -1), threshold)
    entry = {"inputs": inputs, "reference": reference, "logit_tolerance": LOGIT_TOLERANCE,
             **{k: result[k] for k in ("n", "max_abs_logit_diff", "decision_agreement", "n_decisions_differ",
                                       "threshold")}}
    if not result["passed"]:
        diff = result["max_abs_logit_diff"]
        raise ValueError(f"ONNX export of {what} disagrees with {reference} on {inputs}: largest logit difference "
                         f"{'not finite' if diff is None else f'{diff:.3g}'} (tolerance {LOGIT_TOLERANCE:g} plus "
                         f"float32 rounding); not kept")
    return entry


# --------------------------------------------------------------------------- the parity sample beside a model

class ParitySample(NamedTuple):
    """Validation images (n, s, s) uint8 as the model reads them (gray; the model takes it in three channels)
    and the Keras outputs (n, k) on them, stored at save."""

    images: np.ndarray
    outputs: np.ndarray
    source: str


def parity_path(model_path: str | os.PathLike) -> Path:
    """``<name>.parity.npz`` beside ``<name>.keras``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + PARITY_SUFFIX)


def parity_images(x: np.ndarray, n: int = PARITY_MAX) -> np.ndarray:
    """Up to ``n`` images of ``x`` ((m, s, s[, 1]) uint8, e.g. a validation split), evenly spaced through it
    (a split sorted by path starts with one collection), as (n, s, s) uint8."""
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.dtype != np.uint8 or not len(x):
        raise ValueError(f"parity images must be (n, s, s[, 1]) uint8 and not empty, got {x.dtype} {x.shape}")
    return x[np.unique(np.linspace(0, len(x) - 1, min(n, len(x))).round().astype(int))]


def write_parity_sample(model: keras.Model, model_path: str | os.PathLike, x: np.ndarray,
                        source: str = "validation split") -> dict:
    """Store ``parity_images(x)`` and ``model``'s outputs on them as ``<name>.parity.npz`` (atomically);
    returns the sidecar's ``parity_sample`` entry (the file, its SHA-256, its image count and where the images
    came from). The model's hash is added by the caller once the model file is written."""
    import keras

    from ..data.images import file_sha256
    from ..data.pipeline import save_npz, to_rgb_float
    images = parity_images(x)
    outputs = keras.ops.convert_to_numpy(model(to_rgb_float(images), training=False)).astype(np.float32)
    path = parity_path(model_path)
    save_npz(path, {"images": images, "outputs": outputs.reshape(len(images), -1)})
    return {"file": path.name, "sha256": file_sha256(path), "n": len(images), "source": str(source)}


def read_parity_sample(model_path: str | os.PathLike, sidecar: Mapping, model_sha256: str) -> ParitySample | None:
    """The parity sample the sidecar of ``model_path`` lists, checked; None when it lists none or the file is gone.

    ValueError when the model file is not the one the sample was stored with (its SHA-256 differs from the
    sidecar's ``parity_sample.model_sha256``: the model was replaced after it was saved), the sample file is
    not the one stored (``parity_sample.sha256``), or it is malformed (read without pickles, at most
    ``PARITY_MAX`` images of the sidecar's image size).
    """
    from ..data.images import file_sha256
    from ..data.pipeline import read_npz
    entry = sidecar.get("parity_sample")
    model_path = Path(model_path)
    side = model_path.with_suffix(".json")
    if not entry:
        return None
    if not isinstance(entry, dict) or entry.get("model_sha256") != model_sha256:
        raise ValueError(f"{model_path} is not the model its sidecar {side} was saved with (its SHA-256 differs "
                         "from parity_sample.model_sha256): re-save it from its notebook")
    path = parity_path(model_path)
    if not path.is_file():
        return None
    if file_sha256(path) != entry.get("sha256"):
        raise ValueError(f"parity sample {path} is not the one saved with {model_path.name} (its SHA-256 differs "
                         f"from {side.name}): re-save the model from its notebook")
    size = int(sidecar["image_size"])
    arrays = read_npz(path, max_bytes=PARITY_MAX * size * size * 1 + PARITY_MAX * 64 * 8 + 4096)
    images, outputs = arrays.get("images"), arrays.get("outputs")
    ok = (images is not None and outputs is not None and images.dtype == np.uint8 and images.ndim == 3
          and 1 <= len(images) <= PARITY_MAX and images.shape[1:] == (size, size) and outputs.ndim == 2
          and len(outputs) == len(images) and outputs.dtype.kind == "f" and np.isfinite(outputs).all()
          and (outputs >= 0).all() and (outputs <= 1).all())
    if not ok:
        raise ValueError(f"parity sample {path} is malformed: it must hold 'images' (n <= {PARITY_MAX}, {size}x{size} "
                         "uint8) and 'outputs' (n, k) probabilities; re-save the model from its notebook")
    return ParitySample(images, outputs, f"{len(images)} {entry.get('source', 'validation')} images stored with "
                                         f"the model ({path.name})")


def generated_sample(model: keras.Model, size: int, seed: int = 0) -> ParitySample:
    """Generated chest images (both labels) and ``model``'s outputs on them: the check of a model saved
    without a parity sample."""
    import keras

    from ..data.pipeline import to_rgb_float
    from ..data.synthetic import chest_image
    rng = np.random.default_rng(seed)
    images = np.stack([chest_image(("normal", "covid")[i % 2], rng, size) for i in range(N_GENERATED)])
    outputs = keras.ops.convert_to_numpy(model(to_rgb_float(images), training=False))
    return ParitySample(images, np.asarray(outputs, np.float32).reshape(len(images), -1),
                        f"{N_GENERATED} generated chest images (no parity sample was saved with the model)")


# --------------------------------------------------------------------------- Keras models

def _export_graph(model: keras.Model, tmp: Path) -> None:
    """Write ``model``'s inference graph to ``tmp`` (one (batch, h, w, c) float32 input named "image")."""
    import keras
    shape = tuple(model.input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(f"model {model.name!r} must take one (batch, height, width, channels) input, "
                         f"got input shape {shape}")
    spec = keras.InputSpec(shape=(None, *shape[1:]), dtype="float32", name="image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's np.object probe under NumPy 2
        model.export(str(tmp), format="onnx", verbose=False, input_signature=[spec], opset_version=OPSET)


def _place(tmp: Path, path: Path) -> str:
    """Move the checked ``tmp`` onto ``path``; returns the SHA-256 of its bytes."""
    from ..data.images import file_sha256
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    return digest


def export_onnx(model: keras.Model, path: str | os.PathLike, parity: ParitySample | None = None,
                threshold: float | None = None) -> dict:
    """Export the classifier ``model`` (one image input (s, s, 3)) to ``path``, checked by :func:`check_parity`.

    ``parity``: the images and stored Keras outputs to compare with (``read_parity_sample``); None checks
    on generated chest images against ``model`` itself. Returns what the sidecar's ``onnx`` entry records:
    ``file``, ``sha256``, ``opset``, ``parity`` and the tf2onnx / onnxruntime versions. Raises ValueError
    when the check fails (nothing is left at ``path`` then).
    """
    import onnxruntime
    import tf2onnx

    from ..data.pipeline import to_rgb_float
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _export_graph(model, tmp)
        sample = parity or generated_sample(model, int(model.input_shape[1]))
        check = check_parity(tmp, to_rgb_float(sample.images), sample.outputs, threshold=threshold,
                             inputs=sample.source, what=f"Keras model {model.name!r}",
                             reference="the Keras outputs stored at save" if parity else "Keras")
        digest = _place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": path.name, "sha256": digest, "opset": OPSET, "parity": check,
            "onnxruntime_version": onnxruntime.__version__, "tf2onnx_version": tf2onnx.__version__}


def export_saved_model(model_path: str | os.PathLike) -> dict:
    """Export a saved ``.keras`` model to the ``.onnx`` beside it and record it in its sidecar; returns the entry.

    Loads the archive with ``safe_mode=True`` (Keras then refuses to deserialise Python code such as
    ``Lambda`` layers from it) after hashing it; checks the export on the parity sample stored with the
    model (``read_parity_sample``), and records ``model_sha256`` (the ``.keras`` exported from) beside
    the ``.onnx``'s own ``sha256``.
    """
    import keras

    from ..data.images import file_sha256
    from . import layers  # noqa: F401  registers the custom layers, so saved models load
    from .sidecar import read_sidecar
    model_path = Path(model_path)
    sidecar = read_sidecar(model_path)
    model_sha = file_sha256(model_path)
    parity = read_parity_sample(model_path, sidecar, model_sha)
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    info = {**export_onnx(model, model_path.with_suffix(".onnx"), parity, sidecar.get("threshold")),
            "model_sha256": model_sha}
    record_in_sidecar(model_path, info)
    return info


def record_in_sidecar(model_path: str | os.PathLike, info: dict) -> None:
    """Add (or replace) the ``onnx`` entry of the JSON sidecar beside ``model_path`` (atomically: the sidecar
    holds the threshold, so an interrupted write must leave the old file)."""
    from ..atomic import to_jsonable, write_json
    from .sidecar import read_json_object
    side = Path(model_path).with_suffix(".json")
    write_json(to_jsonable({**read_json_object(side), "onnx": info}), side)


# --------------------------------------------------------------------------- the pixel logistic regression

def export_pixel_logreg(clf, path: str | os.PathLike, parity_thumbnails: np.ndarray | None = None,
                        threshold: float | None = None, seed: int = 0) -> dict:
    """Write a fitted ``experiment.fit_pixel_logreg`` pipeline (StandardScaler + LogisticRegression) as ONNX.

    Graph: thumbnails (n, d) -> (x - mean) / scale -> x @ coef.T + intercept ->
    Sigmoid (binary: P(positive), (n, 1)) or Softmax (multinomial, (n, k)).
    Checked against ``clf.predict_proba`` by :func:`check_parity` on ``parity_thumbnails`` (validation
    images' thumbnails) or, without them, ``N_GENERATED`` random thumbnails; returns the sidecar's
    ``onnx`` entry (ValueError if they disagree). The caller adds ``model_sha256`` (the ``.joblib``).
    """
    import onnx
    import onnxruntime
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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if parity_thumbnails is None:
        x = np.random.default_rng(seed).uniform(0, 255, (N_GENERATED, d)).astype(np.float32)
        inputs = f"{N_GENERATED} random thumbnails (no validation images were given at save)"
    else:
        x = np.asarray(parity_thumbnails, np.float32)
        inputs = f"{len(x)} validation images' thumbnails"
    proba = clf.predict_proba(x)
    try:
        onnx.save(model, str(tmp))
        check = check_parity(tmp, x, proba[:, 1:] if binary else proba, threshold=threshold, inputs=inputs,
                             what="the pixel logistic regression", reference="scikit-learn's predict_proba")
        digest = _place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": path.name, "sha256": digest, "opset": OPSET, "parity": check,
            "onnxruntime_version": onnxruntime.__version__}


# --------------------------------------------------------------------------- frozen backbones (features)

def cached_export(build: Callable[[], keras.Model], spec: dict, cache_dir: str | os.PathLike) -> Path:
    """The ONNX file of ``build()``, exported once per ``spec`` and kept under ``cache_dir``.

    ``spec`` must identify the model completely (e.g. backbone, image size,
    weights id with the seed for random weights); Keras, tf2onnx and the opset
    are added to the key. ``build`` runs only on a miss. A JSON beside the file
    records the spec and the export check: features are not probabilities, so they
    are compared directly (largest |ONNX - Keras| on ``N_CHECK`` random images, at
    most ``TOLERANCE``).
    """
    import keras
    import tf2onnx

    from ..atomic import write_json
    full = {**spec, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__, "opset": OPSET,
            "version": EXPORT_CACHE_VERSION}
    key = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"onnx_{key}.onnx"
    if not path.is_file():
        import onnxruntime
        model = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            _export_graph(model, tmp)
            x = np.random.default_rng(0).uniform(0, 255, (N_CHECK, *model.input_shape[1:])).astype(np.float32)
            expected = keras.ops.convert_to_numpy(model(x, training=False))
            session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: x})[0]
            diff = float(np.max(np.abs(got.reshape(expected.shape) - expected)))
            if not diff <= TOLERANCE:
                raise ValueError(f"ONNX export of backbone {model.name!r} disagrees with Keras by {diff:.2e} "
                                 f"(> {TOLERANCE:g}); use engine='keras' for its features")
            digest = _place(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        write_json({"spec": full, "export": {"sha256": digest, "max_abs_diff_vs_keras": diff,
                                             "n_check_inputs": N_CHECK}}, path.with_suffix(".json"))
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
