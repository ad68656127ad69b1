"""Notebook 06's ensemble choice: members and weights fixed on VALIDATION only.

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
data cannot influence the choice. The single models are ranked by
``comparison.validation_ranking``, the ranking notebook 06's claims model comes from: models
whose validation scores are constant or that the caller excludes are listed with their
reason and never chosen.

Candidates (``member_files``): saved models with the ensemble's classes and the input every
member shares (:func:`cxrbook.models.ensemble.input_spec`); models with another input (e.g. the 64 px
custom CNN beside 80 px backbones) are left out with that reason. ``load_member_scores``
reads their saved scores of one split; ``sidecar_for`` describes the choice for
:func:`cxrbook.models.ensemble.save_ensemble`, which writes ``ensemble.json``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..models.ensemble import MODEL_SUFFIXES, combine, input_spec
from .metrics import YOUDEN_ON_VALIDATION, auc_name

METHOD = ("greedy forward selection with replacement by validation AUC (Caruana et al. 2004), "
          "sorted initialisation with the best single models")
# Why notebook 06 does not pick the ensemble for the published-claims row by validation AUC: that AUC is
# the very quantity its member choice maximised, so it is biased upwards against the single models'.
OPTIMISTIC_ON_VALIDATION = ("its members and weights were chosen to maximise validation AUC, so its validation "
                            "AUC is optimistic and cannot rank it against single models")


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
        from ..atomic import to_jsonable
        return to_jsonable({"method": METHOD, "data": "validation split only", "metric": f"validation {self.metric}",
                            "validation_auc": self.validation_auc, "best_member": self.best_member,
                            "steps": self.steps, "candidates": self.table})


def choose_members(val: Mapping[str, tuple[Any, Any]], classes: Sequence[str],
                   exclude: Mapping[str, str] | None = None, init: int = 2, max_steps: int = 25) -> Choice:
    """Members and weights by greedy forward selection with replacement on VALIDATION AUC.

    ``val`` maps model name -> (validation labels, validation scores), in declared order
    (ties go to the first declared). The single models are ranked by
    ``comparison.validation_ranking`` (the ranking the claims model comes from): ``exclude``
    (name -> reason), constant scores and undefined AUCs are never chosen. Test data is not an
    argument. Raises ValueError when fewer than two models can be chosen from.
    """
    from .comparison import validation_auc, validation_ranking
    names = list(val)
    y = np.asarray(val[names[0]][0]) if names else None
    for name in names[1:]:
        if not np.array_equal(y, np.asarray(val[name][0])):
            raise ValueError(f"{name}'s validation labels differ from {names[0]}'s: score the same validation images")
    table = validation_ranking(val, classes, exclude)
    metric, col = auc_name(classes), f"validation {auc_name(classes)}"
    usable = table.loc[table["excluded"] == "", "model"].tolist()
    if len(usable) < 2:
        raise ValueError(f"an ensemble needs at least two usable models; usable: {usable or 'none'} "
                         f"(left out: {[(m, r) for m, r in zip(table['model'], table['excluded']) if r]})")
    single = dict(zip(table["model"], table[col]))
    ranked = sorted(usable, key=lambda n: (-single[n], names.index(n)))
    scores = {n: np.asarray(val[n][1], dtype=float) for n in usable}
    path = ranked[:max(1, min(init, len(ranked)))]
    total = sum(scores[n] for n in path)
    history = [validation_auc(y, total / len(path), classes)]
    for _ in range(max(0, max_steps - len(path))):
        trial = [(validation_auc(y, (total + scores[n]) / (len(path) + 1), classes), -usable.index(n), n)
                 for n in usable]
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


def member_files(models_dir: str | os.PathLike, names: Sequence[str], classes: Sequence[str],
                 image_size: int, clahe: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> model file name, name -> why it cannot be a member) for the models ``names``.

    A candidate needs a saved model file (so ``predict`` can score the ensemble), the
    ensemble's classes, and the input ``image_size`` / ``clahe`` every member shares.
    """
    from ..models.sidecar import read_sidecar
    files, left_out = {}, {}
    for name in names:
        p = model_file(models_dir, name)
        if p is None:
            left_out[name] = f"no saved model file ({name}.keras or {name}.joblib) in {models_dir}"
            continue
        side = read_sidecar(p)
        if list(side["classes"]) != list(classes):
            left_out[name] = f"classes {side['classes']} differ from {list(classes)}"
        elif input_spec(side) != (int(image_size), bool(clahe)):
            left_out[name] = (f"input {side['image_size']} px (clahe {input_spec(side)[1]}) differs from the ensemble's "
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
    from ..models.sidecar import read_sidecar
    sides = [read_sidecar(Path(models_dir) / files[n]) for n in choice.members]
    return {"classes": list(sides[0]["classes"]), "task": task, "image_size": int(sides[0]["image_size"]),
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": input_spec(sides[0])[1],
                              "inside_model": "each member's own (see its sidecar)"},
            "weights": pretrained_weights(sides), "display_name": display_name(choice),
            "threshold_rule": YOUDEN_ON_VALIDATION, "chosen_by": choice.describe()}


def pretrained_weights(sidecars: Sequence[Mapping[str, Any]]) -> str:
    """The members' pretrained weights as their sidecars name them, e.g. "none; none (classical)"."""
    return "; ".join(dict.fromkeys(str(s.get("weights", "unknown")) for s in sidecars))


def display_name(choice: Choice) -> str:
    """A readable name for tables and figures."""
    return f"Soft-voting ensemble of {len(choice.members)} (chosen on validation)"
