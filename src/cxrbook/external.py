"""Notebook 08: external validation on two collections from hospitals the models never saw.

Internal test splits share hospitals, scanners and age groups with training, so a
model can score well by recognising *where* an image came from. An external test
asks the question they cannot: does the model still work on another hospital's
images? Two collections, both **never** used for training, thresholds or model
selection (``metadata.load_all`` does not read them; tests guard it):

* ``hannover-covid/``: COVID-19 radiographs of Hannover Medical School
  (``data.csv``: ``patient_id, image_id, ...``; images ``png/<image_id>.png``).
  All positive: it measures **sensitivity** only.
* ``nih-adult-normal/``: adult "No Finding" X-rays of NIH ChestX-ray14, all from
  before COVID-19, as 64x64 thumbnails (``metadata.csv``: ``filename, patient_id,
  finding``; images ``images/<filename>``). All negative: **specificity** only.
  Models at 80/150/224 px see them upsampled, a shift of its own.

Location: ``$CXR_EXTERNAL_DIR`` when set, else ``<data dir>/external``. A missing
folder or file fails with a message naming it.

Images go through the training pipeline (``pipeline.load_arrays``: ``images.load_gray``
+ ``images.prepare``, cached as uint8 at each model's image size) and are scored by
``predict.load_scorer``, the code behind ``python -m cxrbook evaluate`` (Keras engine for
``.keras`` files, as ``evaluate --engine keras``; ``.joblib`` pixel classifiers), with the
threshold stored in each model's sidecar (chosen on validation in 04-07). Scores
are cached per model file hash, sidecar and image set, so a rerun scores nothing.

Schema of ``outputs/external.json`` (written by :func:`save_external`)
---------------------------------------------------------------------
JSON object, keys sorted, indent 2, NaN written as ``null``; ``M`` is a metric
entry as in ``outputs/metrics/<model>.json`` (``cxrbook.metrics``)::

    {
      "schema_version": 1,
      "task": str, "profile": str, "seed": int, "n_bootstrap": int,
      "collections": {
        "hannover": {"n_images": int, "n_patients": int, "label": "covid", "measures": "sensitivity"},
        "nih":      {"n_images": int, "n_patients": int, "label": "normal", "measures": "specificity",
                     "image_side_px": 64}
      },
      "models": [{
        "model": str,            # file stem in outputs/models/
        "display_name": str,
        "weights": str,          # as in the sidecar
        "normals": "all" | "adult",
        "image_size": int,       # px the model reads; NIH thumbnails are upsampled above 64
        "threshold": float,      # from the sidecar (validation), never tuned here
        "internal": {"sensitivity": M, "specificity": M, "roc_auc": M},   # outputs/metrics/<model>.json
        "external": {"sensitivity": M,   # Hannover, patient bootstrap over Hannover patients
                     "specificity": M,   # NIH, patient bootstrap over NIH patients
                     "roc_auc": M}       # union Hannover + NIH (confounded with source, see paragraph)
      }],
      "paragraph": str,          # generated from the numbers by :func:`external_paragraph`
      "provenance": {"commit", "dirty", "created_utc"}   # added by save_external (manifest.provenance)
    }

with ``M = {"value": float | null, "ci95": [lo, hi], "ci_flag"?: str}``.
Research tool, not a diagnosis.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import ensemble as ENS
from . import metrics as M
from . import records as R
from .sidecar import DISCLAIMER
from .config import DataNotFoundError, resolve_data_dir
from .metadata import normalize_finding
from .records import fmt as _fmt
from .pipeline import load_arrays, to_rgb_float

EXTERNAL_ENV = "CXR_EXTERNAL_DIR"
COLLECTIONS = {"hannover": "hannover-covid", "nih": "nih-adult-normal"}
COLLECTION_LABEL = {"hannover": "covid", "nih": "normal"}
MEASURES = {"hannover": "sensitivity", "nih": "specificity"}
NIH_SIDE_PX = 64
SCHEMA_VERSION = 1
COLUMNS = ["collection", "patient_id", "image_path", "label", "view", "modality"]
METRICS = ("sensitivity", "specificity", "roc_auc")
# Order of the models in tables and figures; others follow alphabetically.
MODEL_ORDER = ("custom_cnn", "custom_cnn_improved", "vgg16", "densenet121", "resnet50v2", "inceptionv3",
               "mobilenetv2", "logreg_pixels")
DISPLAY = {"custom_cnn": "Custom CNN (reference)", "custom_cnn_improved": "Improved CNN (BN + GAP)",
           "vgg16": "VGG16 frozen + head", "logreg_pixels": "Logistic regression, 32x32 pixels"}
SCORE_CACHE_VERSION = 2  # 2: Keras engine for .keras models


# --------------------------------------------------------------------------- location and loaders

def resolve_external_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``$CXR_EXTERNAL_DIR`` if set, else ``<data dir>/external``; DataNotFoundError naming the folder if absent."""
    if os.environ.get(EXTERNAL_ENV):
        path, origin = Path(os.environ[EXTERNAL_ENV]), f"${EXTERNAL_ENV}"
    else:
        path, origin = resolve_data_dir(data_dir) / "external", f"<data dir>/external (no ${EXTERNAL_ENV} set)"
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise DataNotFoundError(f"external folder {path} (from {origin}) does not exist: it must hold "
                                f"{sorted(COLLECTIONS.values())} (see README 'External test collections')")
    return path


def _collection_dir(external_dir: Path, key: str) -> Path:
    d = Path(external_dir) / COLLECTIONS[key]
    if not d.is_dir():
        raise DataNotFoundError(f"external collection folder {d} does not exist "
                                f"(set ${EXTERNAL_ENV} or put {COLLECTIONS[key]}/ under <data dir>/external)")
    return d


def _read(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataNotFoundError(f"metadata file {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; found {list(df.columns)}")
    blank = df.index[(df[list(columns)].apply(lambda s: s.str.strip()) == "").any(axis=1)]
    if len(blank):
        raise ValueError(f"{path}: row(s) {[int(i) + 2 for i in blank[:5]]} (file line numbers) have a blank "
                         f"{'/'.join(columns)}")
    return df


def _check_files(df: pd.DataFrame, meta: Path) -> pd.DataFrame:
    missing = [p for p in df["image_path"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{meta} lists {len(missing)} image(s) that do not exist, e.g. {missing[:3]}")
    dup = df["image_path"][df["image_path"].duplicated()]
    if len(dup):
        raise ValueError(f"{meta} lists image(s) twice: {sorted(set(dup))[:3]}")
    return df


def load_hannover(external_dir: str | os.PathLike) -> pd.DataFrame:
    """Hannover Medical School COVID-19 images (``data.csv`` + ``png/<image_id>.png``); every row is COVID-19."""
    root = _collection_dir(Path(external_dir), "hannover")
    meta = root / "data.csv"
    df = _read(meta, ["patient_id", "image_id"])
    out = pd.DataFrame({
        "collection": "hannover",
        "patient_id": "hannover:" + df["patient_id"].str.strip(),
        "image_path": [str(root / "png" / f"{i.strip()}.png") for i in df["image_id"]],
        "label": "covid",
        "view": df.get("projection", pd.Series([""] * len(df))).str.strip().str.upper().replace("", np.nan),
        "modality": df.get("modality", pd.Series([""] * len(df))).str.strip().replace("", np.nan),
    })
    return _check_files(out, meta)[COLUMNS]


def load_nih(external_dir: str | os.PathLike) -> pd.DataFrame:
    """NIH ChestX-ray14 adult "No Finding" thumbnails (``metadata.csv`` + ``images/<filename>``)."""
    root = _collection_dir(Path(external_dir), "nih")
    meta = root / "metadata.csv"
    df = _read(meta, ["filename", "patient_id", "finding"])
    labels = df["finding"].map(normalize_finding)
    bad = df.index[labels != "normal"]
    if len(bad):
        raise ValueError(f"{meta}: row(s) {[int(i) + 2 for i in bad[:5]]} have finding "
                         f"{sorted(set(df.loc[bad, 'finding']))[:3]}, not 'No Finding': this collection "
                         "measures specificity on normals only")
    out = pd.DataFrame({
        "collection": "nih",
        "patient_id": "nih:" + df["patient_id"].str.strip(),
        "image_path": [str(root / "images" / f.strip()) for f in df["filename"]],
        "label": "normal",
        "view": np.nan,
        "modality": "X-ray",
    })
    return _check_files(out, meta)[COLUMNS]


def load_external(external_dir: str | os.PathLike) -> pd.DataFrame:
    """Both external collections as one table (``COLUMNS``), sorted by image_path; nothing dropped."""
    df = pd.concat([load_hannover(external_dir), load_nih(external_dir)], ignore_index=True)
    return df.sort_values("image_path", kind="mergesort").reset_index(drop=True)


def collections_summary(df: pd.DataFrame) -> dict:
    """The ``collections`` block of external.json: images, patients, label and what each measures."""
    out = {}
    for key in COLLECTIONS:
        d = df[df["collection"] == key]
        out[key] = {"n_images": int(len(d)), "n_patients": int(d["patient_id"].nunique()),
                    "label": COLLECTION_LABEL[key], "measures": MEASURES[key]}
    out["nih"]["image_side_px"] = NIH_SIDE_PX
    return out


def write_labels_csv(df: pd.DataFrame, collection: str, path: str | os.PathLike) -> Path:
    """A ``filename,label,patient_id`` CSV for ``python -m cxrbook evaluate --images <collection images folder>``."""
    d = df[df["collection"] == collection]
    out = pd.DataFrame({"filename": [Path(p).name for p in d["image_path"]], "label": d["label"].to_numpy(),
                        "patient_id": d["patient_id"].to_numpy()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path


def images_folder(external_dir: str | os.PathLike, collection: str) -> Path:
    """The folder that holds a collection's image files (``png/`` or ``images/``)."""
    return Path(external_dir) / COLLECTIONS[collection] / ("png" if collection == "hannover" else "images")


# --------------------------------------------------------------------------- pixels (the training cache)

@dataclass
class ExternalArrays:
    """uint8 pixels of every external image at one size, rows aligned with ``rows``."""

    x: np.ndarray         # (n, s, s, 1) uint8
    rows: pd.DataFrame    # COLUMNS, same order as x
    key: str              # cache key of the decoded pixels
    image_size: int
    clahe: bool
    hit: bool


def external_arrays(df: pd.DataFrame, image_size: int, clahe: bool = False,
                    cache_dir: str | os.PathLike | None = None) -> ExternalArrays:
    """Decode the external images once per size through ``pipeline.load_arrays`` (same decoder and cache).

    The whole table is passed as one held-out block (``split="test"``): nothing
    of it can reach a training or validation split.
    """
    table = df.assign(split="test", source=df["collection"])
    data = load_arrays(table, image_size, clahe=clahe, cache_dir=cache_dir, progress=False)
    rows = df.set_index("image_path").loc[data.test.image_path].reset_index()[COLUMNS]
    return ExternalArrays(data.test.x, rows, data.key, int(image_size), bool(clahe), data.hit)


# --------------------------------------------------------------------------- models and scores

@dataclass
class SavedModel:
    """A model file saved by notebooks 04-07 and its sidecar."""

    name: str
    path: Path
    sidecar: dict

    @property
    def normals(self) -> str:
        """``adult`` for the 07 models trained without pediatric normals, else ``all``."""
        return "adult" if str(self.sidecar.get("normals", "all")).startswith("adult") else "all"

    @property
    def display_name(self) -> str:
        """A readable name: the sidecar's ``display_name``, else one built from the name or backbone."""
        if self.sidecar.get("display_name"):
            return str(self.sidecar["display_name"])
        base = self.name.split("__")[0]
        if base in DISPLAY:
            return DISPLAY[base]
        backbone = self.sidecar.get("backbone")
        return f"{backbone} frozen + head" if backbone else self.name


def saved_models(models_dir: str | os.PathLike, task: str) -> list[SavedModel]:
    """Every ``.keras`` / ``.joblib`` model with a sidecar for ``task`` under ``models_dir``, in MODEL_ORDER."""
    from .sidecar import read_sidecar
    found = []
    for p in sorted(Path(models_dir).glob("*")):
        if p.suffix not in (".keras", ".joblib") or not p.with_suffix(".json").is_file():
            continue
        side = read_sidecar(p)
        if side.get("task", task) == task:
            found.append(SavedModel(p.stem, p, side))
    rank = {n: i for i, n in enumerate(MODEL_ORDER)}

    def order(m: SavedModel):
        base = m.name.split("__")[0]
        return (m.normals == "adult", rank.get(base, len(rank)), m.name)
    return sorted(found, key=order)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the model part of the score cache key)."""
    from .images import file_sha256 as sha
    return sha(path)


def score_cache_key(model: SavedModel, arrays: ExternalArrays) -> str:
    """sha256 over the model file bytes, its sidecar and the cached pixels' key."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": file_sha256(model.path), "sidecar": model.sidecar, "pixels": arrays.key,
                         "version": SCORE_CACHE_VERSION}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def positive_scores(scorer, x_uint8: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """P(positive class) of every image, in batches, through a ``predict.Scorer`` (as ``evaluate`` runs it)."""
    out = [scorer.probabilities(to_rgb_float(x_uint8[i:i + batch_size]))[:, 1]
           for i in range(0, len(x_uint8), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def model_scores(model: SavedModel, arrays: ExternalArrays, cache_dir: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """(P(positive) per external image, cache hit): scored once per model file and image set."""
    path = Path(cache_dir) / "external_scores" / f"{score_cache_key(model, arrays)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if list(z["image_path"]) == list(arrays.rows["image_path"]):
                return z["scores"], True
    from .predict import load_scorer
    # ONNX Runtime, as ``evaluate`` runs it by default (tests/test_onnx.py: within 1e-5 of Keras).
    scores = positive_scores(load_scorer(model.path, engine="onnx"), arrays.x)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, scores=scores, image_path=arrays.rows["image_path"].to_numpy(dtype=str))
    return scores, False


# --------------------------------------------------------------------------- metrics

def _metric(report: dict, name: str) -> dict:
    return dict(report["metrics"][name])


def external_metrics(rows: pd.DataFrame, scores: np.ndarray, classes: Sequence[str], threshold: float,
                     n_boot: int, seed: int) -> dict:
    """Sensitivity on Hannover, specificity on NIH (each its own patient bootstrap), ROC AUC on the union.

    Every number comes from ``metrics.evaluate`` at the stored ``threshold``, as
    ``python -m cxrbook evaluate`` computes it on each collection's folder.
    """
    classes = list(classes)
    if len(classes) != 2 or classes[1] != "covid":
        raise ValueError(f"external validation needs a binary normal/covid model; classes are {classes}")
    y = (rows["label"].to_numpy() == "covid").astype(int)
    pid = rows["patient_id"].to_numpy()
    s = np.asarray(scores, dtype=float)

    def report(mask):
        return M.evaluate(y[mask], s[mask], pid[mask], classes, threshold=threshold, n_boot=n_boot, seed=seed)

    hann = (rows["collection"] == "hannover").to_numpy()
    return {"sensitivity": _metric(report(hann), "sensitivity"),
            "specificity": _metric(report(~hann), "specificity"),
            "roc_auc": _metric(report(np.ones(len(y), bool)), "roc_auc")}


def internal_metrics(metrics_dir: str | os.PathLike, name: str) -> dict:
    """Internal test sensitivity, specificity and ROC AUC of ``name`` from ``outputs/metrics/<name>.json``."""
    rec = R.load_metrics(Path(metrics_dir) / f"{name}.json")
    return {m: dict(rec["metrics"][m]) for m in METRICS}


def model_entry(model: SavedModel, arrays: ExternalArrays, scores: np.ndarray, metrics_dir: str | os.PathLike,
                n_boot: int, seed: int) -> dict:
    """One element of external.json ``models``: internal beside external, at the sidecar threshold."""
    threshold = model.sidecar.get("threshold")
    if threshold is None:
        raise ValueError(f"{model.path.with_suffix('.json')} stores no threshold: save the validation threshold")
    return {"model": model.name, "display_name": model.display_name,
            "weights": str(model.sidecar.get("weights", "unknown")), "normals": model.normals,
            "image_size": int(model.sidecar["image_size"]), "threshold": float(threshold),
            "internal": internal_metrics(metrics_dir, model.name),
            "external": external_metrics(arrays.rows, scores, model.sidecar["classes"], float(threshold),
                                         n_boot, seed)}


@dataclass
class Scored:
    """Every scored model: entries for external.json, raw scores and what was not scored."""

    entries: list[dict]
    scores: dict            # model name -> (rows, scores)
    not_scored: dict        # model name -> reason
    seconds: dict           # model name -> seconds scoring (0 on a cache hit)


def score_models(paths, task: str, df: pd.DataFrame, n_boot: int, seed: int,
                 echo=print) -> Scored:
    """Score every saved model of ``task`` on both collections; models with metrics but no model file
    are listed in ``not_scored`` (never silently dropped). Notebook 06's ensemble (``ensemble.json``)
    is scored as the weighted mean of its members' scores, at its own stored threshold."""
    import time
    models = saved_models(paths.models, task)
    entries, scores, seconds, arrays_by = [], {}, {}, {}
    for m in models:
        size, clahe = int(m.sidecar["image_size"]), bool((m.sidecar.get("preprocessing") or {}).get("clahe"))
        if (size, clahe) not in arrays_by:
            arrays_by[(size, clahe)] = external_arrays(df, size, clahe, cache_dir=paths.cache)
        arrays = arrays_by[(size, clahe)]
        t0 = time.perf_counter()
        s, hit = model_scores(m, arrays, paths.cache)
        seconds[m.name] = round(time.perf_counter() - t0, 1)
        echo(f"{m.name:<28} {size:>4} px  {'cached scores' if hit else f'scored in {seconds[m.name]} s'}")
        entries.append(model_entry(m, arrays, s, paths.metrics, n_boot, seed))
        scores[m.name] = (arrays.rows, s)
    have = {m.name for m in models}
    spec_path = ENS.saved_ensemble(paths.models, task)
    if spec_path is not None:  # notebook 06's ensemble: its members' scores above, combined as it votes
        spec = ENS.load_ensemble(spec_path)
        rows, _ = scores[ENS.member_names(spec)[0]]
        s = ENS.score_members(spec, {n: v for n, (_, v) in scores.items()})
        ens = SavedModel(spec_path.stem, spec_path, spec)
        echo(f"{ens.name:<28} {int(spec['image_size']):>4} px  soft vote of {', '.join(ENS.member_names(spec))}")
        entries.append(model_entry(ens, arrays_by[(int(spec["image_size"]), bool((spec.get("preprocessing") or {}).get("clahe")))],
                                   s, paths.metrics, n_boot, seed))
        scores[ens.name] = (rows, s)
        have.add(ens.name)
    not_scored = {}
    for p in sorted(Path(paths.metrics).glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if rec.get("task") == task and p.stem not in have and "model" in rec:
            not_scored[p.stem] = "metrics saved but no model file in outputs/models/"
    return Scored(entries, scores, not_scored, seconds)


# --------------------------------------------------------------------------- record

def external_record(task: str, profile: str, seed: int, n_boot: int, df: pd.DataFrame, entries: list[dict]) -> dict:
    """The external.json record (schema in the module docstring), paragraph generated from the numbers."""
    record = {"schema_version": SCHEMA_VERSION, "task": task, "profile": profile, "seed": int(seed),
              "n_bootstrap": int(n_boot), "collections": collections_summary(df), "models": list(entries)}
    record["paragraph"] = external_paragraph(record)
    validate_external(record)
    return record


def _check_m(m, where: str) -> None:
    if not isinstance(m, dict) or "value" not in m or not isinstance(m.get("ci95"), list) or len(m["ci95"]) != 2:
        raise ValueError(f"external.json {where}: expected {{'value', 'ci95': [lo, hi]}}, got {m!r}")


def validate_external(record: dict) -> None:
    """Raise ValueError naming the first key that breaks the external.json schema."""
    for k in ("schema_version", "task", "profile", "seed", "n_bootstrap", "collections", "models", "paragraph"):
        if k not in record:
            raise ValueError(f"external.json lacks {k!r}")
    for c, keys in (("hannover", ("n_images", "n_patients", "label", "measures")),
                    ("nih", ("n_images", "n_patients", "label", "measures", "image_side_px"))):
        missing = [k for k in keys if k not in record["collections"].get(c, {})]
        if missing:
            raise ValueError(f"external.json collections.{c} lacks {missing}")
    for i, e in enumerate(record["models"]):
        for k in ("model", "display_name", "weights", "normals", "image_size", "threshold", "internal", "external"):
            if k not in e:
                raise ValueError(f"external.json models[{i}] lacks {k!r}")
        if e["normals"] not in ("all", "adult"):
            raise ValueError(f"external.json models[{i}].normals is {e['normals']!r}")
        for side in ("internal", "external"):
            for m in METRICS:
                _check_m(e[side].get(m), f"models[{i}].{side}.{m}")


def save_external(record: dict, path: str | os.PathLike) -> Path:
    """Write external.json (keys sorted, NaN as null, code provenance added) after validating it."""
    from .manifest import provenance
    validate_external(record)
    path = Path(path)
    body = {**record, "provenance": record.get("provenance") or provenance()}
    path.write_text(json.dumps(R.to_jsonable(body), indent=2, sort_keys=True) + "\n")
    return path


def external_table(record: dict) -> pd.DataFrame:
    """One row per model: internal and external sensitivity / specificity / AUC as ``value [lo, hi]``."""
    rows = []
    for e in record["models"]:
        row = {"model": e["display_name"], "normals": e["normals"], "px": e["image_size"],
               "threshold": round(e["threshold"], 3)}
        for m in METRICS:
            row[f"internal {m}"] = _fmt(e["internal"][m])
            row[f"external {m}"] = _fmt(e["external"][m])
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- generated sentences

def _change(internal: dict, external: dict) -> str:
    """'fell' / 'rose' when the two intervals do not overlap, else 'changed within overlapping intervals'."""
    iv, ev = internal.get("value"), external.get("value")
    (ilo, ihi), (elo, ehi) = internal.get("ci95") or [None, None], external.get("ci95") or [None, None]
    if iv is None or ev is None:
        return "cannot be compared"
    if None not in (ehi, ilo) and ehi < ilo:
        return "fell"
    if None not in (elo, ihi) and elo > ihi:
        return "rose"
    return "did not change beyond the overlap of the intervals" if abs(ev - iv) < 1e-12 else \
        "moved, but within overlapping intervals"


def _range(entries: list[dict], side: str, metric: str) -> str:
    vals = [e[side][metric]["value"] for e in entries if e[side][metric]["value"] is not None]
    if not vals:
        return "n/a"
    return f"{min(vals):.2f}" if min(vals) == max(vals) else f"{min(vals):.2f}-{max(vals):.2f}"


def union_sentence(record: dict) -> str:
    """What the union AUC confounds: two sources again."""
    c = record["collections"]
    return (f"The external AUC is computed on the union of {c['hannover']['n_images']} Hannover COVID-19 and "
            f"{c['nih']['n_images']} NIH normal images; as in the training collections, label and source coincide "
            f"(every positive is from Hannover at about 640 px, every negative from NIH at {c['nih']['image_side_px']} "
            "px), so a model can reach a high union AUC by telling the two hospitals or resolutions apart; "
            "sensitivity and specificity, each measured inside one collection at the validation threshold, are the "
            "numbers to read.")


def normals_sentence(record: dict) -> str:
    """Does removing pediatric normals from training change external specificity? (07's paired models)."""
    adult = [e for e in record["models"] if e["normals"] == "adult"]
    if not adult:
        return ("No normals=adult model was saved (notebook 07 saves them), so the effect of pediatric normals on "
                "external specificity is not measured here.")
    by = {e["model"]: e for e in record["models"]}
    parts = []
    for a in adult:
        partner = by.get(a["model"].replace("normals_adult", "normals_all"))
        if partner is None:
            parts.append(f"{a['display_name']} reaches external specificity {_fmt(a['external']['specificity'])}.")
            continue
        sa, sb = a["external"]["specificity"], partner["external"]["specificity"]
        ea, eb = a["external"]["sensitivity"], partner["external"]["sensitivity"]
        spec, sens = _verdict(sa, sb), _verdict(ea, eb)
        parts.append(f"Trained without pediatric normals, {a['display_name']} has external specificity "
                     f"{_fmt(sa)} against {_fmt(sb)} for the same protocol with all normals ({spec}); external "
                     f"sensitivity {_fmt(ea)} against {_fmt(eb)} ({sens}), union AUC "
                     f"{_fmt(a['external']['roc_auc'])} against {_fmt(partner['external']['roc_auc'])}"
                     + ("; it trades sensitivity for specificity rather than separating COVID-19 from normal "
                        "better." if spec.startswith("higher") and sens.startswith("lower") else "."))
    return " ".join(parts)


def _verdict(a: dict, b: dict) -> str:
    if a.get("value") is None or b.get("value") is None:
        return "not comparable"
    (alo, ahi), (blo, bhi) = a["ci95"], b["ci95"]
    if None not in (alo, bhi) and alo > bhi:
        return "higher, the intervals do not overlap"
    if None not in (ahi, blo) and ahi < blo:
        return "lower, the intervals do not overlap"
    return "the intervals overlap, so no difference is shown"


def resolution_sentence(record: dict) -> str:
    """The NIH thumbnails are 64 px: which models see them at native size, which upsampled."""
    side = record["collections"]["nih"]["image_side_px"]
    native = sorted({e["display_name"] for e in record["models"] if e["image_size"] <= side})
    up = sorted({e["image_size"] for e in record["models"] if e["image_size"] > side})
    s = (f"Resolution caveat: the NIH images are {side}x{side} thumbnails, so every model working above {side} px "
         f"({', '.join(f'{u} px' for u in up) or 'none here'}) sees them upsampled and blurrier than any training "
         "image: its external specificity mixes a resolution shift with the change of hospital and population. ")
    s += (f"The comparison is cleanest for the models at {side} px ({', '.join(native)})." if native else
          f"No model here works at {side} px (the smoke profile's CNNs do), so no specificity is free of that shift.")
    return s


def _models(n: int) -> str:
    return f"{n} model" + ("" if n == 1 else "s")


def constant_model(entry: dict) -> bool:
    """True when the model gave every internal test image the same score (AUC exactly 0.5, zero-width interval):
    its sensitivity/specificity say which side of the threshold the constant fell, nothing about images."""
    auc = entry["internal"]["roc_auc"]
    return auc.get("value") == 0.5 and list(auc.get("ci95") or []) == [0.5, 0.5]


def external_paragraph(record: dict) -> str:
    """What the external result means, generated from the numbers in ``record``."""
    trained_all = [e for e in record["models"] if e["normals"] == "all"] or record["models"]
    constant = [e for e in trained_all if constant_model(e)]
    entries = [e for e in trained_all if not constant_model(e)]
    c = record["collections"]
    if not entries:
        return ("No saved model with informative scores was found, so nothing was measured on the external "
                "collections.")
    lines = [
        f"On {_models(len(entries))} trained with all normals, internal test sensitivity was "
        f"{_range(entries, 'internal', 'sensitivity')} and specificity {_range(entries, 'internal', 'specificity')}. "
        f"On {c['hannover']['n_images']} COVID-19 images of {c['hannover']['n_patients']} patients from Hannover, "
        f"a hospital none of them saw, sensitivity was {_range(entries, 'external', 'sensitivity')}; on "
        f"{c['nih']['n_images']} adult normal images of {c['nih']['n_patients']} NIH patients, specificity was "
        f"{_range(entries, 'external', 'specificity')}."]
    if constant:
        lines.append(f"{' and '.join(e['display_name'] for e in constant)} scored every internal test image the "
                     "same (AUC 0.5) and is left out of these ranges.")
    changes = {m: [_change(e["internal"][m], e["external"][m]) for e in entries] for m in ("sensitivity", "specificity")}
    for m in ("sensitivity", "specificity"):
        fell, rose = changes[m].count("fell"), changes[m].count("rose")
        lines.append(f"External {m} fell below the internal interval for {fell} of {_models(len(entries))}"
                     + (f" and rose above it for {rose}" if rose else "") + ".")
    worst = min((e for e in entries if e["external"]["specificity"]["value"] is not None),
                key=lambda e: e["external"]["specificity"]["value"], default=None)
    if worst is not None:
        spec = worst["external"]["specificity"]["value"]
        lines.append(f"The lowest external specificity, {worst['display_name']}'s "
                     f"{_fmt(worst['external']['specificity'])} (internal "
                     f"{_fmt(worst['internal']['specificity'])}), means it calls {1 - spec:.0%} of pre-pandemic "
                     "adult normals from another hospital COVID-19.")
    lines.append("Internal numbers on these public collections therefore do not transfer: a model that separated "
                 "children's normals from adults' COVID-19 has not shown it can detect COVID-19 in adults elsewhere"
                 if any(ch == "fell" for chs in changes.values() for ch in chs) else
                 "Within these intervals the internal numbers held on the external collections; the collections are "
                 "small, so this is weak evidence, not proof of transfer")
    lines[-1] += f" ({DISCLAIMER})."
    return " ".join([*lines, union_sentence(record), normals_sentence(record), resolution_sentence(record)])


# --------------------------------------------------------------------------- figures

def _plt():
    from .plots import plt
    return plt


def _point(ax, m: dict, y: float, color: str, label: str | None, marker: str = "o") -> None:
    if not m or m.get("value") is None:
        return
    v = m["value"]
    lo, hi = m.get("ci95") or [None, None]
    lo, hi = (v, v) if lo is None or hi is None else (lo, hi)
    ax.errorbar(v, y, xerr=[[max(v - lo, 0)], [max(hi - v, 0)]], fmt=marker, color=color, capsize=3, label=label)


def plot_internal_vs_external(record: dict, title: str):
    """Forest plot: one row per model, sensitivity and specificity, internal vs external with 95% intervals."""
    plt = _plt()
    entries = record["models"]
    names = [f"{e['display_name']}, {e['image_size']} px" for e in entries]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(entries) + 2.6), sharey=True)
    c = record["collections"]
    where = {"sensitivity": f"Hannover COVID-19, {c['hannover']['n_images']} images",
             "specificity": f"NIH adult normals, {c['nih']['n_images']} images ({c['nih']['image_side_px']} px)"}
    for ax, metric in zip(axes, ("sensitivity", "specificity")):
        for i, e in enumerate(entries):
            _point(ax, e["internal"][metric], i - 0.15, "C0", "internal test split" if i == 0 else None)
            _point(ax, e["external"][metric], i + 0.15, "C3", "external hospital" if i == 0 else None, "s")
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels(names)
        ax.set_ylim(len(entries) - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(f"{metric} (fraction)")
        ax.set_title(f"{metric.capitalize()}\nexternal: {where[metric]}", fontsize="medium")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize="small")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def internal_groups(paths, name: str, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Internal test scores of ``name`` by group: COVID-19, adult normals, pediatric normals."""
    from .experiment import load_scores
    rows, s = load_scores(paths, name, classes)
    splits = pd.read_csv(paths.splits_csv) if Path(paths.splits_csv).is_file() else pd.DataFrame()
    age = splits.drop_duplicates("image_path").set_index("image_path")["age_group"] \
        if "age_group" in splits.columns else pd.Series(dtype=str)
    ped = (rows["source"] == "pediatric") | (rows["image_path"].map(age) == "pediatric")
    normal = rows["label"] == "normal"
    return {"internal COVID-19": s[(rows["label"] == "covid").to_numpy()],
            "internal adult normals": s[(normal & ~ped).to_numpy()],
            "internal pediatric normals": s[(normal & ped).to_numpy()]}


def score_groups(paths, scored: Scored, name: str, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Internal test groups of ``name`` plus NIH adult normals and Hannover COVID-19 (external)."""
    rows, s = scored.scores[name]
    hann = (rows["collection"] == "hannover").to_numpy()
    return {**internal_groups(paths, name, classes), "external adult normals (NIH)": s[~hann],
            "external COVID-19 (Hannover)": s[hann]}


def plot_score_distributions(groups_by_model: dict[str, dict[str, np.ndarray]], thresholds: dict[str, float],
                             title: str, ncols: int = 2):
    """Score of each group on one axis (one panel per model), with the model's stored threshold."""
    plt = _plt()
    names = list(groups_by_model)
    ncols = min(ncols, len(names)) or 1
    nrows = -(-len(names) // ncols) or 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 3.2 * nrows), squeeze=False, sharex=True)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes.ravel(), names):
        groups = groups_by_model[name]
        labels = list(groups)
        for i, g in enumerate(labels):
            v = np.asarray(groups[g], dtype=float)
            color = "C3" if "COVID" in g else ("C1" if "pediatric" in g else "C0")
            if len(v):
                ax.scatter(v, i + rng.uniform(-0.25, 0.25, len(v)), s=6, alpha=0.35, color=color)
                ax.plot([np.median(v)] * 2, [i - 0.35, i + 0.35], color="k", lw=2)
        ax.axvline(thresholds[name], ls="--", c="grey", lw=1)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels([f"{g} (n={len(groups[g])})" for g in labels], fontsize="small")
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("score P(COVID-19) (probability, 0-1; black bar: median)")
        ax.set_title(f"{name} (dashed: threshold {thresholds[name]:.2f}, from validation)", fontsize="medium")
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
