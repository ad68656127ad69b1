"""Load the three collections into one tidy table, and normalize their labels.

Tidy columns (one row per metadata row of the source files, nothing dropped here):
``source, row_id, patient_id, image_path, finding, label, pathogen_type, view,
modality, age, sex, age_group, survival, country, license, collection_dir``.

``image_path`` is the collection folder joined with what the metadata row says, as written
(an absolute path or ``../`` in a row is kept as such); ``collection_dir`` is the collection's
folder, which cleaning requires every image to stay inside (reason ``outside_collection``).

A Cohen or Actualmed row with a blank ``patientid`` gets a patient id of its own,
``<source>:no-id-row-<row_id>`` (one image, one patient, as ``evaluate`` does without a
patient_id column), and a warning names those rows: never one shared ``cohen:`` patient.

Label rule (documented in README "Labels"):
- any finding naming COVID-19 (``COVID-19``, ``COVID-19, ARDS``)   -> ``covid``
- a named infectious pathogen or plain ``Pneumonia``                -> ``other_pneumonia``
- ``Lipoid`` (lipoid pneumonia, non-infectious)                     -> ``other_pneumonia``
- ``No Finding`` / ``No finding``                                   -> ``normal``
- ``ARDS`` alone (a syndrome with many causes, not a pneumonia
  finding), ``todo``, blank, and any string not in the table below   -> ``unknown``
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import SOURCES, DataNotFoundError, GET_DATA_HELP

LABELS = ("covid", "other_pneumonia", "normal")
TIDY_COLUMNS = [
    "source", "row_id", "patient_id", "image_path", "finding", "label", "pathogen_type",
    "view", "modality", "age", "sex", "age_group", "survival", "country", "license", "collection_dir",
]
NO_PATIENT_ID = "no-id-row-"  # <source>:no-id-row-<row_id>: a row whose metadata gives no patient

# finding component (lower case) -> pathogen type. A finding such as
# "Mycoplasma Bacterial Pneumonia" is matched on its words, see `pathogen_of`.
_PATHOGENS: dict[str, str] = {
    "covid-19": "viral", "sars": "viral", "mers": "viral", "varicella": "viral",
    "influenza": "viral", "herpes": "viral", "viral": "viral",
    "streptococcus": "bacterial", "klebsiella": "bacterial", "mycoplasma": "bacterial",
    "legionella": "bacterial", "e.coli": "bacterial", "chlamydophila": "bacterial",
    "staphylococcus": "bacterial", "nocardia": "bacterial", "tuberculosis": "bacterial",
    "bacterial": "bacterial",
    "pneumocystis": "fungal", "aspergillosis": "fungal", "fungal": "fungal",
    "lipoid": "non_infectious",
}


def _components(finding: str) -> list[str]:
    return [c.strip().lower() for c in re.split(r"[,/]", finding) if c.strip()]


def pathogen_of(finding: str | float | None) -> str:
    """Pathogen type named by a raw finding: viral, bacterial, fungal, non_infectious,
    unspecified (a pneumonia of no named cause), none (no finding) or unknown."""
    if not isinstance(finding, str) or not finding.strip():
        return "unknown"
    comps = _components(finding)
    if comps in (["no finding"],):
        return "none"
    for comp in comps:
        if comp in _PATHOGENS:
            return _PATHOGENS[comp]
        for word in comp.split():
            if word in _PATHOGENS:
                return _PATHOGENS[word]
    if any("pneumonia" in c or c == "ards" for c in comps):
        return "unspecified"
    return "unknown"


def normalize_finding(finding: str | float | None) -> str:
    """Map a raw `finding` string to covid / other_pneumonia / normal / unknown (rule above)."""
    if not isinstance(finding, str) or not finding.strip():
        return "unknown"
    comps = _components(finding)
    if any(c.startswith("covid") for c in comps):
        return "covid"
    if comps == ["no finding"]:
        return "normal"
    if comps == ["todo"] or comps == ["ards"]:
        return "unknown"
    kind = pathogen_of(finding)
    if kind in ("viral", "bacterial", "fungal", "non_infectious"):
        return "other_pneumonia"
    if any("pneumonia" in c for c in comps):
        return "other_pneumonia"
    return "unknown"


def age_group(age: float | None, source: str) -> str:
    """adult (>= 18 y), pediatric (< 18 y) or unknown; the pediatric collection is all 1-5 y."""
    if source == "pediatric":
        return "pediatric"
    if age is None or pd.isna(age):
        return "unknown"
    return "adult" if age >= 18 else "pediatric"


def _require(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: metadata is missing required column(s) {missing}; "
                         f"found {list(df.columns)}")


class EmptyCollectionError(ValueError):
    """A collection's metadata file lists no rows (empty, or a header only)."""


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataNotFoundError(f"metadata file {path} does not exist.\n{GET_DATA_HELP}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise EmptyCollectionError(f"metadata file {path} is empty ({path.stat().st_size} bytes, no header): "
                                   "restore it from the collection's source (see README \"Data\")") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"metadata file {path} is not a readable CSV ({e})") from None


def _blank_to_nan(s: pd.Series) -> pd.Series:
    s = s.astype(str).str.strip()
    return s.mask(s.isin(["", "?", "nan"]))


def _patient_ids(source: str, raw: pd.Series, path: Path) -> pd.Series:
    """``<source>:<id>``; a blank id becomes ``<source>:no-id-row-<row_id>`` (its own patient), with a warning."""
    ids = raw.str.strip()
    blank = np.flatnonzero((ids == "").to_numpy())
    if len(blank):
        rows = ", ".join(str(i + 2) for i in blank[:20]) + (" ..." if len(blank) > 20 else "")
        warnings.warn(f"{path}: {len(blank)} row(s) with a blank patientid (file lines {rows}); each image "
                      f"counts as its own patient ({source}:{NO_PATIENT_ID}<row_id>), so two of them from one "
                      "real patient could land in different splits", stacklevel=3)
    out = source + ":" + ids
    out.iloc[blank] = [f"{source}:{NO_PATIENT_ID}{i}" for i in blank]
    return out


def _country(location: str) -> str | float:
    if not isinstance(location, str) or not location.strip() or location.strip() == "?":
        return np.nan
    return location.split(",")[-1].strip()


def load_cohen(root: Path) -> pd.DataFrame:
    """Cohen et al. COVID-19 image data collection (github.com/ieee8023/covid-chestxray-dataset).

    Several images per patient (``patientid``); images under ``images/`` or, for CT
    volumes, ``volumes/``. Each image has its own license (``license`` column).
    """
    path = root / SOURCES["cohen"] / "metadata.csv"
    df = _read_csv(path)
    _require(df, path, ["patientid", "finding", "view", "modality", "folder", "filename",
                        "age", "sex", "license", "location", "survival"])
    base = root / SOURCES["cohen"]
    out = pd.DataFrame({
        "source": "cohen",
        "row_id": np.arange(len(df)),
        "patient_id": _patient_ids("cohen", df["patientid"], path),
        "image_path": [str(base / f / n) for f, n in zip(df["folder"], df["filename"])],
        "finding": df["finding"].str.strip(),
        "view": _blank_to_nan(df["view"]),
        "modality": _blank_to_nan(df["modality"]),
        "age": pd.to_numeric(df["age"], errors="coerce"),
        "sex": _blank_to_nan(df["sex"]),
        "survival": _blank_to_nan(df["survival"]),
        "country": df["location"].map(_country),
        "license": _blank_to_nan(df["license"]),
        "collection_dir": str(base),
    })
    return out


def load_actualmed(root: Path) -> pd.DataFrame:
    """Actualmed COVID-19 Chest X-ray Dataset Initiative (github.com/agchung/Actualmed-COVID-chestxray-dataset).

    Most listed images are not published (absent files); blank findings are unknown.
    """
    path = root / SOURCES["actualmed"] / "metadata.csv"
    df = _read_csv(path)
    _require(df, path, ["patientid", "finding", "view", "modality", "imagename"])
    base = root / SOURCES["actualmed"] / "images"
    n = len(df)
    return pd.DataFrame({
        "source": "actualmed",
        "row_id": np.arange(n),
        "patient_id": _patient_ids("actualmed", df["patientid"], path),
        "image_path": [str(base / f) for f in df["imagename"]],
        "finding": df["finding"].str.strip(),
        "view": _blank_to_nan(df["view"]),
        "modality": _blank_to_nan(df["modality"]),
        "age": pd.to_numeric(df.get("age", pd.Series([""] * n)), errors="coerce"),
        "sex": _blank_to_nan(df.get("sex", pd.Series([""] * n))),
        "survival": np.nan,
        "country": "Spain",  # Actualmed / Universitat Jaume I, Castellon
        "license": "see actualmed-covid-chestxray-dataset/README.md",
        "collection_dir": str(root / SOURCES["actualmed"]),
    })


_KERMANY_PATIENT = re.compile(r"^(?:NORMAL2-)?(IM-\d+)-\d+", re.IGNORECASE)


def load_pediatric(root: Path) -> pd.DataFrame:
    """Pediatric normal chest X-rays, Kermany et al. 2018 (Mendeley Data, CC BY 4.0), ages 1-5.

    ``metadata.csv`` lists only files; the patient id is the ``IM-NNNN`` part of the
    Kermany file name (``IM-0003-0001.jpeg`` is image 1 of patient 0003).
    """
    path = root / SOURCES["pediatric"] / "metadata.csv"
    df = _read_csv(path)
    _require(df, path, ["filename"])
    base = root / SOURCES["pediatric"] / "images"
    n = len(df)

    def patient(name: str) -> str:
        m = _KERMANY_PATIENT.match(name)
        return "pediatric:" + (m.group(1).upper() if m else Path(name).stem)

    finding = df["finding"] if "finding" in df else pd.Series(["No Finding"] * n)
    view = df["view"] if "view" in df else pd.Series(["AP"] * n)
    modality = df["modality"] if "modality" in df else pd.Series(["X-ray"] * n)
    return pd.DataFrame({
        "source": "pediatric",
        "row_id": np.arange(n),
        "patient_id": df["filename"].map(patient),
        "image_path": [str(base / f) for f in df["filename"]],
        "finding": finding.str.strip(),
        "view": _blank_to_nan(view),
        "modality": _blank_to_nan(modality),
        "age": np.nan,
        "sex": np.nan,
        "survival": np.nan,
        "country": "China",  # Guangzhou Women and Children's Medical Center
        "license": "CC BY 4.0",
        "collection_dir": str(root / SOURCES["pediatric"]),
    })


def load_all(data_dir: Path, allow_empty: bool = False) -> pd.DataFrame:
    """All three collections as one tidy table (see module docstring); every input row kept.

    A collection whose metadata lists no rows (a header only) raises ``EmptyCollectionError``
    naming it, unless ``allow_empty=True`` (then it is left out, deliberately).
    """
    data_dir = Path(data_dir)
    missing = [d for d in SOURCES.values() if not (data_dir / d).is_dir()]
    if missing:
        raise DataNotFoundError(f"{data_dir} lacks collection folder(s) {missing}.\n{GET_DATA_HELP}")
    frames = {"cohen": load_cohen(data_dir), "actualmed": load_actualmed(data_dir),
              "pediatric": load_pediatric(data_dir)}
    empty = [name for name, f in frames.items() if f.empty]
    if empty and not allow_empty:
        raise EmptyCollectionError(
            "collection(s) " + ", ".join(f"{n} ({data_dir / SOURCES[n] / 'metadata.csv'})" for n in empty)
            + " list no rows (a header only): the workbook would silently lose the whole collection. "
            "Restore the metadata, or pass allow_empty=True to go on without it.")
    df = pd.concat(list(frames.values()), ignore_index=True)
    df["label"] = df["finding"].map(normalize_finding)
    df["pathogen_type"] = df["finding"].map(pathogen_of)
    df["age_group"] = [age_group(a, s) for a, s in zip(df["age"], df["source"])]
    return df[TIDY_COLUMNS]


def images_per_patient(df: pd.DataFrame) -> pd.Series:
    """Number of images of each patient."""
    return df.groupby("patient_id").size().rename("n_images")
