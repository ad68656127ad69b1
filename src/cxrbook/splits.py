"""Class selection and patient-level stratified splits.

Why our own splitter: scikit-learn's ``StratifiedGroupKFold`` keeps groups whole
but does not guarantee that every class reaches every split, and cannot take
70/15/15 fractions. Here patients are allocated within each (label, source)
stratum, so a patient's images never span two splits, every label with at least
three patients appears in train, validation and test, and each split keeps the
source mix (which the confound analysis needs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

TASKS = {
    "covid_vs_normal": ("normal", "covid"),          # index 1 is the positive class
    "three_class": ("covid", "other_pneumonia", "normal"),
}
NORMALS = ("adult", "all")
SPLIT_COLUMNS = ["image_path", "patient_id", "source", "label", "split"]


def classes_for(task: str) -> tuple[str, ...]:
    """Class names of a task in model-output order (binary: negative, positive)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def select(clean: pd.DataFrame, task: str, normals: str = "all") -> pd.DataFrame:
    """Rows of the task's classes. ``normals='adult'`` drops pediatric normals (the
    pediatric collection and any normal with age < 18), ``'all'`` keeps them."""
    if normals not in NORMALS:
        raise ValueError(f"normals must be one of {NORMALS}, got {normals!r}")
    df = clean[clean["label"].isin(classes_for(task))]
    if normals == "adult":
        pediatric_normal = (df["label"] == "normal") & (df["age_group"] == "pediatric")
        df = df[~pediatric_normal]
    return df.reset_index(drop=True)


def patient_split(df: pd.DataFrame, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
                  seed: int = 42) -> pd.DataFrame:
    """Add a ``split`` column (train / val / test), allocating whole patients.

    Within each (label, source) stratum the patients are shuffled with ``seed`` and
    cut by the fractions (of patients), with at least one patient in val and test
    when the stratum has three or more. A patient with several labels is assigned
    by their most frequent label. Raises ValueError if some label ends up absent
    from a split, naming the label and its patient count.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    patients = (df.groupby("patient_id")
                .agg(label=("label", lambda s: s.value_counts().index[0]), source=("source", "first"))
                .sort_index())
    assignment: dict[str, str] = {}
    for _, group in patients.groupby(["label", "source"], sort=True):
        ids = group.index.to_numpy().copy()
        rng.shuffle(ids)
        n = len(ids)
        if n >= 3:
            n_test = max(1, int(round(n * fractions[2])))
            n_val = max(1, int(round(n * fractions[1])))
            n_test = min(n_test, n - 2)
            n_val = min(n_val, n - 1 - n_test)
        else:
            n_test = n_val = 0
        for pid in ids[:n_test]:
            assignment[pid] = "test"
        for pid in ids[n_test:n_test + n_val]:
            assignment[pid] = "val"
        for pid in ids[n_test + n_val:]:
            assignment[pid] = "train"
    out = df.copy()
    out["split"] = out["patient_id"].map(assignment)
    missing = [(lab, s) for lab in sorted(out["label"].unique()) for s in ("train", "val", "test")
               if not ((out["label"] == lab) & (out["split"] == s)).any()]
    if missing:
        counts = patients["label"].value_counts().to_dict()
        raise ValueError(f"labels absent from splits {missing}: too few patients per label {counts}; "
                         "each label needs at least 3 patients in one source")
    return out


def check_no_leak(splits: pd.DataFrame) -> None:
    """Raise if any patient has images in more than one split."""
    n = splits.groupby("patient_id")["split"].nunique()
    leaked = n[n > 1]
    if len(leaked):
        raise AssertionError(f"patients in several splits: {list(leaked.index[:10])}")


def composition(splits: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per split, label and source."""
    g = splits.groupby(["split", "label", "source"])
    return pd.DataFrame({"images": g.size(), "patients": g["patient_id"].nunique()}).reset_index()


def materialize_class_folders(splits: pd.DataFrame, root: str | Path) -> Path:
    """Symlink images into ``root/<split>/<label>/`` like the reference script's folders.

    Links only (never copies); ``root`` should be under outputs/, which git ignores.
    """
    root = Path(root)
    for row in splits.itertuples():
        target = root / row.split / row.label
        target.mkdir(parents=True, exist_ok=True)
        link = target / f"{row.patient_id.replace(':', '_')}__{Path(row.image_path).name}"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(row.image_path, link)
    return root
