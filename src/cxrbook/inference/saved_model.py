"""Scoring saved models with ONNX Runtime, without TensorFlow or scikit-learn.

A ``.keras`` model is exported to ``<name>.onnx`` beside it on its first use
here (``onnx_export.export_in_subprocess``: a child process imports TensorFlow
once, seconds to tens of seconds; or at save, ``training.save_model(...,
onnx=True)``), and the export is recorded in the sidecar (``"onnx": {file, opset,
max_abs_diff_vs_keras, ...}``); ``experiment.save_pixel_logreg`` writes the
pixel logistic regression's graph at save (``<name>.joblib``; its ONNX graph
takes the thumbnails). Later loads find the file. Nothing in this module imports TensorFlow
or Keras at import time, so ``predict``/``evaluate`` answer in well under a
second. Keras is loaded only for ``engine="keras"`` and, lazily, for a Grad-CAM
heatmap (gradients need the Keras model; the first overlay costs the
TensorFlow import).
"""

from __future__ import annotations

import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..models.onnx_session import OnnxModel
from ..models.sidecar import read_sidecar

ENGINES = ("onnx", "keras")
CLASSICAL_SUFFIX = ".joblib"


def _thumbnail_predict(net: OnnxModel, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Scores of the pixel logistic regression's ONNX graph on model-ready images (n, s, s, 3) in [0, 255]."""
    def predict(x: np.ndarray) -> np.ndarray:
        from ..data.images import thumbnails
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
    from ..models import onnx_export
    try:
        if classical:
            import joblib
            entry = onnx_export.export_pixel_logreg(joblib.load(model_path), path)
            onnx_export.record_in_sidecar(model_path, entry)
        else:  # in a child process: the export's memory (pure-Python protobuf, ~2.5 GiB at most) is freed after
            entry = onnx_export.export_in_subprocess(model_path)
    except OSError as e:
        raise ValueError(f"cannot write the ONNX export of {model_path} ({e}); "
                         "copy the model to a writable folder or use --engine keras") from None
    except ValueError:
        raise
    except onnx_export.ExportError as e:  # the child's last error line names the cause
        raise ValueError(f"cannot export {model_path} to ONNX: {e}") from None
    except Exception as e:  # Keras, TensorFlow and pickle raise many types for a corrupt or foreign file
        raise ValueError(f"cannot export {model_path} to ONNX: {'joblib' if classical else 'Keras'} cannot load "
                         f"it ({type(e).__name__}: {e})") from None
    return path, {**sidecar, "onnx": entry}


def load_keras_model(model_path: str | os.PathLike):
    """The Keras model of a saved ``.keras`` file (imports TensorFlow; registers the custom layers)."""
    import keras

    from ..models import layers  # noqa: F401  custom layers must be registered before loading
    try:
        return keras.saving.load_model(Path(model_path))
    except Exception as e:  # Keras raises many types for a corrupt file
        raise ValueError(f"Keras cannot load {model_path}: {type(e).__name__}: {e}") from None


def _lazy_gradcam(model_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    loaded: list = []

    def heatmaps(x: np.ndarray) -> np.ndarray:
        from ..models.gradcam import gradcam
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
    if model_path.suffix == ".keras":
        check_model_archive(model_path)
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


def check_model_archive(model_path: str | os.PathLike) -> None:
    """ValueError naming ``model_path`` when it is not a complete ``.keras`` zip archive (e.g. truncated by an
    interrupted copy); Keras itself reports such a file as "File not found"."""
    try:
        with zipfile.ZipFile(model_path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"model file {model_path} is truncated or corrupt: it is not a complete .keras (zip) "
                         f"archive ({e}); copy it again or re-save it from its notebook") from None
    missing = sorted({"config.json", "model.weights.h5"} - names)
    if missing:
        raise ValueError(f"model file {model_path} is truncated or corrupt: its .keras archive lacks {missing}; "
                         "copy it again or re-save it from its notebook")


def keras_scorer(model, sidecar: dict, name: str | None = None) -> Scorer:
    """Wrap an in-memory Keras model (e.g. in a notebook) and its sidecar dict."""
    from ..models.gradcam import gradcam

    def predict(x):
        return np.asarray(model.predict(np.asarray(x, np.float32), batch_size=32, verbose=0))

    def heatmaps(x):
        return gradcam(model, np.asarray(x, np.float32))

    return Scorer(dict(sidecar), "keras", name or getattr(model, "name", "model"), predict, heatmaps)
