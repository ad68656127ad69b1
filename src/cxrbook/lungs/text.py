"""Notebook 09's generated text: what the lung detector and the crops did, written from the numbers.

:func:`lungs_paragraph` reads a ``lungs.json`` record (schema in :mod:`cxrbook.lungs.study`) and
returns Markdown (one bullet per finding); every number in it comes from the record, and every
branch (an interval above, below or around 0, a model that learned nothing, a probe that still
finds the collection or no longer does, no fallback at all) has its own wording, tested with
constructed records. Research tool, not a diagnosis.
"""

from __future__ import annotations

from typing import Any

from ..evaluation.records import fmt

WHOLE, CROPS = "whole images", "crops"


def direction(entry: dict | None) -> str:
    """'rose' / 'fell' when a paired interval lies above / below 0, 'did not measurably change' when it
    includes 0, 'could not be measured' without a value and both bounds."""
    if not entry or entry.get("value") is None or None in (entry.get("ci95") or [None]):
        return "could not be measured"
    lo, hi = entry["ci95"]
    if lo > 0:
        return "rose"
    if hi < 0:
        return "fell"
    return "did not measurably change"


def learned(summary: dict) -> bool:
    """True when a run's internal AUC interval lies above 0.5 (the model separates the classes at all)."""
    metrics = summary.get("metrics") or {}
    auc = metrics.get("roc_auc") or metrics.get("macro_auc") or {}
    lo = (auc.get("ci95") or [None])[0]
    return lo is not None and lo > 0.5


def _auc(summary: dict) -> dict | None:
    metrics = summary.get("metrics") or {}
    return metrics.get("roc_auc") or metrics.get("macro_auc")


def detector_sentence(record: dict) -> str:
    """The detector against the mean box on held-out patients."""
    held = record["detector"]["held_out"]
    det, base, diff = held["detector"], held["mean_box"], held["difference"]
    d = diff.get("iou_mean")
    moved = direction(d)
    verdict = {"rose": f"it beats the mean box (paired difference {fmt(d)}, above 0)",
               "fell": f"it is worse than the mean box (paired difference {fmt(d)}, below 0)",
               "did not measurably change": f"it does not beat the mean box (paired difference {fmt(d)} includes 0)",
               "could not be measured": "its difference from the mean box could not be measured"}[moved]
    text = (f"On {held['n_images']} held-out images of {held['n_patients']} patients the detector's mean IoU is "
            f"{fmt(det.get('iou_mean'))} against {fmt(base.get('iou_mean'))} for the mean box (each lung's average "
            f"box over the training images): {verdict}. COCO mAP@0.5:0.95 {fmt(det.get('map50_95'))} against "
            f"{fmt(base.get('map50_95'))}.")
    fell = held.get("fell_back") or {}
    n_fell, n_lungs = sum(fell.values()), 2 * int(held["n_images"])
    if fell:
        text += (f" {n_fell} of its {n_lungs} held-out lung boxes had a confidence below "
                 f"{record['min_confidence']:g} and are the mean box (counted in the numbers above)."
                 if n_fell else f" Every one of its {n_lungs} held-out lung boxes reached confidence "
                                f"{record['min_confidence']:g}.")
    return text


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def fallback_sentence(record: dict) -> str:
    """Per collection, the share of images where at least one lung fell back to the mean box."""
    fb = record.get("fallback") or {}
    shares = {c: v["either"] / v["images"] for c, v in fb.items() if v.get("images")}
    if not shares:
        return "The detector was not run on the collections."
    c = record["min_confidence"]
    if not any(shares.values()):
        return (f"On every image of every collection ({_names(list(shares))}) the detector found both lungs with "
                f"confidence {c:g} or more; no crop used the mean box.")
    listed = ", ".join(f"{k} {fb[k]['either']} of {fb[k]['images']} ({shares[k]:.0%})" for k in shares)
    text = (f"Images where at least one lung was not found with confidence {c:g} and the mean box stands in: "
            f"{listed}. The detector was trained on adult Cohen images only; ")
    if all(v == 1 for v in shares.values()):
        return text + ("in every image of every collection at least one lung box is the mean box, so the crops "
                       "stay close to one fixed region.")
    top = max(shares.values())
    worst = [k for k, v in shares.items() if v == top]
    return text + (f"it is least sure of itself on {worst[0]}." if len(worst) == 1 else
                   f"it is least sure of itself on {_names(worst)} (equally).")


def _run_sentence(normals: str, arch: str, run: dict) -> tuple[str, str | None]:
    """(sentence, NIH specificity direction or None when the run cannot be read)."""
    ext = run.get("external") or {}
    weak = [w for w, key in ((WHOLE, "uncropped"), (CROPS, "cropped")) if not learned(run[key])]
    if weak:
        aucs = "; ".join(f"{w}: {fmt(_auc(run[k]))}" for w, k in ((WHOLE, "uncropped"), (CROPS, "cropped")))
        return (f"With normals={normals}, the {arch} trained on {' and on '.join(weak)} did not separate the classes "
                f"on its own test patients (internal AUC interval reaches 0.5; {aucs}), so its external numbers say "
                f"nothing about cropping."), None
    auc_d = (run.get("difference") or {}).get("roc_auc") or (run.get("difference") or {}).get("macro_auc")
    text = (f"With normals={normals}, the {arch}'s internal AUC {direction(auc_d)} with cropping "
            f"({fmt(_auc(run['uncropped']))} on {WHOLE}, {fmt(_auc(run['cropped']))} on {CROPS}; paired "
            f"difference {fmt(auc_d)}).")
    nih, hann = ext.get("nih"), ext.get("hannover")
    if nih:
        text += (f" Its specificity on NIH adult normals {direction(nih['difference'])} "
                 f"({fmt(nih['uncropped'])} on {WHOLE}, {fmt(nih['cropped'])} on {CROPS}; paired difference "
                 f"{fmt(nih['difference'])})")
        text += (f", its sensitivity on Hannover COVID-19 {direction(hann['difference'])} "
                 f"({fmt(hann['uncropped'])} to {fmt(hann['cropped'])}; {fmt(hann['difference'])})." if hann else ".")
    else:
        text += " It was not measured on the external collections."
    return text, direction(nih["difference"]) if nih else None


def overall_sentence(moves: list[str | None], n_runs: int) -> str:
    """How many readable models' NIH specificity rose, fell or stayed, out of ``n_runs``."""
    read = [m for m in moves if m is not None and m != "could not be measured"]
    if not read:
        return (f"None of the {n_runs} models here separated the classes on its own test patients on both whole "
                "images and crops with an external specificity to compare, so this run cannot say whether "
                "cropping to the lungs moves external specificity.")
    counts = {k: read.count(k) for k in ("rose", "fell", "did not measurably change")}
    return (f"Of the {len(read)} of {n_runs} models whose numbers can be read, cropping to the lungs raised NIH "
            f"specificity for {counts['rose']}, lowered it for {counts['fell']} and did not measurably change it "
            f"for {counts['did not measurably change']}.")


def probe_sentence(record: dict) -> str | None:
    """07's source probe on the crops against the whole images, and what is left for a shortcut."""
    probe = record.get("source_probe") or {}
    c, u = probe.get("cropped"), probe.get("uncropped")
    if not c:
        return None
    chance = c.get("chance_majority_share")
    chance_txt = f"{chance:.2f}" if chance is not None else "n/a"
    whole = f" against {fmt(u['accuracy'])} on whole images" if u else ""
    if c.get("confounded"):
        return (f"The source probe (notebook 07's logistic regression on 32x32 pixels, predicting the collection) "
                f"still tells the collections apart on the lung crops: accuracy {fmt(c['accuracy'])}{whole} (always "
                f"answering the most common collection: {chance_txt}). A crop removes borders, text and "
                "collimation, not what lies inside the lungs: body size and age (children's chests), positioning "
                "and each collection's resolution and processing remain there for a shortcut.")
    return (f"On the lung crops the source probe no longer beats chance by the audit's margin: accuracy "
            f"{fmt(c['accuracy'])}{whole} (most common collection: {chance_txt}). A linear probe on 32x32 pixels "
            "failing does not show the shortcut is gone: a CNN can read finer signals inside the lungs (age, "
            "positioning, each scanner's processing).")


def lungs_paragraph(record: dict[str, Any]) -> str:
    """What the numbers of a lungs record say, as Markdown bullets (true for every branch of the numbers)."""
    bullets = [f"**Detector.** {detector_sentence(record)}", f"**Every collection.** {fallback_sentence(record)}"]
    moves, runs = [], []
    for normals, by_arch in (record.get("runs") or {}).items():
        for arch, run in by_arch.items():
            text, move = _run_sentence(normals, arch, run)
            runs.append(text)
            moves.append(move)
    if runs:
        bullets.append(f"**Cropped vs whole images.** {' '.join(runs)} {overall_sentence(moves, len(runs))}")
    probe = probe_sentence(record)
    if probe:
        bullets.append(f"**What is left for a shortcut.** {probe}")
    return "\n".join(f"- {b}" for b in bullets)
