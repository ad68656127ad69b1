"""Notebook 06: one table of every model, paired AUC tests, and the published claims beside ours."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from . import metrics as M
from . import records as R

# Headline numbers of the reference work this workbook re-examines, and what in
# each protocol inflates them. Values as published; the "inflated by" column is
# our reading of the protocol, checked against our own measurements in 06 and 07.
PUBLISHED_CLAIMS = [
    {"claim": "92.9% accuracy", "metric": "accuracy", "value": 0.929,
     "model": "reference notebook (custom CNN / VGG16)",
     "inflated_by": "argmax over a single sigmoid output: every image is predicted as one class, so the "
                    "confusion matrix has one column; the figure is the majority-class share, not skill"},
    {"claim": "96.1% accuracy", "metric": "accuracy", "value": 0.961, "model": "reference paper (CNN)",
     "inflated_by": "image-level split (follow-ups of one patient in train and test); adult COVID-19 vs "
                    "pediatric normals from another hospital; no confidence interval"},
    {"claim": "96.5% accuracy", "metric": "accuracy", "value": 0.965,
     "model": "reference paper (keras.applications transfer)",
     "inflated_by": "image-level split; pediatric normals; threshold and model chosen on the test set"},
    {"claim": "94.92% sensitivity / 92.00% specificity", "metric": "sensitivity / specificity",
     "value": "0.9492 / 0.9200", "model": "reference paper (VGG16)",
     "inflated_by": "image-level split; pediatric normals; tiny test set reported without intervals"},
]


def load_records(metrics_dir: str | Path, names: list[str]) -> list[dict]:
    """Metrics records of the named models that exist (missing ones are reported, not invented)."""
    out, missing = [], []
    for n in names:
        p = Path(metrics_dir) / f"{n}.json"
        if p.is_file():
            rec = R.load_metrics(p)
            R.validate_record(rec)
            out.append(rec)
        else:
            missing.append(n)
    if missing:
        print(f"no metrics file for {missing} (run their notebook first)")
    return out


def paired_tests(scores: dict[str, tuple[pd.DataFrame, object]], y_true, reference: str,
                 n_boot: int, seed: int) -> pd.DataFrame:
    """Paired patient-bootstrap test of AUC(model) - AUC(reference) on the same test images."""
    ref_rows, ref_scores = scores[reference]
    patients = ref_rows["patient_id"].to_numpy()
    rows = []
    for name, (df, s) in scores.items():
        if name == reference:
            continue
        if not (df["image_path"].to_numpy() == ref_rows["image_path"].to_numpy()).all():
            raise ValueError(f"{name} was scored on other test images than {reference}")
        r = M.paired_auc_test(y_true, s, ref_scores, patients, n_boot=n_boot, seed=seed)
        rows.append({"model": name, "reference": reference, "auc_model": r["auc_a"], "auc_reference": r["auc_b"],
                     "diff": r["diff"], "ci95": r["ci95"], "ci_method": r["ci_method"], "p_value": r["p_value"]})
    return pd.DataFrame(rows)


degenerate_reason = M.degenerate_reason   # the one definition lives beside the intervals it flags


def validation_auc(y: ArrayLike, scores: ArrayLike, classes: Sequence[str]) -> float:
    """The AUC models are ranked by on validation (``metrics.auc_name``: ROC AUC, or macro AUC)."""
    binary = len(classes) == 2
    return float(M.compute_metrics(y, scores, classes, 0.5 if binary else None)[M.auc_name(classes)])


def validation_ranking(val: Mapping[str, tuple[ArrayLike, ArrayLike]], classes: Sequence[str],
                       exclude: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Every model's VALIDATION AUC, or why it cannot be ranked: the one ranking notebook 06 uses
    (the claims model here, the ensemble's members in ``ensemble_choice``).

    ``val`` maps model name -> (validation labels, validation scores), in declared order. One row
    per model in that order: ``model``, ``validation <auc_name>`` (None when excluded) and
    ``excluded``: the reason from ``exclude`` (name -> reason), constant scores
    (:func:`degenerate_reason`) or an undefined AUC; "" when the model can be ranked.
    """
    exclude = {k: v for k, v in (exclude or {}).items() if v}
    metric = M.auc_name(classes)
    rows = []
    for name, (y, s) in val.items():
        reason = exclude.get(name) or degenerate_reason(s)
        auc = None if reason else validation_auc(y, s, classes)
        if auc is not None and not np.isfinite(auc):
            reason, auc = f"validation {metric} undefined", None
        rows.append({"model": name, f"validation {metric}": auc, "excluded": reason or ""})
    return pd.DataFrame(rows, columns=["model", f"validation {metric}", "excluded"])


def degenerate_models(metrics_dir: str | Path, names: Sequence[str]) -> dict[str, str]:
    """``{model: reason}`` for the named models whose saved VALIDATION scores
    (``<metrics_dir>/<model>_scores.csv``) cannot rank images (:func:`degenerate_reason`), as notebook 06
    judges them: 06 never chooses them, 07 and 08 leave them out of their ranges. Models without a
    scores file are not judged."""
    out = {}
    for name in names:
        path = Path(metrics_dir) / f"{name}_scores.csv"
        if not path.is_file():
            continue
        df = pd.read_csv(path)
        cols = [c for c in df.columns if c.startswith("score_")]
        val = df.loc[df["split"] == "val", cols]
        reason = degenerate_reason((val if len(val) else df[cols]).to_numpy(dtype=float))
        if reason:
            out[name] = reason
    return out


def choose_on_validation(val: Mapping[str, tuple[ArrayLike, ArrayLike]], classes: Sequence[str],
                         exclude: Mapping[str, str] | None = None) -> tuple[str | None, pd.DataFrame]:
    """The model with the highest VALIDATION AUC, and the table it was chosen from (:func:`validation_ranking`).

    Ties go to the first declared. Excluded models are listed with their reason and never chosen.
    Test data is not an argument: it cannot influence the choice.
    """
    table = validation_ranking(val, classes, exclude)
    col = f"validation {M.auc_name(classes)}"
    ok = table[table["excluded"] == ""]
    chosen = None if ok.empty else str(ok.loc[ok[col].astype(float).idxmax(), "model"])
    return chosen, table


def claims_table(records: Sequence[Mapping], chosen: str | None, how: str,
                 excluded: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Published claims beside OUR figure for the same metric, from one model chosen beforehand.

    ``chosen`` is a model declared in advance or picked by :func:`choose_on_validation`
    (``how`` says which, and is printed); the claims are never compared with the
    best test number of many models, the practice that inflates published figures.
    Metrics our record lacks, or that are undefined, read "n/a". ``excluded``
    (name -> reason, e.g. degenerate models) is listed in a note column.
    """
    by_name = {r["model"]: r for r in records}
    rec = by_name.get(chosen) if chosen else None
    note = "; ".join(f"{n} left out: {why}" for n, why in (excluded or {}).items() if why)
    rows = []
    for c in PUBLISHED_CLAIMS:
        if rec is None:
            our = "n/a (no model chosen)"
        else:
            parts = [R.fmt(rec["metrics"].get(m.strip())) for m in c["metric"].split("/")]
            our = f"{' / '.join(parts)} ({rec['model']})"
        rows.append({"published claim": c["claim"], "model": c["model"],
                     f"ours (95% CI), model {how}": our,
                     "what inflates the published figure": c["inflated_by"], "note": note})
    return pd.DataFrame(rows)


def claims_markdown(claims: pd.DataFrame) -> str:
    """:func:`claims_table` as a Markdown table with every cell in full, and its note said once below it
    (the note is the same on every row; the CSV keeps it per row for spreadsheets and the README)."""
    notes = [n for n in dict.fromkeys(claims.get("note", pd.Series(dtype=str)).fillna("")) if n]
    table = R.table_markdown(claims.drop(columns=["note"], errors="ignore"))
    return table + "".join(f"\n\n*Note:* {n}." for n in notes)


def roc_overlay_inputs(scores: dict[str, tuple[pd.DataFrame, object]], y_true, classes,
                       positive: str = "covid") -> tuple[dict, str]:
    """Per model (y, score) for one ROC overlay, and what the curves show.

    Binary: the model's score. Three-class: ``positive``-vs-rest (its softmax column).
    """
    y = np.asarray(y_true)
    if len(classes) == 2:
        return {n: (y, s) for n, (_, s) in scores.items()}, f"{classes[1]} vs {classes[0]}"
    k = list(classes).index(positive)
    return {n: ((y == k).astype(int), np.asarray(s)[:, k]) for n, (_, s) in scores.items()}, f"{positive} vs rest"
