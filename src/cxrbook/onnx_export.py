"""Keras image models -> ONNX files that ``cxrbook.inference`` runs without TensorFlow.

Export goes through Keras 3 ``model.export(path, format="onnx")`` (tf2onnx on the
TensorFlow backend) with a fixed opset and a dynamic batch dimension. The graph
is the model's inference call: augmentation layers (``layers.ReferenceAugmentation``)
and Dropout are identity in it, BatchNorm uses its moving statistics. Every
export is checked at once: ONNX Runtime and Keras score ``N_CHECK`` random
images, and the largest absolute difference is recorded (an export that
disagrees by more than ``TOLERANCE`` raises instead of being saved).

This module needs TensorFlow; the files it writes do not. Three callers:
``models.save_model`` (an ``.onnx`` beside every ``.keras``, recorded in the
sidecar), ``export_saved_model`` (a model saved before that, exported on first
use) and ``cached_export`` (frozen backbones for feature extraction, cached per
backbone, size and weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from . import layers  # noqa: F401  registers the custom layers, so saved models load

OPSET = 15          # tf2onnx 1.17's default; fixed so the files do not change with its default
N_CHECK = 4         # random images scored by both Keras and ONNX Runtime after each export
TOLERANCE = 1e-4    # largest accepted |ONNX - Keras| (float32 round-off is ~1e-7 on our models)
EXPORT_CACHE_VERSION = 1


def export_onnx(model: keras.Model, path: str | os.PathLike, seed: int = 0) -> dict:
    """Export ``model`` (one image input (s, s, c)) to ``path`` and check it against Keras.

    Returns what the sidecar records: ``file`` (name), ``opset``,
    ``max_abs_diff_vs_keras`` over ``n_check_inputs`` random [0, 255] images and
    the tf2onnx / onnxruntime versions. Raises ValueError when the difference
    exceeds ``TOLERANCE`` (nothing is left at ``path`` then).
    """
    import onnxruntime
    import tf2onnx

    path = Path(path)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(f"model {model.name!r} must take one (batch, height, width, channels) input, "
                         f"got input shape {shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    spec = keras.InputSpec(shape=(None, *shape[1:]), dtype="float32", name="image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's np.object probe under NumPy 2
            model.export(str(tmp), format="onnx", verbose=False, input_signature=[spec], opset_version=OPSET)
        x = np.random.default_rng(seed).uniform(0, 255, (N_CHECK, *shape[1:])).astype(np.float32)
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        diff = float(np.max(np.abs(got.reshape(expected.shape) - expected)))
        if not diff <= TOLERANCE:
            raise ValueError(f"ONNX export of {model.name!r} disagrees with Keras by {diff:.2e} "
                             f"(> {TOLERANCE:g}); use engine='keras' for this model")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": path.name, "opset": OPSET, "max_abs_diff_vs_keras": diff, "n_check_inputs": N_CHECK,
            "tf2onnx_version": tf2onnx.__version__, "onnxruntime_version": onnxruntime.__version__}


def export_saved_model(model_path: str | os.PathLike) -> dict:
    """Export a saved ``.keras`` model to the ``.onnx`` beside it and record it in its sidecar.

    For models saved before ``save_model`` exported ONNX itself: loads the model
    with Keras (TensorFlow, once), exports, checks, and adds the ``onnx`` entry
    to ``<model>.json``. Returns that entry.
    """
    model_path = Path(model_path)
    side = model_path.with_suffix(".json")
    sidecar = json.loads(side.read_text())
    info = export_onnx(keras.saving.load_model(model_path), model_path.with_suffix(".onnx"))
    side.write_text(json.dumps({**sidecar, "onnx": info}, indent=2, sort_keys=True) + "\n")
    return info


def cached_export(build: Callable[[], keras.Model], spec: dict, cache_dir: str | os.PathLike) -> Path:
    """The ONNX file of ``build()``, exported once per ``spec`` and kept under ``cache_dir``.

    ``spec`` must identify the model completely (e.g. backbone, image size,
    weights id with the seed for random weights); Keras, tf2onnx and the opset
    are added to the key. ``build`` runs only on a miss. A JSON beside the file
    records the spec and the export check.
    """
    import tf2onnx
    full = {**spec, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__, "opset": OPSET,
            "version": EXPORT_CACHE_VERSION}
    key = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"onnx_{key}.onnx"
    if not path.is_file():
        info = export_onnx(build(), path)
        path.with_suffix(".json").write_text(json.dumps({"spec": full, "export": info}, indent=2) + "\n")
    return path
