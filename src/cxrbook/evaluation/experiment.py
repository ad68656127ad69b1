"""The steps notebooks 04-07 share: load a task's cached arrays, train, evaluate, save.

Every model goes through ``evaluate_and_save``: threshold chosen on validation
(binary) or argmax (softmax), metrics with patient-bootstrap intervals on test
(``threshold_and_report``), ``outputs/metrics/<name>.json`` (schema in
``cxrbook.evaluation.records``), per-image scores in ``outputs/metrics/<name>_scores.csv``
(what notebook 06 compares), and the confusion / ROC-PR / reliability figures.
A Keras model trained on images goes through ``train_and_evaluate``: ``fit_and_score``
(train, then score validation and test) followed by ``evaluate_and_save``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from . import metrics as M
from . import records as R
from . import metric_plots as MP
from ..atomic import atomic_write, to_jsonable, write_csv, write_json
from ..config import Paths
from ..config import display_name as model_display_name
from ..data.images import thumbnails
from ..provenance import code_stamp
from ..data.pipeline import SPLITS, CachedData, encode_labels, load_arrays, to_rgb_float
from ..plots import savefig
from ..data.splits import TASKS, classes_for, pediatric_normal


def load_task_data(paths: Paths, task: str, image_size: int, clahe: bool = False,
                   splits: pd.DataFrame | None = None) -> tuple[CachedData, tuple[str, ...]]:
    """Cached arrays of ``outputs/splits.csv`` (or ``splits``) at ``image_size``, and the task's classes.

    Fails clearly if splits.csv was made for another task than ``task``, naming the task it was made for.
    """
    if splits is None:
        splits = pd.read_csv(paths.require(paths.splits_csv, "03"))
    classes = classes_for(task)
    held = sorted(set(splits["label"]))
    if set(held) != set(classes):
        made_for = [t for t in TASKS if set(TASKS[t]) == set(held)]
        fix = (f"set task={made_for[0]!r} in this notebook's parameters to use these splits, or rerun notebook 03 "
               f"with task={task!r}" if made_for else f"rerun notebook 03 with task={task!r}")
        raise ValueError(f"{paths.splits_csv} holds the classes {held}"
                         + (f" (notebook 03 ran with task={made_for[0]!r})" if made_for else "")
                         + f", task={task!r} needs {sorted(classes)}: {fix}")
    return load_arrays(splits, image_size, clahe=clahe, cache_dir=paths.cache), classes


def normals_of(data: CachedData) -> str:
    """Which normals ``data`` trains on, for model sidecars: ``all`` when a pediatric normal
    (``splits.pediatric_normal``; the cached arrays carry no age, so: a normal of the pediatric
    collection) is in any split (notebook 03's ``normals=all``), else ``adult``."""
    pediatric = any(pediatric_normal(arr.labels, arr.source).any() for _, arr in data.items())
    return "all" if pediatric else "adult"


def model_sidecar(data: CachedData, classes, *, task: str, threshold: float | None, weights: str, backbone: str,
                  inside_model: str | None = None) -> dict:
    """The sidecar ``training.save_model`` writes beside a model trained on ``data``.

    Classes, image size, task, the threshold chosen on validation, the weights,
    the architecture (``backbone``), the training normals (``normals_of``: what
    ``predict`` needs for its confound caution) and the preprocessing
    (``inside_model`` names a preprocessing step that is part of the model).
    """
    preprocessing = {"grayscale_to_rgb": True, "range": "0-255", "clahe": data.clahe}
    if inside_model:
        preprocessing["inside_model"] = inside_model
    return {"classes": list(classes), "image_size": data.image_size, "task": task, "threshold": threshold,
            "preprocessing": preprocessing, "weights": weights, "backbone": backbone, "normals": normals_of(data)}


def labels(data: CachedData, classes, split: str) -> np.ndarray:
    """Class indices of one split."""
    return encode_labels(data[split].labels, classes)


def images(data: CachedData, split: str) -> np.ndarray:
    """RGB float images [0, 255] of one split, as the models take them."""
    return to_rgb_float(data[split].x)


def describe(data: CachedData, classes) -> pd.DataFrame:
    """Images and patients per split and class (printed before every training)."""
    rows = []
    for split, arr in data.items():
        for c in classes:
            mask = arr.labels == c
            rows.append({"split": split, "class": c, "images": int(mask.sum()),
                         "patients": len(set(arr.patient_id[mask]))})
    table = pd.DataFrame(rows).pivot(index="class", columns="split", values=["images", "patients"])
    order = [(v, sp) for v in ("images", "patients") for sp in SPLITS]   # train, val, test; not alphabetical
    return table.reindex(columns=pd.MultiIndex.from_tuples(order)).reindex(list(classes)).astype(int)


@dataclass
class Evaluated:
    """What ``evaluate_and_save`` produced (and, from ``train_and_evaluate``, the training history)."""

    record: dict
    threshold: float | None
    scores: dict = field(default_factory=dict)  # split -> scores
    history: object = None  # keras.callbacks.History of train_and_evaluate; None otherwise


def threshold_and_report(data: CachedData, classes, scores_val: np.ndarray, scores_test: np.ndarray, *,
                         n_bootstrap: int, seed: int) -> tuple[float | None, dict]:
    """The evaluation protocol: (threshold, test report ``metrics.evaluate``).

    Binary: Youden's J threshold chosen on the validation scores only, then applied
    unchanged to test; multi-class: None (argmax). The report's 95 % intervals come
    from a bootstrap over test patients (``n_bootstrap`` resamples, ``seed``).
    """
    threshold = (M.choose_threshold(labels(data, classes, "val"), scores_val, rule="youden")
                 if len(classes) == 2 else None)
    report = M.evaluate(labels(data, classes, "test"), scores_test, data.test.patient_id, classes,
                        threshold=threshold, n_boot=n_bootstrap, seed=seed)
    return threshold, report


def evaluate_and_save(name: str, scores_val: np.ndarray, scores_test: np.ndarray, data: CachedData,
                      classes, *, task: str, weights: str, paths: Paths, n_bootstrap: int, seed: int,
                      figure_prefix: str, display_name: str | None = None,
                      extra: dict | None = None, figures: bool = True) -> Evaluated:
    """Threshold on validation, metrics with intervals on test, JSON + scores CSV + figures.

    ``display_name``: default ``config.display_name(name, extra["backbone"])``, the name every table uses.
    """
    display_name = display_name or model_display_name(name, (extra or {}).get("backbone"))
    y_val, y_test = labels(data, classes, "val"), labels(data, classes, "test")
    binary = len(classes) == 2
    threshold, report = threshold_and_report(data, classes, scores_val, scores_test, n_bootstrap=n_bootstrap,
                                             seed=seed)
    info = {"image_size": data.image_size, "clahe": data.clahe, "seed": seed, "cache_key": data.key,
            "n_val": len(y_val), "n_train": len(data.train), "display_name": display_name,
            "provenance": code_stamp(), **(extra or {})}
    record = R.metrics_record(report, model=name, task=task, weights=weights, extra=info,
                              threshold_rule=M.YOUDEN_ON_VALIDATION if binary else "argmax")
    R.save_metrics(record, paths.metrics / f"{name}.json")
    _save_scores(paths, name, data, classes, {"val": scores_val, "test": scores_test})
    if figures:
        label = f"{display_name} (weights={weights}, {task}, test n={len(y_test)})"
        savefig(MP.plot_confusion(record["confusion_matrix"], classes, f"Confusion matrix: {label}"),
                paths.figures, f"{figure_prefix}_{name}_confusion")
        savefig(MP.plot_roc_pr(y_test, scores_test, classes, f"ROC and PR on test: {label}"),
                paths.figures, f"{figure_prefix}_{name}_roc_pr")
        if binary:
            savefig(MP.plot_reliability(y_test, scores_test, f"Calibration on test: {label}"),
                    paths.figures, f"{figure_prefix}_{name}_reliability")
    return Evaluated(record, threshold, {"val": scores_val, "test": scores_test})


@dataclass
class Fitted:
    """A model trained by ``fit_and_score``: its Keras history and its scores on validation and test."""

    history: object  # keras.callbacks.History
    scores_val: np.ndarray
    scores_test: np.ndarray

    @property
    def epochs_run(self) -> int:
        """Epochs actually trained (early stopping may end before the epochs asked for)."""
        return len(self.history.history["loss"])


def fit_and_score(model, data: CachedData, classes, *, epochs: int, batch_size: int, seed: int,
                  verbose: int = 2, callbacks: list | None = None, inputs: Mapping[str, np.ndarray] | None = None
                  ) -> Fitted:
    """Train ``model`` on the train split, then score the validation and test splits.

    ``training.fit`` (early stopping on validation loss with the best weights
    restored, balanced class weights, seeded with ``seed``) on the class indices
    of ``data`` (``labels``), then ``training.predict_scores`` on validation and
    test, in that order. The model's inputs are the images of ``data``: the
    training split's uint8 pixels (``training.fit`` converts and augments them in
    its input pipeline), validation and test as RGB floats (``images``); or
    ``inputs[split]`` when given (for example a frozen backbone's ``CachedFeatures``).
    """
    from ..models.training import fit, predict_scores

    def x(split: str) -> np.ndarray:
        return images(data, split) if inputs is None else inputs[split]

    x_val = x("val")  # converted once, for early stopping and for the scores
    # the training images stay uint8 grayscale: fit's input pipeline converts (and augments) them batch by batch
    x_train = data["train"].x if inputs is None else inputs["train"]
    history = fit(model, x_train, labels(data, classes, "train"), x_val, labels(data, classes, "val"),
                  epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose, callbacks=callbacks)
    return Fitted(history, predict_scores(model, x_val), predict_scores(model, x("test")))


def train_and_evaluate(name: str, model, data: CachedData, classes, *, epochs: int, batch_size: int, seed: int,
                       task: str, weights: str, paths: Paths, n_bootstrap: int, figure_prefix: str,
                       display_name: str | None = None, extra: dict | None = None, verbose: int = 2,
                       figures: bool = True) -> Evaluated:
    """Train a compiled Keras image model, then evaluate and save it: ``fit_and_score`` + ``evaluate_and_save``.

    What notebooks 04 (reference and improved CNN) and 05 (fine-tuning) do with a
    model: the same ``seed`` seeds training and the bootstrap. ``extra`` goes into
    the metrics record with ``epochs_run`` (the epochs early stopping let run)
    added. Returns ``evaluate_and_save``'s result with the Keras history in
    ``.history`` (for ``training.plot_history``). The model itself is trained in place.
    """
    fitted = fit_and_score(model, data, classes, epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose)
    ev = evaluate_and_save(name, fitted.scores_val, fitted.scores_test, data, classes, task=task, weights=weights,
                           paths=paths, n_bootstrap=n_bootstrap, seed=seed, figure_prefix=figure_prefix,
                           display_name=display_name, extra={**(extra or {}), "epochs_run": fitted.epochs_run},
                           figures=figures)
    ev.history = fitted.history
    return ev


def _save_scores(paths: Paths, name: str, data: CachedData, classes, scores: dict) -> None:
    frames = []
    for split, s in scores.items():
        arr = data[split]
        df = pd.DataFrame({"split": split, "image_path": arr.image_path, "patient_id": arr.patient_id,
                           "source": arr.source, "label": arr.labels})
        s = np.asarray(s)
        if s.ndim == 1:
            df[f"score_{classes[1]}"] = s
        else:
            for i, c in enumerate(classes):
                df[f"score_{c}"] = s[:, i]
        frames.append(df)
    write_csv(pd.concat(frames), paths.metrics / f"{name}_scores.csv")


def load_scores(paths: Paths, name: str, classes, split: str = "test") -> tuple[pd.DataFrame, np.ndarray]:
    """(rows, scores) saved by ``evaluate_and_save``; binary scores are (n,), else (n, k)."""
    df = pd.read_csv(paths.metrics / f"{name}_scores.csv")
    df = df[df["split"] == split].sort_values("image_path").reset_index(drop=True)
    if len(classes) == 2:
        return df, df[f"score_{classes[1]}"].to_numpy()
    return df, df[[f"score_{c}" for c in classes]].to_numpy()


@dataclass
class TransferResult:
    """A frozen backbone + trained head, and its scores."""

    name: str
    head: object
    history: object
    features_hit: bool
    scores_val: np.ndarray
    scores_test: np.ndarray
    seconds_features: float
    seconds_head: float  # training the head and scoring validation and test


def train_transfer(backbone_name: str, data: CachedData, classes, *, weights: str, paths: Paths,
                   epochs: int, batch_size: int, seed: int, verbose: int = 0,
                   engine: str = "keras") -> TransferResult:
    """Frozen keras.applications backbone (features computed once and cached) + a trained head.

    ``engine``: how the features are computed (``backbones.cached_features``): "keras" or "onnx"
    (ONNX Runtime on a cached export of the base; not faster on this CPU, see make bench).
    """
    import time
    from ..models.backbones import cached_features
    from ..models.architectures import transfer_head

    t0 = time.perf_counter()
    feats = cached_features(backbone_name, data.image_size, weights, data, cache_dir=paths.cache, seed=seed,
                            engine=engine)
    t1 = time.perf_counter()
    head = transfer_head(feats.train.shape[1], n_classes=len(classes), seed=seed)
    fitted = fit_and_score(head, data, classes, epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose,
                           inputs=feats)
    t2 = time.perf_counter()
    return TransferResult(backbone_name, head, fitted.history, feats.hit, fitted.scores_val, fitted.scores_test,
                          round(t1 - t0, 1), round(t2 - t1, 1))


def fit_pixel_logreg(x_train: np.ndarray, y_train: np.ndarray, size: int = 32, seed: int = 0):
    """Logistic regression on standardized ``size`` x ``size`` thumbnails (a fitted sklearn pipeline)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, class_weight="balanced",
                                                             max_iter=2000, random_state=seed))
    return clf.fit(thumbnails(x_train, size), y_train)


def pixel_logreg_scores(clf, x: np.ndarray, n_classes: int, size: int = 32) -> np.ndarray:
    """Scores of a :func:`fit_pixel_logreg` model: binary P(positive) (n,), else (n, k)."""
    p = clf.predict_proba(thumbnails(x, size))
    return p[:, 1] if n_classes == 2 else p


def pixel_logreg_arrays(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, x_test: np.ndarray,
                        n_classes: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(val, test) scores of :func:`fit_pixel_logreg`. Used by notebook 06 and the audit (masked images)."""
    clf = fit_pixel_logreg(x_train, y_train, size, seed)
    return pixel_logreg_scores(clf, x_val, n_classes, size), pixel_logreg_scores(clf, x_test, n_classes, size)


def pixel_logreg(data: CachedData, classes, size: int = 32, seed: int = 0):
    """Classical baseline of notebook 06 on a task's cached splits: (fitted model, val scores, test scores)."""
    clf = fit_pixel_logreg(data.train.x, labels(data, classes, "train"), size, seed)
    return (clf, pixel_logreg_scores(clf, data.val.x, len(classes), size),
            pixel_logreg_scores(clf, data.test.x, len(classes), size))


def save_pixel_logreg(clf, path, sidecar: dict, parity: np.ndarray | None = None):
    """Save a :func:`fit_pixel_logreg` model with joblib (``.joblib``), as ONNX (``.onnx``, what
    ``predict``/``evaluate`` and notebook 08 score: they never unpickle the ``.joblib``) and its ``.json``
    sidecar, which records the ONNX export and binds it to the ``.joblib`` by both files' SHA-256.

    The sidecar must say ``image_size`` (the cache size the thumbnails were made
    from) and ``thumbnail_size``, so the model can rescore new images (notebook 08), and
    should say ``normals`` (``normals_of``), so an ensemble with it knows its training normals.
    ``parity``: validation images ((n, s, s[, 1]) uint8, e.g. ``data.val.x``) on which the ONNX graph
    is checked against scikit-learn (``onnx_export.check_parity``; up to 32 of them).
    """
    from pathlib import Path

    import joblib

    from ..atomic import atomic_write, write_json
    from ..data.images import file_sha256
    from ..models.onnx_export import export_pixel_logreg, parity_images
    from ..models.sidecar import check_fields
    path = Path(path)
    if path.suffix != ".joblib":
        raise ValueError(f"classical model path must end in .joblib, got {path}")
    missing = [k for k in ("classes", "image_size", "thumbnail_size", "threshold") if k not in sidecar]
    if missing:
        raise ValueError(f"sidecar lacks {missing}")
    check_fields(sidecar, f"the sidecar of {path}", thumbnails=True)
    with atomic_write(path) as tmp:
        joblib.dump(clf, tmp)
    size = int(sidecar["thumbnail_size"])
    thumbs = None if parity is None else thumbnails(parity_images(parity), size)
    entry = export_pixel_logreg(clf, path.with_suffix(".onnx"), thumbs, sidecar["threshold"])
    sidecar = {**sidecar, "onnx": {**entry, "model_sha256": file_sha256(path)}}
    write_json(to_jsonable(sidecar), path.with_suffix(".json"), indent=2, sort_keys=True)
    return path


def save_transfer_model(backbone_name: str, result: "TransferResult", data: CachedData, classes, *,
                        weights: str, threshold: float | None, task: str, paths: Paths, name: str, seed: int):
    """Join the frozen backbone and the trained head into one image model, check it, save it.

    The joined model must reproduce the cached-feature scores on the first test
    images (else AssertionError); it is saved as ``models/<name>.keras`` with a
    sidecar holding the validation threshold, so ``predict``/``evaluate`` and
    notebook 08 can score new images, and a parity sample of validation images for
    its ONNX export's check. Returns the joined Keras model.
    """
    from ..models.backbones import build_backbone
    from ..models.architectures import full_transfer_model
    from ..models.training import predict_scores, save_model

    backbone = build_backbone(backbone_name, data.image_size, weights, seed=seed)
    full = full_transfer_model(backbone, result.head)
    check = predict_scores(full, images(data, "test")[:16])
    if not np.allclose(check, result.scores_test[:16], atol=1e-4):
        raise AssertionError(f"{name}: the joined image model disagrees with the cached-feature scores "
                             f"(max difference {np.abs(check - result.scores_test[:16]).max():.2e})")
    save_model(full, paths.models / f"{name}.keras", sidecar=model_sidecar(
        data, classes, task=task, threshold=threshold, weights=weights, backbone=backbone_name,
        inside_model=f"{backbone_name} preprocess_input"), parity=data.val.x)
    return full


def gradcam_by_outcome(model, data: CachedData, classes, scores: np.ndarray, threshold: float | None,
                       max_per_group: int, title: str):
    """Grad-CAM figure over test images, up to ``max_per_group`` per outcome (TP/FP/FN/TN)."""
    from ..models.gradcam import gradcam, plot_gradcam_grid

    y = labels(data, classes, "test")
    binary = len(classes) == 2
    pos = 1 if binary else classes.index("covid")
    s = scores if binary else np.asarray(scores)[:, pos]
    pred = (s >= threshold) if binary else (np.asarray(scores).argmax(1) == pos)
    truth = y == pos
    chosen: list[int] = []
    for group in (truth & pred, ~truth & pred, truth & ~pred, ~truth & ~pred):
        chosen += list(np.flatnonzero(group)[:max_per_group])
    idx = np.array(sorted(chosen), dtype=int)
    x = images(data, "test")[idx]
    heat = gradcam(model, x, class_index=None if binary else pos)
    return plot_gradcam_grid(data.test.x[idx], heat, truth[idx].astype(int), s[idx],
                             ("not covid", "covid") if not binary else classes, title,
                             max_per_group=max_per_group, threshold=threshold if binary else 0.5)
