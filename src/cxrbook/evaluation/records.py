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
                   "ci_flag": str}    # only when flagged: "excludes_point" | "zero_width"
      },
      "extra": {...}         # optional free dict: image_size, profile, normals, seed,
                             # n_bootstrap, bootstrap_seed, split sizes, ...
    }

Invariants checked by :func:`validate_record`: all keys above except ``extra``
present; ``confusion_matrix`` is len(classes) x len(classes) and sums to
``n_test``; accuracy equals trace/n_test; a binary record has a finite threshold
in [0, 1]; every metric has ``value`` and a two-element ``ci95`` with
``lo <= hi``; a ``ci_flag`` matches what :func:`interval_flag` says of the interval.

Intervals are the bootstrap percentiles as they are: never widened to include
the point estimate. An interval that excludes its point estimate (a skewed,
discrete bootstrap distribution) or has zero width (a degenerate one, e.g. a
model whose scores are constant) is flagged with ``ci_flag``, not hidden.
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

REQUIRED_KEYS = ("model", "task", "weights", "n_test", "n_patients", "threshold",
                 "threshold_rule", "confusion_matrix", "classes", "metrics")


CI_FLAGS = {"excludes_point": "the bootstrap interval excludes its point estimate (skewed, discrete resamples): "
                              "read the point estimate with caution",
            "zero_width": "zero-width interval: every resample gave the same value (constant scores, "
                          "or too few cases of a class)"}
CI_MARKS = {"excludes_point": "†", "zero_width": "‡"}


def interval_flag(value: float | None, ci: Sequence[float | None]) -> str | None:
    """``"zero_width"`` / ``"excludes_point"`` when a bootstrap interval is suspect, else None.

    A zero-width interval says every resample gave the same number (a degenerate
    model or metric); one that excludes its point estimate comes from a skewed,
    discrete bootstrap distribution. Both are reported, never repaired.
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


def metric_entry(value: Any, ci: Sequence[Any]) -> dict[str, Any]:
    """``{"value", "ci95"}`` with None for NaN, plus ``ci_flag`` when :func:`interval_flag` flags it."""
    entry = {"value": nan_to_none(value), "ci95": [nan_to_none(b) for b in ci]}
    flag = interval_flag(entry["value"], entry["ci95"])
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
    record = {"model": str(model), "task": str(task), "weights": str(weights),
              "n_test": int(report["n_test"]), "n_patients": int(report["n_patients"]),
              "threshold": nan_to_none(report["threshold"]), "threshold_rule": str(rule),
              "confusion_matrix": [[int(v) for v in row] for row in report["confusion_matrix"]],
              "classes": [str(c) for c in report["classes"]],
              "metrics": {name: metric_entry(m.get("value"), m.get("ci95", [None, None]))
                          for name, m in report["metrics"].items()},
              "extra": extra}
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
        if m.get("ci_flag") != interval_flag(v, ci):
            raise ValueError(f"metric {name!r}: ci_flag {m.get('ci_flag')!r} but its interval says "
                             f"{interval_flag(v, ci)!r} (value {v}, ci95 {ci})")
    if "accuracy" not in metrics:
        raise ValueError("'metrics' lacks 'accuracy'")
    acc = metrics["accuracy"]["value"]
    if acc is not None and abs(float(acc) - np.trace(cm) / n) > 1e-9:
        raise ValueError(f"metric 'accuracy' = {acc} but trace(confusion)/n_test = {np.trace(cm) / n}")
    if "extra" in record and not isinstance(record["extra"], Mapping):
        raise ValueError("'extra' must be a dict")


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
