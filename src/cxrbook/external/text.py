"""Notebook 08's generated prose: what the external result means, written from the numbers of an
``external.json`` record (schema in :mod:`cxrbook.external.scores`); no number is typed by hand.
"""

from __future__ import annotations

from ..evaluation.records import fmt
from ..models.sidecar import DISCLAIMER


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
            parts.append(f"{a['display_name']} reaches external specificity {fmt(a['external']['specificity'])}.")
            continue
        sa, sb = a["external"]["specificity"], partner["external"]["specificity"]
        ea, eb = a["external"]["sensitivity"], partner["external"]["sensitivity"]
        spec, sens = _verdict(sa, sb), _verdict(ea, eb)
        parts.append(f"Trained without pediatric normals, {a['display_name']} has external specificity "
                     f"{fmt(sa)} against {fmt(sb)} for the same protocol with all normals ({spec}); external "
                     f"sensitivity {fmt(ea)} against {fmt(eb)} ({sens}), union AUC "
                     f"{fmt(a['external']['roc_auc'])} against {fmt(partner['external']['roc_auc'])}"
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


def external_paragraph(record: dict) -> str:
    """What the external result means, generated from the numbers in ``record``."""
    trained_all = [e for e in record["models"] if e["normals"] == "all"] or record["models"]
    constant = [e for e in trained_all if e.get("degenerate")]  # as notebook 06 judges them (validation scores)
    entries = [e for e in trained_all if not e.get("degenerate")]
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
        lines.append(f"{' and '.join(e['display_name'] for e in constant)} "
                     f"{'is' if len(constant) == 1 else 'are'} left out of these ranges, as in notebook 06: "
                     + "; ".join(str(e["degenerate"]) for e in constant) + ".")
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
                     f"{fmt(worst['external']['specificity'])} (internal "
                     f"{fmt(worst['internal']['specificity'])}), means it calls {1 - spec:.0%} of pre-pandemic "
                     "adult normals from another hospital COVID-19.")
    lines.append("Internal numbers on these public collections therefore do not transfer: a model that separated "
                 "children's normals from adults' COVID-19 has not shown it can detect COVID-19 in adults elsewhere"
                 if any(ch == "fell" for chs in changes.values() for ch in chs) else
                 "Within these intervals the internal numbers held on the external collections; the collections are "
                 "small, so this is weak evidence, not proof of transfer")
    lines[-1] += f" ({DISCLAIMER})."
    return " ".join([*lines, union_sentence(record), normals_sentence(record), resolution_sentence(record)])
