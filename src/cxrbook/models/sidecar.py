"""The JSON sidecar saved beside every model: how to use it (classes, image size, threshold, ...), checked.

Light on purpose (json only): ``predict`` reads sidecars without importing Keras,
and ``training`` reads them without importing ``predict``.

A sidecar is a file a user may hand us, so every field that decides a score is checked
when it is read (:func:`check_fields`), and a bad one is an :class:`InvalidSidecar`
naming the JSON and the field (``predict``/``evaluate`` exit 2 on it):

- ``classes``: a list of at least 2 distinct non-empty strings;
- ``image_size``: an integer from ``MIN_IMAGE_SIZE`` to ``MAX_IMAGE_SIZE`` px (bounded, so a
  sidecar cannot make ``predict`` allocate gigabytes);
- ``threshold``: absent or null, or a finite number in [0, 1] (a JSON ``NaN``, a string, ``true``,
  2.0 or -1 are refused); binary models need one to be scored, models with more classes decide by
  argmax and ignore it;
- ``normals``: absent (the training normals are then said to be unknown), ``"all"`` or ``"adult"``;
- ``preprocessing``: absent or an object whose ``clahe`` is a boolean;
- ``thumbnail_size`` (pixel logistic regression): an integer from 2 to ``image_size``;
- ``onnx``: absent or an object (what it binds is checked where it is used).

Whether the classes match the model's outputs and the image size its input is checked
where the model is opened (:mod:`cxrbook.inference.saved_model`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from ..config import describe_path_problem

# Said by every output a model produces (prediction lines, overlays, metrics files, audit.json).
DISCLAIMER = "research tool, not a diagnosis"

MIN_IMAGE_SIZE = 16      # smaller than any model of the workbook (InceptionV3 needs 75)
MAX_IMAGE_SIZE = 1024    # 1024 x 1024 x 3 float32 = 12 MiB per image; the workbook's models take <= 299 px
MAX_JSON_BYTES = 1 << 20  # a sidecar or ensemble.json is a few kB; a larger file is not read
NORMALS = ("all", "adult")


class SidecarError(ValueError, FileNotFoundError):
    """The model file or its sidecar JSON is missing (a ValueError for the CLI, a FileNotFoundError for callers)."""


class InvalidSidecar(ValueError):
    """A sidecar (or ensemble) JSON field that cannot be used; ``path`` and ``field`` name it."""

    def __init__(self, path: str | os.PathLike, field: str, problem: str):
        self.path, self.field = str(path), field
        super().__init__(f"{path}: field {field!r} {problem}")


def read_json_object(path: str | os.PathLike, what: str = "sidecar") -> dict:
    """The JSON object in ``path`` (at most ``MAX_JSON_BYTES``); ValueError naming the file otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ValueError(f"{what} {path} is {size:,} bytes, more than the {MAX_JSON_BYTES:,} a {what} can be")
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e})") from None
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{what} {path} does not hold a JSON object")
    return meta


def check_model_file(model_path: str | os.PathLike) -> None:
    """SidecarError saying why ``model_path`` is not a readable file (missing, a folder, a dangling link, a FIFO...)."""
    problem = describe_path_problem(model_path, "model file", hints={
        "missing_file": "train one in notebook 04 or pass --model",
        "is_a_directory": "pass a model file in it, e.g. outputs/models/custom_cnn.keras"})
    if problem:
        raise SidecarError(problem)


def read_sidecar(model_path: str | os.PathLike) -> dict:
    """The checked JSON sidecar saved beside a model (``<model>.json``); ValueError with the reason if unusable."""
    model_path = Path(model_path)
    check_model_file(model_path)
    side = model_path.with_suffix(".json")
    if not side.is_file():
        raise SidecarError(f"sidecar {side} for model {model_path} is missing: it records the classes, image size, "
                           "threshold and preprocessing the model needs (saved by cxrbook.models.training.save_model)")
    meta = read_json_object(side)
    check_fields(meta, side, thumbnails=model_path.suffix == ".joblib")
    return meta


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_fields(meta: Mapping[str, Any], where: str | os.PathLike, thumbnails: bool = False) -> None:
    """InvalidSidecar naming ``where`` and the first field of ``meta`` that breaks the rules in the module docstring.

    ``thumbnails``: the pixel logistic regression's sidecar, which must also say ``thumbnail_size``.
    """
    for key in ("classes", "image_size"):
        if key not in meta:
            raise InvalidSidecar(where, key, "is missing")
    classes = meta["classes"]
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c.strip() for c in classes)
            or len(set(classes)) != len(classes)):
        raise InvalidSidecar(where, "classes", f"must be a list of at least 2 distinct class names, got {classes!r}")
    size = meta["image_size"]
    if not _is_int(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise InvalidSidecar(where, "image_size", f"must be a whole number of pixels from {MIN_IMAGE_SIZE} to "
                                                  f"{MAX_IMAGE_SIZE}, got {size!r}")
    t = meta.get("threshold")
    if t is not None and (not _is_number(t) or not math.isfinite(t) or not 0 <= t <= 1):
        raise InvalidSidecar(where, "threshold", f"must be a finite number in [0, 1] (the decision threshold on "
                                                 f"P({classes[-1]}) chosen on validation), got {t!r}")
    normals = meta.get("normals")
    if normals is not None and normals not in NORMALS:
        raise InvalidSidecar(where, "normals", f"must be one of {list(NORMALS)} (or absent: unknown), got {normals!r}")
    prep = meta.get("preprocessing")
    if prep is not None and (not isinstance(prep, dict) or not isinstance(prep.get("clahe", False), bool)):
        raise InvalidSidecar(where, "preprocessing", f"must be an object whose 'clahe' is true or false, got {prep!r}")
    if thumbnails:
        ts = meta.get("thumbnail_size")
        if not _is_int(ts) or not 2 <= ts <= size:
            raise InvalidSidecar(where, "thumbnail_size", f"must be a whole number of pixels from 2 to image_size "
                                                          f"({size}), got {ts!r}")
    if meta.get("onnx") is not None and not isinstance(meta["onnx"], dict):
        raise InvalidSidecar(where, "onnx", f"must be an object, got {meta['onnx']!r}")


def training_normals(sidecar: Mapping[str, Any]) -> str:
    """Which normals the model was trained with, as its sidecar records them: ``all``, ``adult`` or ``unknown``.

    ``all`` includes the pediatric collection (children from another hospital); ``adult`` does not.
    Sidecars written before the ``normals`` key existed give ``unknown``.
    """
    value = str(sidecar.get("normals") or "").strip().lower()
    if value.startswith("adult"):
        return "adult"
    if value.startswith("all"):
        return "all"
    return "unknown"


def confound_warning(sidecar: Mapping[str, Any]) -> str:
    """One line to print next to every score: what a high score of this model may really mean.

    The wording follows the training normals the sidecar records (``training_normals``):
    with pediatric normals a high COVID-19 score on an adult image may mean "adult"; with
    adult normals only, the source hospital is still confounded with the label.
    """
    normals = training_normals(sidecar)
    positive = "COVID-19"
    if normals == "all":
        return (f"caution: trained on adult {positive} vs mostly pediatric normals (normals=all): a high score "
                f"on an adult image may mean 'adult', not '{positive}' (see notebooks 07/08)")
    if normals == "adult":
        return (f"caution: trained on adult {positive} vs a few adult normals (normals=adult) from other "
                f"hospitals: a high score may mean 'that hospital', not '{positive}' (see notebooks 07/08)")
    return (f"caution: training normals unknown (the sidecar does not record them): if they were the pediatric "
            f"collection, a high score on an adult image may mean 'adult', not '{positive}' (see notebooks 07/08)")
