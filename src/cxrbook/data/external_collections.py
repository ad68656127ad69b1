"""Notebook 08's external test collections: where they are, their tables and their pixels.

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
+ ``images.prepare``, cached as uint8 at each model's image size): :func:`external_arrays`.

Scoring saved models on these pixels and the ``outputs/external.json`` record live in
:mod:`cxrbook.external.scores`; the generated paragraph in :mod:`cxrbook.external.text`;
the figures in :mod:`cxrbook.external.plots`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..atomic import write_csv
from ..config import DataNotFoundError, resolve_data_dir
from .metadata import normalize_finding
from .pipeline import load_arrays

EXTERNAL_ENV = "CXR_EXTERNAL_DIR"
COLLECTIONS = {"hannover": "hannover-covid", "nih": "nih-adult-normal"}
COLLECTION_LABEL = {"hannover": "covid", "nih": "normal"}
MEASURES = {"hannover": "sensitivity", "nih": "specificity"}
NIH_SIDE_PX = 64
COLUMNS = ["collection", "patient_id", "image_path", "label", "view", "modality"]


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
    return write_csv(out, path)  # atomic and spreadsheet-safe, as every CSV; read_labels undoes the escaping


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
