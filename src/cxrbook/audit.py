"""Notebook 07: the trust audit. Does a model read the lungs, or where the image came from?

Five checks, each on the same patient-level protocol as notebooks 04-06
(threshold chosen on validation, 95 % intervals from a patient bootstrap):

* **normals**: the same model trained and tested with adult normals only vs all
  normals (pediatric included), with the difference of every headline metric
  and its interval (independent patient bootstraps of the two test sets);
* **source probe**: a pixel classifier predicting the *collection* an image came
  from; if it beats the majority share by far, labels are confounded with source;
* **lungs hidden**: the model retrained with the central box blanked (lungs
  hidden) and with only the central box kept, beside the unmasked model;
* **groups**: existing models' test performance per view and per sex, with
  "too few" instead of a number where a group cannot support one;
* **calibration**: reliability, Brier and ECE of every model with a scores file.

Every sentence in :func:`sentences` is generated from the numbers; nothing here
is a diagnosis.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import experiment as E
from .atomic import write_json
from . import metrics as M
from . import records as R
from . import metric_plots as MP
from .records import fmt
from .pipeline import CachedData, SplitArrays, encode_labels, to_rgb_float

DISCLAIMER = "research tool, not a diagnosis"
ARCHS = ("custom_cnn", "improved_cnn", "logreg")
MASKS = ("none", "center_blanked", "center_only")
MASK_LABELS = {"none": "unmasked", "center_blanked": "center blanked (lungs hidden)",
               "center_only": "only the center kept"}
MIN_GROUP_IMAGES = 10
# A probe or a lungs-hidden model "beats chance" when the lower end of its 95 %
# interval clears chance by this margin (an interval that touches chance does not count).
MARGIN = 0.05


# --------------------------------------------------------------------------- helpers

def headline_metrics(classes: Sequence[str]) -> tuple[str, ...]:
    """The metrics the audit reports: binary AUC, accuracy, sensitivity, specificity;
    multi-class macro AUC, accuracy, macro F1 and COVID-19 sensitivity."""
    if len(classes) == 2:
        return ("roc_auc", "accuracy", "sensitivity", "specificity")
    extra = (f"sensitivity_{classes[0]}",) if "covid" not in classes else ("sensitivity_covid",)
    return ("macro_auc", "accuracy", "macro_f1", *extra)


def auc_name(classes: Sequence[str]) -> str:
    """``roc_auc`` for a binary task, ``macro_auc`` otherwise."""
    return "roc_auc" if len(classes) == 2 else "macro_auc"


def save_audit(audit: dict, path: str | Path) -> Path:
    """Write the audit dict as JSON (sorted keys, NaN -> null), with the disclaimer and provenance on top."""
    from .manifest import provenance
    body = R.to_jsonable({"note": f"cxrbook trust audit: {DISCLAIMER}", "provenance": provenance(), **audit})
    return write_json(body, path, allow_nan=False)


# --------------------------------------------------------------------------- masks

def center_box(size: int, fraction: float) -> tuple[int, int]:
    """[lo, hi) pixel bounds of the centred square covering ``fraction`` of each side."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"mask fraction must lie strictly between 0 and 1, got {fraction}")
    side = int(round(size * fraction))
    lo = (size - side) // 2
    return lo, lo + side


def apply_mask(x: np.ndarray, mask: str, fraction: float = 0.6, fill: float | None = None) -> np.ndarray:
    """Copy of uint8 images (n, s, s[, 1]) with a region set to one constant grey.

    ``mask="center_blanked"``: the central box (``fraction`` of each side) is
    blanked, so the lungs are hidden; ``"center_only"``: everything *outside*
    the box is blanked; ``"none"``: unchanged copy. ``fill``: the grey value
    (``train_and_score`` passes the training images' mean); None uses the mean
    of ``x``. One constant for every image, not each image's own mean: that
    would write each image's overall brightness (which differs by disease and
    by source) into the blank and leak it to the model.
    """
    if mask not in MASKS:
        raise ValueError(f"unknown mask {mask!r}; choose one of {MASKS}")
    x = np.array(x, copy=True)
    if mask == "none":
        return x
    lo, hi = center_box(x.shape[1], fraction)
    inside = np.zeros(x.shape[1:3], dtype=bool)
    inside[lo:hi, lo:hi] = True
    region = inside if mask == "center_blanked" else ~inside
    value = float(x.mean()) if fill is None else float(fill)
    x[:, region] = np.asarray(np.clip(round(value), 0, 255), dtype=x.dtype)
    return x


# --------------------------------------------------------------------------- training one variant

@dataclass
class RunResult:
    """One trained variant, its test scores and its test report (``metrics.evaluate``)."""

    name: str
    arch: str
    mask: str
    mask_fraction: float
    classes: tuple[str, ...]
    threshold: float | None
    y_test: np.ndarray
    scores_test: np.ndarray
    patient_test: np.ndarray
    image_path_test: np.ndarray
    report: dict
    n_train: int
    n_val: int
    seconds: float
    info: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False)  # the trained Keras model (None for logreg)

    def metric(self, name: str) -> dict:
        """``{"value", "ci95"}`` of one metric."""
        return self.report["metrics"][name]

    def summary(self) -> dict:
        """JSON-ready summary: sizes, threshold, headline metrics with intervals."""
        counts = {c: int((self.y_test == i).sum()) for i, c in enumerate(self.classes)}
        return {"name": self.name, "arch": self.arch, "mask": self.mask, "mask_fraction": self.mask_fraction,
                "n_train": self.n_train, "n_val": self.n_val, "n_test": self.report["n_test"],
                "n_test_patients": self.report["n_patients"], "n_test_per_class": counts,
                "threshold": self.threshold, "seconds": self.seconds,
                "metrics": {m: self.report["metrics"][m] for m in headline_metrics(self.classes)},
                **self.info}


def train_and_score(data: CachedData, classes: Sequence[str], *, arch: str = "custom_cnn", epochs: int = 2,
                    batch_size: int = 32, seed: int = 42, augment: bool = False, mask: str = "none",
                    mask_fraction: float = 0.6, n_boot: int = 200, name: str | None = None) -> RunResult:
    """Train one variant on ``data`` (optionally masked) and evaluate it on its test split.

    ``arch``: ``custom_cnn`` (the reference CNN, ``models.custom_cnn``),
    ``improved_cnn`` or ``logreg`` (logistic regression on 32x32 pixels, seconds).
    The same mask (filled with the training images' mean grey) is applied to
    train, validation and test images. Threshold:
    Youden's J on validation (binary), argmax otherwise.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    classes = tuple(classes)
    t0 = time.perf_counter()
    fill = float(data.train.x.mean())  # one grey for every split and image (see apply_mask)
    xs = {s: apply_mask(data[s].x, mask, mask_fraction, fill) for s in ("train", "val", "test")}
    ys = {s: encode_labels(data[s].labels, classes) for s in ("train", "val", "test")}
    missing = [(s, c) for s in ys for i, c in enumerate(classes) if not (ys[s] == i).any()]
    if missing:
        raise ValueError(f"class(es) absent from splits {missing}: cannot train and evaluate {name or arch}")
    model = None
    if arch == "logreg":
        s_val, s_test = E.pixel_logreg_arrays(xs["train"], ys["train"], xs["val"], xs["test"], len(classes),
                                             seed=seed)
    else:
        from . import models
        build = models.custom_cnn if arch == "custom_cnn" else models.improved_cnn
        model = build(data.image_size, augment=augment, seed=seed, n_classes=len(classes))
        models.fit(model, to_rgb_float(xs["train"]), ys["train"], to_rgb_float(xs["val"]), ys["val"],
                   epochs=epochs, batch_size=batch_size, seed=seed, verbose=0)
        s_val = models.predict_scores(model, to_rgb_float(xs["val"]))
        s_test = models.predict_scores(model, to_rgb_float(xs["test"]))
    threshold = M.choose_threshold(ys["val"], s_val, rule="youden") if len(classes) == 2 else None
    report = M.evaluate(ys["test"], s_test, data.test.patient_id, classes, threshold=threshold,
                        n_boot=n_boot, seed=seed)
    return RunResult(name=name or f"{arch}_{mask}", arch=arch, mask=mask, mask_fraction=float(mask_fraction),
                     classes=classes, threshold=threshold, y_test=ys["test"], scores_test=np.asarray(s_test),
                     patient_test=np.asarray(data.test.patient_id), image_path_test=np.asarray(data.test.image_path),
                     report=report, n_train=len(data.train), n_val=len(data.val),
                     seconds=round(time.perf_counter() - t0, 1), model=model)


def subset_run(run: RunResult, keep: np.ndarray, name: str, n_boot: int, seed: int) -> RunResult:
    """The same trained model re-evaluated on a subset of its test images (threshold unchanged)."""
    keep = np.asarray(keep, dtype=bool)
    y, s, p = run.y_test[keep], run.scores_test[keep], run.patient_test[keep]
    report = M.evaluate(y, s, p, run.classes, threshold=run.threshold, n_boot=n_boot, seed=seed)
    return RunResult(name=name, arch=run.arch, mask=run.mask, mask_fraction=run.mask_fraction, classes=run.classes,
                     threshold=run.threshold, y_test=y, scores_test=s, patient_test=p,
                     image_path_test=run.image_path_test[keep], report=report, n_train=run.n_train,
                     n_val=run.n_val, seconds=0.0, info=dict(run.info))


# --------------------------------------------------------------------------- bootstrap differences

def bootstrap_draws(run: RunResult, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Every metric of ``run``'s test set on ``n_boot`` patient-bootstrap resamples (threshold fixed)."""
    s = np.asarray(run.scores_test, dtype=float)
    if len(run.classes) == 2 and s.ndim == 2:
        s = s[:, -1]
    return M.bootstrap_draws(run.y_test, s, run.patient_test, run.classes, run.threshold, n_boot=n_boot, seed=seed)


def metric_difference(a: RunResult, b: RunResult, n_boot: int = 1000, seed: int = 0,
                      metrics: Sequence[str] | None = None) -> dict[str, dict]:
    """``a - b`` for each metric, with a 95 % interval from independent patient bootstraps.

    The two test sets are different patients, so each is resampled on its own
    (seeds ``seed`` and ``seed + 1``) and the interval is the 2.5-97.5
    percentiles of the differences of the resampled metrics.
    """
    metrics = tuple(metrics or headline_metrics(a.classes))
    da, db = bootstrap_draws(a, n_boot, seed), bootstrap_draws(b, n_boot, seed + 1)
    out = {}
    for m in metrics:
        va, vb = a.metric(m)["value"], b.metric(m)["value"]
        diffs = da[m] - db[m]
        diffs = diffs[np.isfinite(diffs)]
        if va is None or vb is None or len(diffs) < 2:
            out[m] = {"value": None, "ci95": [None, None]}
            continue
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        out[m] = R.metric_entry(float(va - vb), [float(lo), float(hi)])
    return out


# --------------------------------------------------------------------------- 1. normals

def normals_data(clean: pd.DataFrame, task: str, normals: str, image_size: int, seed: int,
                 cache_dir: str | Path | None, clahe: bool = False) -> tuple[pd.DataFrame, CachedData]:
    """Patient-level split of ``select(clean, task, normals)`` and its cached arrays."""
    from .pipeline import load_arrays
    from .splits import patient_split, select
    df = patient_split(select(clean, task, normals), seed=seed)
    return df, load_arrays(df, image_size, clahe=clahe, cache_dir=cache_dir, progress=False)


def compare_normals(clean: pd.DataFrame, task: str, *, image_size: int, epochs: int, batch_size: int = 32,
                    seed: int = 42, n_boot: int = 200, arch: str = "custom_cnn", augment: bool = False,
                    cache_dir: str | Path | None = None) -> dict:
    """Train and test the same model with ``normals="adult"`` and ``normals="all"``.

    Returns ``{"runs": {"adult": RunResult, "all": RunResult, "all_on_adult_test": RunResult},
    "difference": {metric: {value, ci95}}, "data": {normals: CachedData}, "splits": {normals: df}}``.
    ``all_on_adult_test`` is the all-normals model scored only on its test images
    that are not pediatric normals (same threshold): what it does on adults.
    """
    from .splits import classes_for
    classes = classes_for(task)
    runs, datas, splits = {}, {}, {}
    for normals in ("adult", "all"):
        df, data = normals_data(clean, task, normals, image_size, seed, cache_dir)
        run = train_and_score(data, classes, arch=arch, epochs=epochs, batch_size=batch_size, seed=seed,
                              augment=augment, n_boot=n_boot, name=f"{arch} normals={normals}")
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
    from .manifest import provenance
    from .models import save_model
    saved = []
    for normals in ("adult", "all"):
        run = result["runs"][normals]
        if run.model is None:
            continue
        name = E.model_name(f"{run.arch}__normals_{normals}", task)
        size = int(result["data"][normals].image_size)
        weights = "none (trained from scratch)"
        saved.append(save_model(run.model, paths.models / f"{name}.keras", sidecar={
            "classes": list(run.classes), "image_size": size, "task": task, "threshold": run.threshold,
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
            "weights": weights, "backbone": run.arch, "normals": normals,
            "display_name": f"{run.arch}, normals={normals} (07)"}))
        record = R.metrics_record(run.report, model=name, task=task, weights=weights,
                                  threshold_rule="youden on validation" if run.threshold is not None else "argmax",
                                  extra={"image_size": size, "normals": normals, "profile": profile,
                                         "n_train": run.n_train, "n_val": run.n_val, "augmentation": False,
                                         "trained_by": "notebook 07, audit.compare_normals",
                                         "provenance": provenance()})
        R.save_metrics(record, paths.metrics / f"{name}.json")
    return saved


def _pediatric_normal(df: pd.DataFrame, image_paths: np.ndarray) -> np.ndarray:
    """Boolean per image path: a normal from the pediatric collection or with age_group pediatric."""
    d = df.drop_duplicates("image_path").set_index("image_path")
    ped = (d["label"] == "normal") & ((d["source"] == "pediatric") |
                                      (d.get("age_group", pd.Series("", index=d.index)) == "pediatric"))
    return ped.reindex(pd.Index(image_paths)).fillna(False).to_numpy(dtype=bool)


def normals_table(result: dict) -> pd.DataFrame:
    """One row per run (adult / all / all on adult test) and one for the difference adult - all."""
    classes = result["classes"]
    rows = []
    for key, run in result["runs"].items():
        row = {"run": key, "n_test": run.report["n_test"], "test_patients": run.report["n_patients"],
               **{f"n_{c}": int((run.y_test == i).sum()) for i, c in enumerate(classes)}}
        row.update({m: fmt(run.metric(m)) for m in headline_metrics(classes)})
        rows.append(row)
    rows.append({"run": "difference adult - all", **{m: fmt(v) for m, v in result["difference"].items()}})
    df = pd.DataFrame(rows)
    counts = [c for c in df.columns if c.startswith("n_") or c == "test_patients"]
    df[counts] = df[counts].astype("Int64")
    return df


def normals_sentence(result: dict) -> str:
    """Plain-language reading of the normals comparison, generated from its numbers."""
    classes = result["classes"]
    a, b = result["runs"]["adult"], result["runs"]["all"]
    auc = auc_name(classes)
    d = result["difference"][auc]
    neg = classes[0]
    n_neg_a = int((a.y_test == 0).sum())
    text = (f"Trained and tested with adult normals only, the model reaches {auc.replace('_', ' ').upper()} "
            f"{fmt(a.metric(auc))} ({a.report['n_test']} test images, {n_neg_a} of them {neg}); with all normals "
            f"(pediatric included) {fmt(b.metric(auc))} ({b.report['n_test']} test images, "
            f"{b.info.get('n_pediatric_test', 0)} pediatric normals). ")
    if d["value"] is None or d["ci95"][0] is None:
        return text + "The difference could not be estimated."
    text += f"Difference adult - all: {fmt(d)}. "
    lo, hi = d["ci95"]
    if hi < 0:
        text += ("Adding the pediatric normals makes the task look easier than it is: part of the 'all normals' "
                 "score comes from telling children's X-rays from adults', not COVID-19 from normal lungs.")
    elif lo > 0:
        text += "The adult-only protocol scores higher; the pediatric normals do not explain the performance."
    else:
        text += (f"The interval covers 0, so these test sets cannot tell the two protocols apart "
                 f"(the adult-only test set has only {n_neg_a} {neg} images); that is not evidence that "
                 "the pediatric normals are harmless.")
    sub = result["runs"].get("all_on_adult_test")
    if sub is not None and len(classes) == 2:
        text += (f" The all-normals model scored on its test set without pediatric normals: "
                 f"specificity {fmt(sub.metric('specificity'))}, AUC {fmt(sub.metric('roc_auc'))} "
                 f"({int((sub.y_test == 0).sum())} adult {neg} images).")
    return text


# --------------------------------------------------------------------------- 2. source probe

def source_probe(data: CachedData, size: int = 32, n_boot: int = 1000, seed: int = 42,
                 C: float = 0.01) -> dict:
    """Logistic regression predicting the SOURCE collection from downsampled pixels.

    Fitted on train + validation, scored on test (patient-level split, so no
    patient is on both sides). Returns accuracy with a patient-bootstrap interval,
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
    ci = M.bootstrap_mean(correct, data.test.patient_id, n_boot, seed)
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
            "accuracy": R.metric_entry(acc, ci),
            "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
            "chance_majority_share": chance, "majority_source": str(shares.index[0]),
            "chance_balanced": 1.0 / len(sources), "recall_per_source": recall,
            "confusion_matrix": cm.tolist(), "accuracy_within_label": by_label,
            "label_by_source": {str(s): {str(k): int(v) for k, v in row.items()}
                                for s, row in label_by_source.iterrows()},
            "confounded": bool(ci[0] > chance + MARGIN)}


def probe_sentence(probe: dict) -> str:
    """Plain-language reading of the source probe."""
    acc = probe["accuracy"]
    text = (f"A logistic regression on {probe['features'].split(',')[0]} predicts which collection a test image "
            f"came from ({', '.join(probe['sources'])}) with accuracy {fmt(acc)} "
            f"(balanced {probe['balanced_accuracy']:.3f}), against {probe['chance_majority_share']:.3f} for always "
            f"answering the most common source ({probe['majority_source']}). ")
    lbs = probe["label_by_source"]
    only = [f"{s} holds only {[lab for lab, c in v.items() if c][0]} images" for s, v in lbs.items()
            if sum(1 for c in v.values() if c) == 1]
    if probe["confounded"]:
        text += ("Images carry a recognisable signature of their collection"
                 + (f", and {'; '.join(only)}" if only else "")
                 + ": the disease label is confounded with the source, so a classifier can score well by "
                   "recognising the collection instead of the disease.")
    else:
        text += "The probe does not clearly beat chance: no strong pixel signature of the source was found."
    return text


# --------------------------------------------------------------------------- 3. lungs hidden

def masking_experiment(data: CachedData, classes: Sequence[str], *, fraction: float = 0.6, arch: str = "custom_cnn",
                       epochs: int = 2, batch_size: int = 32, seed: int = 42, n_boot: int = 200,
                       augment: bool = False, unmasked: RunResult | None = None) -> dict:
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
                                     name=f"{arch} {MASK_LABELS[mask]}")
    auc = auc_name(classes)
    blanked = runs["center_blanked"].metric(auc)
    lo = blanked["ci95"][0]
    return {"runs": runs, "fraction": float(fraction), "auc_metric": auc,
            "difference_blanked_minus_unmasked": metric_difference(runs["center_blanked"], runs["none"],
                                                                   n_boot=n_boot, seed=seed, metrics=(auc,))[auc],
            "shortcut_suspected": bool(lo is not None and lo > 0.5 + MARGIN)}


def masking_table(result: dict) -> pd.DataFrame:
    """AUC (and accuracy) with intervals for the three mask variants."""
    rows = []
    for mask, run in result["runs"].items():
        rows.append({"variant": MASK_LABELS[mask], "mask_fraction": result["fraction"] if mask != "none" else None,
                     "n_test": run.report["n_test"], "AUC": fmt(run.metric(result["auc_metric"])),
                     "accuracy": fmt(run.metric("accuracy")), "seconds": run.seconds})
    return pd.DataFrame(rows)


def masking_sentence(result: dict) -> str:
    """Plain-language reading of the lungs-hidden test."""
    auc = result["auc_metric"]
    r = result["runs"]
    pct = int(round(result["fraction"] * 100))
    text = (f"Unmasked AUC {fmt(r['none'].metric(auc))}; with the central {pct}% box blanked (lungs hidden) "
            f"{fmt(r['center_blanked'].metric(auc))}; with only that box kept {fmt(r['center_only'].metric(auc))}. ")
    if result["shortcut_suspected"]:
        text += ("With the lungs hidden the model still separates the classes well above chance (0.5): it can use "
                 "signals outside the lungs (borders, markers, text, body size, scanner), which a lung finding "
                 "cannot explain. Treat the unmasked score as an upper bound on what the lungs contribute.")
    else:
        text += ("With the lungs hidden the model is not clearly above chance: no strong evidence here of a "
                 "shortcut outside the central box.")
    return text


# --------------------------------------------------------------------------- 4. groups

def group_performance(rows: pd.DataFrame, scores: np.ndarray, column: str, classes: Sequence[str],
                      threshold: float | None, *, n_boot: int = 200, seed: int = 42,
                      min_images: int = MIN_GROUP_IMAGES, combine: dict[str, Sequence[str]] | None = None
                      ) -> pd.DataFrame:
    """Headline metrics with intervals per value of ``rows[column]`` (missing -> "unknown").

    ``rows`` holds the test images (``label``, ``patient_id``, ``column``) in the
    order of ``scores``. A group with fewer than ``min_images`` images or one
    class only is reported as "too few", with its counts but no numbers.
    ``combine`` adds pooled groups, e.g. ``{"AP or AP Supine": ["AP", "AP Supine"]}``.
    """
    classes = tuple(classes)
    values = rows[column].astype("string").fillna("unknown").replace("", "unknown").to_numpy(dtype=object)
    groups = {str(g): values == g for g in sorted(set(values))}
    for name, members in (combine or {}).items():
        m = np.isin(values, list(members))
        if m.any() and sum(np.isin(list(groups), list(members))) > 1:
            groups[name] = m
    y = encode_labels(rows["label"].astype(str).to_numpy(), classes)
    pid = rows["patient_id"].astype(str).to_numpy()
    s = np.asarray(scores)
    out = []
    for g, m in groups.items():
        row = {"attribute": column, "group": g, "n_images": int(m.sum()), "n_patients": int(len(set(pid[m])))}
        row.update({f"n_{c}": int((y[m] == i).sum()) for i, c in enumerate(classes)})
        n_present = sum(1 for i in range(len(classes)) if (y[m] == i).any())
        if m.sum() < min_images:
            row["status"] = f"too few (< {min_images} images)"
        elif n_present < len(classes):
            row["status"] = "too few (one class only)" if n_present == 1 else "too few (a class is missing)"
        else:
            rep = M.evaluate(y[m], s[m], pid[m], classes, threshold=threshold, n_boot=n_boot, seed=seed)
            row["status"] = "ok"
            for name in headline_metrics(classes):
                met = rep["metrics"][name]
                row[name] = met["value"]
                row[f"{name}_lo"], row[f"{name}_hi"] = met["ci95"]
        out.append(row)
    return pd.DataFrame(out)


def model_test_scores(paths, name: str, splits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Test rows of ``<name>_scores.csv`` joined with splits.csv (view, sex, age_group), scores, record."""
    record = R.load_metrics(paths.metrics / f"{name}.json")
    df = pd.read_csv(paths.metrics / f"{name}_scores.csv")
    df = df[df["split"] == "test"].reset_index(drop=True)
    classes = record["classes"]
    cols = [f"score_{classes[1]}"] if len(classes) == 2 else [f"score_{c}" for c in classes]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{paths.metrics / f'{name}_scores.csv'} lacks columns {missing}")
    meta_cols = [c for c in ("view", "sex", "age_group") if c in splits.columns]
    meta = splits.drop_duplicates("image_path").set_index("image_path")[meta_cols]
    joined = df.join(meta, on="image_path")
    joined["in_splits_csv"] = df["image_path"].isin(meta.index)
    scores = joined[cols[0]].to_numpy() if len(classes) == 2 else joined[cols].to_numpy()
    return joined, scores, record


def scored_models(paths, task: str) -> list[str]:
    """Names of models with both ``<name>.json`` and ``<name>_scores.csv`` for ``task``, sorted."""
    names = []
    for p in sorted(paths.metrics.glob("*_scores.csv")):
        name = p.name[: -len("_scores.csv")]
        j = paths.metrics / f"{name}.json"
        if j.is_file():
            try:
                if json.loads(j.read_text()).get("task") == task:
                    names.append(name)
            except (OSError, ValueError):
                continue
    return names


def groups_for_models(paths, names: Sequence[str], splits: pd.DataFrame, *, n_boot: int = 200, seed: int = 42,
                      min_images: int = MIN_GROUP_IMAGES) -> pd.DataFrame:
    """Per-view and per-sex test performance of each named model (one long table)."""
    frames = []
    for name in names:
        rows, scores, rec = model_test_scores(paths, name, splits)
        for column, combine in (("view", {"AP or AP Supine": ["AP", "AP Supine"]}), ("sex", None)):
            if column not in rows.columns:
                continue
            t = group_performance(rows, scores, column, rec["classes"], rec["threshold"], n_boot=n_boot,
                                  seed=seed, min_images=min_images, combine=combine)
            t.insert(0, "model", name)
            frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def groups_sentence(table: pd.DataFrame) -> str:
    """Which groups could be assessed, and how many were too small."""
    if table.empty:
        return "No model with a scores file was found, so no per-group performance could be computed."
    ok = table[table["status"] == "ok"]
    few = table[table["status"] != "ok"]
    text = (f"{len(ok)} of {len(table)} model x group cells had enough images of every class to compute metrics; "
            f"{len(few)} are reported as 'too few'. ")
    if len(few):
        ex = few.drop_duplicates(["attribute", "group"]).head(4)
        text += "Too few: " + "; ".join(f"{r.attribute}={r.group} ({r.n_images} images, {r.status})"
                                         for r in ex.itertuples()) + ". "
    text += ("Where a group holds only one class (e.g. a view used only for COVID-19 patients), its performance "
             "cannot be separated from the label, which is itself a confound.")
    return text


# --------------------------------------------------------------------------- 5. calibration

def calibration(paths, names: Sequence[str], n_bins: int = 10, n_boot: int = 200, seed: int = 42) -> dict:
    """Reliability table, Brier and ECE (with intervals) of each binary model's test scores.

    Multi-class models are listed under ``skipped`` (the reliability diagram here is binary).
    """
    out, skipped = {}, {}
    for name in names:
        rec = R.load_metrics(paths.metrics / f"{name}.json")
        if len(rec["classes"]) != 2:
            skipped[name] = "multi-class scores (binary reliability only)"
            continue
        df = pd.read_csv(paths.metrics / f"{name}_scores.csv")
        df = df[df["split"] == "test"]
        y = encode_labels(df["label"].astype(str).to_numpy(), rec["classes"])
        s = df[f"score_{rec['classes'][1]}"].to_numpy(dtype=float)
        rep = M.evaluate(y, s, df["patient_id"].astype(str).to_numpy(), rec["classes"],
                         threshold=rec["threshold"], n_boot=n_boot, seed=seed)
        out[name] = {"n_test": int(len(y)), "brier": rep["metrics"]["brier"], "ece": rep["metrics"]["ece"],
                     "reliability": MP.reliability_curve(y, s, n_bins), "y": y, "s": s,
                     "weights": rec.get("weights")}
    return {"models": out, "skipped": skipped, "n_bins": n_bins}


def calibration_table(cal: dict) -> pd.DataFrame:
    """Brier and ECE per model with intervals."""
    return pd.DataFrame([{"model": n, "n_test": c["n_test"], "Brier": fmt(c["brier"]), "ECE": fmt(c["ece"])}
                         for n, c in cal["models"].items()])


def calibration_sentence(cal: dict) -> str:
    """Which model is best / worst calibrated by ECE."""
    if not cal["models"]:
        return "No binary model with a scores file was found for the calibration check."
    ece = {n: c["ece"]["value"] for n, c in cal["models"].items() if c["ece"]["value"] is not None}
    best, worst = min(ece, key=ece.get), max(ece, key=ece.get)
    return (f"Expected calibration error ranges from {ece[best]:.3f} ({best}) to {ece[worst]:.3f} ({worst}): "
            f"a score of 0.8 from a model with ECE {ece[worst]:.2f} can be off by that much on average, so scores "
            "are rankings, not probabilities a clinician could read off.")


# --------------------------------------------------------------------------- figures

def _plt():
    from .plots import plt
    return plt


def _forest(ax, labels: Sequence[str], stats: Sequence[dict | None], color=None, offset: float = 0.0,
            label: str | None = None):
    ys = np.arange(len(labels)) + offset
    for y, st in zip(ys, stats):
        if not st or st.get("value") is None or not np.isfinite(st["value"]):
            continue
        v = st["value"]
        ci = st.get("ci95") or [None, None]
        lo, hi = ci if all(b is not None and np.isfinite(b) for b in ci) else (v, v)
        ax.errorbar(v, y, xerr=[[v - lo], [hi - v]], fmt="o", color=color, capsize=3, label=label)
        label = None  # one legend entry per series
    ax.set_yticks(np.arange(len(labels)))
    ax.set_yticklabels(labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first label on top


def plot_normals(result: dict, title: str):
    """Headline metrics with 95 % intervals for each normals protocol (forest plot)."""
    plt = _plt()
    classes = result["classes"]
    names = list(headline_metrics(classes))
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    runs = list(result["runs"].items())
    for j, (key, run) in enumerate(runs):
        off = (j - (len(runs) - 1) / 2) * 0.22
        _forest(ax, names, [run.metric(m) for m in names], color=f"C{j}", offset=off,
                label=f"{key} (test n={run.report['n_test']})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("metric value on test (fraction, 95% patient-bootstrap interval)")
    ax.set_title("Same model, normals=adult vs normals=all")
    ax.legend(fontsize="small", loc="lower left")
    _forest(ax_d, names, [result["difference"][m] for m in names], color="k")
    ax_d.axvline(0, ls="--", c="grey", lw=1)
    ax_d.set_xlabel("difference adult - all (metric units, 95% interval)")
    ax_d.set_title("Difference (independent patient bootstraps)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_probe(probe: dict, title: str):
    """Confusion matrix of the source probe (rows: true source, columns: predicted)."""
    plt = _plt()
    cm = np.asarray(probe["confusion_matrix"])
    src = probe["sources"]
    fig, ax = plt.subplots(figsize=(1.5 * len(src) + 3, 1.3 * len(src) + 2))
    im = ax.imshow(cm, cmap="Blues")
    for i in range(len(src)):
        for j in range(len(src)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(src)))
    ax.set_xticklabels(src)
    ax.set_yticks(range(len(src)))
    ax.set_yticklabels(src)
    ax.set_xlabel("predicted source collection")
    ax.set_ylabel("true source collection")
    fig.colorbar(im, ax=ax, label="test images")
    ax.set_title(f"{title}\naccuracy {fmt(probe['accuracy'])} vs chance {probe['chance_majority_share']:.3f}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_masking(result: dict, example: np.ndarray, title: str, fill: float | None = None):
    """Example image under each mask, and AUC with 95 % intervals per variant."""
    plt = _plt()
    auc = result["auc_metric"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 1.5]})
    ex = np.asarray(example)[None]
    for ax, mask in zip(axes[:3], MASKS):
        ax.imshow(apply_mask(ex, mask, result["fraction"], fill)[0, ..., 0], cmap="gray", vmin=0, vmax=255)
        ax.grid(False)
        ax.set_title(MASK_LABELS[mask], fontsize=9)
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    labels = [MASK_LABELS[m] for m in MASKS]
    _forest(axes[3], labels, [result["runs"][m].metric(auc) for m in MASKS], color="C0")
    axes[3].axvline(0.5, ls="--", c="grey", lw=1, label="chance")
    axes[3].set_xlim(0, 1.02)
    axes[3].set_xlabel("test AUC (95% patient-bootstrap interval)")
    axes[3].set_title("Test AUC per variant")
    axes[3].legend(fontsize="small", loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_groups(table: pd.DataFrame, model: str, classes: Sequence[str], title: str):
    """AUC per view and per sex for one model; groups too small are written as "too few"."""
    plt = _plt()
    auc = auc_name(classes)
    t = table[table["model"] == model]
    attrs = list(dict.fromkeys(t["attribute"]))
    fig, axes = plt.subplots(1, max(1, len(attrs)), figsize=(6 * max(1, len(attrs)), 3.6), squeeze=False)
    for ax, attr in zip(axes[0], attrs):
        sub = t[t["attribute"] == attr].reset_index(drop=True)
        labels = [f"{g} (n={n})" for g, n in zip(sub["group"], sub["n_images"])]
        stats = [{"value": r[auc], "ci95": [r[f"{auc}_lo"], r[f"{auc}_hi"]]} if r["status"] == "ok" else None
                 for _, r in sub.iterrows()]
        _forest(ax, labels, stats, color="C0")
        for i, r in sub.iterrows():
            if r["status"] != "ok":
                ax.text(0.02, i, r["status"], va="center", fontsize=8, color="C3")
        ax.axvline(0.5, ls="--", c="grey", lw=1)
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("test AUC (95% patient-bootstrap interval)")
        ax.set_title(f"by {attr}")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_calibration(cal: dict, title: str):
    """Reliability diagram of every binary model (one panel each), Brier and ECE in the panel titles."""
    plt = _plt()
    items = list(cal["models"].items())
    n = max(1, len(items))
    cols = min(3, n)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
    for ax, (name, c) in zip(axes.ravel(), items):
        rc = c["reliability"]
        ok = rc["count"] > 0
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
        ax.plot(rc.loc[ok, "mean_predicted"], rc.loc[ok, "observed_fraction"], "o-", label="model")
        for _, r in rc[ok].iterrows():
            ax.annotate(str(int(r["count"])), (r["mean_predicted"], r["observed_fraction"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("mean predicted probability (fraction)")
        ax.set_ylabel("observed fraction positive")
        ax.set_title(f"{name} (n={c['n_test']})\nBrier {fmt(c['brier'])}\nECE {fmt(c['ece'])}", fontsize=8)
        ax.legend(fontsize="x-small", loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the record

def run_summary(result: dict) -> dict:
    """JSON-ready version of a compare_normals / masking_experiment result (no arrays)."""
    out = {k: v for k, v in result.items() if k not in ("runs", "data", "splits")}
    out["runs"] = {k: r.summary() for k, r in result["runs"].items()}
    return out


def calibration_summary(cal: dict) -> dict:
    """JSON-ready calibration result (reliability tables as records, no raw scores)."""
    return {"n_bins": cal["n_bins"], "skipped": cal["skipped"],
            "models": {n: {"n_test": c["n_test"], "brier": c["brier"], "ece": c["ece"], "weights": c["weights"],
                           "reliability": c["reliability"]} for n, c in cal["models"].items()}}
