"""A saved soft-voting ensemble: its file (``ensemble.json``) and its scores from its members'.

Notebook 06 chooses the members and their weights on validation only
(:mod:`cxrbook.evaluation.ensemble_choice`) and saves them here; ``predict``/``evaluate`` and notebook 08
load and score the saved file.

Soft voting (``combine``): the weighted mean of the members' positive-class probability
(binary) or of their class-probability vectors (k > 2).

Saved form (``save_ensemble``): ``outputs/models/ensemble.json`` (``ensemble__<task>.json``
for other tasks), a sidecar-like JSON::

    {"kind": "ensemble", "schema_version": 1,
     "members": ["vgg16.keras", "logreg_pixels.joblib", ...],   # file names in the same folder
     "member_weights": [0.5, 0.25, ...],                        # sum to 1
     "classes": [...], "task": str, "threshold": float | null,  # threshold: Youden on validation
     "image_size": int, "preprocessing": {...},                 # the input every member shares
     "weights": str,                                            # the members' pretrained weights, as sidecars say
     "combine": str, "chosen_by": {...}}                        # how members and weights were chosen

Every member must take the same input (image size and CLAHE, ``input_spec``):
``predict``/``evaluate`` preprocess a file once, as the training pipeline did at that size,
and feed it to every member (``ensemble_scorer``); ``save_ensemble`` refuses members
whose input or classes differ.

Scoring: ``ensemble_scorer(path, load_scorer)`` builds a ``predict`` scorer from the
members' scorers (``predict.load_scorer`` calls it for a ``.json`` model);
``score_members(spec, {member: scores})`` combines scores already computed on any image
set (notebook 08 scores each saved model once, then combines).

This module imports only NumPy at load time, so ``predict`` stays quick.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

KIND = "ensemble"
SCHEMA_VERSION = 1
MODEL_SUFFIXES = (".keras", ".joblib")
COMBINE = "weighted mean of the members' class probabilities (soft voting)"


# --------------------------------------------------------------------------- soft voting

def combine(scores: Sequence[Any], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of the members' scores: (n,) positive-class probabilities or (n, k) vectors.

    ``weights`` are normalised to sum to 1; shapes must agree.
    """
    if len(scores) != len(weights) or not len(scores):
        raise ValueError(f"{len(scores)} score arrays but {len(weights)} weights")
    w = np.asarray(weights, dtype=float)
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {list(w)}")
    arrays = [np.asarray(s, dtype=float) for s in scores]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"member scores have different shapes {sorted(shapes)}: score the same images")
    return np.tensordot(w / w.sum(), np.stack(arrays), axes=1)


# --------------------------------------------------------------------------- saving and loading

def input_spec(sidecar: Mapping) -> tuple[int, bool]:
    """(image size, CLAHE) of a sidecar: the input every member of an ensemble must share."""
    return int(sidecar["image_size"]), bool((sidecar.get("preprocessing") or {}).get("clahe"))


def save_ensemble(path: str | os.PathLike, members: Sequence[str], weights: Sequence[float],
                  threshold: float | None, sidecar: Mapping[str, Any]) -> Path:
    """Write ``ensemble.json`` (schema in the module docstring), atomically; returns its path.

    ``members``: model FILE names in the same folder as ``path`` (each with its sidecar);
    ``sidecar``: classes, task, image_size, preprocessing, weights (pretrained) and
    chosen_by. Refuses members whose files are missing or whose input or classes differ.
    """
    from ..atomic import to_jsonable, write_json
    path = Path(path)
    spec = {**dict(sidecar), "kind": KIND, "schema_version": SCHEMA_VERSION, "members": list(members),
            "member_weights": [float(w) for w in np.asarray(weights, float) / float(np.sum(weights))],
            "threshold": None if threshold is None else float(threshold), "combine": COMBINE}
    check_ensemble(spec, path)
    return write_json(to_jsonable(spec), path)


def check_ensemble(spec: Mapping[str, Any], path: str | os.PathLike) -> None:
    """ValueError naming ``path`` and the problem when ``spec`` is not a usable ensemble."""
    from .sidecar import read_sidecar
    path = Path(path)
    if spec.get("kind") != KIND:
        raise ValueError(f"{path} is not an ensemble JSON (kind {spec.get('kind')!r}, expected {KIND!r}); "
                         "to score one model pass its .keras or .joblib file, not its sidecar")
    missing = [k for k in ("members", "member_weights", "classes", "image_size", "threshold") if k not in spec]
    if missing:
        raise ValueError(f"ensemble {path} lacks {missing}")
    members, w = list(spec["members"]), list(spec["member_weights"])
    if len(members) < 1 or len(members) != len(w):
        raise ValueError(f"ensemble {path}: {len(members)} members but {len(w)} weights")
    if any(not isinstance(x, (int, float)) or x < 0 for x in w) or abs(sum(w) - 1) > 1e-6:
        raise ValueError(f"ensemble {path}: member_weights must be non-negative and sum to 1, got {w}")
    if len(spec["classes"]) == 2 and spec["threshold"] is None:
        raise ValueError(f"ensemble {path} stores no threshold for its binary classes; choose it on validation")
    for m in members:
        if Path(m).name != m or Path(m).suffix not in MODEL_SUFFIXES:
            raise ValueError(f"ensemble {path}: member {m!r} must be a .keras/.joblib file name in {path.parent}")
        side = read_sidecar(path.parent / m)  # ValueError naming the missing model or sidecar
        if list(side["classes"]) != list(spec["classes"]):
            raise ValueError(f"ensemble {path}: member {m} has classes {side['classes']}, the ensemble "
                             f"{spec['classes']}")
        if input_spec(side) != input_spec(spec):
            raise ValueError(f"ensemble {path}: member {m} takes {side['image_size']} px input "
                             f"(clahe {input_spec(side)[1]}), the ensemble {spec['image_size']} px "
                             f"(clahe {input_spec(spec)[1]}): every member must share one input")


def is_ensemble(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ensemble JSON (a ``.json`` whose ``kind`` is "ensemble")."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == KIND
    except (ValueError, AttributeError):
        return False


def load_ensemble(path: str | os.PathLike) -> dict:
    """The checked ``ensemble.json`` (ValueError naming the file when it is missing or unusable)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ensemble file {path} does not exist (notebook 06 writes it)")
    try:
        spec = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"ensemble file {path} is not valid JSON ({e})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"ensemble file {path} does not hold a JSON object")
    check_ensemble(spec, path)
    return spec


def member_names(spec: Mapping[str, Any]) -> list[str]:
    """Model names (file stems) of the members, as notebooks and metrics files name them."""
    return [Path(m).stem for m in spec["members"]]


# --------------------------------------------------------------------------- scoring

def score_members(spec: Mapping[str, Any], member_scores: Mapping[str, Any]) -> np.ndarray:
    """The ensemble's scores from its members' scores on the same images, in the same order.

    ``member_scores`` maps member name (file stem, e.g. "vgg16") or file name to (n,)
    positive-class probabilities (binary) or (n, k) class probabilities. Extra models
    are ignored; a missing member is a ValueError naming it.
    """
    arrays = []
    for file, name in zip(spec["members"], member_names(spec)):
        s = member_scores.get(name, member_scores.get(file))
        if s is None:
            raise ValueError(f"no scores for ensemble member {name}; have {sorted(member_scores)}")
        s = np.asarray(s, dtype=float)
        if len(spec["classes"]) == 2 and s.ndim == 2:
            s = s[:, -1]  # (n, 2) class probabilities -> P(positive)
        arrays.append(s)
    return combine(arrays, spec["member_weights"])


def saved_ensemble(models_dir: str | os.PathLike, task: str) -> Path | None:
    """``<models_dir>/ensemble.json`` (``ensemble__<task>.json`` for other tasks) when notebook 06 saved one."""
    from ..config import model_name
    path = Path(models_dir) / f"{model_name('ensemble', task)}.json"
    return path if is_ensemble(path) else None


def ensemble_scorer(path: str | os.PathLike, load_scorer: Callable[[Path], Any]):
    """A ``predict`` scorer for ``ensemble.json``: soft voting over its members' scorers.

    ``load_scorer(member_path)`` loads one member the way ``predict`` does (whatever its
    engine); the returned scorer is a copy of the first member's scorer whose
    probabilities are the weighted mean of every member's, and whose Grad-CAM heatmap is
    the weighted mean of the members' heatmaps (members without one, like the pixel
    logistic regression, are left out of it).
    """
    path = Path(path)
    spec = load_ensemble(path)
    scorers = [load_scorer(path.parent / m) for m in spec["members"]]
    weights = list(spec["member_weights"])

    def probabilities(x: np.ndarray) -> np.ndarray:
        return combine([s.probabilities(x) for s in scorers], weights)

    def heatmaps(x: np.ndarray) -> np.ndarray:
        maps, used, why = [], [], []
        for s, w in zip(scorers, weights):
            if not getattr(s, "has_gradcam", True):
                continue
            try:
                _, h = s.probabilities_and_heatmaps(x)
            except ValueError as e:  # engines whose scorer says so only when asked (a pixel classifier)
                if hasattr(s, "has_gradcam"):
                    raise
                why.append(str(e))
                continue
            if h is not None:
                maps.append(np.asarray(h, float))
                used.append(w)
        if not maps:
            raise ValueError(f"no member of {path} has a Grad-CAM heatmap ({'; '.join(why) or 'none offers one'})")
        return combine(maps, used)

    first = scorers[0]
    sidecar = {k: v for k, v in spec.items() if k not in ("chosen_by",)}
    engines = sorted({str(s.engine) for s in scorers})
    fields = {f.name for f in dataclasses.fields(first)}
    functions: dict[str, Callable] = {"_predict": probabilities}
    if "_gradcam" in fields:     # engines whose scorer returns (outputs, heatmaps) from one call
        functions["_gradcam"] = lambda x: (probabilities(x), heatmaps(x))
    if "_heatmaps" in fields:    # engines whose scorer computes heatmaps on their own
        functions["_heatmaps"] = heatmaps if any(getattr(s, "has_gradcam", True) for s in scorers) else None
    return dataclasses.replace(first, sidecar=sidecar, name=path.stem,
                               engine=f"ensemble of {len(scorers)} ({'+'.join(engines)})", **functions)
