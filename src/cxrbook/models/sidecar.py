"""The JSON sidecar saved beside every model: how to use it (classes, image size, threshold, ...).

Light on purpose (json only): ``predict`` reads sidecars without importing Keras,
and ``training`` reads them without importing ``predict``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import describe_path_problem

# Said by every output a model produces (prediction lines, overlays, metrics files, audit.json).
DISCLAIMER = "research tool, not a diagnosis"


class SidecarError(ValueError, FileNotFoundError):
    """The model file or its sidecar JSON is missing (a ValueError for the CLI, a FileNotFoundError for callers)."""


def read_sidecar(model_path: str | os.PathLike) -> dict:
    """The JSON sidecar saved beside a model by ``training.save_model``; ValueError with the reason if unusable."""
    model_path = Path(model_path)
    problem = describe_path_problem(model_path, "model file", hints={  # a folder, a dangling link, a FIFO, ...
        "missing_file": "train one in notebook 04 or pass --model",
        "is_a_directory": "pass a model file in it, e.g. outputs/models/custom_cnn.keras"})
    if problem:
        raise SidecarError(problem)
    side = model_path.with_suffix(".json")
    if not side.is_file():
        raise SidecarError(f"sidecar {side} for model {model_path} is missing: it records the classes, image size, "
                           "threshold and preprocessing the model needs (saved by cxrbook.models.training.save_model)")
    try:
        meta = json.loads(side.read_text())
    except ValueError as e:
        raise ValueError(f"sidecar {side} is not valid JSON ({e})") from None
    missing = [k for k in ("classes", "image_size") if k not in meta]
    if missing:
        raise ValueError(f"sidecar {side} lacks {missing}")
    return meta


def training_normals(sidecar: dict) -> str:
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


def confound_warning(sidecar: dict) -> str:
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
