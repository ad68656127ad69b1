"""Notebook 08's generated prose: what the external result means, written from the numbers of an
``external.json`` record (schema in :mod:`cxrbook.external.scores`); no number is typed by hand.

Each sentence is one function of the record, so what it may say can be tested branch by branch
(``tests/test_external.py``) and :func:`external_paragraph` only joins them. Every claim is a count
or a comparison the record itself holds: where an external estimate lies against the internal 95%
interval (:func:`position`), which paired intervals of a difference exclude 0.
"""

from __future__ import annotations

from ..evaluation.records import fmt
from ..models.sidecar import DISCLAIMER

POSITIONS = ("below_apart", "below", "within", "above", "above_apart", "not_compared")
MAX_NAMED = 4   # models named in a count; more are counted only


# --------------------------------------------------------------------------- small pieces

def _models(n: int) -> str:
    return f"{n} model" + ("" if n == 1 else "s")


def _named(entries: list[dict]) -> str:
    """`` (A, B)`` for up to MAX_NAMED entries, else nothing."""
    return f" ({', '.join(e['display_name'] for e in entries)})" if 0 < len(entries) <= MAX_NAMED else ""


def _range(entries: list[dict], side: str, metric: str) -> str:
    vals = [e[side][metric]["value"] for e in entries if e[side][metric]["value"] is not None]
    if not vals:
        return "n/a"
    return f"{min(vals):.2f}" if f"{min(vals):.2f}" == f"{max(vals):.2f}" else f"{min(vals):.2f}-{max(vals):.2f}"


def constant_model(entry: dict) -> bool:
    """True when the model's scores cannot rank images: notebook 06's judgement on its validation scores
    (``degenerate``, comparison.degenerate_models), or, for records written before that field, every internal
    test image scored the same (AUC exactly 0.5 with a zero-width interval). Its sensitivity/specificity then
    say which side of the threshold the constant fell, nothing about images."""
    if entry.get("degenerate"):
        return True
    auc = entry["internal"]["roc_auc"]
    return "degenerate" not in entry and auc.get("value") == 0.5 and list(auc.get("ci95") or []) == [0.5, 0.5]


def degenerate_reason(entry: dict) -> str:
    """Why :func:`constant_model` holds for ``entry``, in words."""
    return str(entry.get("degenerate") or "every internal test image scored the same (AUC 0.5)")


def compared_group(record: dict) -> tuple[list[dict], str]:
    """The models the paragraph's ranges describe, and how they were trained: the normals=all models when
    there are any (the published setting), else the normals=adult ones, else those whose sidecar does not
    record the training normals. Constant models are left in here (:func:`external_paragraph` names and
    removes them)."""
    for normals, how in (("all", "trained with all normals (pediatric included)"),
                         ("adult", "trained with adult normals only"),
                         ("unknown", "whose training normals are not recorded")):
        group = [e for e in record["models"] if e["normals"] == normals]
        if group:
            return group, how
    return [], "trained with all normals (pediatric included)"


# --------------------------------------------------------------------------- internal vs external

def position(internal: dict, external: dict) -> str:
    """Where an external estimate lies against the internal 95% interval (one of ``POSITIONS``).

    ``below`` / ``above``: the external point estimate lies outside the internal interval;
    ``below_apart`` / ``above_apart``: moreover the external interval lies entirely on that side
    (the two intervals do not overlap); ``within``: inside it (bounds included); ``not_compared``:
    no external value, or no internal interval to set it against.
    """
    ev = external.get("value")
    ilo, ihi = (internal.get("ci95") or [None, None])
    elo, ehi = (external.get("ci95") or [None, None])
    if ev is None or ilo is None or ihi is None:
        return "not_compared"
    if ev < ilo:
        return "below_apart" if ehi is not None and ehi < ilo else "below"
    if ev > ihi:
        return "above_apart" if elo is not None and elo > ihi else "above"
    return "within"


def positions(entries: list[dict], metric: str) -> dict[str, list[dict]]:
    """The entries in each position (:func:`position`) for one metric."""
    out: dict[str, list[dict]] = {p: [] for p in POSITIONS}
    for e in entries:
        out[position(e["internal"][metric], e["external"][metric])].append(e)
    return out


def comparison_sentence(entries: list[dict], metric: str) -> str:
    """Counts, for one metric, of models whose external estimate lay below, inside or above the internal
    95% interval, and of those whose two intervals do not overlap; what could not be compared is said."""
    p = positions(entries, metric)
    below, above = p["below_apart"] + p["below"], p["above_apart"] + p["above"]
    n = len(entries) - len(p["not_compared"])
    parts = []
    if n:
        text = f"External {metric} lay below the internal 95% interval for {len(below)} of {_models(n)}{_named(below)}"
        if below:
            apart = p["below_apart"]
            text += (("; the two intervals overlap" + (" in each case" if len(below) > 1 else "")) if not apart else
                     f"; for {'all' if len(apart) == len(below) else len(apart)} of them"
                     f"{_named(apart) if len(apart) < len(below) else ''} the external interval lies entirely "
                     "below the internal one")
        if above:
            apart = p["above_apart"]
            text += (f"; above it for {len(above)}{_named(above)}"
                     + (f", {len(apart)} of them with the intervals apart" if apart else ""))
        text += f"; inside it for {len(p['within'])}."
        parts.append(text)
    if p["not_compared"]:
        nc = p["not_compared"]
        parts.append(f"External {metric} could not be set against an internal interval for {_models(len(nc))}"
                     f"{_named(nc)} (a value or an interval is missing).")
    return " ".join(parts)


def transfer_sentence(entries: list[dict], group: str) -> str:
    """What the positions of sensitivity and specificity together allow to be said about transfer."""
    metrics = ("sensitivity", "specificity")
    pos = {m: positions(entries, m) for m in metrics}
    fell = [e for e in entries if any(e in pos[m]["below_apart"] for m in metrics)]
    rose = [e for e in entries if any(e in pos[m]["above_apart"] for m in metrics)]
    outside = [e for e in entries if any(e in pos[m]["below"] + pos[m]["above"] for m in metrics)]
    compared = [e for e in entries if any(e not in pos[m]["not_compared"] for m in metrics)]
    said = []
    if fell:
        which = " and ".join(m for m in metrics if pos[m]["below_apart"])
        text = (f"For {len(fell)} of {_models(len(entries))}{_named(fell)} an external {which} interval lies "
                "entirely below the internal one: those internal numbers did not hold at these hospitals")
        if group.startswith("trained with all normals"):
            text += (", and a model trained on adults' COVID-19 beside mostly children's normals has not shown "
                     "that it can tell COVID-19 from normal in adults elsewhere")
        said.append(text + ".")
    if rose:
        which = " and ".join(m for m in metrics if pos[m]["above_apart"])
        said.append(f"For {len(rose)} of {_models(len(entries))}{_named(rose)} an external {which} interval lies "
                    "entirely above the internal one.")
    if not fell and not rose:
        if outside:
            said.append(f"{len(outside)} of {_models(len(entries))}{_named(outside)} "
                        f"{'has' if len(outside) == 1 else 'have'} an external estimate outside the internal "
                        "interval, but every pair of intervals overlaps: these collections cannot show whether the "
                        "internal numbers hold.")
        elif compared:
            said.append("Every external estimate lies inside its internal 95% interval: consistent with the "
                        "internal numbers holding here, but the collections are small, so this is weak evidence, "
                        "not proof of transfer.")
        else:
            said.append("No external number could be set against an internal interval, so nothing is said here "
                        "about transfer.")
    return " ".join(said)


def lowest_specificity_sentence(entries: list[dict], n_normals: int) -> str:
    """The model with the lowest external specificity and how many NIH normal images it called COVID-19."""
    worst = min((e for e in entries if e["external"]["specificity"]["value"] is not None),
                key=lambda e: e["external"]["specificity"]["value"], default=None)
    if worst is None:
        return ""
    spec = worst["external"]["specificity"]["value"]
    fp = int(round((1.0 - spec) * n_normals))
    called = "all" if fp == n_normals else ("none" if fp == 0 else f"{fp}")
    return (f"The lowest external specificity, {worst['display_name']}'s {fmt(worst['external']['specificity'])} "
            f"(internal {fmt(worst['internal']['specificity'])}), means it called {called} of the {n_normals} "
            "pre-pandemic adult normal images from another hospital COVID-19.")


# --------------------------------------------------------------------------- other sentences

def _multi_class(record: dict) -> list[dict]:
    """Entries of models with more than two classes (no threshold: argmax, read as COVID-19 vs the rest)."""
    return [e for e in record["models"] if e.get("threshold") is None]


def union_sentence(record: dict) -> str:
    """What the union AUC confounds: two sources again."""
    c = record["collections"]
    rule = "the validation threshold" + (" (the argmax for multi-class models)" if _multi_class(record) else "")
    return (f"The external AUC is computed on the union of {c['hannover']['n_images']} Hannover COVID-19 and "
            f"{c['nih']['n_images']} NIH normal images; as in the training collections, label and source coincide "
            f"(every positive is from Hannover at about 640 px, every negative from NIH at {c['nih']['image_side_px']} "
            "px), so a model can reach a high union AUC by telling the two hospitals or resolutions apart; "
            f"sensitivity and specificity, each measured inside one collection at {rule}, are the numbers to read.")


def scored_as_sentence(record: dict) -> str:
    """How multi-class models were read (COVID-19 vs the rest), when there are any."""
    multi = _multi_class(record)
    if not multi:
        return ""
    return (f"For {_models(len(multi))} with more than two classes{_named(multi)} the external test reads COVID-19 "
            "vs the rest: an image counts as called COVID-19 when covid is its most probable class, and the "
            "internal numbers beside it are read the same way (sensitivity_covid, specificity_covid, auc_covid).")


def _difference_verdict(d: dict | None) -> str:
    """What a paired difference (adult - all) shows: its sign when its interval excludes 0."""
    if not d or d.get("value") is None or None in (d.get("ci95") or [None, None]):
        return "not comparable"
    lo, hi = d["ci95"]
    text = f"difference {d['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    if lo > 0:
        return f"higher, {text} excludes 0"
    if hi < 0:
        return f"lower, {text} excludes 0"
    return f"{text} covers 0, so no difference is shown"


def normals_sentence(record: dict) -> str:
    """Does removing pediatric normals from training change external specificity? (07's paired models,
    compared on the same external images by a paired patient bootstrap.)"""
    adult = [e for e in record["models"] if e["normals"] == "adult"]
    if not adult:
        return ("No normals=adult model was saved (notebook 07 saves them), so the effect of pediatric normals on "
                "external specificity is not measured here.")
    by = {e["model"]: e for e in record["models"]}
    parts = []
    for a in adult:
        pair = a.get("paired_with_all_normals")
        partner = by.get(pair["model"]) if pair else None
        if partner is None:
            parts.append(f"{a['display_name']} (trained without pediatric normals) reaches external specificity "
                         f"{fmt(a['external']['specificity'])}; no model trained the same way with all normals was "
                         "scored on the same images, so nothing is compared.")
            continue
        spec, sens, auc = (_difference_verdict(pair.get(m)) for m in ("specificity", "sensitivity", "roc_auc"))
        text = (f"Trained without pediatric normals, {a['display_name']} has external specificity "
                f"{fmt(a['external']['specificity'])} against {fmt(partner['external']['specificity'])} for "
                f"{partner['display_name']} ({spec}); external sensitivity {fmt(a['external']['sensitivity'])} "
                f"against {fmt(partner['external']['sensitivity'])} ({sens}); union AUC "
                f"{fmt(a['external']['roc_auc'])} against {fmt(partner['external']['roc_auc'])} ({auc}). Paired "
                "patient bootstrap on the same external images, adult - all")
        if spec.startswith("higher") and sens.startswith("lower") and not auc.startswith("higher"):
            text += ": it trades sensitivity for specificity rather than separating COVID-19 from normal better"
        parts.append(text + ".")
    return " ".join(parts)


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


# --------------------------------------------------------------------------- the paragraph

def ranges_sentence(entries: list[dict], group: str, record: dict) -> str:
    """Internal and external sensitivity / specificity ranges of ``entries``."""
    c = record["collections"]
    return (f"On {_models(len(entries))} {group}, internal test sensitivity was "
            f"{_range(entries, 'internal', 'sensitivity')} and specificity "
            f"{_range(entries, 'internal', 'specificity')}. "
            f"On {c['hannover']['n_images']} COVID-19 images of {c['hannover']['n_patients']} patients from Hannover, "
            f"a hospital none of them saw, sensitivity was {_range(entries, 'external', 'sensitivity')}; on "
            f"{c['nih']['n_images']} adult normal images of {c['nih']['n_patients']} NIH patients, specificity was "
            f"{_range(entries, 'external', 'specificity')}.")


def external_paragraph(record: dict) -> str:
    """What the external result means, generated from the numbers in ``record`` (the sentences above, joined)."""
    group_entries, group = compared_group(record)
    constant = [e for e in group_entries if constant_model(e)]
    entries = [e for e in group_entries if not constant_model(e)]
    if not entries:
        return ("No saved model with informative scores was found, so nothing was measured on the external "
                "collections.")
    lines = [ranges_sentence(entries, group, record)]
    if constant:
        lines.append(f"{' and '.join(e['display_name'] for e in constant)} "
                     f"{'is' if len(constant) == 1 else 'are'} left out of these ranges, as in notebook 06: "
                     + "; ".join(degenerate_reason(e) for e in constant) + ".")
    lines += [comparison_sentence(entries, m) for m in ("sensitivity", "specificity")]
    lines.append(lowest_specificity_sentence(entries, record["collections"]["nih"]["n_images"]))
    lines.append(transfer_sentence(entries, group)[:-1] + f" ({DISCLAIMER}).")
    return " ".join(p for p in [*lines, scored_as_sentence(record), union_sentence(record),
                                normals_sentence(record), resolution_sentence(record)] if p)
