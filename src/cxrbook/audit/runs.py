"""One audited run: a model variant trained and scored on (optionally masked) images, and two runs compared.

The unit every check of the trust audit (``audit``, notebook 07) is made of:
``train_and_score`` trains one variant (reference CNN, improved CNN or pixel
logistic regression) on images with an optional mask (``apply_mask``: lungs
hidden, or only the centre kept), chooses its threshold on validation and
evaluates it on test with patient-bootstrap intervals (``experiment``'s
protocol); ``subset_run`` re-evaluates a run on part of its test images,
``rescored_run`` on other images (notebook 09's external collections), and
``metric_difference`` gives the difference of two runs with a paired interval (patients
matched by id and drawn once for both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from ..evaluation import experiment as E
from ..evaluation import metrics as M
from ..evaluation.metrics import auc_name  # noqa: F401  (the audit's checks and text import it from here)
from ..data.pipeline import SPLITS, CachedData

ARCHS = ("custom_cnn", "improved_cnn", "logreg")
MASKS = ("none", "center_blanked", "center_only")
MASK_LABELS = {"none": "unmasked", "center_blanked": "center blanked (lungs hidden)",
               "center_only": "only the center kept"}


def headline_metrics(classes: Sequence[str]) -> tuple[str, ...]:
    """The metrics the audit reports: binary AUC, accuracy, sensitivity, specificity;
    multi-class macro AUC, accuracy, macro F1 and COVID-19 sensitivity."""
    if len(classes) == 2:
        return ("roc_auc", "accuracy", "sensitivity", "specificity")
    extra = (f"sensitivity_{classes[0]}",) if "covid" not in classes else ("sensitivity_covid",)
    return ("macro_auc", "accuracy", "macro_f1", *extra)


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


def masked_data(data: CachedData, mask: str, fraction: float = 0.6, fill: float | None = None) -> CachedData:
    """``data`` with every split's images masked by :func:`apply_mask` (one grey ``fill`` for all of them)."""
    return replace(data, **{s: replace(data[s], x=apply_mask(data[s].x, mask, fraction, fill)) for s in SPLITS})


def train_and_score(data: CachedData, classes: Sequence[str], *, arch: str = "custom_cnn", epochs: int = 2,
                    batch_size: int = 32, seed: int = 42, augment: bool = False, mask: str = "none",
                    mask_fraction: float = 0.6, n_boot: int = 200, name: str | None = None,
                    progress: bool = True) -> RunResult:
    """Train one variant on ``data`` (optionally masked) and evaluate it on its test split.

    ``arch``: ``custom_cnn`` (the reference CNN, ``models.custom_cnn``),
    ``improved_cnn`` or ``logreg`` (logistic regression on 32x32 pixels, seconds).
    The same mask (filled with the training images' mean grey) is applied to
    train, validation and test images. A CNN is trained and scored by
    ``experiment.fit_and_score``; threshold and report as every notebook's model
    (``experiment.threshold_and_report``: Youden's J on validation for binary,
    argmax otherwise). Nothing is saved. ``progress``: print one line per epoch
    (``training.EpochLine``), so a notebook cell that trains several variants shows it is alive.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    classes = tuple(classes)
    t0 = time.perf_counter()
    fill = float(data.train.x.mean())  # one grey for every split and image (see apply_mask)
    masked = masked_data(data, mask, mask_fraction, fill)
    ys = {s: E.labels(masked, classes, s) for s in SPLITS}
    missing = [(s, c) for s in ys for i, c in enumerate(classes) if not (ys[s] == i).any()]
    if missing:
        raise ValueError(f"class(es) absent from splits {missing}: cannot train and evaluate {name or arch}")
    label = name or f"{arch} {mask}"
    model = None
    if arch == "logreg":
        if progress:
            print(f"training {label}: logistic regression on {len(masked.train)} images")
        s_val, s_test = E.pixel_logreg_arrays(masked.train.x, ys["train"], masked.val.x, masked.test.x,
                                             len(classes), seed=seed)
    else:
        from ..models import architectures as models
        from ..models.training import EpochLine
        build = models.custom_cnn if arch == "custom_cnn" else models.improved_cnn
        model = build(data.image_size, augment=augment, seed=seed, n_classes=len(classes))
        fitted = E.fit_and_score(model, masked, classes, epochs=epochs, batch_size=batch_size, seed=seed, verbose=0,
                                 callbacks=[EpochLine(label, epochs)] if progress else None)
        s_val, s_test = fitted.scores_val, fitted.scores_test
    threshold, report = E.threshold_and_report(masked, classes, s_val, s_test, n_bootstrap=n_boot, seed=seed)
    return RunResult(name=name or f"{arch}_{mask}", arch=arch, mask=mask, mask_fraction=float(mask_fraction),
                     classes=classes, threshold=threshold, y_test=ys["test"], scores_test=np.asarray(s_test),
                     patient_test=np.asarray(data.test.patient_id), image_path_test=np.asarray(data.test.image_path),
                     report=report, n_train=len(data.train), n_val=len(data.val),
                     seconds=round(time.perf_counter() - t0, 1), model=model)


def scored_run(name: str, arch: str, classes: Sequence[str], threshold: float | None, y: np.ndarray,
               scores: np.ndarray, patient_ids: np.ndarray, image_paths: np.ndarray, *, n_boot: int, seed: int,
               n_train: int = 0, n_val: int = 0, mask: str = "none", mask_fraction: float = 0.6,
               info: dict | None = None, model: object = None) -> RunResult:
    """A run from test scores already in hand (a saved model scored again, a subset, another collection):
    evaluated at the given ``threshold`` with patient-bootstrap intervals, nothing trained."""
    y, s = np.asarray(y), np.asarray(scores, dtype=float)
    report = M.evaluate(y, s, patient_ids, classes, threshold=threshold, n_boot=n_boot, seed=seed)
    return RunResult(name=name, arch=arch, mask=mask, mask_fraction=float(mask_fraction), classes=tuple(classes),
                     threshold=threshold, y_test=y, scores_test=s, patient_test=np.asarray(patient_ids),
                     image_path_test=np.asarray(image_paths), report=report, n_train=int(n_train),
                     n_val=int(n_val), seconds=0.0, info=dict(info or {}), model=model)


def rescored_run(run: RunResult, y: np.ndarray, scores: np.ndarray, patient_ids: np.ndarray,
                 image_paths: np.ndarray, name: str, n_boot: int, seed: int) -> RunResult:
    """The same trained model evaluated on other images (threshold unchanged), e.g. an external collection."""
    return scored_run(name, run.arch, run.classes, run.threshold, y, scores, patient_ids, image_paths,
                      n_boot=n_boot, seed=seed, n_train=run.n_train, n_val=run.n_val, mask=run.mask,
                      mask_fraction=run.mask_fraction, info=run.info)


def subset_run(run: RunResult, keep: np.ndarray, name: str, n_boot: int, seed: int) -> RunResult:
    """The same trained model re-evaluated on a subset of its test images (threshold unchanged)."""
    keep = np.asarray(keep, dtype=bool)
    return rescored_run(run, run.y_test[keep], run.scores_test[keep], run.patient_test[keep],
                        run.image_path_test[keep], name, n_boot, seed)


# --------------------------------------------------------------------------- paired differences

def scored_set(run: RunResult) -> M.ScoredSet:
    """``run``'s test labels, scores (binary: the positive column), patients and threshold."""
    s = np.asarray(run.scores_test, dtype=float)
    if len(run.classes) == 2 and s.ndim == 2:
        s = s[:, -1]
    return M.ScoredSet(run.y_test, s, run.patient_test, run.threshold)


def metric_difference(a: RunResult, b: RunResult, n_boot: int = 1000, seed: int = 0,
                      metrics: Sequence[str] | None = None, paired: bool = False) -> dict[str, dict]:
    """``a - b`` for each metric, with a 95 % interval from ONE patient bootstrap of both test sets.

    Patients are matched by id and drawn once per resample from the union of both sets, and both
    metrics are computed on that draw (``metrics.metric_differences``, BCa of the differences). Test
    sets that share patients are therefore never treated as independent: the adult-only test set
    lies inside the all-normals one (``patient_split`` assigns adult patients the same way in both),
    the masked variants and notebook 09's cropped/uncropped models are tested on the very same
    images; sets with no patient in common are resampled independently by the same draw. A run
    compared with itself gets exactly ``[0, 0]``. ``paired=True`` also checks that both runs were
    scored on the same test images in the same order (ValueError otherwise).
    """
    metrics = tuple(metrics or headline_metrics(a.classes))
    if paired and not np.array_equal(np.asarray(a.image_path_test), np.asarray(b.image_path_test)):
        raise ValueError(f"a paired difference needs {a.name!r} and {b.name!r} scored on the same test images "
                         "in the same order")
    diff = M.metric_differences(scored_set(a), scored_set(b), a.classes, metrics, n_boot=n_boot, seed=seed)
    return {m: {k: v for k, v in d.items() if k != "p_value"} for m, d in diff.items()}
