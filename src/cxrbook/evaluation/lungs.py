"""Notebook 09: does looking only at the lungs remove the shortcut? (DRAFT, see the report of branch h-lungs)

Notebooks 07 and 08 showed that the classifiers read "adult vs child" and "which collection".
The usual remedy is to crop every image to the lungs. This module measures it:

1. the lung detector (:mod:`cxrbook.models.detection`) is trained on the Cohen lung boxes
   (:mod:`cxrbook.data.lung_boxes`) of a patient split and compared on held-out patients
   with the mean box (:mod:`cxrbook.evaluation.box_metrics`);
2. every image (training collections and both external ones) is cropped to the union of its
   two detected lung boxes, widened by ``margin``; where the detector is not confident
   (score < ``min_confidence``) that lung's box is the mean box, counted per collection;
3. the custom CNN and the pixel logistic regression are retrained on the crops with the
   split, seed, threshold rule and evaluation of notebook 07 (``audit_runs.train_and_score``),
   beside the same models on the uncropped images, for ``normals`` in (all, adult);
4. internal metrics and external sensitivity (Hannover) / specificity (NIH) come with
   patient-bootstrap intervals, and cropped minus uncropped with PAIRED intervals (the same
   resampled patients for both models);
5. 07's source probe is rerun on the crops.

Schema of ``outputs/lungs.json`` (:func:`save_lungs`; keys sorted, NaN -> null)::

    {
      "note": str, "provenance": {...}, "task": str, "profile": str, "seed": int,
      "n_bootstrap": int, "margin": float, "min_confidence": float,
      "boxes": {"counts": {...}, "log": [{image_id, file_name, reason, detail}, ...]},
      "detector": {"config": {...}, "train_seconds": float, "split": {split: {"images", "patients"}},
                   "held_out": <box_metrics.compare_to_mean_box>},
      "fallback": {collection: {"images": int, "right": int, "left": int, "either": int}},
      "runs": {"<normals>": {"<arch>": {"uncropped": RunResult.summary(), "cropped": ...,
                                         "difference": {metric: entry},          # paired, cropped - uncropped
                                         "external": {"hannover"|"nih": {"metric": "sensitivity"|"specificity",
                                             "uncropped": entry, "cropped": entry, "difference": entry,
                                             "n_images": int, "n_patients": int}}}}},
      "source_probe": {"uncropped": <audit.source_probe>, "cropped": <audit.source_probe>},
      "paragraph": str
    }

Every ``entry`` is ``{"value", "ci95": [lo, hi]}`` (+ ``ci_flag``), as in :mod:`cxrbook.records`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import metrics as M
from .. import records as R
from ..atomic import write_json
from ..data.lung_boxes import LUNGS, LungBoxes
from ..images import load_gray, prepare
from ..pipeline import SPLITS, CachedData, load_arrays, read_npz, save_npz
from .box_metrics import compare_to_mean_box, mean_box

# Detector settings per profile (to move into config.PROFILES with the other profiles).
DETECTOR_PROFILES = {"smoke": {"image_size": 64, "epochs": 20, "head_layers": 1},
                     "full": {"image_size": 96, "epochs": 100, "head_layers": 2}}
MIN_CONFIDENCE = 0.5
CROP_CACHE_VERSION = 1
BOX_SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
EXTERNAL_MEASURES = {"hannover": ("covid", "sensitivity"), "nih": ("normal", "specificity")}


# --------------------------------------------------------------------------- regions

def lung_region(boxes: np.ndarray, margin: float) -> np.ndarray:
    """``(n, 4)`` rel_xyxy: the union of each image's lung boxes ``(n, lungs, 4)``, widened on every side
    by ``margin`` x its width / height, clipped to the image."""
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin must lie in [0, 1], got {margin}")
    b = np.asarray(boxes, dtype=np.float64)
    lo, hi = b[..., :2].min(axis=1), b[..., 2:].max(axis=1)
    pad = (hi - lo) * margin
    return np.clip(np.concatenate([lo - pad, hi + pad], axis=1), 0.0, 1.0)


def crop_gray(gray: np.ndarray, region: Sequence[float]) -> np.ndarray:
    """The pixels of ``region`` (rel_xyxy) of a full-resolution image (at least one pixel each way)."""
    h, w = gray.shape[:2]
    x0, y0, x1, y1 = region
    c0, c1 = int(np.floor(x0 * w)), int(np.ceil(x1 * w))
    r0, r1 = int(np.floor(y0 * h)), int(np.ceil(y1 * h))
    c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
    return gray[r0:r1, c0:c1]


# --------------------------------------------------------------------------- the detector on the real boxes

def box_splits(boxes: LungBoxes, seed: int) -> pd.DataFrame:
    """The kept annotated images with a patient-level ``split`` (no patient in two splits) and the
    manifest columns of :func:`cxrbook.pipeline.load_arrays` (``label`` "lungs", ``source`` "cohen")."""
    from ..splits import patient_split
    df = boxes.images.assign(label="lungs", source="cohen")
    return patient_split(df, fractions=BOX_SPLIT_FRACTIONS, seed=seed)


def _boxes_in_order(boxes: LungBoxes, image_paths: Sequence[str]) -> np.ndarray:
    table = np.stack([boxes.boxes(lung) for lung in LUNGS], axis=1)
    index = pd.Index(boxes.images["image_path"])
    return table[index.get_indexer(list(image_paths))]


def train_lung_detector(boxes: LungBoxes, splits: pd.DataFrame, config, *, cache_dir, n_boot: int, seed: int,
                        min_confidence: float = MIN_CONFIDENCE, echo=None) -> dict:
    """Train the detector on the train patients of ``splits`` and compare it with the mean box on the test
    patients. Returns ``{"model", "baseline", "config", "history", "held_out", "split"}``."""
    from ..models.detection import build_detector, detect, train_detector, with_fallback
    data = load_arrays(splits, config.image_size, clahe=config.clahe, cache_dir=cache_dir, progress=False)
    y_train = _boxes_in_order(boxes, data.train.image_path)
    model = build_detector(config)
    history = train_detector(model, data.train.x, y_train, config, echo=echo)
    baseline = mean_box(y_train)
    pred, scores = detect(model, data.test.x)
    used, fell = with_fallback(pred, scores, baseline, min_confidence)
    held_out = compare_to_mean_box(_boxes_in_order(boxes, data.test.image_path), used,
                                   np.where(fell, 0.0, scores), baseline, data.test.patient_id, LUNGS,
                                   n_boot=n_boot, seed=seed)
    held_out["fell_back"] = {lung: int(fell[:, k].sum()) for k, lung in enumerate(LUNGS)}
    split = {s: {"images": int(len(data[s])), "patients": int(len(set(data[s].patient_id)))} for s in SPLITS}
    return {"model": model, "baseline": baseline, "config": config, "history": history, "held_out": held_out,
            "split": split, "test_images": data.test.x, "test_boxes": used,
            "test_true": _boxes_in_order(boxes, data.test.image_path)}


# --------------------------------------------------------------------------- detect and crop every image

def detect_regions(model, table: pd.DataFrame, config, baseline: np.ndarray, *, cache_dir,
                   min_confidence: float = MIN_CONFIDENCE, group: str = "source") -> pd.DataFrame:
    """One row per image of ``table`` (needs image_path, patient_id, label and ``group``): its lung boxes
    as used (detector, or the mean box below ``min_confidence``), scores and fallback flags.

    The detector's input pixels come from the training cache (``pipeline.load_arrays`` at the
    detector's size, the whole table as one held-out block).
    """
    from ..models.detection import detect, with_fallback
    manifest = table.assign(split="test", source=table[group])
    data = load_arrays(manifest, config.image_size, clahe=config.clahe, cache_dir=cache_dir, progress=False)
    pred, scores = detect(model, data.test.x, batch_size=64)
    used, fell = with_fallback(pred, scores, baseline, min_confidence)
    out = pd.DataFrame({"image_path": data.test.image_path, group: data.test.source})
    for k, lung in enumerate(LUNGS):
        for j, c in enumerate(("x0", "y0", "x1", "y1")):
            out[f"{lung}_{c}"] = used[:, k, j]
        out[f"{lung}_score"] = scores[:, k]
        out[f"{lung}_fallback"] = fell[:, k]
    return out


def fallback_counts(regions: pd.DataFrame, group: str = "source") -> dict[str, dict[str, int]]:
    """Images per collection whose lung box fell back to the mean box (no confident detection)."""
    out = {}
    for name, g in regions.groupby(group, sort=True):
        out[str(name)] = {"images": int(len(g)), **{lung: int(g[f"{lung}_fallback"].sum()) for lung in LUNGS},
                          "either": int((g[[f"{lung}_fallback" for lung in LUNGS]].any(axis=1)).sum())}
    return out


def regions_of(regions: pd.DataFrame, margin: float) -> dict[str, np.ndarray]:
    """image_path -> crop region (rel_xyxy) from a :func:`detect_regions` table."""
    boxes = np.stack([regions[[f"{lung}_{c}" for c in ("x0", "y0", "x1", "y1")]].to_numpy(float)
                      for lung in LUNGS], axis=1)
    return dict(zip(regions["image_path"], lung_region(boxes, margin)))


def _crop_key(paths: Sequence[str], regions: dict[str, np.ndarray], image_size: int, clahe: bool) -> str:
    h = hashlib.sha256(json.dumps({"size": int(image_size), "clahe": bool(clahe), "v": CROP_CACHE_VERSION}).encode())
    for p in sorted(paths):
        h.update((p + "\x1f" + ",".join(f"{v:.6f}" for v in regions[p]) + "\n").encode())
    return h.hexdigest()


def cropped_pixels(paths: Sequence[str], regions: dict[str, np.ndarray], image_size: int, clahe: bool,
                   cache_dir) -> dict[str, np.ndarray]:
    """image_path -> ``(s, s)`` uint8 crop (full-resolution decode, crop, then ``images.prepare``),
    cached in ``cache_dir/crop-<key>.npz`` (key: paths, regions, size, CLAHE, version)."""
    paths = sorted(set(paths))
    cache = Path(cache_dir) / f"crop-{_crop_key(paths, regions, image_size, clahe)}.npz"
    if cache.is_file():
        stored = read_npz(cache)
        return dict(zip(stored["image_path"].tolist(), stored["x"]))
    x = np.stack([prepare(crop_gray(load_gray(p), regions[p]), image_size, clahe) for p in paths])
    save_npz(cache, {"image_path": np.asarray(paths, dtype=str), "x": x})
    return dict(zip(paths, x))


def cropped_data(data: CachedData, crops: dict[str, np.ndarray]) -> CachedData:
    """``data`` with every image replaced by its crop (same order, labels, patients)."""
    from dataclasses import replace
    return replace(data, **{s: replace(data[s], x=np.stack([crops[p] for p in data[s].image_path])[..., None])
                            for s in SPLITS}, hit=False)


# --------------------------------------------------------------------------- paired comparisons

def paired_difference(a, b, metrics: Sequence[str], n_boot: int, seed: int) -> dict[str, dict]:
    """``a - b`` (two ``audit_runs.RunResult`` on the SAME test images) with an interval from one
    patient bootstrap shared by both (same resamples: a paired difference)."""
    if list(a.image_path_test) != list(b.image_path_test):
        raise ValueError("a paired difference needs both runs scored on the same test images in the same order")
    da = M.bootstrap_draws(a.y_test, a.scores_test, a.patient_test, a.classes, a.threshold, n_boot=n_boot, seed=seed)
    db = M.bootstrap_draws(b.y_test, b.scores_test, b.patient_test, b.classes, b.threshold, n_boot=n_boot, seed=seed)
    out = {}
    for m in metrics:
        va, vb = a.metric(m)["value"], b.metric(m)["value"]
        d = da[m] - db[m]
        d = d[np.isfinite(d)]
        if va is None or vb is None or len(d) < 2:
            out[m] = {"value": None, "ci95": [None, None]}
            continue
        out[m] = R.metric_entry(va - vb, np.percentile(d, [2.5, 97.5]).tolist())
    return out


def external_comparison(rows: pd.DataFrame, scores_a: np.ndarray, scores_b: np.ndarray, threshold_a: float,
                        threshold_b: float, classes: Sequence[str], n_boot: int, seed: int) -> dict[str, dict]:
    """Sensitivity on Hannover and specificity on NIH for two models (a = cropped, b = uncropped) on the same
    external images, each with its interval and the paired difference a - b."""
    out = {}
    for collection, (label, metric) in EXTERNAL_MEASURES.items():
        m = (rows["collection"] == collection).to_numpy()
        if not m.any():
            continue
        y = np.full(int(m.sum()), list(classes).index(label))
        pids = rows.loc[m, "patient_id"].to_numpy()
        entry = {"metric": metric, "n_images": int(m.sum()), "n_patients": int(len(set(pids)))}
        draws = {}
        for name, s, t in (("cropped", scores_a, threshold_a), ("uncropped", scores_b, threshold_b)):
            point = M.compute_metrics(y, s[m], classes, t)[metric]
            draws[name] = M.bootstrap_draws(y, s[m], pids, classes, t, n_boot=n_boot, seed=seed)[metric]
            v = draws[name][np.isfinite(draws[name])]
            entry[name] = R.metric_entry(point, np.percentile(v, [2.5, 97.5]).tolist() if len(v) > 1 else [None, None])
        d = draws["cropped"] - draws["uncropped"]
        d = d[np.isfinite(d)]
        va, vb = entry["cropped"]["value"], entry["uncropped"]["value"]
        entry["difference"] = (R.metric_entry(va - vb, np.percentile(d, [2.5, 97.5]).tolist())
                               if va is not None and vb is not None and len(d) > 1 else
                               {"value": None, "ci95": [None, None]})
        out[collection] = entry
    return out


# --------------------------------------------------------------------------- the paragraph and the record

def _moved(entry: dict | None) -> str:
    """'rose' / 'fell' when the paired interval excludes 0, else 'did not measurably change'."""
    if not entry or entry.get("value") is None or None in entry.get("ci95", [None]):
        return "could not be measured"
    lo, hi = entry["ci95"]
    if lo > 0:
        return "rose"
    if hi < 0:
        return "fell"
    return "did not measurably change"


def _learned(summary: dict) -> bool:
    """True when a run's internal AUC interval lies above 0.5 (the model separates the classes at all)."""
    auc = summary.get("metrics", {}).get("roc_auc") or summary.get("metrics", {}).get("macro_auc")
    return bool(auc and auc.get("ci95") and auc["ci95"][0] is not None and auc["ci95"][0] > 0.5)


def _fmt(entry: dict | None) -> str:
    return R.fmt(entry) if entry else "n/a"


def lungs_paragraph(record: dict) -> str:
    """What the numbers say, generated (true for every branch of the numbers)."""
    parts = []
    held = record["detector"]["held_out"]
    d = held["difference"]["iou_mean"]
    det, base = held["detector"]["iou_mean"], held["mean_box"]["iou_mean"]
    if d["ci95"][0] is not None and d["ci95"][0] > 0:
        verdict = "beats the mean box"
    elif d["ci95"][1] is not None and d["ci95"][1] < 0:
        verdict = "is worse than the mean box"
    else:
        verdict = "does not beat the mean box (the paired interval includes 0)"
    parts.append(f"On {held['n_images']} held-out images of {held['n_patients']} patients the detector's mean IoU is "
                 f"{_fmt(det)} against {_fmt(base)} for the mean box: it {verdict}.")
    fb = record["fallback"]
    worst = max(fb, key=lambda c: fb[c]["either"] / max(fb[c]["images"], 1)) if fb else None
    if worst is not None:
        share = fb[worst]["either"] / max(fb[worst]["images"], 1)
        parts.append(f"Its least confident collection is {worst}: {fb[worst]['either']} of {fb[worst]['images']} "
                     f"images ({share:.0%}) fell back to the mean box for at least one lung.")
    for normals, by_arch in record["runs"].items():
        for arch, run in by_arch.items():
            nih = run.get("external", {}).get("nih")
            weak = [v for v in ("uncropped", "cropped") if not _learned(run[v])]
            if nih and weak:
                parts.append(f"With normals={normals}, the {arch} {' and '.join(weak)} did not separate the classes on "
                             f"its own test patients (internal AUC interval reaches 0.5), so its change in external "
                             f"specificity ({_fmt(nih['difference'])}) says nothing about cropping.")
            elif nih:
                parts.append(f"With normals={normals}, the {arch}'s external specificity on NIH adult normals "
                             f"{_moved(nih['difference'])} with cropping ({_fmt(nih['uncropped'])} uncropped, "
                             f"{_fmt(nih['cropped'])} cropped; paired difference {_fmt(nih['difference'])}).")
    probe = record.get("source_probe", {})
    if probe.get("cropped"):
        c, u = probe["cropped"], probe["uncropped"]
        still = ("can still tell the collections apart from the lung crops" if c["confounded"] else
                 "no longer beats chance by the audit's margin on the lung crops")
        parts.append(f"The source probe {still} (accuracy {_fmt(c['accuracy'])} cropped vs "
                     f"{_fmt(u['accuracy'])} uncropped; chance {c['chance_majority_share']:.2f}).")
        if c["confounded"]:
            parts.append("A crop to the lungs removes borders, text and collimation, but not what lies inside the "
                         "lungs: body size and age (children's chests), positioning and the resolution and "
                         "processing of each collection remain there for a shortcut.")
    return " ".join(parts)


def validate_lungs(record: dict) -> None:
    """Raise ValueError naming the first missing or malformed part of a lungs record."""
    for key in ("task", "profile", "seed", "n_bootstrap", "margin", "min_confidence", "boxes", "detector",
                "fallback", "runs", "source_probe", "paragraph"):
        if key not in record:
            raise ValueError(f"lungs record lacks {key!r}")
    held = record["detector"]["held_out"]
    for side in ("detector", "mean_box", "difference"):
        for metric in ("iou_mean", "map50", "map50_95"):
            entry = held[side].get(metric)
            if entry is None or "value" not in entry or len(entry.get("ci95", [])) != 2:
                raise ValueError(f"lungs record: detector.held_out.{side}.{metric} is missing or malformed")


def save_lungs(record: dict, path: str | Path) -> Path:
    """Validate and write ``outputs/lungs.json`` (sorted keys, NaN -> null), disclaimer and provenance on top."""
    from ..manifest import provenance
    from ..sidecar import DISCLAIMER
    validate_lungs(record)
    body = R.to_jsonable({"note": f"cxrbook lungs study: {DISCLAIMER}", "provenance": provenance(), **record})
    return write_json(body, path, allow_nan=False)



# --------------------------------------------------------------------------- one normals setting, cropped vs not

def _external_scores(run, data: CachedData, x_ext: np.ndarray, classes: Sequence[str], seed: int) -> np.ndarray:
    """Positive-class scores of a run's model on external pixels (the logistic regression is refitted
    with the run's seed on the same training pixels: the same deterministic model)."""
    from .. import experiment as E
    if run.model is None:
        clf = E.fit_pixel_logreg(data.train.x, E.labels(data, classes, "train"), seed=seed)
        return E.pixel_logreg_scores(clf, x_ext, len(classes))
    from ..pipeline import to_rgb_float
    from ..training import predict_scores
    s = np.asarray(predict_scores(run.model, to_rgb_float(x_ext)))
    return s[:, -1] if s.ndim == 2 else s


def compare_cropping(data: CachedData, crops: dict[str, np.ndarray], classes: Sequence[str], *, archs: Sequence[str],
                     epochs: int, batch_size: int, seed: int, n_boot: int, ext_rows: pd.DataFrame | None = None,
                     x_ext: np.ndarray | None = None, x_ext_cropped: np.ndarray | None = None,
                     progress: bool = True) -> dict:
    """Each arch trained on ``data`` and on its crops (same split, seed, epochs, threshold rule), the
    paired internal differences and, given the external rows and pixels, the external comparison.

    Returns ``{"cropped_data", arch: {"uncropped": RunResult, "cropped": RunResult, "difference", "external"}}``.
    """
    from ..audit_runs import headline_metrics, train_and_score
    cdata = cropped_data(data, crops)
    out: dict[str, Any] = {"cropped_data": cdata}
    for arch in archs:
        runs = {}
        for name, d in (("uncropped", data), ("cropped", cdata)):
            runs[name] = train_and_score(d, classes, arch=arch, epochs=epochs, batch_size=batch_size, seed=seed,
                                         n_boot=n_boot, name=f"{arch} {name}", progress=progress)
        entry = {**runs, "difference": paired_difference(runs["cropped"], runs["uncropped"],
                                                          headline_metrics(classes), n_boot, seed)}
        if ext_rows is not None and len(classes) == 2:
            s_crop = _external_scores(runs["cropped"], cdata, x_ext_cropped, classes, seed)
            s_unc = _external_scores(runs["uncropped"], data, x_ext, classes, seed)
            entry["external"] = external_comparison(ext_rows, s_crop, s_unc, runs["cropped"].threshold,
                                                    runs["uncropped"].threshold, classes, n_boot, seed)
        out[arch] = entry
    return out


def runs_record(result: dict, archs: Sequence[str]) -> dict:
    """The JSON part of :func:`compare_cropping` (models and pixels left out)."""
    return {arch: {"uncropped": result[arch]["uncropped"].summary(), "cropped": result[arch]["cropped"].summary(),
                   "difference": result[arch]["difference"], "external": result[arch].get("external", {})}
            for arch in archs}
