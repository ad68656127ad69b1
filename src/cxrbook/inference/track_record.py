"""A saved model's track record: what its recorded tests say, as numbers and one plain sentence.

Read from the workbook's own outputs, never typed by hand:

- ``outputs/metrics/<model>.json`` (schema in :mod:`cxrbook.evaluation.records`): the internal test split's
  confusion matrix, sensitivity/specificity (binary) or per-class ``sensitivity_<class>``
  (multi-class), each with its patient-bootstrap 95% interval;
- ``outputs/external.json`` (schema in :mod:`cxrbook.external.scores`, written by notebook 08):
  sensitivity on the Hannover COVID-19 collection and specificity on the NIH adult normals,
  both hospitals the models never saw.

Independent of the web app (json and the standard library only), so ``predict`` can use it too.
Every branch of the numbers gives a true sentence: a missing file or entry says so, a missing
interval is not invented, percentages round outward for intervals and never to 0% or 100%
unless the value is exactly that, and a record measured at another threshold than the model's
says so. Research tool, not a diagnosis.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

LABELS = {"covid": "COVID-19", "normal": "normal", "other_pneumonia": "other pneumonia", "pneumonia": "pneumonia"}
FLAG_TEXT = {"zero_width": "a zero-width interval: the model's scores are constant (a degenerate model)",
             "constant_resamples": "a zero-width interval: every resample gave the same value",
             "excludes_point": "the interval excludes the point estimate"}


def label_text(name: str) -> str:
    """How a class name reads in prose: ``covid`` -> ``COVID-19``, ``other_pneumonia`` -> ``other pneumonia``."""
    return LABELS.get(name, name.replace("_", " "))


@dataclass(frozen=True)
class Measure:
    """One recorded proportion: ``count`` of ``total`` images (when the counts are known), its value and interval."""

    name: str
    value: float | None
    ci95: tuple[float | None, float | None] = (None, None)
    flag: str | None = None
    count: int | None = None
    total: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "ci95": list(self.ci95), "ci_flag": self.flag,
                "count": self.count, "total": self.total}


@dataclass
class TrackRecord:
    """The numbers behind :attr:`sentence`; ``internal``/``external`` are None when not recorded."""

    model: str
    classes: list[str]
    sentence: str
    internal: dict[str, Measure] | None = None
    internal_n_test: int | None = None
    internal_n_patients: int | None = None
    internal_threshold: float | None = None
    external: dict[str, Measure] | None = None
    external_threshold: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the API returns it beside every score)."""
        return {"model": self.model, "sentence": self.sentence,
                "internal": None if self.internal is None else {
                    "n_test": self.internal_n_test, "n_patients": self.internal_n_patients,
                    "threshold": self.internal_threshold,
                    "measures": {k: m.as_dict() for k, m in self.internal.items()}},
                "external": None if self.external is None else {
                    "threshold": self.external_threshold,
                    "measures": {k: m.as_dict() for k, m in self.external.items()}},
                "notes": list(self.notes)}


# --------------------------------------------------------------------------- numbers as words

def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def pct(v: float | None) -> str:
    """``94%``; exactly 0 or 1 give ``0%``/``100%``, anything else that would round to them
    ``under 1%``/``over 99%``; None gives ``n/a``."""
    if v is None:
        return "n/a"
    p = 100.0 * v
    if p <= 0 or p >= 100:
        return f"{max(0.0, min(100.0, p)):.0f}%"
    r = round(p)
    if r <= 0:
        return "under 1%"
    if r >= 100:
        return "over 99%"
    return f"{r}%"


def ci_text(lo: float | None, hi: float | None) -> str:
    """``95% CI 85-98%``, rounded outward (the printed interval always contains the recorded one)."""
    if lo is None or hi is None:
        return "no interval recorded"
    a = max(0, math.floor(100.0 * lo + 1e-9))
    b = min(100, math.ceil(100.0 * hi - 1e-9))
    return f"95% CI {a}-{b}%"


def _paren(m: Measure, complement: bool = False, value: bool = True) -> str:
    """``(94%, 95% CI 85-98%)`` for a measure, or for 1 - the measure when ``complement``; without the
    percentage when not ``value``."""
    v, (lo, hi) = m.value, m.ci95
    if complement:
        v = None if v is None else 1.0 - v
        lo, hi = (None if hi is None else 1.0 - hi), (None if lo is None else 1.0 - lo)
    parts = ([pct(v)] if value else []) + [ci_text(lo, hi)]
    if m.flag in FLAG_TEXT:
        parts.append(FLAG_TEXT[m.flag])
    return f"({', '.join(parts)})"


def _measure(metrics: Mapping[str, Any], name: str, count: int | None = None, total: int | None = None) -> Measure:
    entry = metrics.get(name) if isinstance(metrics, Mapping) else None
    if not isinstance(entry, Mapping):
        return Measure(name, None)
    value = _num(entry.get("value"))
    ci = entry.get("ci95")
    lo, hi = (_num(ci[0]), _num(ci[1])) if isinstance(ci, Sequence) and len(ci) == 2 else (None, None)
    flag = entry.get("ci_flag") if isinstance(entry.get("ci_flag"), str) else None
    # the counts are given only when they are what the value says (a record written from these counts)
    if count is None or not total or value is None or abs(count / total - value) > 1e-9:
        count = total = None
    return Measure(name, value, (lo, hi), flag, count, total)


# --------------------------------------------------------------------------- reading the records

def read_json(path: str | os.PathLike) -> tuple[dict | None, str]:
    """(the JSON object, "") or (None, why not: ``missing`` / ``unreadable``)."""
    p = Path(path)
    if not p.is_file():
        return None, "missing"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, "unreadable"
    return (data, "") if isinstance(data, dict) else (None, "unreadable")


def internal_measures(record: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Measure]:
    """Binary: ``sensitivity`` and ``specificity``; multi-class: ``sensitivity_<class>`` per class (the share of
    each class's test images given that class), with counts from the confusion matrix where they agree."""
    metrics = record.get("metrics") or {}
    cm = record.get("confusion_matrix")
    k = len(classes)
    ok_cm = (isinstance(cm, Sequence) and len(cm) == k
             and all(isinstance(r, Sequence) and len(r) == k and all(_num(v) is not None for v in r) for r in cm))

    def row(i: int) -> tuple[int | None, int | None]:
        return (int(cm[i][i]), int(sum(cm[i]))) if ok_cm else (None, None)

    if k == 2:
        (tn, n_neg), (tp, n_pos) = row(0), row(1)
        return {"sensitivity": _measure(metrics, "sensitivity", tp, n_pos),
                "specificity": _measure(metrics, "specificity", tn, n_neg)}
    return {f"sensitivity_{c}": _measure(metrics, f"sensitivity_{c}", *row(i)) for i, c in enumerate(classes)}


def _external_entry(record: Mapping[str, Any], model: str) -> dict | None:
    for e in record.get("models") or []:
        if isinstance(e, Mapping) and e.get("model") == model:
            return dict(e)
    return None


def _same_threshold(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-9)


def _threshold_note(recorded: float | None, used: float | None) -> str:
    if _same_threshold(recorded, used):
        return ""
    rec = "argmax" if recorded is None else f"threshold {recorded:.3f}"
    now = "argmax" if used is None else f"{used:.3f}"
    return f" (measured at {rec}, while this model now decides at {now})"


# --------------------------------------------------------------------------- the sentence

def _internal_clause(model: str, record: dict | None, why: str, classes: Sequence[str],
                     threshold: float | None, tr: TrackRecord) -> str:
    if record is None:
        return (f"No internal test result is recorded for this model (outputs/metrics/{model}.json is {why})")
    if [str(c) for c in record.get("classes") or []] != list(classes):
        tr.notes.append("internal record classes differ from the model's")
        return (f"No usable internal test result is recorded for this model (outputs/metrics/{model}.json lists "
                f"classes {record.get('classes')}, the model {list(classes)})")
    tr.internal = internal_measures(record, classes)
    n_test, n_pat = record.get("n_test"), record.get("n_patients")
    tr.internal_n_test = int(n_test) if _num(n_test) is not None else None
    tr.internal_n_patients = int(n_pat) if _num(n_pat) is not None else None
    tr.internal_threshold = _num(record.get("threshold"))
    size = (f"{tr.internal_n_test} images of {tr.internal_n_patients} patients"
            if tr.internal_n_test is not None and tr.internal_n_patients is not None else "size not recorded")
    head = (f"On its internal test set ({size}, held out from the collections it was trained on"
            f"{_threshold_note(tr.internal_threshold, threshold)}) it")

    def part(m: Measure, cls: str, verb: str) -> str:
        what = label_text(cls)
        if m.value is None:
            return f"has no recorded {m.name.replace('_', ' ')} for {what} images"
        if m.count is not None:
            return f"{verb} {m.count} of {m.total} {what} images {what} {_paren(m)}"
        return f"{verb} {pct(m.value)} of {what} images {what} {_paren(m, value=False)}"

    if len(classes) == 2:
        sens, spec = tr.internal["sensitivity"], tr.internal["specificity"]
        return f"{head} {part(sens, classes[1], 'called')} and {part(spec, classes[0], 'called')}"
    parts = [part(tr.internal[f"sensitivity_{c}"], c, "named") for c in classes]
    return f"{head} {', '.join(parts[:-1])} and {parts[-1]}"


def _external_clause(model: str, record: dict | None, why: str, classes: Sequence[str], threshold: float | None,
                     image_size: int | None, tr: TrackRecord) -> str:
    if record is None:
        return (f"no result on another hospital's images is recorded (outputs/external.json, written by "
                f"notebook 08, is {why})")
    entry = _external_entry(record, model)
    if entry is None:
        return ("outputs/external.json has no entry for this model, so its result on another hospital's images "
                "is unknown")
    cols = record.get("collections") or {}
    hann, nih = cols.get("hannover") or {}, cols.get("nih") or {}
    ext = entry.get("external") or {}
    tr.external = {"sensitivity": _measure(ext, "sensitivity"), "specificity": _measure(ext, "specificity")}
    tr.external_threshold = _num(entry.get("threshold"))
    positive = label_text(classes[1]) if len(classes) == 2 else "COVID-19"

    def n(c: Mapping, key: str) -> str:
        return str(int(c[key])) if _num(c.get(key)) is not None else "an unrecorded number of"

    sens, spec = tr.external["sensitivity"], tr.external["specificity"]
    side = _num(nih.get("image_side_px"))
    upsampled = (f", {int(side)} px thumbnails this {image_size} px model sees upsampled"
                 if side is not None and image_size is not None and image_size > side else "")
    a = (f"on {n(hann, 'n_images')} COVID-19 X-rays of {n(hann, 'n_patients')} patients from Hannover, a hospital "
         f"it never saw, it called {pct(sens.value)} {positive} {_paren(sens, value=False)}"
         if sens.value is not None else
         "its sensitivity on the Hannover COVID-19 X-rays is not recorded")
    b = (f"on {n(nih, 'n_images')} pre-pandemic adult normal X-rays of {n(nih, 'n_patients')} NIH patients"
         f"{upsampled} it called {pct(None if spec.value is None else 1 - spec.value)} {positive} "
         f"{_paren(spec, complement=True, value=False)}" if spec.value is not None else
         "its specificity on the NIH adult normal X-rays is not recorded")
    return f"{a}, and {b}{_threshold_note(tr.external_threshold, threshold)}"


def track_record(outputs_dir: str | os.PathLike, model: str, classes: Sequence[str], threshold: float | None,
                 image_size: int | None = None) -> TrackRecord:
    """The track record of saved model ``model`` (file stem; notebook 06's ensemble is ``ensemble``) whose sidecar
    gives ``classes``, ``threshold`` (None: argmax) and ``image_size``, read from ``outputs_dir``."""
    outputs_dir = Path(outputs_dir)
    classes = [str(c) for c in classes]
    tr = TrackRecord(model=model, classes=classes, sentence="")
    internal, why_i = read_json(outputs_dir / "metrics" / f"{model}.json")
    first = _internal_clause(model, internal, why_i, classes, threshold, tr)
    if len(classes) == 2:
        external, why_e = read_json(outputs_dir / "external.json")
        second = _external_clause(model, external, why_e, classes, threshold, image_size, tr)
    else:
        second = ("notebook 08 tests binary COVID-19 vs normal models on other hospitals' images, so no such result "
                  "exists for this multi-class model")
    tr.sentence = f"Track record: {first}; {second}."
    return tr
