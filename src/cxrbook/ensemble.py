"""Notebook 06's soft-voting ensemble: members and weights fixed on VALIDATION only, saved, and scored.

Why: one reference work averaged the outputs of ResNet-101 and ResNet-152. Averaging
models whose errors differ can beat each of them; whether it does here is measured, with
a paired test against the ensemble's best member.

How the members are chosen (``choose_members``): greedy forward selection **with
replacement** by validation AUC (Caruana, Niculescu-Mizil, Crew and Ksikes, "Ensemble
selection from libraries of models", ICML 2004), started from the ``init`` best single
models ("sorted initialisation", which the authors found curbs over-fitting of the
hill-climb to a small selection set; it also makes every ensemble hold at least two
models). Each step adds the model (already chosen or not) whose addition gives the highest
validation AUC of the averaged scores; after ``max_steps`` steps the prefix of this path
with the highest validation AUC is kept (the shortest on ties). A model added n times has
weight n / (number of steps kept). Only validation labels and scores are arguments: test
data cannot influence the choice. Models whose validation scores are constant
(``comparison.degenerate_reason``) or that the caller excludes are listed with their
reason and never chosen.

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

Every member must take the same input (image size and CLAHE): ``predict``/``evaluate``
preprocess a file once, as the training pipeline did at that size, and feed it to every
member (``ensemble_scorer``). Models with another input (e.g. the 64 px custom CNN beside
80 px backbones) are left out of the candidates with that reason (``member_files``).

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
METHOD = ("greedy forward selection with replacement by validation AUC (Caruana et al. 2004), "
          "sorted initialisation with the best single models")
COMBINE = "weighted mean of the members' class probabilities (soft voting)"
# Why notebook 06 does not pick the ensemble for the published-claims row by validation AUC: that AUC is
# the very quantity its member choice maximised, so it is biased upwards against the single models'.
OPTIMISTIC_ON_VALIDATION = ("its members and weights were chosen to maximise validation AUC, so its validation "
                            "AUC is optimistic and cannot rank it against single models")


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


# --------------------------------------------------------------------------- choosing on validation

@dataclasses.dataclass
class Choice:
    """Members and weights chosen on validation, and the record of how."""

    members: list[str]          # distinct model names, in the order they were first chosen
    weights: list[float]        # one per member, summing to 1
    validation_auc: float       # validation AUC of the weighted mean
    best_member: str            # the member with the highest validation AUC on its own
    metric: str                 # "roc_auc" (binary) or "macro_auc"
    steps: list[str]            # the greedy path kept (one model name per step)
    table: Any                  # pandas DataFrame: one row per candidate

    def combine(self, member_scores: Mapping[str, Any]) -> np.ndarray:
        """The ensemble's scores from ``member_scores`` (name -> scores on the same images)."""
        missing = [n for n in self.members if n not in member_scores]
        if missing:
            raise ValueError(f"no scores for ensemble members {missing}")
        return combine([member_scores[n] for n in self.members], self.weights)

    def describe(self) -> dict:
        """JSON-ready ``chosen_by`` entry of ``ensemble.json``."""
        from .records import to_jsonable
        return to_jsonable({"method": METHOD, "data": "validation split only", "metric": f"validation {self.metric}",
                            "validation_auc": self.validation_auc, "best_member": self.best_member,
                            "steps": self.steps, "candidates": self.table})


def _auc(y: np.ndarray, s: np.ndarray, classes: Sequence[str]) -> float:
    from .metrics import compute_metrics
    binary = len(classes) == 2
    return float(compute_metrics(y, s, classes, 0.5 if binary else None)["roc_auc" if binary else "macro_auc"])


def choose_members(val: Mapping[str, tuple[Any, Any]], classes: Sequence[str],
                   exclude: Mapping[str, str] | None = None, init: int = 2, max_steps: int = 25) -> Choice:
    """Members and weights by greedy forward selection with replacement on VALIDATION AUC.

    ``val`` maps model name -> (validation labels, validation scores), in declared order
    (ties go to the first declared). ``exclude`` (name -> reason) and models with
    degenerate validation scores are never chosen. Test data is not an argument.
    Raises ValueError when fewer than two models can be chosen from.
    """
    import pandas as pd

    from .comparison import degenerate_reason
    exclude = {k: v for k, v in (exclude or {}).items() if v}
    metric = "roc_auc" if len(classes) == 2 else "macro_auc"
    names = list(val)
    y = None
    rows, usable = [], []
    for name in names:
        y_n, s_n = val[name]
        y_n = np.asarray(y_n)
        if y is None:
            y = y_n
        elif not np.array_equal(y, y_n):
            raise ValueError(f"{name}'s validation labels differ from {names[0]}'s: score the same validation images")
        reason = exclude.get(name) or degenerate_reason(s_n)
        auc = None if reason else _auc(y, np.asarray(s_n, float), classes)
        if auc is not None and not np.isfinite(auc):
            reason, auc = f"validation {metric} undefined", None
        rows.append({"model": name, f"validation {metric}": auc, "excluded": reason or ""})
        if not reason:
            usable.append(name)
    if len(usable) < 2:
        raise ValueError(f"an ensemble needs at least two usable models; usable: {usable or 'none'} "
                         f"(left out: {[(r['model'], r['excluded']) for r in rows if r['excluded']]})")
    single = {r["model"]: r[f"validation {metric}"] for r in rows if not r["excluded"]}
    ranked = sorted(usable, key=lambda n: (-single[n], names.index(n)))
    scores = {n: np.asarray(val[n][1], dtype=float) for n in usable}
    path = ranked[:max(1, min(init, len(ranked)))]
    total = sum(scores[n] for n in path)
    history = [_auc(y, total / len(path), classes)]
    for _ in range(max(0, max_steps - len(path))):
        trial = [(_auc(y, (total + scores[n]) / (len(path) + 1), classes), -usable.index(n), n) for n in usable]
        auc, _, n = max(trial)
        path.append(n)
        total = total + scores[n]
        history.append(auc)
    first = len(path) - len(history)  # history[i] is the AUC of path[:first + i + 1]
    keep = first + 1 + int(np.argmax(history))   # argmax: the earliest (shortest) on ties
    steps = path[:keep]
    members = list(dict.fromkeys(steps))
    weights = [steps.count(n) / len(steps) for n in members]
    by = dict(zip(members, weights))
    table = pd.DataFrame(rows)
    table["weight"] = [by.get(n, 0.0) for n in table["model"]]
    best = max(members, key=lambda n: (single[n], -names.index(n)))
    return Choice(members, weights, float(max(history)), best, metric, steps, table)


# --------------------------------------------------------------------------- candidates from the outputs folder

def model_file(models_dir: str | os.PathLike, name: str) -> Path | None:
    """The saved model file of ``name`` in ``models_dir`` (``.keras`` or ``.joblib`` with a sidecar), or None."""
    for suffix in MODEL_SUFFIXES:
        p = Path(models_dir) / f"{name}{suffix}"
        if p.is_file() and p.with_suffix(".json").is_file():
            return p
    return None


def _input(sidecar: Mapping) -> tuple[int, bool]:
    return int(sidecar["image_size"]), bool((sidecar.get("preprocessing") or {}).get("clahe"))


def member_files(models_dir: str | os.PathLike, names: Sequence[str], classes: Sequence[str],
                 image_size: int, clahe: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> model file name, name -> why it cannot be a member) for the models ``names``.

    A candidate needs a saved model file (so ``predict`` can score the ensemble), the
    ensemble's classes, and the input ``image_size`` / ``clahe`` every member shares.
    """
    from .sidecar import read_sidecar
    files, left_out = {}, {}
    for name in names:
        p = model_file(models_dir, name)
        if p is None:
            left_out[name] = f"no saved model file ({name}.keras or {name}.joblib) in {models_dir}"
            continue
        side = read_sidecar(p)
        if list(side["classes"]) != list(classes):
            left_out[name] = f"classes {side['classes']} differ from {list(classes)}"
        elif _input(side) != (int(image_size), bool(clahe)):
            left_out[name] = (f"input {side['image_size']} px (clahe {_input(side)[1]}) differs from the ensemble's "
                              f"{image_size} px (clahe {bool(clahe)}): members share one preprocessed image")
        else:
            files[name] = p.name
    return files, left_out


def load_member_scores(paths, names: Sequence[str], classes: Sequence[str], split: str,
                       image_paths: Sequence[str] | None = None) -> tuple[Any, dict]:
    """(rows, name -> scores) of one split from ``outputs/metrics/<name>_scores.csv``, on the same images.

    Raises ValueError when a model was scored on other images of ``split`` than the
    first one, or than ``image_paths`` in that order (e.g. ``data.test.image_path``).
    """
    from .experiment import load_scores
    rows, out = None, {}
    expected = None if image_paths is None else [str(p) for p in image_paths]
    for name in names:
        r, s = load_scores(paths, name, classes, split=split)
        if rows is None:
            rows = r
        if list(r["image_path"]) != (expected or list(rows["image_path"])):
            raise ValueError(f"{name} was scored on other {split} images (or in another order) than "
                             f"{'the data' if expected else names[0]}")
        out[name] = s
    return rows, out


def sidecar_for(models_dir: str | os.PathLike, files: Mapping[str, str], choice: Choice, task: str) -> dict:
    """The sidecar part of ``ensemble.json`` for ``choice``: input, classes and weights read from the
    members' own sidecars, and how the members were chosen."""
    from .sidecar import read_sidecar
    sides = [read_sidecar(Path(models_dir) / files[n]) for n in choice.members]
    return {"classes": list(sides[0]["classes"]), "task": task, "image_size": int(sides[0]["image_size"]),
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": _input(sides[0])[1],
                              "inside_model": "each member's own (see its sidecar)"},
            "weights": pretrained_weights(sides), "display_name": display_name(choice),
            "threshold_rule": "youden on validation", "chosen_by": choice.describe()}


def pretrained_weights(sidecars: Sequence[Mapping[str, Any]]) -> str:
    """The members' pretrained weights as their sidecars name them, e.g. "none; none (classical)"."""
    return "; ".join(dict.fromkeys(str(s.get("weights", "unknown")) for s in sidecars))


def display_name(choice: Choice) -> str:
    """A readable name for tables and figures."""
    return f"Soft-voting ensemble of {len(choice.members)} (chosen on validation)"


# --------------------------------------------------------------------------- saving and loading

def save_ensemble(path: str | os.PathLike, members: Sequence[str], weights: Sequence[float],
                  threshold: float | None, sidecar: Mapping[str, Any]) -> Path:
    """Write ``ensemble.json`` (schema in the module docstring), atomically; returns its path.

    ``members``: model FILE names in the same folder as ``path`` (each with its sidecar);
    ``sidecar``: classes, task, image_size, preprocessing, weights (pretrained) and
    chosen_by. Refuses members whose files are missing or whose input or classes differ.
    """
    from .atomic import write_json
    from .records import to_jsonable
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
        if _input(side) != _input(spec):
            raise ValueError(f"ensemble {path}: member {m} takes {side['image_size']} px input "
                             f"(clahe {_input(side)[1]}), the ensemble {spec['image_size']} px "
                             f"(clahe {_input(spec)[1]}): every member must share one input")


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
    from .experiment import model_name
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
