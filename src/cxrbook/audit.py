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
from .sidecar import DISCLAIMER
from .pipeline import CachedData, SplitArrays, encode_labels, to_rgb_float

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
                    mask_fraction: float = 0.6, n_boot: int = 200, name: str | None = None,
                    progress: bool = True) -> RunResult:
    """Train one variant on ``data`` (optionally masked) and evaluate it on its test split.

    ``arch``: ``custom_cnn`` (the reference CNN, ``models.custom_cnn``),
    ``improved_cnn`` or ``logreg`` (logistic regression on 32x32 pixels, seconds).
    The same mask (filled with the training images' mean grey) is applied to
    train, validation and test images. Threshold:
    Youden's J on validation (binary), argmax otherwise. ``progress``: print one line per epoch
    (``training.EpochLine``), so a notebook cell that trains several variants shows it is alive.
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
    label = name or f"{arch} {mask}"
    model = None
    if arch == "logreg":
        if progress:
            print(f"training {label}: logistic regression on {len(xs['train'])} images")
        s_val, s_test = E.pixel_logreg_arrays(xs["train"], ys["train"], xs["val"], xs["test"], len(classes),
                                             seed=seed)
    else:
        from . import models, training
        build = models.custom_cnn if arch == "custom_cnn" else models.improved_cnn
        model = build(data.image_size, augment=augment, seed=seed, n_classes=len(classes))
        training.fit(model, to_rgb_float(xs["train"]), ys["train"], to_rgb_float(xs["val"]), ys["val"],
                     epochs=epochs, batch_size=batch_size, seed=seed, verbose=0,
                     callbacks=[training.EpochLine(label, epochs)] if progress else None)
        s_val = training.predict_scores(model, to_rgb_float(xs["val"]))
        s_test = training.predict_scores(model, to_rgb_float(xs["test"]))
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
                    cache_dir: str | Path | None = None, progress: bool = True) -> dict:
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
    from .manifest import provenance
    from .training import save_model
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
    auc = auc_name(classes)
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
    from .pipeline import load_arrays

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
    return {"runs": runs, "paired": paired, "probe": probe, "auc_metric": auc_name(classes),
            "classes": classes, "image_size": int(image_size), "data": data}
