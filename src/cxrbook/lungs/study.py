"""Notebook 09's study: does looking only at the lungs remove the shortcut?

Notebooks 07 and 08 showed that the classifiers read "adult vs child" and "which collection".
The usual remedy is to crop every image to the lungs. This module measures it:

1. the lung detector (:mod:`cxrbook.models.detection`) is trained on the Cohen lung boxes
   (:mod:`cxrbook.data.lung_boxes`) of a patient split and compared on held-out patients
   with the mean box (:mod:`cxrbook.evaluation.box_metrics`);
2. every image (training collections and both external ones) is cropped to the union of its
   two detected lung boxes, widened by ``margin``; where the detector is not confident
   (score < ``min_confidence``) that lung's box is the mean box, counted per collection;
3. the custom CNN and the pixel logistic regression are retrained on the crops with the
   split, seed, threshold rule and evaluation of notebook 07 (``audit.runs.train_and_score``),
   for ``normals`` in (all, adult); the uncropped side is 07's own saved CNN when it was
   trained on this very split (:func:`reuse_audit_run`: loaded and scored, not retrained);
4. internal metrics and external sensitivity (Hannover) / specificity (NIH) come with
   patient-bootstrap intervals, and cropped minus uncropped with PAIRED intervals (the same
   resampled patients for both models, ``audit.runs.metric_difference(paired=True)``);
5. 07's source probe on the crops, beside 07's own result on the whole images.

Schema of ``outputs/lungs.json`` (:func:`save_lungs`; keys sorted, NaN -> null)::

    {
      "schema_version": 1, "note": str, "provenance": {"commit", "dirty", "created_utc"},
      "task": str, "profile": str, "seed": int, "n_bootstrap": int, "margin": float, "min_confidence": float,
      "boxes": {"counts": {"json_images", "kept", "dropped", "dropped_by_reason": {reason: int}},
                "log": [{"image_id", "file_name", "reason", "detail"}, ...]},
      "detector": {"config": {...DetectorConfig}, "train_seconds": float, "saved": str,
                   "split": {"train"|"val"|"test": {"images": int, "patients": int}},
                   "held_out": {"n_images", "n_patients", "n_bootstrap", "bootstrap_seed", "lungs",
                                "detector": {metric: M}, "mean_box": {metric: M}, "difference": {metric: M},
                                "fell_back": {"right": int, "left": int}}},
      "fallback": {collection: {"images": int, "right": int, "left": int, "either": int}},
      "runs": {"all"|"adult": {arch: {
          "uncropped": <RunResult.summary()>, "cropped": <RunResult.summary()>, "uncropped_from": str,
          "difference": {metric: M},                     # paired, cropped - uncropped, internal test
          "external": {"hannover"|"nih": {"metric": "sensitivity"|"specificity", "n_images", "n_patients",
                                          "uncropped": M, "cropped": M, "difference": M}}}}},
      "saved_models": [str, ...],                        # crop-trained CNNs, for predict --crop-lungs
      "source_probe": {"uncropped": <audit.checks.source_probe>, "cropped": <...>, "uncropped_from": str},
      "timings": {step: seconds},
      "paragraph": str                                   # Markdown, lungs.text.lungs_paragraph
    }

Metrics ``M`` are ``{"value", "ci95": [lo, hi]}`` (+ ``ci_flag``), as in
:mod:`cxrbook.evaluation.records`; detector metrics are ``iou_mean``, ``iou_right``,
``iou_left``, ``hit50_right``, ``hit50_left``, ``map50`` and ``map50_95``.
Research tool, not a diagnosis.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..atomic import to_jsonable, write_json
from ..audit.runs import RunResult, headline_metrics, metric_difference, rescored_run, scored_run, train_and_score
from ..config import model_name
from ..data.external_collections import COLLECTION_LABEL, MEASURES
from ..data.images import load_gray, prepare
from ..data.lung_boxes import LUNGS, LungBoxes
from ..data.pipeline import SPLITS, CachedData, load_arrays, read_npz, save_npz, to_rgb_float
from ..evaluation.box_metrics import compare_to_mean_box, mean_box
from ..inference.lung_crop import CROP_FOLDER, DETECTOR_NAME, LUNG_CROP_KEY
from ..models.detection import DetectorConfig, crop_to_region, lung_regions

SCHEMA_VERSION = 1
MIN_CONFIDENCE = 0.5
MARGIN = 0.10
CROP_CACHE_VERSION = 2  # 2: crops widened to a scorable shape (models.detection.crop_to_region)
BOX_SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
COORDS = ("x0", "y0", "x1", "y1")
MAX_CROP_WORKERS = 4


# --------------------------------------------------------------------------- the detector on the real boxes

def detector_config(settings: dict, weights: str, seed: int, epochs: int | None = None) -> DetectorConfig:
    """The profile's detector (``config.PROFILES``: ``detector_image_size``, ``detector_epochs``,
    ``detector_head_layers``): the small random-initialised ResNet for ``weights="none"``, ResNet-18 for
    ImageNet or a preset folder. ``epochs``: overrides the profile's when given and >= 0."""
    backbone = "resnet_small" if str(weights).lower() == "none" else "resnet18"
    return DetectorConfig(image_size=int(settings["detector_image_size"]),
                          epochs=int(settings["detector_epochs"] if epochs is None or epochs < 0 else epochs),
                          head_layers=int(settings["detector_head_layers"]), backbone=backbone, weights=str(weights),
                          seed=int(seed))


def box_splits(boxes: LungBoxes, seed: int) -> pd.DataFrame:
    """The kept annotated images with a patient-level ``split`` (no patient in two splits) and the
    manifest columns of :func:`cxrbook.data.pipeline.load_arrays` (``label`` "lungs", ``source`` "cohen")."""
    from ..data.splits import patient_split
    df = boxes.images.assign(label="lungs", source="cohen")
    return patient_split(df, fractions=BOX_SPLIT_FRACTIONS, seed=seed)


def boxes_in_order(boxes: LungBoxes, image_paths: Sequence[str]) -> np.ndarray:
    """``(n, 2, 4)`` rel_xyxy true boxes of ``image_paths``, in that order."""
    table = np.stack([boxes.boxes(lung) for lung in LUNGS], axis=1)
    return table[pd.Index(boxes.images["image_path"]).get_indexer(list(image_paths))]


@dataclass
class DetectorRun:
    """The trained detector, its mean-box baseline and its held-out comparison."""

    model: Any
    config: DetectorConfig
    baseline: np.ndarray      # (2, 4) rel_xyxy mean box of the training images
    history: dict
    held_out: dict            # box_metrics.compare_to_mean_box + fell_back counts
    split: dict               # {split: {"images", "patients"}}
    test_x: np.ndarray        # held-out pixels at the detector's size
    test_true: np.ndarray     # (n, 2, 4) annotations
    test_used: np.ndarray     # (n, 2, 4) boxes as used (detector or mean box)
    test_fell_back: np.ndarray


def train_lung_detector(boxes: LungBoxes, splits: pd.DataFrame, config: DetectorConfig, *, cache_dir,
                        n_boot: int, seed: int, min_confidence: float = MIN_CONFIDENCE, echo=None) -> DetectorRun:
    """Train the detector on the train patients of ``splits`` and compare it with the mean box on the test
    patients (the boxes used are the ones a crop uses: the detector's, or the mean box below the confidence)."""
    from ..models.detection import build_detector
    from ..models.detection_training import train_detector
    data = load_arrays(splits, config.image_size, clahe=config.clahe, cache_dir=cache_dir, progress=False)
    y_train = boxes_in_order(boxes, data.train.image_path)
    model = build_detector(config)
    history = train_detector(model, data.train.x, y_train, config, echo=echo)
    baseline = mean_box(y_train)
    found = lung_regions(model, data.test.x, baseline, 0.0, min_confidence)
    true = boxes_in_order(boxes, data.test.image_path)
    held_out = compare_to_mean_box(true, found.boxes, np.where(found.fell_back, 0.0, found.scores), baseline,
                                   data.test.patient_id, LUNGS, n_boot=n_boot, seed=seed)
    held_out["fell_back"] = {lung: int(found.fell_back[:, k].sum()) for k, lung in enumerate(LUNGS)}
    split = {s: {"images": int(len(data[s])), "patients": int(len(set(data[s].patient_id)))} for s in SPLITS}
    return DetectorRun(model, config, baseline, history, held_out, split, data.test.x, true, found.boxes,
                       found.fell_back)


# --------------------------------------------------------------------------- detect and crop every image

def all_images(data: CachedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels, image paths, sources) of every split of ``data`` together: the images the detector crops."""
    return tuple(np.concatenate([getattr(data[s], field) for s in SPLITS]) for field in ("x", "image_path", "source"))


def detect_regions(model, x_uint8: np.ndarray, image_paths: Sequence[str], groups: Sequence[str],
                   baseline: np.ndarray, *, margin: float, min_confidence: float = MIN_CONFIDENCE,
                   group: str = "source") -> pd.DataFrame:
    """One row per image (pixels ``x_uint8`` at the detector's size, from the training caches): the lung
    boxes as used (detector, or the mean box below ``min_confidence``), scores, fallback flags and the crop
    region; ``groups`` (the collection of each image) go to column ``group``."""
    found = lung_regions(model, x_uint8, baseline, margin, min_confidence, batch_size=64)
    out = pd.DataFrame({"image_path": np.asarray(image_paths, dtype=str), group: np.asarray(groups, dtype=str)})
    for k, lung in enumerate(LUNGS):
        for j, c in enumerate(COORDS):
            out[f"{lung}_{c}"] = found.boxes[:, k, j]
        out[f"{lung}_score"] = found.scores[:, k]
        out[f"{lung}_fallback"] = found.fell_back[:, k]
    for j, c in enumerate(COORDS):
        out[f"crop_{c}"] = found.regions[:, j]
    return out


def fallback_counts(regions: pd.DataFrame, group: str = "source") -> dict[str, dict[str, int]]:
    """Images per collection whose lung box fell back to the mean box (no confident detection)."""
    out = {}
    for name, g in regions.groupby(group, sort=True):
        flags = g[[f"{lung}_fallback" for lung in LUNGS]].to_numpy(bool)
        out[str(name)] = {"images": int(len(g)), **{lung: int(flags[:, k].sum()) for k, lung in enumerate(LUNGS)},
                          "either": int(flags.any(axis=1).sum())}
    return out


def region_table(regions: pd.DataFrame) -> dict[str, np.ndarray]:
    """image_path -> crop region (rel_xyxy) from :func:`detect_regions` tables."""
    return dict(zip(regions["image_path"], regions[[f"crop_{c}" for c in COORDS]].to_numpy(float)))


def _crop_key(paths: Sequence[str], regions: dict[str, np.ndarray], image_size: int, clahe: bool) -> str:
    h = hashlib.sha256(json.dumps({"size": int(image_size), "clahe": bool(clahe), "v": CROP_CACHE_VERSION}).encode())
    for p in sorted(paths):
        h.update((p + "\x1f" + ",".join(f"{v:.6f}" for v in regions[p]) + "\n").encode())
    return h.hexdigest()


def crop_pixels(path: str, region: Sequence[float], image_size: int, clahe: bool = False) -> np.ndarray:
    """One image's crop as a classifier reads it: full-resolution decode, crop, ``images.prepare``
    (what ``predict --crop-lungs`` does with a file)."""
    return prepare(crop_to_region(load_gray(path), region), image_size, clahe)


def cropped_pixels(regions: dict[str, np.ndarray], image_size: int, clahe: bool, cache_dir,
                   workers: int | None = None) -> dict[str, np.ndarray]:
    """image_path -> ``(s, s)`` uint8 crop (:func:`crop_pixels`) of every image in ``regions``, cached in
    ``cache_dir/crop-<key>.npz`` (key: paths, regions, size, CLAHE, version). Decoding runs on
    ``workers`` threads (default: the cores this process may use, at most ``MAX_CROP_WORKERS``, so that
    few full-resolution images are in memory at once; the decoders release the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor
    paths = sorted(regions)
    cache = Path(cache_dir) / f"crop-{_crop_key(paths, regions, image_size, clahe)}.npz"
    if cache.is_file():
        stored = read_npz(cache)
        return dict(zip(stored["image_path"].tolist(), stored["x"]))
    workers = workers or min(MAX_CROP_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        x = np.stack(list(pool.map(lambda p: crop_pixels(p, regions[p], image_size, clahe), paths)))
    save_npz(cache, {"image_path": np.asarray(paths, dtype=str), "x": x})
    return dict(zip(paths, x))


def cropped_data(data: CachedData, crops: dict[str, np.ndarray]) -> CachedData:
    """``data`` with every image replaced by its crop (same order, labels, patients)."""
    return replace(data, **{s: replace(data[s], x=np.stack([crops[p] for p in data[s].image_path])[..., None])
                            for s in SPLITS}, hit=False)


# --------------------------------------------------------------------------- uncropped runs: 07's when possible

def reuse_audit_run(paths, task: str, normals: str, arch: str, data: CachedData, classes: Sequence[str], *,
                    n_boot: int, seed: int, profile: str, epochs: int) -> tuple[RunResult | None, str]:
    """Notebook 07's saved ``<arch>__normals_<normals>`` model scored on ``data``'s test images, when 07
    trained it on this very split; else ``(None, why not)``.

    Checked: ``audit.json`` names this task, profile, seed, arch, image size and epochs; the
    model's metrics record has this split's train/val/test sizes; and its test metrics,
    recomputed here from the loaded model's scores at its stored threshold, equal the
    record's (else it is another model or split, and the caller retrains).
    """
    name = model_name(f"{arch}__normals_{normals}", task)
    model_path, record_path, audit_path = (paths.models / f"{name}.keras", paths.metrics / f"{name}.json",
                                           paths.outputs / "audit.json")
    for p in (model_path, record_path, audit_path):
        if not p.is_file():
            return None, f"{p.name} is missing"
    audit = json.loads(audit_path.read_text(encoding="utf-8"))
    want = {"task": task, "profile": profile, "seed": seed, "arch": arch, "image_size": data.image_size,
            "epochs": epochs}
    differs = {k: audit.get(k) for k, v in want.items() if audit.get(k) != v}
    if differs:
        return None, f"audit.json was written with {differs}, not {({k: want[k] for k in differs})}"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    sizes = ((record.get("extra") or {}).get("n_train"), (record.get("extra") or {}).get("n_val"), record.get("n_test"))
    if sizes != (len(data.train), len(data.val), len(data.test)):
        return None, f"{record_path.name} has train/val/test sizes {sizes}, this split {len(data.train), len(data.val), len(data.test)}"
    from ..inference.saved_model import load_keras_model
    from ..models.sidecar import read_sidecar
    from ..models.training import predict_scores
    model, sidecar = load_keras_model(model_path), read_sidecar(model_path)
    scores = np.asarray(predict_scores(model, to_rgb_float(data.test.x)))
    scores = scores[:, -1] if scores.ndim == 2 and len(classes) == 2 else scores
    from ..evaluation.experiment import labels
    run = scored_run(f"{arch} uncropped (notebook 07's model)", arch, classes, sidecar.get("threshold"),
                     labels(data, classes, "test"), scores, data.test.patient_id, data.test.image_path,
                     n_boot=n_boot, seed=seed, n_train=len(data.train), n_val=len(data.val),
                     info={"normals": normals, "from": str(model_path)}, model=model)
    for metric in headline_metrics(classes):
        a, b = run.metric(metric)["value"], (record["metrics"].get(metric) or {}).get("value")
        if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-6):
            return None, f"{name}'s test {metric} recomputed here ({a}) differs from its record ({b})"
    return run, f"notebook 07's saved model {model_path.name} (same split, scored here, not retrained)"


def audit_probe(paths, *, task: str, profile: str, seed: int, image_size: int, n_boot: int) -> dict | None:
    """07's source probe on the whole images (``audit.json``) when it ran on this split and settings."""
    path = paths.outputs / "audit.json"
    if not path.is_file():
        return None
    audit = json.loads(path.read_text(encoding="utf-8"))
    want = {"task": task, "profile": profile, "seed": seed, "image_size": image_size, "n_bootstrap": n_boot}
    if any(audit.get(k) != v for k, v in want.items()) or not audit.get("source_probe"):
        return None
    return audit["source_probe"]


# --------------------------------------------------------------------------- cropped vs uncropped

def external_scores(run: RunResult, data: CachedData, x_ext: np.ndarray, classes: Sequence[str],
                    seed: int) -> np.ndarray:
    """Positive-class scores of a run's model on external pixels (a logistic-regression run holds no model:
    it is refitted with the run's seed on the same training pixels, the same deterministic fit)."""
    from ..evaluation import experiment as E
    if run.model is None:
        clf = E.fit_pixel_logreg(data.train.x, E.labels(data, classes, "train"), seed=seed)
        return E.pixel_logreg_scores(clf, x_ext, len(classes))
    from ..models.training import predict_scores
    s = np.asarray(predict_scores(run.model, to_rgb_float(x_ext)))
    return s[:, -1] if s.ndim == 2 else s


def external_comparison(rows: pd.DataFrame, cropped: RunResult, uncropped: RunResult, scores_cropped: np.ndarray,
                        scores_uncropped: np.ndarray, n_boot: int, seed: int) -> dict[str, dict]:
    """Sensitivity on Hannover and specificity on NIH of both models at their own validation thresholds,
    each with its patient interval, and the PAIRED difference cropped - uncropped (same images)."""
    out = {}
    classes = list(cropped.classes)
    for collection, metric in MEASURES.items():
        m = (rows["collection"] == collection).to_numpy()
        if not m.any():
            continue
        y = np.full(int(m.sum()), classes.index(COLLECTION_LABEL[collection]))
        pids, files = rows.loc[m, "patient_id"].to_numpy(str), rows.loc[m, "image_path"].to_numpy(str)
        a = rescored_run(cropped, y, scores_cropped[m], pids, files, f"{cropped.name} on {collection}", n_boot, seed)
        b = rescored_run(uncropped, y, scores_uncropped[m], pids, files, f"{uncropped.name} on {collection}",
                         n_boot, seed)
        out[collection] = {"metric": metric, "n_images": int(m.sum()), "n_patients": int(len(set(pids))),
                           "cropped": a.metric(metric), "uncropped": b.metric(metric),
                           "difference": metric_difference(a, b, n_boot, seed, metrics=(metric,), paired=True)[metric]}
    return out


def compare_cropping(data: CachedData, cdata: CachedData, classes: Sequence[str], *, archs: Sequence[str],
                     epochs: int, batch_size: int, seed: int, n_boot: int,
                     uncropped: dict[str, RunResult] | None = None, ext_rows: pd.DataFrame | None = None,
                     x_ext: np.ndarray | None = None, x_ext_cropped: np.ndarray | None = None,
                     progress: bool = True) -> dict[str, dict]:
    """Each arch trained on the crops ``cdata`` and (unless ``uncropped`` holds its run) on ``data``, with the
    same split, seed, epochs and threshold rule; the paired internal differences and, given the external
    rows and pixels, the external comparison. Returns ``{arch: {"uncropped", "cropped", "difference",
    "external"}}`` (RunResults and dicts)."""
    out = {}
    for arch in archs:
        runs = {"uncropped": (uncropped or {}).get(arch)}
        for name, d in (("uncropped", data), ("cropped", cdata)):
            if runs.get(name) is None:
                runs[name] = train_and_score(d, classes, arch=arch, epochs=epochs, batch_size=batch_size, seed=seed,
                                             n_boot=n_boot, name=f"{arch} {name}", progress=progress)
        entry = {**runs, "difference": metric_difference(runs["cropped"], runs["uncropped"], n_boot, seed,
                                                         paired=True)}
        if ext_rows is not None and len(classes) == 2:
            entry["external"] = external_comparison(
                ext_rows, runs["cropped"], runs["uncropped"],
                external_scores(runs["cropped"], cdata, x_ext_cropped, classes, seed),
                external_scores(runs["uncropped"], data, x_ext, classes, seed), n_boot, seed)
        out[arch] = entry
    return out


def runs_record(result: dict[str, dict], uncropped_from: dict[str, str]) -> dict:
    """The JSON part of :func:`compare_cropping` (models and pixels left out)."""
    return {arch: {"uncropped": r["uncropped"].summary(), "cropped": r["cropped"].summary(),
                   "uncropped_from": uncropped_from.get(arch, "trained here"),
                   "difference": r["difference"], "external": r.get("external", {})}
            for arch, r in result.items()}


def save_crop_models(result: dict[str, dict], paths, task: str, normals: str, *, detector_path: Path,
                     margin: float, min_confidence: float) -> list[Path]:
    """Save each crop-trained CNN of ``result`` as ``models/lung_crops/<arch>__normals_<normals>__lung_crops.keras``
    with a sidecar whose ``lung_crop`` entry makes ``predict`` crop with the same detector and margin (a
    folder of its own: notebook 08 and the app, which read ``models/``, never score it on whole images)."""
    from ..data.images import file_sha256
    from ..models.training import save_model
    saved = []
    for arch, r in result.items():
        run = r["cropped"]
        if run.model is None:
            continue
        name = model_name(f"{arch}__normals_{normals}__lung_crops", task)
        sidecar = {"classes": list(run.classes), "image_size": int(run.model.input_shape[1]), "task": task,
                   "threshold": run.threshold, "weights": "none (trained from scratch)", "backbone": arch,
                   "normals": normals, "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
                   "display_name": f"{arch}, normals={normals}, lung crops (09)",
                   LUNG_CROP_KEY: {"detector": detector_path.name, "detector_sha256": file_sha256(detector_path),
                                   "margin": float(margin), "min_confidence": float(min_confidence)}}
        saved.append(save_model(run.model, paths.models / CROP_FOLDER / f"{name}.keras", sidecar=sidecar))
    return saved


def detector_path(paths) -> Path:
    """Where notebook 09 saves the detector: ``models/lung_crops/lung_detector.weights.h5``."""
    return paths.models / CROP_FOLDER / DETECTOR_NAME


# --------------------------------------------------------------------------- the record

def detector_record(run: DetectorRun, saved: Path) -> dict:
    """The ``detector`` part of lungs.json."""
    return {"config": asdict(run.config), "train_seconds": float(run.history["seconds"]), "saved": str(saved),
            "split": run.split, "held_out": run.held_out}


def validate_lungs(record: dict) -> None:
    """Raise ValueError naming the first missing or malformed part of a lungs record."""
    for key in ("task", "profile", "seed", "n_bootstrap", "margin", "min_confidence", "boxes", "detector",
                "fallback", "runs", "source_probe", "paragraph"):
        if key not in record:
            raise ValueError(f"lungs record lacks {key!r}")
    held = record["detector"]["held_out"]
    for side in ("detector", "mean_box", "difference"):
        for metric in ("iou_mean", "map50", "map50_95"):
            entry = held.get(side, {}).get(metric)
            if not isinstance(entry, dict) or "value" not in entry or len(entry.get("ci95") or []) != 2:
                raise ValueError(f"lungs record: detector.held_out.{side}.{metric} is missing or malformed")
    for normals, by_arch in record["runs"].items():
        for arch, run in by_arch.items():
            for part in ("uncropped", "cropped", "difference"):
                if part not in run:
                    raise ValueError(f"lungs record: runs.{normals}.{arch} lacks {part!r}")
            for coll, e in run.get("external", {}).items():
                for part in ("uncropped", "cropped", "difference"):
                    if len((e.get(part) or {}).get("ci95") or []) != 2:
                        raise ValueError(f"lungs record: runs.{normals}.{arch}.external.{coll}.{part} lacks an interval")


def save_lungs(record: dict, path: str | Path) -> Path:
    """Validate and write ``outputs/lungs.json`` (sorted keys, NaN -> null), disclaimer and provenance on top."""
    from ..models.sidecar import DISCLAIMER
    from ..provenance import code_stamp
    validate_lungs(record)
    body = to_jsonable({"schema_version": SCHEMA_VERSION, "note": f"cxrbook lungs study: {DISCLAIMER}",
                        "provenance": code_stamp(), **record})
    return write_json(body, path, allow_nan=False)
