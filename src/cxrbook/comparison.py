"""Notebook 06: one table of every model, paired AUC tests, and the published claims beside ours."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import metrics as M

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
            rec = M.load_metrics(p)
            M.validate_record(rec)
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
                     "diff": r["diff"], "ci95": r["ci95"], "p_value": r["p_value"]})
    return pd.DataFrame(rows)


def claims_table(ours: pd.DataFrame) -> pd.DataFrame:
    """Published claims beside our best result for the same metric (with its interval)."""
    rows = []
    for c in PUBLISHED_CLAIMS:
        metric = c["metric"]
        if metric in ours.columns:
            best = ours.loc[ours[metric].str.split().str[0].astype(float).idxmax()]
            our = f"{best[metric]} ({best['model']})"
        elif metric == "sensitivity / specificity" and {"sensitivity", "specificity"} <= set(ours.columns):
            best = ours.loc[ours["sensitivity"].str.split().str[0].astype(float).idxmax()]
            our = f"{best['sensitivity']} / {best['specificity']} ({best['model']})"
        else:
            our = "n/a"
        rows.append({"published claim": c["claim"], "model": c["model"], "ours (best, 95% CI)": our,
                     "what inflates the published figure": c["inflated_by"]})
    return pd.DataFrame(rows)


def roc_overlay_inputs(scores: dict[str, tuple[pd.DataFrame, object]], y_true, classes,
                       positive: str = "covid") -> tuple[dict, str]:
    """Per model (y, score) for one ROC overlay, and what the curves show.

    Binary: the model's score. Three-class: ``positive``-vs-rest (its softmax column).
    """
    import numpy as np
    y = np.asarray(y_true)
    if len(classes) == 2:
        return {n: (y, s) for n, (_, s) in scores.items()}, f"{classes[1]} vs {classes[0]}"
    k = list(classes).index(positive)
    return {n: ((y == k).astype(int), np.asarray(s)[:, k]) for n, (_, s) in scores.items()}, f"{positive} vs rest"
