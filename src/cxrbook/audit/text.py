"""Notebook 07's generated text: one sentence and one table per audit check, written from the numbers.

Nothing here computes a result (that is :mod:`cxrbook.audit.checks` and
:mod:`cxrbook.audit.subgroups`); nothing here is typed by hand: every figure in a
sentence comes from the result dict it is given.
"""

from __future__ import annotations

import pandas as pd

from .runs import MASK_LABELS, auc_name, headline_metrics
from ..evaluation.records import fmt


def normals_table(result: dict) -> pd.DataFrame:
    """One row per run (adult / all / all on adult test) and one for the difference adult - all."""
    classes = result["classes"]
    rows = []
    for key, run in result["runs"].items():
        row = {"run": key, "n_test": run.report["n_test"], "test_patients": run.report["n_patients"],
               **{f"n_{c}": int((run.y_test == i).sum()) for i, c in enumerate(classes)}}
        row.update({m: fmt(run.metric(m)) for m in headline_metrics(classes)})
        rows.append(row)
    rows.append({"run": "difference adult - all", **{m: fmt(v) for m, v in result["difference"].items()}})
    df = pd.DataFrame(rows)
    counts = [c for c in df.columns if c.startswith("n_") or c == "test_patients"]
    df[counts] = df[counts].astype("Int64")
    return df


def normals_sentence(result: dict) -> str:
    """Plain-language reading of the normals comparison, generated from its numbers."""
    classes = result["classes"]
    a, b = result["runs"]["adult"], result["runs"]["all"]
    auc = auc_name(classes)
    d = result["difference"][auc]
    neg = classes[0]
    n_neg_a = int((a.y_test == 0).sum())
    text = (f"Trained and tested with adult normals only, the model reaches {auc.replace('_', ' ').upper()} "
            f"{fmt(a.metric(auc))} ({a.report['n_test']} test images, {n_neg_a} of them {neg}); with all normals "
            f"(pediatric included) {fmt(b.metric(auc))} ({b.report['n_test']} test images, "
            f"{b.info.get('n_pediatric_test', 0)} pediatric normals). ")
    if d["value"] is None or d["ci95"][0] is None:
        return text + "The difference could not be estimated."
    text += f"Difference adult - all: {fmt(d)}. "
    lo, hi = d["ci95"]
    if hi < 0:
        text += ("Adding the pediatric normals makes the task look easier than it is: part of the 'all normals' "
                 "score comes from telling children's X-rays from adults', not COVID-19 from normal lungs.")
    elif lo > 0:
        text += "The adult-only protocol scores higher; the pediatric normals do not explain the performance."
    else:
        text += (f"The interval covers 0, so these test sets cannot tell the two protocols apart "
                 f"(the adult-only test set has only {n_neg_a} {neg} images); that is not evidence that "
                 "the pediatric normals are harmless.")
    sub = result["runs"].get("all_on_adult_test")
    if sub is not None and len(classes) == 2:
        text += (f" The all-normals model scored on its test set without pediatric normals: "
                 f"specificity {fmt(sub.metric('specificity'))}, AUC {fmt(sub.metric('roc_auc'))} "
                 f"({int((sub.y_test == 0).sum())} adult {neg} images).")
    return text


def probe_sentence(probe: dict) -> str:
    """Plain-language reading of the source probe."""
    acc = probe["accuracy"]
    text = (f"A logistic regression on {probe['features'].split(',')[0]} predicts which collection a test image "
            f"came from ({', '.join(probe['sources'])}) with accuracy {fmt(acc)} "
            f"(balanced {probe['balanced_accuracy']:.3f}), against {probe['chance_majority_share']:.3f} for always "
            f"answering the most common source ({probe['majority_source']}). ")
    lbs = probe["label_by_source"]
    only = [f"{s} holds only {[lab for lab, c in v.items() if c][0]} images" for s, v in lbs.items()
            if sum(1 for c in v.values() if c) == 1]
    if probe["confounded"]:
        text += ("Images carry a recognisable signature of their collection"
                 + (f", and {'; '.join(only)}" if only else "")
                 + ": the disease label is confounded with the source, so a classifier can score well by "
                   "recognising the collection instead of the disease.")
    else:
        text += "The probe does not clearly beat chance: no strong pixel signature of the source was found."
    return text


def probe_within_label_sentence(probe: dict) -> str:
    """The probe inside each label, against that label's own bar: always answering its most common source."""
    parts = []
    for label, r in probe["accuracy_within_label"].items():
        acc, bar, n, sources = r["accuracy"], r["chance"], r["n"], r["sources"]
        if len(sources) == 1:
            parts.append(f"the {n} {label} test images all come from {sources[0]} (nothing to tell apart; accuracy "
                         f"{acc:.3f})")
            continue
        side = "above" if acc > bar else ("below" if acc < bar else "equal to")
        what = ("it tells the collections apart inside this label" if acc > bar else
                "inside this label it does no better than always naming the most common source")
        parts.append(f"on the {n} {label} test images ({', '.join(sources)}) accuracy {acc:.3f} is {side} "
                     f"{bar:.3f}, the share of their most common source: {what}")
    return ("Within one label the bar to beat is that label's most common source, not the overall chance line: "
            + "; ".join(parts) + " (point estimates, no interval).")


def masking_table(result: dict) -> pd.DataFrame:
    """AUC (and accuracy) with intervals for the three mask variants."""
    rows = []
    for mask, run in result["runs"].items():
        rows.append({"variant": MASK_LABELS[mask], "mask_fraction": result["fraction"] if mask != "none" else None,
                     "n_test": run.report["n_test"], "AUC": fmt(run.metric(result["auc_metric"])),
                     "accuracy": fmt(run.metric("accuracy")), "seconds": run.seconds})
    return pd.DataFrame(rows)


def masking_sentence(result: dict) -> str:
    """Plain-language reading of the lungs-hidden test."""
    auc = result["auc_metric"]
    r = result["runs"]
    pct = int(round(result["fraction"] * 100))
    text = (f"Unmasked AUC {fmt(r['none'].metric(auc))}; with the central {pct}% box blanked (lungs hidden) "
            f"{fmt(r['center_blanked'].metric(auc))}; with only that box kept {fmt(r['center_only'].metric(auc))}. ")
    if result["shortcut_suspected"]:
        text += ("With the lungs hidden the model still separates the classes well above chance (0.5): it can use "
                 "signals outside the lungs (borders, markers, text, body size, scanner), which a lung finding "
                 "cannot explain. Treat the unmasked score as an upper bound on what the lungs contribute.")
    else:
        text += ("With the lungs hidden the model is not clearly above chance: no strong evidence here of a "
                 "shortcut outside the central box.")
    return text


COUNT_COLUMNS = ("n_images", "n_patients", "n_pediatric")


def _class_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("n_") and c not in COUNT_COLUMNS]


def group_label(r) -> str:
    """``view=PA (36 images: 31 covid, 5 normal, none pediatric)`` for one row of the groups table."""
    counts = ", ".join(f"{int(r[c])} {c[2:]}" for c in r.index if c.startswith("n_") and c not in COUNT_COLUMNS)
    ped = ""
    if "n_pediatric" in r.index and pd.notna(r["n_pediatric"]):
        n = int(r["n_pediatric"])
        ped = ", none pediatric" if n == 0 else (", all pediatric" if n == int(r["n_images"]) else f", {n} pediatric")
    return f"{r['attribute']}={r['group']} ({int(r['n_images'])} images: {counts}{ped})"


def _separation(sub: pd.DataFrame, auc: str) -> tuple[int, int, int]:
    """(intervals above 0.5, below 0.5, including 0.5 or missing) over the rows of one group."""
    lo, hi = sub[f"{auc}_lo"].astype(float), sub[f"{auc}_hi"].astype(float)
    above, below = int((lo > 0.5).sum()), int((hi < 0.5).sum())
    return above, below, len(sub) - above - below


def groups_sentence(table: pd.DataFrame, left_out: dict[str, str] | None = None) -> str:
    """Inside one view or one sex, where both classes exist, does each model still separate them?

    Generated from the groups table (:func:`cxrbook.audit.subgroups.groups_for_models`): per group the
    range of test AUCs across models and how many 95% intervals lie above 0.5; which groups lack a class;
    and, when the table counts pediatric images, whether separation holds in the groups without them.
    ``left_out`` (model -> reason, e.g. constant scores) is named and kept out of every range.
    """
    if table.empty:
        return "No model with a scores file was found, so no per-group performance could be computed."
    left_out = {n: why for n, why in (left_out or {}).items() if n in set(table["model"])}
    skipped = (" Left out of these ranges, as in notebook 06: "
               + "; ".join(f"{n} ({why})" for n, why in left_out.items()) + ".") if left_out else ""
    t = table[~table["model"].isin(left_out)]
    if t.empty:
        return "Every model with a scores file was left out, so no per-group performance is reported." + skipped
    auc = "macro_auc" if "macro_auc" in t.columns else "roc_auc"
    k = t["model"].nunique()
    keys = list(dict.fromkeys(zip(t["attribute"], t["group"])))
    first = t.drop_duplicates(["attribute", "group"]).set_index(["attribute", "group"])
    ok = t[t["status"] == "ok"]
    lines, separated, ped_groups, adult_groups, few = [], {}, [], [], []
    for key in keys:
        sub = ok[(ok["attribute"] == key[0]) & (ok["group"] == key[1])]
        r = first.loc[key].copy()
        r["attribute"], r["group"] = key
        if sub.empty:
            present = [c[2:] for c in _class_columns(t) if int(r[c]) > 0]
            few.append(f"{group_label(r)}: " + (f"{present[0]} only" if len(present) == 1 else str(r["status"])))
            continue
        above, below, cover = _separation(sub, auc)
        vals = sub[auc].astype(float)
        lo_txt, hi_txt = f"{vals.min():.2f}", f"{vals.max():.2f}"
        rng = lo_txt if lo_txt == hi_txt else f"{lo_txt}-{hi_txt}"
        every = {1: "the model separates", 2: "both models separate"}.get(len(sub), f"all {len(sub)} models separate")
        if above == len(sub):
            verdict = (f"{every} the classes "
                       f"(AUC {rng}, {'its' if len(sub) == 1 else 'every'} 95% interval above 0.5)")
        elif above == 0 and below == 0:
            verdict = (f"{'the model is not' if len(sub) == 1 else 'no model is'} shown to separate them (AUC {rng}; "
                       f"{'its' if len(sub) == 1 else 'every'} 95% interval includes 0.5 or is missing)")
        else:
            verdict = (f"AUC {rng}; of {len(sub)} models' 95% intervals, {above} lie above 0.5, {below} below 0.5 "
                       f"and {cover} include it or are missing")
        lines.append(f"{group_label(r)}: {verdict}")
        separated[key] = above == len(sub)
        if "n_pediatric" in r.index and pd.notna(r["n_pediatric"]):
            (ped_groups if int(r["n_pediatric"]) > 0 else adult_groups).append(key)
    name = "ROC AUC" if auc == "roc_auc" else "macro AUC"
    text = (f"Test {name} inside each view and each sex group, for {k} model{'s' if k != 1 else ''}: "
            + "; ".join(lines) + "." if lines else
            "No view or sex group holds both classes with enough images, so no model could be assessed inside one.")

    def names(ks):
        return ", ".join(f"{a}={g}" for a, g in ks)
    if ped_groups and adult_groups and all(separated[g] for g in ped_groups) \
            and not any(separated[g] for g in adult_groups):
        text += (f" Every model separates the classes in the groups holding pediatric images ({names(ped_groups)}), "
                 f"but in {names(adult_groups)}, without pediatric images, not every model is shown to: the "
                 "separation is not shown to hold among adults, and where it holds the pediatric normals (children "
                 "from another hospital) may be what is recognised. The groups without pediatric images hold few "
                 "normals, so their intervals are wide: this is missing evidence, not proof of failure; notebook 08 "
                 "measures specificity on adult normals from another hospital.")
    elif adult_groups and all(separated[g] for g in adult_groups):
        text += (f" In {names(adult_groups)}, without pediatric images, every model still separates the classes: "
                 "there the score does not rest on the pediatric normals.")
    elif ped_groups and not adult_groups:
        text += (" Every group with both classes holds pediatric images, so no group here tests the models on "
                 "adults alone.")
    if few:
        text += " Reported as 'too few' (no AUC): " + "; ".join(few) + "."
        text += (" A group holding one class only cannot show whether a model separates the classes; that a view "
                 "or sex comes with one label is itself a confound.")
    return text + skipped


def calibration_table(cal: dict) -> pd.DataFrame:
    """Brier and ECE per model with intervals."""
    return pd.DataFrame([{"model": n, "n_test": c["n_test"], "Brier": fmt(c["brier"]), "ECE": fmt(c["ece"])}
                         for n, c in cal["models"].items()])


def calibration_sentence(cal: dict, left_out: dict[str, str] | None = None) -> str:
    """Which model is best / worst calibrated by ECE; models in ``left_out`` (name -> reason, e.g. constant
    scores) are named and kept out of the range, as notebook 06 leaves them out."""
    if not cal["models"]:
        return "No binary model with a scores file was found for the calibration check."
    left_out = {n: why for n, why in (left_out or {}).items() if n in cal["models"]}
    skipped = (" Left out of this range, as in notebook 06: " + "; ".join(f"{n} ({why})" for n, why in left_out.items())
               + ".") if left_out else ""
    ece = {n: c["ece"]["value"] for n, c in cal["models"].items() if c["ece"]["value"] is not None and n not in left_out}
    if not ece:
        return "No model with an expected calibration error is left to compare." + skipped
    best, worst = min(ece, key=ece.get), max(ece, key=ece.get)
    return (f"Expected calibration error ranges from {ece[best]:.3f} ({best}) to {ece[worst]:.3f} ({worst}): "
            f"a score of 0.8 from a model with ECE {ece[worst]:.2f} can be off by that much on average, so scores "
            "are rankings, not probabilities a clinician could read off." + skipped)


def clahe_sentence(result: dict) -> str:
    """Plain-language reading of :func:`clahe_comparison` (generated from its numbers)."""
    auc = "ROC AUC" if result["auc_metric"] == "roc_auc" else "macro AUC"
    parts = []
    for arch, p in result["paired"].items():
        if p["diff"] is None:
            parts.append(f"For {arch} the {auc} difference is undefined on this test set.")
            continue
        lo, hi = p["ci95"]
        verdict = ("this test set cannot tell the two apart" if lo is None or lo <= 0 <= hi else
                   "CLAHE helps on this test set" if lo > 0 else "CLAHE hurts on this test set")
        parts.append(f"For {arch}, test {auc} is {p['auc_a']:.3f} with CLAHE and {p['auc_b']:.3f} without: "
                     f"difference {p['diff']:+.3f} (95% paired patient-bootstrap interval "
                     f"{'n/a' if lo is None else f'{lo:+.3f} to {hi:+.3f}'}); {verdict}.")
    pp, pc = result["probe"]["plain"], result["probe"]["clahe"]
    parts.append(f"The source probe reaches accuracy {fmt(pc['accuracy'])} on CLAHE images and "
                 f"{fmt(pp['accuracy'])} on plain ones (chance {pc['chance_majority_share']:.3f}): "
                 + ("CLAHE does not remove the collection's signature from the pixels."
                    if pc["confounded"] else "on CLAHE images the probe does not clearly beat chance."))
    return " ".join(parts)


def clahe_table(result: dict) -> pd.DataFrame:
    """Per model: test AUC without / with CLAHE and the paired difference; last row the source probe."""
    rows = [{"measure": f"{arch} test {result['auc_metric']}", "without_clahe": p["auc_b"],
             "with_clahe": p["auc_a"], "difference": p["diff"], "difference_ci95": [None if b is None else round(b, 3) for b in p["ci95"]],
             "p_value": p["p_value"]} for arch, p in result["paired"].items()]
    pp, pc = result["probe"]["plain"], result["probe"]["clahe"]
    rows.append({"measure": f"source-probe accuracy (chance {pc['chance_majority_share']:.3f})",
                 "without_clahe": pp["accuracy"]["value"], "with_clahe": pc["accuracy"]["value"],
                 "difference": pc["accuracy"]["value"] - pp["accuracy"]["value"],
                 "difference_ci95": None, "p_value": None})
    return pd.DataFrame(rows).round(3)


def clahe_summary(result: dict) -> dict:
    """JSON-ready :func:`clahe_comparison` result for audit.json (no arrays)."""
    return {"auc_metric": result["auc_metric"], "image_size": result["image_size"],
            "runs": {a: {v: r.summary() for v, r in vs.items()} for a, vs in result["runs"].items()},
            "paired_clahe_minus_plain": result["paired"],
            "source_probe": {v: {k: p[k] for k in ("accuracy", "chance_majority_share", "balanced_accuracy",
                                                   "confounded", "n_test")}
                             for v, p in result["probe"].items()},
            "sentence": clahe_sentence(result)}
