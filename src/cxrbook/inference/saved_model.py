"""A saved model's path, loaded in one place: ``load_model(path, engine) -> SavedModel``.

Every user of a saved model goes through :func:`load_model`: ``predict`` and ``evaluate``
(:mod:`cxrbook.workflow.cli`), the notebook widget and notebook 07's example
(:mod:`cxrbook.inference.widget`), notebook 08's external scoring
(:mod:`cxrbook.external.scores`) and the web app (``cxrbook.app.scoring``). It takes

- a ``.keras`` model (``kind="keras"``): scored by ONNX Runtime (``engine="onnx"``, the default),
  by its statically quantized int8 graph (``engine="int8"``; only when its sidecar binds it to
  the fp32 export and its accuracy check passed: ``cxrbook.models.quantization``) or by Keras
  (``engine="keras"``);
- a ``.joblib`` pixel logistic regression (``kind="pixel_logreg"``): scored by the ONNX graph
  written when it was saved, on thumbnails, whatever the engine;
- notebook 06's ``ensemble.json`` (``kind="ensemble"``): its members loaded here the same way,
  their probabilities (and Grad-CAM heatmaps) averaged with the stored weights.

What is checked when a model is loaded, before any image is read (a ``ValueError`` naming the
file and the field; ``predict``/``evaluate`` exit 2 on it):

- the sidecar's fields (:func:`cxrbook.models.sidecar.check_fields`: classes, a bounded image
  size, a finite threshold in [0, 1], normals, preprocessing), and that a binary model stores a
  threshold;
- that the sidecar's classes match the model's outputs (one sigmoid output: exactly two) and its
  image size the model's input (the ONNX file's or the Keras model's input shape);
- for ``ensemble.json``: :func:`cxrbook.models.ensemble.check_ensemble` (weights, members in the
  same folder, shared input, classes and normals).

Nothing loaded here runs code from a file. A ``.joblib`` is a pickle and is never unpickled: its
ONNX graph is scored only when the sidecar binds it to that ``.joblib`` by SHA-256 (both files'
hashes, recorded when ``experiment.save_pixel_logreg`` wrote them); otherwise the load fails and
says to re-save the model from notebook 06. A ``.keras`` archive is loaded by Keras with
``safe_mode=True`` (no deserialised Python code); its ``.onnx`` is used when the sidecar binds
it to that ``.keras`` by SHA-256, and is otherwise exported again, once, in a child process
(``onnx_export.export_in_subprocess``), which checks the export on the validation images stored
with the model. The ONNX bytes that were hashed are the bytes ONNX Runtime loads.

Nothing in this module imports TensorFlow or Keras at import time, so ``predict``/``evaluate``
answer in about a second. Keras is loaded only for ``engine="keras"``, for a first-use export (in
the child) and, lazily, for a Grad-CAM heatmap (gradients need the Keras model).
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.images import file_sha256
from ..models.ensemble import combine, load_ensemble, member_path
from ..models.onnx_session import OnnxModel
from ..models.sidecar import (InvalidSidecar, check_fields, check_model_file, confound_warning, read_sidecar,
                              training_normals)

ENGINES = ("onnx", "keras", "int8")
KINDS = {".keras": "keras", ".joblib": "pixel_logreg", ".json": "ensemble"}


# =========================================================================== the loaded model

@dataclass
class SavedModel:
    """A saved model, its checked sidecar and how it runs.

    ``kind``: "keras", "pixel_logreg" or "ensemble"; ``engine``: "onnx" or "keras" (an ensemble's
    members' engines joined by "+"); ``members``: an ensemble's loaded members.
    """

    kind: str
    engine: str
    name: str
    sidecar: dict
    _predict: Callable[[np.ndarray], np.ndarray]
    _heatmaps: Callable[[np.ndarray], np.ndarray] | None = None
    path: Path | None = None
    members: tuple["SavedModel", ...] = field(default=())

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
        """Stored decision threshold on P(positive) (binary; checked at load), None for argmax models."""
        t = self.sidecar.get("threshold")
        return None if t is None or len(self.classes) != 2 else float(t)

    @property
    def normals(self) -> str:
        """The training normals the sidecar records: "all", "adult" or "unknown"."""
        return training_normals(self.sidecar)

    @property
    def caution(self) -> str:
        """The confound sentence printed beside every score of this model (``sidecar.confound_warning``)."""
        return confound_warning(self.sidecar)

    @property
    def has_gradcam(self) -> bool:
        """Whether ``heatmaps`` works (a CNN; not the pixel logistic regression)."""
        return self._heatmaps is not None

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, n_classes) class probabilities of model-ready images (n, s, s, 3) in [0, 255]."""
        return to_probabilities(self._predict(x), len(self.classes))

    def heatmaps(self, x: np.ndarray) -> np.ndarray:
        """Grad-CAM heatmaps (n, s, s) in [0, 1] (loads Keras on first use for an ONNX model)."""
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


# =========================================================================== load_model

def load_model(path: str | os.PathLike, engine: str = "onnx") -> SavedModel:
    """The saved model at ``path`` (a ``.keras``, a ``.joblib`` or an ``ensemble.json``), checked and ready.

    ``engine``: "onnx" (default; ONNX Runtime, no TensorFlow unless a ``.keras`` must be exported
    first), "int8" (a ``.keras`` model's checked int8 graph, never exported on the fly) or "keras"
    (``.keras`` models and ensemble members scored by Keras). ValueError naming the file (and the
    sidecar field) for anything unusable; see the module docstring.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    path = Path(path)
    check_model_file(path)
    kind = KINDS.get(path.suffix)
    if kind is None:
        raise ValueError(f"{path}: expected a .keras model, a .joblib pixel logistic regression or notebook 06's "
                         "ensemble .json")
    if kind == "ensemble":
        return _load_ensemble(path, engine)
    sidecar = read_sidecar(path)
    side = path.with_suffix(".json")
    if len(sidecar["classes"]) == 2 and sidecar.get("threshold") is None:
        raise InvalidSidecar(side, "threshold", "is missing: the sidecar stores no decision threshold, which a "
                                                "binary model needs (chosen on validation; notebooks 04-07 save it)")
    if kind == "pixel_logreg":
        return _load_pixel_logreg(path, sidecar)
    check_model_archive(path)
    if engine == "keras":
        return keras_scorer(load_keras_model(path), sidecar, path.stem, path)
    if engine == "int8":
        return _load_keras_on_int8(path, sidecar)
    return _load_keras_on_onnx(path, sidecar)


def _load_pixel_logreg(path: Path, sidecar: dict) -> SavedModel:
    onnx_bytes, why = bound_onnx(path, sidecar)
    if onnx_bytes is None:
        raise ValueError(f"cannot score {path}: {why}. The pixel logistic regression is scored from the ONNX graph "
                         "written when it was saved, never from its .joblib (a pickle, which could run code): "
                         "re-save it from notebook 06 (experiment.save_pixel_logreg)")
    net = _session(path.with_suffix(".onnx"), onnx_bytes)
    size, side = int(sidecar["thumbnail_size"]), path.with_suffix(".json")
    if net.input_shape[1:] not in ((size * size,), (None,)):
        raise InvalidSidecar(side, "thumbnail_size", f"is {size} ({size * size} pixels) but "
                                                     f"{path.with_suffix('.onnx').name} takes {net.input_shape[1]}")
    check_io(None, net.output_shape, sidecar, side, path.with_suffix(".onnx").name)

    def predict(x: np.ndarray) -> np.ndarray:
        from ..data.images import thumbnails
        gray = np.rint(np.asarray(x)[..., 0]).astype(np.uint8)  # the cached uint8 pixels training saw
        return net.predict(thumbnails(gray, size), batch_size=1024)

    return SavedModel("pixel_logreg", "onnx", path.stem, sidecar, predict, None, path)


def _load_keras_on_onnx(path: Path, sidecar: dict) -> SavedModel:
    onnx_path, side = path.with_suffix(".onnx"), path.with_suffix(".json")
    onnx_bytes, why = bound_onnx(path, sidecar)
    if onnx_bytes is None:
        print(f"note: {why}; exporting {path.name} to ONNX once with Keras/TensorFlow in a child process "
              f"(later runs reuse {onnx_path.name})", file=sys.stderr)
        sidecar = _export(path)
        onnx_bytes, why = bound_onnx(path, sidecar)
        if onnx_bytes is None:  # another process replaced a file meanwhile
            raise ValueError(f"cannot score {path}: {why} right after exporting it; try again")
    net = _session(onnx_path, onnx_bytes)
    check_io(net.input_shape, net.output_shape, sidecar, side, onnx_path.name)
    return SavedModel("keras", "onnx", path.stem, sidecar, net.predict,
                      _lazy_gradcam(path, sidecar["onnx"]["model_sha256"]), path)


def _load_keras_on_int8(path: Path, sidecar: dict) -> SavedModel:
    """The int8 graph quantized from the fp32 export bound to ``path``; both bindings checked, nothing exported."""
    if bound_onnx(path, sidecar)[0] is None:
        raise ValueError(f"cannot score {path} with the int8 engine: {bound_onnx(path, sidecar)[1]}; its int8 "
                         "version is made from that fp32 export: export and quantize it again, or use --engine onnx")
    from ..models.quantization import int8_session
    net = int8_session(path, sidecar)  # its own SHA-256, the fp32 file it came from, its accuracy check
    check_io(net.input_shape, net.output_shape, sidecar, path.with_suffix(".json"), net.path.name)
    return SavedModel("keras", "int8", path.stem, sidecar, net.predict,
                      _lazy_gradcam(path, sidecar["onnx"]["model_sha256"]), path)


def _load_ensemble(path: Path, engine: str) -> SavedModel:
    spec = load_ensemble(path)  # its own fields, weights, members' names, sidecars, input and normals
    members = tuple(load_model(member_path(spec, m, path), engine) for m in spec["members"])
    weights = list(spec["member_weights"])
    sidecar = {k: v for k, v in spec.items() if k != "chosen_by"}

    def predict(x: np.ndarray) -> np.ndarray:
        return combine([m.probabilities(x) for m in members], weights)

    cams = [(m, w) for m, w in zip(members, weights) if m.has_gradcam]

    def heatmaps(x: np.ndarray) -> np.ndarray:  # the members with a heatmap, weighted as they vote
        return combine([m.heatmaps(x) for m, _ in cams], [w for _, w in cams])

    engines = "+".join(sorted({m.engine for m in members}))
    return SavedModel("ensemble", engines, path.stem, sidecar, predict, heatmaps if cams else None, path, members)


def keras_scorer(model, sidecar: Mapping[str, Any], name: str | None = None, path: Path | None = None) -> SavedModel:
    """An in-memory Keras model (e.g. in a notebook) and its sidecar dict as a :class:`SavedModel` (checked)."""
    from ..models.gradcam import gradcam
    where = path.with_suffix(".json") if path is not None else f"the sidecar of {name or getattr(model, 'name', 'model')}"
    check_fields(sidecar, where)
    check_io(model.input_shape, model.output_shape, sidecar, where, f"the Keras model {name or model.name}")

    def predict(x):
        return np.asarray(model.predict(np.asarray(x, np.float32), batch_size=32, verbose=0))

    def heatmaps(x):
        return gradcam(model, np.asarray(x, np.float32))

    return SavedModel("keras", "keras", name or getattr(model, "name", "model"), dict(sidecar), predict, heatmaps,
                      path)


# =========================================================================== checks and bindings

def check_io(input_shape: Sequence | None, output_shape: Sequence, sidecar: Mapping, side: str | os.PathLike,
             what: str) -> None:
    """InvalidSidecar naming ``side`` when its image size is not the model's input (``input_shape``
    (batch, s, s, 3); None: not an image model) or its classes are not the model's outputs."""
    s, k = int(sidecar["image_size"]), len(sidecar["classes"])
    if input_shape is not None:
        dims = tuple(input_shape)[1:]
        if len(dims) != 3 or dims[2] not in (3, None) or any(d not in (s, None) for d in dims[:2]):
            raise InvalidSidecar(side, "image_size", f"is {s} but {what} takes input of shape {tuple(input_shape)}")
    out = tuple(output_shape)[-1]
    if out == 1 and k != 2:
        raise InvalidSidecar(side, "classes", f"lists {k} classes but {what} has one sigmoid output (2 classes)")
    if out not in (1, None) and out != k:
        raise InvalidSidecar(side, "classes", f"lists {k} classes but {what} has {out} outputs")


def bound_onnx(model_path: Path, sidecar: Mapping) -> tuple[bytes | None, str]:
    """(the bytes of the ``.onnx`` beside ``model_path``, "") when the sidecar's ``onnx`` entry binds that
    file to this model file by SHA-256 (``sha256`` and ``model_sha256``); else (None, why not)."""
    entry, side = sidecar.get("onnx") or {}, model_path.with_suffix(".json")
    onnx_path = model_path.with_suffix(".onnx")
    if not entry:
        return None, f"{side.name} records no ONNX export of {model_path.name}"
    if not entry.get("sha256") or not entry.get("model_sha256"):
        return None, f"{side.name} records no SHA-256 binding {onnx_path.name} to {model_path.name} (saved before " \
                     "exports were bound by hash)"
    if not onnx_path.is_file():
        return None, f"{onnx_path} is missing"
    if file_sha256(model_path) != entry["model_sha256"]:
        return None, f"{model_path.name} is not the file its ONNX export was made from (SHA-256 differs from " \
                     f"{side.name})"
    data = onnx_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return None, f"{onnx_path.name} is not the ONNX file {side.name} records (SHA-256 differs)"
    return data, ""


def _session(onnx_path: Path, data: bytes) -> OnnxModel:
    try:
        return OnnxModel(onnx_path, model_bytes=data)
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise ValueError(f"ONNX Runtime cannot load {onnx_path} ({type(e).__name__}: {e})") from None


def _export(path: Path) -> dict:
    """Export ``path`` to ONNX in a child process; the sidecar that records it (ValueError naming the file)."""
    import subprocess

    from ..models import onnx_export
    try:  # in a child process: the export's memory (pure-Python protobuf, ~2.5 GiB at most) is freed after
        onnx_export.export_in_subprocess(path)
    except subprocess.TimeoutExpired as e:
        raise ValueError(f"exporting {path} to ONNX took more than {e.timeout:.0f} s and was stopped; "
                         "use --engine keras") from None
    except OSError as e:
        raise ValueError(f"cannot write the ONNX export of {path} ({e}); "
                         "copy the model to a writable folder or use --engine keras") from None
    except onnx_export.ExportError as e:  # the child's last error line names the cause
        raise ValueError(f"cannot export {path} to ONNX: {e}") from None
    return read_sidecar(path)


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


def load_keras_model(model_path: str | os.PathLike):
    """The Keras model of a saved ``.keras`` file for inference (imports TensorFlow; registers the custom
    layers). ``safe_mode=True``: Keras refuses to deserialise Python code (``Lambda`` layers) from the file."""
    import keras

    from ..models import layers  # noqa: F401  custom layers must be registered before loading
    try:
        return keras.saving.load_model(Path(model_path), compile=False, safe_mode=True)
    except Exception as e:  # Keras raises many types for a corrupt file
        raise ValueError(f"Keras cannot load {model_path}: {type(e).__name__}: {e}") from None


def _lazy_gradcam(model_path: Path, model_sha256: str) -> Callable[[np.ndarray], np.ndarray]:
    """Grad-CAM from the ``.keras`` the ONNX file was exported from (its hash checked when Keras loads it)."""
    loaded: list = []

    def heatmaps(x: np.ndarray) -> np.ndarray:
        from ..models.gradcam import gradcam
        if not loaded:
            if file_sha256(model_path) != model_sha256:
                raise ValueError(f"{model_path} changed after it was loaded (SHA-256 differs): its Grad-CAM would "
                                 "not belong to the scores; load it again")
            loaded.append(load_keras_model(model_path))
        return gradcam(loaded[0], np.asarray(x, np.float32))

    return heatmaps
