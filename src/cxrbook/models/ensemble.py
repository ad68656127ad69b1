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
     "normals": "all" | "adult",                                # the members' training normals (absent: unknown)
     "weights": str,                                            # the members' pretrained weights, as sidecars say
     "combine": str, "chosen_by": {...}}                        # how members and weights were chosen

Every member must take the same input (image size and CLAHE, ``input_spec``):
``predict``/``evaluate`` preprocess a file once, as the training pipeline did at that size,
and feed it to every member; ``save_ensemble`` refuses members whose input, classes or
training normals differ. ``load_ensemble`` checks a saved file the same way, and more
(``check_ensemble``): it is a file a user may hand us, so its members must be bare file
names in its own folder (``member_path``) and its weights finite and positive.

Scoring: :func:`cxrbook.inference.saved_model.load_model` loads ``ensemble.json`` and its
members (the one loader of saved models); ``score_members(spec, {member: scores})``
combines scores already computed on any image set (notebook 08 scores each saved model
once, then combines).

This module imports only NumPy at load time, so ``predict`` stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

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
    chosen_by. Refuses members whose files are missing or whose input, classes or training
    normals differ; the members' common ``normals`` is recorded (none when none records it).
    """
    from ..atomic import to_jsonable, write_json
    path = Path(path)
    spec = {**dict(sidecar), "kind": KIND, "schema_version": SCHEMA_VERSION, "members": list(members),
            "member_weights": [float(w) for w in np.asarray(weights, float) / float(np.sum(weights))],
            "threshold": None if threshold is None else float(threshold), "combine": COMBINE}
    normals = members_normals(spec, path)
    if normals != "unknown":
        spec["normals"] = normals
    check_ensemble(spec, path)
    return write_json(to_jsonable(spec), path)


def member_path(spec: Mapping[str, Any], member: Any, path: str | os.PathLike) -> Path:
    """The file of ``member`` of the ensemble saved at ``path``: a bare ``.keras``/``.joblib`` file name in the
    ensemble's own folder (no folder part, no "..", not absolute, no link leading out of the folder, not an
    ensemble); ValueError naming the ensemble and the member otherwise."""
    path = Path(path)
    folder = path.parent
    if (not isinstance(member, str) or not member or "/" in member or "\\" in member or member in (".", "..")
            or Path(member).name != member or Path(member).suffix not in MODEL_SUFFIXES):
        raise ValueError(f"ensemble {path}: member {member!r} must be a .keras/.joblib file name in {folder} "
                         "(no folder, no '..', not an ensemble)")
    file = folder / member
    for p in (file, file.with_suffix(".json")):
        if p.is_symlink() and p.resolve().parent != folder.resolve():
            raise ValueError(f"ensemble {path}: member file {p.name} is a link leading out of {folder} "
                             f"(to {p.resolve()}); members must lie in the ensemble's folder")
    return file


def members_normals(spec: Mapping[str, Any], path: str | os.PathLike) -> str:
    """The training normals the members of ``spec`` share (``sidecar.training_normals``: all, adult or unknown);
    ValueError naming the ensemble when two members record different normals."""
    from .sidecar import read_sidecar, training_normals
    found = {m: training_normals(read_sidecar(member_path(spec, m, path))) for m in spec["members"]}
    known = {v for v in found.values() if v != "unknown"}
    if len(known) > 1:
        raise ValueError(f"ensemble {path}: members were trained with different normals ({found}); an ensemble's "
                         "caution needs one: combine models trained on the same normals")
    return known.pop() if known else "unknown"


def check_ensemble(spec: Mapping[str, Any], path: str | os.PathLike) -> None:
    """ValueError naming ``path`` and the problem when ``spec`` is not a usable ensemble.

    Its own fields as a sidecar's (``sidecar.check_fields``: threshold, classes, image size, normals), a
    finite positive weight per member summing to 1, every member a model file in the same folder
    (``member_path``) whose sidecar is valid and whose classes, input and normals agree with the ensemble.
    """
    from .sidecar import InvalidSidecar, check_fields, read_sidecar, training_normals
    path = Path(path)
    if spec.get("kind") != KIND:
        raise ValueError(f"{path} is not an ensemble JSON (kind {spec.get('kind')!r}, expected {KIND!r}); "
                         "to score one model pass its .keras or .joblib file, not its sidecar")
    missing = [k for k in ("members", "member_weights", "classes", "image_size", "threshold") if k not in spec]
    if missing:
        raise ValueError(f"ensemble {path} lacks {missing}")
    check_fields(spec, path)
    members, w = spec["members"], spec["member_weights"]
    if not isinstance(members, list) or not members:
        raise InvalidSidecar(path, "members", f"must be a non-empty list of model file names, got {members!r}")
    if not isinstance(w, list) or len(members) != len(w):
        raise InvalidSidecar(path, "member_weights", f"must hold one weight per member ({len(members)}), got {w!r}")
    if (any(not isinstance(x, (int, float)) or isinstance(x, bool) or not np.isfinite(x) or x <= 0 for x in w)
            or abs(sum(w) - 1) > 1e-6):
        raise InvalidSidecar(path, "member_weights", f"must be finite and positive and sum to 1, got {w}")
    if len(spec["classes"]) == 2 and spec["threshold"] is None:
        raise ValueError(f"ensemble {path} stores no threshold for its binary classes; choose it on validation")
    for m in members:
        side = read_sidecar(member_path(spec, m, path))  # ValueError naming the missing or bad model or sidecar
        if list(side["classes"]) != list(spec["classes"]):
            raise ValueError(f"ensemble {path}: member {m} has classes {side['classes']}, the ensemble "
                             f"{spec['classes']}")
        if input_spec(side) != input_spec(spec):
            raise ValueError(f"ensemble {path}: member {m} takes {side['image_size']} px input "
                             f"(clahe {input_spec(side)[1]}), the ensemble {spec['image_size']} px "
                             f"(clahe {input_spec(spec)[1]}): every member must share one input")
    shared, own = members_normals(spec, path), training_normals(spec)
    if "unknown" not in (shared, own) and shared != own:
        raise InvalidSidecar(path, "normals", f"says {own!r} but its members were trained with {shared!r} normals")


def is_ensemble(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ensemble JSON (a ``.json`` whose ``kind`` is "ensemble")."""
    from .sidecar import read_json_object
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return read_json_object(path, "ensemble file").get("kind") == KIND
    except ValueError:
        return False


def load_ensemble(path: str | os.PathLike) -> dict:
    """The checked ``ensemble.json`` (ValueError naming the file when it is missing or unusable).

    An ensemble saved before its ``normals`` were recorded gets its members' common normals.
    """
    from .sidecar import read_json_object
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ensemble file {path} does not exist (notebook 06 writes it)")
    spec = read_json_object(path, "ensemble file")
    check_ensemble(spec, path)
    if "normals" not in spec and members_normals(spec, path) != "unknown":  # saved before it was recorded
        spec["normals"] = members_normals(spec, path)
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
