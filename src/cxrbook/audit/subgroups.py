"""Existing models looked at by subgroup and by calibration (notebook 07, sections 4 and 5).

Reads what notebooks 04-06 saved (``metrics/<model>.json`` and ``<model>_scores.csv``):
test performance per view and per sex, with "too few" instead of a number where
a group cannot support one, and reliability, Brier and ECE per model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..atomic import write_csv
from ..evaluation import metric_plots as MP
from ..evaluation import metrics as M
from ..evaluation import records as R
from .checks import MIN_GROUP_IMAGES
from .runs import headline_metrics
from ..data.pipeline import encode_labels


def group_performance(rows: pd.DataFrame, scores: np.ndarray, column: str, classes: Sequence[str],
                      threshold: float | None, *, n_boot: int = 200, seed: int = 42,
                      min_images: int = MIN_GROUP_IMAGES, combine: dict[str, Sequence[str]] | None = None
                      ) -> pd.DataFrame:
    """Headline metrics with intervals per value of ``rows[column]`` (missing -> "unknown").

    ``rows`` holds the test images (``label``, ``patient_id``, ``column``) in the
    order of ``scores``. A group with fewer than ``min_images`` images or one
    class only is reported as "too few", with its counts but no numbers.
    ``combine`` adds pooled groups, e.g. ``{"AP or AP Supine": ["AP", "AP Supine"]}``.
    With a ``source`` column, ``n_pediatric`` counts the group's images from the pediatric collection.
    """
    classes = tuple(classes)
    values = rows[column].astype("string").fillna("unknown").replace("", "unknown").to_numpy(dtype=object)
    groups = {str(g): values == g for g in sorted(set(values))}
    for name, members in (combine or {}).items():
        m = np.isin(values, list(members))
        if m.any() and sum(np.isin(list(groups), list(members))) > 1:
            groups[name] = m
    y = encode_labels(rows["label"].astype(str).to_numpy(), classes)
    pid = rows["patient_id"].astype(str).to_numpy()
    s = np.asarray(scores)
    out = []
    for g, m in groups.items():
        row = {"attribute": column, "group": g, "n_images": int(m.sum()), "n_patients": int(len(set(pid[m])))}
        row.update({f"n_{c}": int((y[m] == i).sum()) for i, c in enumerate(classes)})
        if "source" in rows.columns:
            row["n_pediatric"] = int((rows["source"].to_numpy()[m] == "pediatric").sum())
        n_present = sum(1 for i in range(len(classes)) if (y[m] == i).any())
        if m.sum() < min_images:
            row["status"] = f"too few (< {min_images} images)"
        elif n_present < len(classes):
            row["status"] = "too few (one class only)" if n_present == 1 else "too few (a class is missing)"
        else:
            rep = M.evaluate(y[m], s[m], pid[m], classes, threshold=threshold, n_boot=n_boot, seed=seed)
            row["status"] = "ok"
            for name in headline_metrics(classes):
                met = rep["metrics"][name]
                row[name] = met["value"]
                row[f"{name}_lo"], row[f"{name}_hi"] = met["ci95"]
        out.append(row)
    return pd.DataFrame(out)


def model_test_scores(paths, name: str, splits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Test rows of ``<name>_scores.csv`` joined with splits.csv (view, sex, age_group), scores, record."""
    record = R.load_metrics(paths.metrics / f"{name}.json")
    df = pd.read_csv(paths.metrics / f"{name}_scores.csv")
    df = df[df["split"] == "test"].reset_index(drop=True)
    classes = record["classes"]
    cols = [f"score_{classes[1]}"] if len(classes) == 2 else [f"score_{c}" for c in classes]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{paths.metrics / f'{name}_scores.csv'} lacks columns {missing}")
    meta_cols = [c for c in ("view", "sex", "age_group") if c in splits.columns]
    meta = splits.drop_duplicates("image_path").set_index("image_path")[meta_cols]
    joined = df.join(meta, on="image_path")
    joined["in_splits_csv"] = df["image_path"].isin(meta.index)
    scores = joined[cols[0]].to_numpy() if len(classes) == 2 else joined[cols].to_numpy()
    return joined, scores, record


def scored_models(paths, task: str) -> list[str]:
    """Names of models with both ``<name>.json`` and ``<name>_scores.csv`` for ``task``, sorted."""
    names = []
    for p in sorted(paths.metrics.glob("*_scores.csv")):
        name = p.name[: -len("_scores.csv")]
        j = paths.metrics / f"{name}.json"
        if j.is_file():
            try:
                if json.loads(j.read_text()).get("task") == task:
                    names.append(name)
            except (OSError, ValueError):
                continue
    return names


def groups_for_models(paths, names: Sequence[str], splits: pd.DataFrame, *, n_boot: int = 200, seed: int = 42,
                      min_images: int = MIN_GROUP_IMAGES) -> pd.DataFrame:
    """Per-view and per-sex test performance of each named model (one long table)."""
    frames = []
    for name in names:
        rows, scores, rec = model_test_scores(paths, name, splits)
        for column, combine in (("view", {"AP or AP Supine": ["AP", "AP Supine"]}), ("sex", None)):
            if column not in rows.columns:
                continue
            t = group_performance(rows, scores, column, rec["classes"], rec["threshold"], n_boot=n_boot,
                                  seed=seed, min_images=min_images, combine=combine)
            t.insert(0, "model", name)
            frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def save_groups(table: pd.DataFrame, path) -> Path:
    """The full per-group table (every model x view/sex group, counts, metrics and intervals) as CSV."""
    return write_csv(table, path)


def calibration(paths, names: Sequence[str], n_bins: int = 10, n_boot: int = 200, seed: int = 42) -> dict:
    """Reliability table, Brier and ECE (with intervals) of each binary model's test scores.

    Multi-class models are listed under ``skipped`` (the reliability diagram here is binary).
    """
    out, skipped = {}, {}
    for name in names:
        rec = R.load_metrics(paths.metrics / f"{name}.json")
        if len(rec["classes"]) != 2:
            skipped[name] = "multi-class scores (binary reliability only)"
            continue
        df = pd.read_csv(paths.metrics / f"{name}_scores.csv")
        df = df[df["split"] == "test"]
        y = encode_labels(df["label"].astype(str).to_numpy(), rec["classes"])
        s = df[f"score_{rec['classes'][1]}"].to_numpy(dtype=float)
        rep = M.evaluate(y, s, df["patient_id"].astype(str).to_numpy(), rec["classes"],
                         threshold=rec["threshold"], n_boot=n_boot, seed=seed)
        out[name] = {"n_test": int(len(y)), "brier": rep["metrics"]["brier"], "ece": rep["metrics"]["ece"],
                     "reliability": MP.reliability_curve(y, s, n_bins), "y": y, "s": s,
                     "weights": rec.get("weights")}
    return {"models": out, "skipped": skipped, "n_bins": n_bins}


def calibration_summary(cal: dict) -> dict:
    """JSON-ready calibration result (reliability tables as records, no raw scores)."""
    return {"n_bins": cal["n_bins"], "skipped": cal["skipped"],
            "models": {n: {"n_test": c["n_test"], "brier": c["brier"], "ece": c["ece"], "weights": c["weights"],
                           "reliability": c["reliability"]} for n, c in cal["models"].items()}}
