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
    "four_class": ("covid", "viral_pneumonia", "bacterial_pneumonia", "normal"),
}
# four_class splits the cleaned ``other_pneumonia`` label by ``pathogen_type``
# (cxrbook.data.metadata.pathogen_of). COVID-19 is viral too; it keeps its own class.
# Fungal (Pneumocystis), non-infectious (lipoid) and unspecified ("Pneumonia")
# rows fit none of the four classes: they are left out of this task and counted
# by `excluded_by_task`, never dropped silently.
FOUR_CLASS_PATHOGENS = {"viral": "viral_pneumonia", "bacterial": "bacterial_pneumonia"}
SPLIT_ORDER = ("train", "val", "test")
NORMALS = ("adult", "all")
SPLIT_COLUMNS = ["image_path", "patient_id", "source", "label", "split"]


def classes_for(task: str) -> tuple[str, ...]:
    """Class names of a task in model-output order (binary: negative, positive)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def task_labels(clean: pd.DataFrame, task: str) -> pd.Series:
    """Each row's class in ``task`` (NaN where the row belongs to none of its classes).

    covid_vs_normal and three_class use ``label`` as it is; four_class splits
    ``other_pneumonia`` into viral / bacterial by ``pathogen_type`` (see
    ``FOUR_CLASS_PATHOGENS``).
    """
    classes = classes_for(task)
    label = clean["label"]
    if task == "four_class":
        if "pathogen_type" not in clean.columns:
            raise ValueError("task='four_class' needs the pathogen_type column of clean.csv: rerun notebook 02")
        label = label.mask(label == "other_pneumonia", clean["pathogen_type"].map(FOUR_CLASS_PATHOGENS))
    return label.where(label.isin(classes))


def pediatric_normal(label, source, age_group=None) -> np.ndarray:
    """Per image: a normal from a child, the ONE definition of "pediatric normal" (what ``normals=adult``
    removes). A normal label with ``age_group`` "pediatric" (``metadata.age_group``: under 18, and every
    image of the pediatric collection) or, where no age group is known (``age_group`` None, e.g. the
    cached arrays), from the ``pediatric`` collection."""
    label, source = np.asarray(label, dtype=object), np.asarray(source, dtype=object)
    child = source == "pediatric"
    if age_group is not None:
        child = child | (np.asarray(age_group, dtype=object) == "pediatric")
    return (label == "normal") & child


def select(clean: pd.DataFrame, task: str, normals: str = "all") -> pd.DataFrame:
    """Rows of the task's classes, with ``label`` set to the task's class names.

    ``normals='adult'`` drops pediatric normals (the pediatric collection and any
    normal with age < 18), ``'all'`` keeps them. What is left out is counted by
    :func:`excluded_by_task`.
    """
    if normals not in NORMALS:
        raise ValueError(f"normals must be one of {NORMALS}, got {normals!r}")
    label = task_labels(clean, task)
    keep = label.notna()
    if normals == "adult":
        keep &= ~pediatric_normal(label, clean["source"], clean["age_group"])
    return clean[keep].assign(label=label[keep]).reset_index(drop=True)


def excluded_by_task(clean: pd.DataFrame, task: str, normals: str = "all") -> pd.DataFrame:
    """Cleaned rows that :func:`select` leaves out, counted per label, pathogen type and reason.

    Columns ``label, pathogen_type, reason, images, patients`` (empty when nothing is left out).
    """
    label = task_labels(clean, task)
    reason = pd.Series(np.where(label.isna(), f"not a class of task={task}", ""), index=clean.index)
    if normals == "adult":
        reason = reason.mask(label.notna() & pediatric_normal(label, clean["source"], clean["age_group"]),
                             "pediatric normal (normals=adult)")
    out = clean.assign(reason=reason)[reason != ""]
    pathogen = out["pathogen_type"] if "pathogen_type" in out.columns else pd.Series("", index=out.index)
    g = out.assign(pathogen_type=pathogen.fillna("")).groupby(["label", "pathogen_type", "reason"])
    table = pd.DataFrame({"images": g.size(), "patients": g["patient_id"].nunique()}).reset_index()
    return table.astype({"images": int, "patients": int})


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
    check_every_class_in_every_split(out)
    return out


def check_every_class_in_every_split(splits: pd.DataFrame) -> None:
    """Raise ValueError naming each class absent from train, val or test, with its counts.

    A class with no validation images gets no threshold or early-stopping signal,
    one with no test images no sensitivity: such a split is refused, not trained on.
    """
    table = class_counts(splits)
    problems = []
    for label, row in table.iterrows():
        empty = [s for s in SPLIT_ORDER if row[("images", s)] == 0]
        if empty:
            per_split = ", ".join(f"{s} {row[('images', s)]} images / {row[('patients', s)]} patients"
                                  for s in SPLIT_ORDER)
            problems.append(f"class {label!r} is empty in {' and '.join(empty)} ({per_split})")
    if problems:
        raise ValueError(
            "cannot split: " + "; ".join(problems) + ". Every class needs at least 3 patients from one "
            "source to reach train, val and test. Use a task with fewer, larger classes (task='three_class' "
            "pools the non-COVID pneumonias) or add images of that class.")


def class_counts(splits: pd.DataFrame, by: str | list[str] = "label") -> pd.DataFrame:
    """Integer images and patients per ``by`` (rows) and split (columns, train / val / test)."""
    g = splits.groupby([*([by] if isinstance(by, str) else by), "split"])
    long = pd.DataFrame({"images": g.size(), "patients": g["patient_id"].nunique()})
    wide = long.unstack("split", fill_value=0)
    columns = pd.MultiIndex.from_product([["images", "patients"], list(SPLIT_ORDER)])
    return wide.reindex(columns=columns, fill_value=0).astype(int)


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
