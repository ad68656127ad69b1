"""Notebook 07: the trust audit. Does a model read the lungs, or where the image came from?

Five checks, each on the same patient-level protocol as notebooks 04-06
(threshold chosen on validation, 95 % intervals from a patient bootstrap):

* **normals**: the same model trained and tested with adult normals only vs all
  normals (pediatric included), with the difference of every headline metric
  and its interval (one patient bootstrap of both test sets: the adult-only test set lies
  inside the all-normals one, so patients are drawn once from their union);
* **source probe**: a pixel classifier predicting the *collection* an image came
  from; if it beats the majority share by far, labels are confounded with source;
* **lungs hidden**: the model retrained with the central box blanked (lungs
  hidden) and with only the central box kept, beside the unmasked model;
* **groups**: existing models' test performance per view and per sex, with
  "too few" instead of a number where a group cannot support one;
* **calibration**: reliability, Brier and ECE of every model with a scores file.

Each check is made of runs of ``audit_runs`` (one variant trained and scored on
optionally masked images, and the difference of two runs); the sentences
(``audit_report``) are generated from the numbers; nothing here is a diagnosis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..config import display_name, model_name
from ..evaluation import experiment as E
from ..atomic import to_jsonable, write_json
from ..evaluation import metrics as M
from ..evaluation import records as R
from ..evaluation.intervals import patient_counts, proportion_ci
from .runs import MASK_LABELS, MASKS, RunResult, metric_difference, subset_run, train_and_score
from ..models.sidecar import DISCLAIMER
from ..data.pipeline import CachedData, SplitArrays
from ..data.splits import pediatric_normal

MIN_GROUP_IMAGES = 10
# A probe or a lungs-hidden model "beats chance" when the lower end of its 95 %
# interval clears chance by this margin (an interval that touches chance does not count).
MARGIN = 0.05


# --------------------------------------------------------------------------- helpers

def save_audit(audit: dict, path: str | Path) -> Path:
    """Write the audit dict as JSON (sorted keys, NaN -> null), with the disclaimer and provenance on top."""
    from ..provenance import code_stamp
    body = to_jsonable({"note": f"cxrbook trust audit: {DISCLAIMER}", "provenance": code_stamp(), **audit})
    return write_json(body, path, allow_nan=False)


# --------------------------------------------------------------------------- 1. normals

def normals_data(clean: pd.DataFrame, task: str, normals: str, image_size: int, seed: int,
                 cache_dir: str | Path | None, clahe: bool = False) -> tuple[pd.DataFrame, CachedData]:
    """Patient-level split of ``select(clean, task, normals)`` and its cached arrays."""
    from ..data.pipeline import load_arrays
    from ..data.splits import patient_split, select
    df = patient_split(select(clean, task, normals), seed=seed)
    return df, load_arrays(df, image_size, clahe=clahe, cache_dir=cache_dir, progress=False)


def compare_normals(clean: pd.DataFrame, task: str, *, image_size: int, epochs: int, batch_size: int = 32,
                    seed: int = 42, n_boot: int = 200, arch: str = "custom_cnn", augment: bool = False,
                    cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train and test the same model with ``normals="adult"`` and ``normals="all"``.

    Returns ``{"runs": {"adult": RunResult, "all": RunResult, "all_on_adult_test": RunResult},
    "difference": {metric: {value, ci95}}, "data": {normals: CachedData}, "splits": {normals: df}}``.
    ``all_on_adult_test`` is the all-normals model scored only on its test images
    that are not pediatric normals (same threshold): what it does on adults.
    """
    from ..data.splits import classes_for
    classes = classes_for(task)
    runs, datas, splits = {}, {}, {}
    for normals in ("adult", "all"):
        df, data = normals_data(clean, task, normals, image_size, seed, cache_dir)
        run = train_and_score(data, classes, arch=arch, epochs=epochs, batch_size=batch_size, seed=seed,
                              augment=augment, n_boot=n_boot, name=f"{arch} normals={normals}", progress=progress)
        run.info.update(normals=normals, n_pediatric_test=int(_pediatric_normal(df, run.image_path_test).sum()))
        runs[normals], datas[normals], splits[normals] = run, data, df
    ped = _pediatric_normal(splits["all"], runs["all"].image_path_test)
    if ped.any() and len(set(runs["all"].y_test[~ped])) == len(classes):
        sub = subset_run(runs["all"], ~ped, f"{arch} normals=all, tested on adult normals only", n_boot, seed)
        sub.info.update(normals="all (test without pediatric normals)", n_pediatric_test=0)
        runs["all_on_adult_test"] = sub
    diff = metric_difference(runs["adult"], runs["all"], n_boot=n_boot, seed=seed)
    return {"runs": runs, "difference": diff, "data": datas, "splits": splits, "classes": classes}


def save_normals_models(result: dict, paths, task: str, profile: str = "") -> list[Path]:
    """Save the adult- and all-normals models of :func:`compare_normals` for notebook 08's external test.

    Writes ``models/<arch>__normals_<normals>.keras`` with a sidecar holding the threshold
    chosen on that run's own validation split, and ``metrics/<same name>.json`` (its
    test report). No ``_scores.csv`` is written, so sections 4-5 of notebook 07 (which
    list models by their scores files) are unchanged. Logistic-regression runs hold no
    Keras model and are not saved. Returns the saved model paths.
    """
    from ..provenance import code_stamp
    from ..models.training import save_model
    saved = []
    for normals in ("adult", "all"):
        run = result["runs"][normals]
        if run.model is None:
            continue
        name = model_name(f"{run.arch}__normals_{normals}", task)
        size = int(result["data"][normals].image_size)
        weights = "none (trained from scratch)"
        saved.append(save_model(run.model, paths.models / f"{name}.keras", sidecar={
            "classes": list(run.classes), "image_size": size, "task": task, "threshold": run.threshold,
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
            "weights": weights, "backbone": run.arch, "normals": normals,
            "display_name": display_name(name)}, parity=result["data"][normals].val.x))
        record = R.metrics_record(run.report, model=name, task=task, weights=weights,
                                  threshold_rule=M.YOUDEN_ON_VALIDATION if run.threshold is not None else "argmax",
                                  extra={"image_size": size, "normals": normals, "profile": profile,
                                         "display_name": display_name(name),
                                         "n_train": run.n_train, "n_val": run.n_val, "augmentation": False,
                                         "trained_by": "notebook 07, audit.compare_normals",
                                         "provenance": code_stamp()})
        R.save_metrics(record, paths.metrics / f"{name}.json")
    return saved


def _pediatric_normal(df: pd.DataFrame, image_paths: np.ndarray) -> np.ndarray:
    """Boolean per image path of ``df``: ``splits.pediatric_normal``."""
    d = df.drop_duplicates("image_path").set_index("image_path")
    ped = pd.Series(pediatric_normal(d["label"], d["source"], d["age_group"] if "age_group" in d else None),
                    index=d.index)
    return ped.reindex(pd.Index(image_paths)).fillna(False).to_numpy(dtype=bool)


# --------------------------------------------------------------------------- 2. source probe

def source_probe(data: CachedData, size: int = 32, n_boot: int = 1000, seed: int = 42,
                 C: float = 0.01) -> dict:
    """Logistic regression predicting the SOURCE collection from downsampled pixels.

    Fitted on train + validation, scored on test (patient-level split, so no
    patient is on both sides). Returns accuracy with its 95 % interval (a proportion over
    patients: ``intervals.proportion_ci``; ``n_boot`` is unused since),
    balanced accuracy, the chance level (share of the most common source in
    test), per-source recall, the confusion matrix, accuracy within each label
    and the ``confounded`` flag (accuracy interval above chance + MARGIN).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def flat(arr: SplitArrays) -> np.ndarray:
        return E.thumbnails(arr.x, size)

    sources = sorted(set(data.train.source) | set(data.val.source) | set(data.test.source))
    if len(sources) < 2:
        raise ValueError(f"the source probe needs at least two sources, got {sources}")
    x_fit = np.concatenate([flat(data.train), flat(data.val)])
    y_fit = np.concatenate([data.train.source, data.val.source])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=3000,
                                                             random_state=seed))
    clf.fit(x_fit, y_fit)
    y_test = np.asarray(data.test.source)
    pred = clf.predict(flat(data.test))
    correct = (pred == y_test).astype(float)
    shares = pd.Series(y_test).value_counts(normalize=True)
    acc = float(correct.mean())
    ci = list(proportion_ci(*patient_counts(correct.astype(bool), np.asarray(data.test.patient_id))))
    chance = float(shares.iloc[0])
    by_label = {}
    for lab in sorted(set(data.test.labels)):
        m = np.asarray(data.test.labels) == lab
        sub_shares = pd.Series(y_test[m]).value_counts(normalize=True)
        by_label[str(lab)] = {"n": int(m.sum()), "sources": sorted(str(v) for v in set(y_test[m])),
                              "accuracy": float(correct[m].mean()),
                         "chance": float(sub_shares.iloc[0])}
    cm = confusion_matrix(y_test, pred, labels=sources)
    recall = {s: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, s in enumerate(sources)}
    label_by_source = pd.crosstab(pd.Series(np.concatenate([data[s].source for s in ("train", "val", "test")]),
                                            name="source"),
                                  pd.Series(np.concatenate([data[s].labels for s in ("train", "val", "test")]),
                                            name="label"))
    return {"features": f"{size}x{size} pixels, standardized; logistic regression C={C}, balanced classes",
            "sources": sources, "n_fit": int(len(y_fit)), "n_test": int(len(y_test)),
            "n_test_patients": int(len(set(data.test.patient_id))),
            "accuracy": R.metric_entry(acc, ci, method="wilson_deff"),
            "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
            "chance_majority_share": chance, "majority_source": str(shares.index[0]),
            "chance_balanced": 1.0 / len(sources), "recall_per_source": recall,
            "confusion_matrix": cm.tolist(), "accuracy_within_label": by_label,
            "label_by_source": {str(s): {str(k): int(v) for k, v in row.items()}
                                for s, row in label_by_source.iterrows()},
            "confounded": bool(ci[0] > chance + MARGIN)}


# --------------------------------------------------------------------------- 3. lungs hidden

def masking_experiment(data: CachedData, classes: Sequence[str], *, fraction: float = 0.6, arch: str = "custom_cnn",
                       epochs: int = 2, batch_size: int = 32, seed: int = 42, n_boot: int = 200,
                       augment: bool = False, unmasked: RunResult | None = None, progress: bool = True) -> dict:
    """Unmasked, center-blanked and center-only variants of the same model and protocol.

    ``unmasked``: an already trained unmasked run on the same data (reused, not retrained).
    Returns ``{"runs": {mask: RunResult}, "fraction", "difference_blanked_minus_unmasked", "shortcut_suspected"}``.
    """
    runs = {}
    for mask in MASKS:
        if mask == "none" and unmasked is not None:
            runs[mask] = unmasked
            continue
        runs[mask] = train_and_score(data, classes, arch=arch, epochs=epochs, batch_size=batch_size, seed=seed,
                                     augment=augment, mask=mask, mask_fraction=fraction, n_boot=n_boot,
                                     name=f"{arch} {MASK_LABELS[mask]}", progress=progress)
    auc = M.auc_name(classes)
    blanked = runs["center_blanked"].metric(auc)
    lo = blanked["ci95"][0]
    return {"runs": runs, "fraction": float(fraction), "auc_metric": auc,
            "difference_blanked_minus_unmasked": metric_difference(runs["center_blanked"], runs["none"],
                                                                   n_boot=n_boot, seed=seed, metrics=(auc,))[auc],
            "shortcut_suspected": bool(lo is not None and lo > 0.5 + MARGIN)}


# --------------------------------------------------------------------------- 4. groups


# --------------------------------------------------------------------------- 5. calibration


# --------------------------------------------------------------------------- figures


# --------------------------------------------------------------------------- the record

def run_summary(result: dict) -> dict:
    """JSON-ready version of a compare_normals / masking_experiment result (no arrays)."""
    out = {k: v for k, v in result.items() if k not in ("runs", "data", "splits")}
    out["runs"] = {k: r.summary() for k, r in result["runs"].items()}
    return out


# --------------------------------------------------------------------------- CLAHE, measured

CLAHE_LABELS = {"plain": "without CLAHE", "clahe": "with CLAHE"}


def clahe_comparison(splits: pd.DataFrame, classes: Sequence[str], *, image_size: int,
                     archs: Sequence[str] = ("logreg",), epochs: int = 2, batch_size: int = 32, seed: int = 42,
                     n_boot: int = 200, cache_dir: str | Path | None = None,
                     plain: CachedData | None = None, plain_runs: dict[str, RunResult] | None = None) -> dict:
    """The same models trained and tested with and without CLAHE on the same patient-level split.

    For each ``arch`` (see :func:`train_and_score`) one run on plain and one on
    CLAHE-equalised images (``pipeline.load_arrays(clahe=True)``, same splits, same
    seed); the AUC difference CLAHE - plain is a **paired** patient bootstrap on the
    same test images (``metrics.paired_auc_test``). The source probe
    (:func:`source_probe`) runs on both versions of the images: does CLAHE hide or
    reveal the collection an image came from? ``plain``: already cached plain
    arrays of ``splits`` at ``image_size`` (reused); ``plain_runs``: ``{arch:
    RunResult}`` already trained on ``plain`` with the same settings (reused, not
    retrained; checked to hold the same test images). Returns ``{"runs": {arch:
    {"plain": RunResult, "clahe": RunResult}}, "paired": {arch: paired_auc_test
    dict}, "probe": {"plain": ..., "clahe": ...}, "auc_metric", "data": {...}}``.
    """
    from ..data.pipeline import load_arrays

    classes = tuple(classes)
    data = {"plain": plain if plain is not None else load_arrays(splits, image_size, clahe=False,
                                                                  cache_dir=cache_dir, progress=False),
            "clahe": load_arrays(splits, image_size, clahe=True, cache_dir=cache_dir, progress=False)}
    if data["plain"].clahe or data["plain"].image_size != image_size:
        raise ValueError("plain must be the arrays without CLAHE at image_size")
    for s in ("train", "val", "test"):
        if not np.array_equal(data["plain"][s].image_path, data["clahe"][s].image_path):
            raise ValueError(f"plain and CLAHE arrays hold different {s} images: pass the same splits")
    runs, paired = {}, {}
    for arch in archs:
        runs[arch] = {}
        for v in ("plain", "clahe"):
            reused = (plain_runs or {}).get(arch) if v == "plain" else None
            if reused is not None:
                if not np.array_equal(reused.image_path_test, data["plain"].test.image_path):
                    raise ValueError(f"the {arch} run passed in plain_runs was tested on other images")
                runs[arch][v] = reused
                continue
            runs[arch][v] = train_and_score(data[v], classes, arch=arch, epochs=epochs, batch_size=batch_size,
                                            seed=seed, n_boot=n_boot, name=f"{arch} {v}")
        a, b = runs[arch]["clahe"], runs[arch]["plain"]
        paired[arch] = M.paired_auc_test(a.y_test, a.scores_test, b.scores_test, a.patient_test,
                                         n_boot=n_boot, seed=seed)
    probe = {v: source_probe(data[v], n_boot=n_boot, seed=seed) for v in ("plain", "clahe")}
    return {"runs": runs, "paired": paired, "probe": probe, "auc_metric": M.auc_name(classes),
            "classes": classes, "image_size": int(image_size), "data": data}
