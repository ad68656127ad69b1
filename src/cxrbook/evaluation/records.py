"""The metrics record: one JSON file per evaluated model, its checks, and its tables.

Schema of ``outputs/metrics/<model>.json`` (written by :func:`save_metrics`)
---------------------------------------------------------------------------
JSON object, keys sorted, indent 2, NaN/inf written as ``null``::

    {
      "model":            str,   # model name, also the file stem
      "task":             str,   # "covid_vs_normal" | "three_class" | ...
      "weights":          str,   # e.g. "imagenet", "random", "torchxrayvision"
      "classes":          [str, ...],          # model-output order; binary: [negative, positive]
      "n_test":           int,   # test images
      "n_patients":       int,   # distinct test patients (bootstrap clusters)
      "threshold":        float | null,        # binary: in [0, 1]; multi-class: null (argmax)
      "threshold_rule":   str,   # "youden" | "fixed" | "argmax" | free text
      "confusion_matrix": [[int, ...], ...],   # rows = true, cols = predicted, class order
      "metrics": {           # every metric, same shape:
        "<name>": {"value": float | null, "ci95": [lo, hi],  # lo/hi float or null
                   "ci_method": str,  # how the interval was made: a key of CI_METHODS
                   "ci_flag": str}    # only when flagged: a key of CI_FLAGS
      },
      "degenerate": str,     # optional: why the model's scores cannot rank images (constant scores)
      "extra": {...}         # optional free dict: image_size, profile, normals, seed,
                             # n_bootstrap, bootstrap_seed, split sizes, ...
    }

Invariants checked by :func:`validate_record`: all keys above except ``extra``,
``degenerate`` and ``ci_method`` present; ``confusion_matrix`` is len(classes) x
len(classes) and sums to ``n_test``; accuracy equals trace/n_test; a binary record
has a finite threshold in [0, 1]; every metric has ``value`` and a two-element
``ci95`` with ``lo <= hi``; a ``ci_method`` is one of ``CI_METHODS``; a ``ci_flag``
matches what :func:`flag_of` says of the interval (``zero_width`` only in a record that
names its model ``degenerate``).

Intervals (``CI_METHODS``, chosen by the coverage simulation ``tests/interval_study.py``,
checked by ``tests/test_interval_coverage.py``) keep their 95 % coverage near 0 and 1 with
images clustered in patients, and are reported as they come, never widened to include the
point estimate. No proportion interval has zero width (0 of 500 images gives an upper bound
above 0). A zero-width interval is flagged: ``zero_width`` when the model's scores are
constant (a degenerate model: its AUC is 0.5 in every sample, it measures nothing),
``constant_resamples`` when every patient resample gave the same value otherwise (a perfect
F1, a run compared with itself);
one that excludes its point estimate is flagged ``excludes_point``. Tables name the methods
under every table (:func:`methods_note`) and explain each flag (:func:`ci_footnotes`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import nan_to_none, to_jsonable, write_json
from . import intervals as I

REQUIRED_KEYS = ("model", "task", "weights", "n_test", "n_patients", "threshold",
                 "threshold_rule", "confusion_matrix", "classes", "metrics")


# How an interval was made: ``ci_method`` code -> what the tables say. The first four are the methods of
# ``cxrbook.evaluation.intervals`` (its *_METHOD constants); the study that chose them is tests/interval_study.py.
CI_METHODS = {
    "wilson_deff": I.PROPORTION_METHOD,
    "hanley_mcneil_deff": I.AUC_METHOD,
    "bootstrap_t_log": I.MEAN_METHOD,
    "bca_patients": I.BOOTSTRAP_METHOD,
    "bca_paired": "BCa bootstrap over patients drawn once for both sides of the difference (paired)",
    "percentile_patients": "percentile bootstrap over patients (box IoU and AP: not covered by the coverage study)",
    "percentile_paired": "percentile bootstrap over patients drawn once for both sides (paired; box metrics, "
                         "not covered by the coverage study)",
    "none": "no interval: none tried holds 95% coverage (the binned ECE is biased upwards)",
}
CI_FLAGS = {"excludes_point": "the interval excludes its point estimate (a skewed, discrete bootstrap distribution): "
                              "read the point estimate with caution",
            "zero_width": "zero-width interval of a degenerate model: its scores are constant, so every sample "
                          "gives the same value and the number measures nothing",
            "constant_resamples": "zero-width interval: every patient resample gave the same value (e.g. every "
                                  "image right, or a run compared with itself), so the bootstrap cannot say how "
                                  "far it may be off"}
CI_MARKS = {"excludes_point": "†", "zero_width": "‡", "constant_resamples": "§"}


def interval_flag(value: float | None, ci: Sequence[float | None]) -> str | None:
    """``"zero_width"`` / ``"excludes_point"`` when an interval is suspect, else None.

    A zero-width interval says every sample gave the same number (a degenerate
    model, or a constant bootstrap statistic); one that excludes its point estimate
    comes from a skewed, discrete bootstrap distribution. Both are reported, never repaired.
    """
    if value is None or ci is None or len(ci) != 2 or any(b is None for b in ci):
        return None
    v, lo, hi = float(value), float(ci[0]), float(ci[1])
    if not all(math.isfinite(x) for x in (v, lo, hi)):
        return None
    if hi - lo <= 1e-12:
        return "zero_width"
    if not lo - 1e-9 <= v <= hi + 1e-9:
        return "excludes_point"
    return None


def flag_of(value: float | None, ci: Sequence[float | None], degenerate: bool) -> str | None:
    """The ``ci_flag`` of an interval: :func:`interval_flag`, with a zero width read by its cause
    (``zero_width``: the model's scores are constant; ``constant_resamples``: anything else)."""
    flag = interval_flag(value, ci)
    return "constant_resamples" if flag == "zero_width" and not degenerate else flag


def metric_entry(value: Any, ci: Sequence[Any], method: str | None = None, degenerate: bool = False
                 ) -> dict[str, Any]:
    """``{"value", "ci95"[, "ci_method"]}`` with None for NaN, plus ``ci_flag`` when :func:`flag_of` flags it:
    a zero-width interval is ``zero_width`` only for a ``degenerate`` model (constant scores), else
    ``constant_resamples``."""
    entry = {"value": nan_to_none(value), "ci95": [nan_to_none(b) for b in ci]}
    if method is not None:
        if method not in CI_METHODS:
            raise ValueError(f"unknown ci_method {method!r}; one of {sorted(CI_METHODS)}")
        entry["ci_method"] = method
    flag = flag_of(entry["value"], entry["ci95"], degenerate)
    if flag:
        entry["ci_flag"] = flag
    return entry


# --------------------------------------------------------------------------- records

def metrics_record(report: Mapping[str, Any], model: str, task: str, weights: str,
                   extra: dict | None = None, *, threshold_rule: str | None = None) -> dict[str, Any]:
    """The ``outputs/metrics/<model>.json`` record (schema in the module docstring).

    ``threshold_rule``: explicit argument, else ``report["threshold_rule"]``, else
    ``extra["threshold_rule"]``, else "argmax" (multi-class) / "unspecified" (binary).
    ``n_bootstrap`` / ``bootstrap_seed`` of the report are copied into ``extra``.
    """
    extra = dict(extra or {})
    rule = threshold_rule or report.get("threshold_rule") or extra.pop("threshold_rule", None)
    extra.pop("threshold_rule", None)
    if rule is None:
        rule = "argmax" if len(report["classes"]) > 2 else "unspecified"
    for key in ("n_bootstrap", "bootstrap_seed"):
        if key in report:
            extra.setdefault(key, report[key])
    degenerate = report.get("degenerate")
    record = {"model": str(model), "task": str(task), "weights": str(weights),
              "n_test": int(report["n_test"]), "n_patients": int(report["n_patients"]),
              "threshold": nan_to_none(report["threshold"]), "threshold_rule": str(rule),
              "confusion_matrix": [[int(v) for v in row] for row in report["confusion_matrix"]],
              "classes": [str(c) for c in report["classes"]],
              "metrics": {name: metric_entry(m.get("value"), m.get("ci95", [None, None]), m.get("ci_method"),
                                             degenerate=bool(degenerate))
                          for name, m in report["metrics"].items()},
              "extra": extra}
    if degenerate:
        record["degenerate"] = str(degenerate)
    validate_record(record)
    return record


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first missing key or malformed metric of a record."""
    if not isinstance(record, Mapping):
        raise ValueError("record must be a dict")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise ValueError(f"metrics record lacks required key {key!r}")
    classes = record["classes"]
    if not isinstance(classes, Sequence) or len(classes) < 2:
        raise ValueError("'classes' must list at least two class names")
    k, n = len(classes), record["n_test"]
    if not _is_num(n) or n <= 0 or not _is_num(record["n_patients"]) or record["n_patients"] <= 0:
        raise ValueError("'n_test' and 'n_patients' must be positive integers")
    cm = np.asarray(record["confusion_matrix"])
    if cm.shape != (k, k):
        raise ValueError(f"'confusion_matrix' must be {k}x{k}, got shape {cm.shape}")
    if int(cm.sum()) != int(n):
        raise ValueError(f"'confusion_matrix' sums to {int(cm.sum())}, not n_test={n}")
    t = record["threshold"]
    if k == 2 and not (_is_num(t) and 0.0 <= float(t) <= 1.0):
        raise ValueError(f"binary record needs a finite 'threshold' in [0, 1], got {t!r}")
    if not isinstance(record["threshold_rule"], str) or not record["threshold_rule"]:
        raise ValueError("'threshold_rule' must be a non-empty string")
    metrics = record["metrics"]
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError("'metrics' must be a non-empty dict")
    for name, m in metrics.items():
        if not isinstance(m, Mapping) or "value" not in m or "ci95" not in m:
            raise ValueError(f"metric {name!r} must be {{'value': x, 'ci95': [lo, hi]}}")
        v, ci = m["value"], m["ci95"]
        if v is not None and not _is_num(v):
            raise ValueError(f"metric {name!r} has a non-numeric value {v!r}")
        if not isinstance(ci, Sequence) or isinstance(ci, str) or len(ci) != 2 or \
                any(b is not None and not _is_num(b) for b in ci):
            raise ValueError(f"metric {name!r} has a malformed ci95 {ci!r}")
        if all(b is not None for b in ci) and float(ci[0]) > float(ci[1]) + 1e-12:
            raise ValueError(f"metric {name!r} has ci95 {ci!r} with lo > hi")
        said = flag_of(v, ci, bool(record.get("degenerate")))
        if m.get("ci_flag") != said:
            raise ValueError(f"metric {name!r}: ci_flag {m.get('ci_flag')!r} but its interval says "
                             f"{said!r} (value {v}, ci95 {ci})")
        if "ci_method" in m and m["ci_method"] not in CI_METHODS:
            raise ValueError(f"metric {name!r}: unknown ci_method {m['ci_method']!r}; one of {sorted(CI_METHODS)}")
    if "accuracy" not in metrics:
        raise ValueError("'metrics' lacks 'accuracy'")
    acc = metrics["accuracy"]["value"]
    if acc is not None and abs(float(acc) - np.trace(cm) / n) > 1e-9:
        raise ValueError(f"metric 'accuracy' = {acc} but trace(confusion)/n_test = {np.trace(cm) / n}")
    if "extra" in record and not isinstance(record["extra"], Mapping):
        raise ValueError("'extra' must be a dict")
    if "degenerate" in record and not (isinstance(record["degenerate"], str) and record["degenerate"]):
        raise ValueError("'degenerate' must be a non-empty reason")


def save_metrics(record: Mapping[str, Any], path: str | Path) -> Path:
    """Validate and write ``record`` as JSON (sorted keys, indent 2, NaN -> null)."""
    clean = to_jsonable(record)
    validate_record(clean)
    return write_json(clean, path, allow_nan=False)  # atomic: an interrupted run never leaves half a record


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read and validate a metrics record."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    validate_record(record)
    return record


# --------------------------------------------------------------------------- tables

def fmt(m: Mapping[str, Any] | None, digits: int = 3, flags: set | None = None) -> str:
    """``0.912 [0.871, 0.947]`` from ``{"value", "ci95"}``; ``n/a`` when undefined.

    A flagged interval (``ci_flag``, or what :func:`interval_flag` says) gets its
    ``CI_MARKS`` symbol; ``flags`` collects the flags used, for footnotes.
    """
    if not m or m.get("value") is None or not math.isfinite(float(m["value"])):
        return "n/a"
    v = f"{float(m['value']):.{digits}f}"
    ci = list(m.get("ci95") or [None, None])
    if any(b is None or not math.isfinite(float(b)) for b in ci):
        return v
    flag = m.get("ci_flag") or interval_flag(m["value"], ci)
    if flag and flags is not None:
        flags.add(flag)
    mark = CI_MARKS.get(flag, "*") if flag else ""
    return f"{v} [{float(ci[0]):.{digits}f}, {float(ci[1]):.{digits}f}]{mark}"


def ci_footnotes(flags: set) -> list[str]:
    """One footnote line per interval flag used (symbol, then what it means)."""
    return [f"{CI_MARKS.get(f, '*')} {CI_FLAGS.get(f, f'interval flagged {f!r}')}." for f in sorted(flags)]


def methods_note(columns: Mapping[str, Sequence[Mapping[str, Any] | None]], n_bootstrap: Sequence[Any] = ()) -> str:
    """The line under a table that names how its intervals were made: ``columns`` maps a column label to
    the metric entries shown in it (those with an interval count); labels sharing a method are joined.
    Entries without ``ci_method`` (older records) are said to be of an unrecorded method."""
    def has_interval(e: Mapping[str, Any] | None) -> bool:
        ci = (e or {}).get("ci95") or [None, None]
        return bool(e) and e.get("value") is not None and len(ci) == 2 and None not in ci

    by_method: dict[str, list[str]] = {}
    for label, entries in columns.items():
        for code in dict.fromkeys(e.get("ci_method") for e in entries if has_interval(e)):
            text = CI_METHODS.get(code, "method not recorded (an older record: rerun its notebook)") if code else \
                "method not recorded (an older record: rerun its notebook)"
            by_method.setdefault(text, []).append(label)
    if not by_method:
        return ""
    boots = ", ".join(dict.fromkeys(str(b) for b in n_bootstrap if b is not None))
    parts = [f"{', '.join(labels)}: {text}" for text, labels in by_method.items()]
    return ("Intervals (95%): " + "; ".join(parts)
            + (f" (bootstrap: {boots} resamples)." if boots and any("ootstrap" in t for t in by_method) else "."))


def metrics_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record: model, task, weights, n_test, threshold and every metric
    formatted ``0.912 [0.871, 0.947]`` (``n/a`` where undefined or absent)."""
    names: list[str] = []
    for r in records:
        names += [m for m in r["metrics"] if m not in names]
    rows = []
    for r in records:
        row = {"model": r["model"], "task": r["task"], "weights": r["weights"],
               "n_test": r["n_test"],
               "threshold": None if r.get("threshold") is None else round(float(r["threshold"]), 3)}
        row.update({m: fmt(r["metrics"].get(m)) for m in names})
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "task", "weights", "n_test", "threshold", *names])


def table_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured markdown table of ``df`` (no index, no ``tabulate`` needed)."""
    def cell(x: Any) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return ""
        return str(x).replace("|", "\\|").replace("\n", " ")
    header = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, sep, *body]) + "\n"
