"""Scoring saved models with ONNX Runtime, without TensorFlow or scikit-learn.

``models.save_model`` writes ``<name>.onnx`` beside ``<name>.keras`` and records
it in the sidecar (``"onnx": {file, opset, max_abs_diff_vs_keras, ...}``);
``experiment.save_pixel_logreg`` does the same for the pixel logistic
regression (``<name>.joblib``; its ONNX graph takes the thumbnails). A model
saved before that is exported on first use (``onnx_export``: this imports
TensorFlow, or scikit-learn for the ``.joblib``, once; seconds to minutes; the
sidecar is rewritten); later loads find the file. Nothing in this module imports TensorFlow
or Keras at import time, so ``predict``/``evaluate`` answer in well under a
second. Keras is loaded only for ``engine="keras"`` and, lazily, for a Grad-CAM
heatmap (gradients need the Keras model; the first overlay costs the
TensorFlow import).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ENGINES = ("onnx", "keras")
CLASSICAL_SUFFIX = ".joblib"


class OnnxModel:
    """An ONNX image model in an ONNX Runtime session (CPU): raw RGB [0, 255] images in, outputs out.

    Offers ``predict``, ``predict_on_batch``, ``output_shape`` and ``name`` like a
    Keras model, so ``models.extract_features`` takes either.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        out = self.session.get_outputs()[0]
        self.output_shape = tuple(d if isinstance(d, int) else None for d in out.shape)
        self.name = self.path.stem

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """Outputs of one batch, float32."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Outputs of ``x`` in batches of ``batch_size``."""
        x = np.asarray(x, np.float32)
        if len(x) <= batch_size:
            return self.predict_on_batch(x)
        return np.concatenate([self.predict_on_batch(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _thumbnail_predict(net: OnnxModel, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Scores of the pixel logistic regression's ONNX graph on model-ready images (n, s, s, 3) in [0, 255]."""
    def predict(x: np.ndarray) -> np.ndarray:
        from .images import thumbnails
        gray = np.rint(np.asarray(x)[..., 0]).astype(np.uint8)  # the cached uint8 pixels training saw
        return net.predict(thumbnails(gray, size), batch_size=1024)
    return predict


# =========================================================================== the scorer

@dataclass
class Scorer:
    """A loaded model, its sidecar and how it runs: ``engine`` is "onnx" or "keras"."""

    sidecar: dict
    engine: str
    name: str
    _predict: Callable[[np.ndarray], np.ndarray]
    _heatmaps: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def classes(self) -> list[str]:
        """Class names in output order (binary: negative, positive)."""
        return list(self.sidecar["classes"])

    @property
    def image_size(self) -> int:
        """Square input side in pixels."""
        return int(self.sidecar["image_size"])

    @property
    def threshold(self) -> float | None:
        """Stored decision threshold on P(positive) (binary), None for argmax models."""
        t = self.sidecar.get("threshold")
        if t is None and len(self.classes) == 2:
            raise ValueError("the model's sidecar JSON stores no decision threshold for this binary model; "
                             "save it with the threshold chosen on validation (notebooks 04/05 do)")
        return None if t is None else float(t)

    @property
    def has_gradcam(self) -> bool:
        """Whether ``heatmaps`` works (a CNN; not the pixel logistic regression)."""
        return self._heatmaps is not None

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, n_classes) class probabilities of model-ready images."""
        return to_probabilities(self._predict(x), len(self.classes))

    def heatmaps(self, x: np.ndarray) -> np.ndarray:
        """Grad-CAM heatmaps (n, s, s) in [0, 1] (loads Keras on first use for an ONNX scorer)."""
        if self._heatmaps is None:
            raise ValueError(f"{self.name} is not a CNN: it has no Grad-CAM heatmap")
        return self._heatmaps(x)

    def probabilities_and_heatmaps(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and Grad-CAM heatmaps (None for a model without Grad-CAM)."""
        return self.probabilities(x), (self.heatmaps(x) if self.has_gradcam else None)


def to_probabilities(out: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, k) probabilities from raw outputs: a single sigmoid p becomes (1 - p, p)."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.shape[1] == 1:
        if n_classes != 2:
            raise ValueError(f"one sigmoid output but {n_classes} classes in the sidecar")
        return np.concatenate([1 - out, out], axis=1)
    if out.shape[1] != n_classes:
        raise ValueError(f"model has {out.shape[1]} outputs but the sidecar lists {n_classes} classes")
    return out


class SidecarError(ValueError, FileNotFoundError):
    """The model file or its sidecar JSON is missing (a ValueError for the CLI, a FileNotFoundError for callers)."""


def read_sidecar(model_path: str | os.PathLike) -> dict:
    """The JSON sidecar saved beside a model by ``models.save_model``; ValueError with the reason if unusable."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise SidecarError(f"model file {model_path} does not exist (train one in notebook 04 or pass --model)")
    side = model_path.with_suffix(".json")
    if not side.is_file():
        raise SidecarError(f"sidecar {side} for model {model_path} is missing: it records the classes, image size, "
                           "threshold and preprocessing the model needs (saved by cxrbook.models.save_model)")
    try:
        meta = json.loads(side.read_text())
    except ValueError as e:
        raise ValueError(f"sidecar {side} is not valid JSON ({e})") from None
    missing = [k for k in ("classes", "image_size") if k not in meta]
    if missing:
        raise ValueError(f"sidecar {side} lacks {missing}")
    return meta


def onnx_file(model_path: str | os.PathLike, sidecar: dict) -> tuple[Path, dict]:
    """(the ONNX file of a saved ``.keras``/``.joblib`` model, the sidecar), exporting it first when missing or stale.

    Stale: no ``onnx`` entry in the sidecar, the file is missing, or it is
    older than the model file. Exporting imports TensorFlow (a ``.keras``) or
    scikit-learn (a ``.joblib``), once per model.
    """
    model_path = Path(model_path)
    path = model_path.with_suffix(".onnx")  # beside the model under its name, so a renamed pair still matches
    if sidecar.get("onnx") and path.is_file() and path.stat().st_mtime >= model_path.stat().st_mtime:
        return path, sidecar
    classical = model_path.suffix == CLASSICAL_SUFFIX
    print(f"note: {model_path} has no current ONNX export; exporting it once with "
          f"{'scikit-learn' if classical else 'Keras/TensorFlow'} (later runs reuse {path.name})", file=sys.stderr)
    from . import onnx_export
    try:
        if classical:
            import joblib
            entry = onnx_export.export_pixel_logreg(joblib.load(model_path), path)
            onnx_export.record_in_sidecar(model_path, entry)
        else:
            entry = onnx_export.export_saved_model(model_path)
    except OSError as e:
        raise ValueError(f"cannot write the ONNX export of {model_path} ({e}); "
                         "copy the model to a writable folder or use --engine keras") from None
    except ValueError:
        raise
    except Exception as e:  # Keras, TensorFlow and pickle raise many types for a corrupt or foreign file
        raise ValueError(f"cannot export {model_path} to ONNX: {'joblib' if classical else 'Keras'} cannot load "
                         f"it ({type(e).__name__}: {e})") from None
    return path, {**sidecar, "onnx": entry}


def load_keras_model(model_path: str | os.PathLike):
    """The Keras model of a saved ``.keras`` file (imports TensorFlow; registers the custom layers)."""
    import keras

    from . import layers  # noqa: F401  custom layers must be registered before loading
    try:
        return keras.saving.load_model(Path(model_path))
    except Exception as e:  # Keras raises many types for a corrupt file
        raise ValueError(f"Keras cannot load {model_path}: {type(e).__name__}: {e}") from None


def _lazy_gradcam(model_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    loaded: list = []

    def heatmaps(x: np.ndarray) -> np.ndarray:
        from .gradcam import gradcam
        if not loaded:
            loaded.append(load_keras_model(model_path))
        return gradcam(loaded[0], np.asarray(x, np.float32))

    return heatmaps


def load_scorer(model_path: str | os.PathLike, engine: str = "onnx") -> Scorer:
    """Load ``model_path`` (+ its sidecar) for scoring.

    ``.keras`` models: ``engine="onnx"`` (default; ONNX Runtime, no TensorFlow
    unless the ONNX file must be exported first) or ``"keras"``. A ``.joblib``
    pixel logistic regression runs its ONNX graph on the thumbnails (either engine).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    model_path = Path(model_path)
    sidecar = read_sidecar(model_path)
    name = model_path.stem
    if len(sidecar["classes"]) == 2 and sidecar.get("threshold") is None:
        raise ValueError(f"{model_path.with_suffix('.json')} stores no decision threshold for this binary "
                         "model; save it with the threshold chosen on validation (notebooks 04/05 do)")
    if model_path.suffix not in (".keras", CLASSICAL_SUFFIX):
        raise ValueError(f"{model_path}: expected a .keras model (or a {CLASSICAL_SUFFIX} pixel logistic regression)")
    if engine == "keras" and model_path.suffix == ".keras":
        return keras_scorer(load_keras_model(model_path), sidecar, name)
    path, sidecar = onnx_file(model_path, sidecar)
    try:
        net = OnnxModel(path)
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise ValueError(f"ONNX Runtime cannot load {path} ({type(e).__name__}: {e}); "
                         "delete it to export again, or use --engine keras") from None
    if model_path.suffix == CLASSICAL_SUFFIX:
        return Scorer(sidecar, "onnx", name, _thumbnail_predict(net, int(sidecar["thumbnail_size"])))
    return Scorer(sidecar, "onnx", name, net.predict, _lazy_gradcam(model_path))


def keras_scorer(model, sidecar: dict, name: str | None = None) -> Scorer:
    """Wrap an in-memory Keras model (e.g. in a notebook) and its sidecar dict."""
    from .gradcam import gradcam

    def predict(x):
        return np.asarray(model.predict(np.asarray(x, np.float32), batch_size=32, verbose=0))

    def heatmaps(x):
        return gradcam(model, np.asarray(x, np.float32))

    return Scorer(dict(sidecar), "keras", name or getattr(model, "name", "model"), predict, heatmaps)
