"""The README's speed table (section ``speed``) from ``make bench``'s ``benchmarks.json``.

One row per benchmark: ours, the reference way, the ratio (each median [min, max]) and
the goal, under a provenance line taken from the benchmark JSON's own metadata (date,
commit, machine, data, repeats). The int8 engine's rows compare it with the fp32 ONNX
engine and carry its accuracy check; the web app's load test has one row per database. :mod:`cxrbook.reporting.tables` renders it beside the results
tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from ..evaluation.records import table_markdown
from .table_text import cell, commit_text, load_json, number, paragraphs


def fmt_stats(st: Any, unit: str = "") -> str:
    """``607 img/s [418, 609]`` from a benchmark stats object; n/a when absent."""
    if not isinstance(st, Mapping) or number(st.get("median")) is None:
        return "n/a"
    unit = unit or str(st.get("unit", ""))
    scale, unit = (1000.0, "ms") if unit == "s" and st["median"] < 0.2 else (1.0, unit)
    digits = {"img/s": 0, "images/s": 1, "ms": 0, "MiB": 0, "x": 2}.get(unit, 2 if st["median"] * scale < 1 else 1)
    v = [f"{number(st.get(k)) * scale:.{digits}f}" if number(st.get(k)) is not None else "n/a"
         for k in ("median", "min", "max")]
    sep = "" if unit == "x" else " "
    return f"{v[0]}{sep}{unit} [{v[1]}, {v[2]}]"


def _goals(*stats: Any) -> str:
    """``>= 2x: not met; >= 6 images/s: met`` from stats objects that carry ``goal`` / ``met``."""
    out = []
    for st in stats:
        if isinstance(st, Mapping) and st.get("goal"):
            met = st.get("met")
            out.append(f"{st['goal']}: {'met' if met else 'not met' if met is not None else 'n/a'}")
    return "; ".join(out)


def _with_gflops(bf: Mapping[str, Any], side: str) -> str:
    """``15.4 images/s [14.6, 15.7], 473 GFLOP/s`` (the GFLOP/s median only where the bench recorded it)."""
    text = fmt_stats(bf.get(f"{side}_images_per_second"))
    gflops = bf.get(f"{side}_gflops")
    if isinstance(gflops, Mapping) and number(gflops.get("median")) is not None:
        text += f", {gflops['median']:.0f} GFLOP/s"
    return text


def _accuracy_text(a: Any) -> str:
    """``test AUC 0.9712 -> 0.9709, decisions 171/172 agree: met`` from an int8 accuracy check."""
    if not isinstance(a, Mapping) or number(a.get("auc_fp32")) is None:
        return "accuracy: n/a"
    n = int(a.get("n_images", 0))
    agree = n - int(a.get("n_decisions_differing", 0))
    return (f"test AUC {a['auc_fp32']:.4f} -> {a['auc_int8']:.4f} (bound +-{a.get('auc_tolerance', 'n/a')}), "
            f"decisions {agree}/{n} agree (bound {a.get('min_agreement', 0):.0%}): "
            f"{'met' if a.get('met') else 'NOT met'}")


def _int8_rows(q: Mapping[str, Any], add: Callable, rows: list) -> None:
    """The int8 engine against fp32 ONNX Runtime: the features row, then one row per ``predict`` model."""
    if not q:
        return
    f = q.get("features") or {}
    add(f"int8 vs fp32 ONNX Runtime: frozen {f.get('backbone', 'n/a')} features, {f.get('n_images', 'n/a')} images "
        f"at {f.get('image_size', 'n/a')} px", "int8", fmt_stats(f.get("int8_images_per_second")),
        fmt_stats(f.get("fp32_images_per_second")), fmt_stats(f.get("ratio"), "x"))
    v = q.get("vnni") or {}
    vnni = (f"; {v['vnni_percent_of_onnxruntime_samples']:.0f}% of ONNX Runtime's samples in VNNI dot-product loops"
            if v.get("status") == "ok" else "")
    rows[-1]["goal"] = "; ".join(x for x in (_goals(f.get("ratio")), "head on its features: "
                                             + _accuracy_text(f.get("accuracy")) if f.get("accuracy") else "")
                                 if x) + vnni
    for name, m in (q.get("models") or {}).items():
        label = (f"int8 vs fp32: `predict` {name} ({m.get('image_size', 'n/a')} px), scoring "
                 f"{(q.get('settings') or {}).get('n_scoring_images', 'n/a')} images / warm per file")
        if "ratio" not in m:
            add(label, "int8", str(m.get("status", "n/a")))
        else:
            add(label, "int8", f"{fmt_stats(m.get('scoring_int8_images_per_second'))} / "
                               f"{fmt_stats(m.get('warm_per_image_int8_seconds'))}",
                f"{fmt_stats(m.get('scoring_fp32_images_per_second'))} / "
                f"{fmt_stats(m.get('warm_per_image_fp32_seconds'))}",
                f"{fmt_stats(m.get('ratio'), 'x')} / {fmt_stats(m.get('ratio_warm_per_image'), 'x')}")
        rows[-1]["goal"] = "; ".join(x for x in (_goals(m.get("ratio")), _accuracy_text(m.get("accuracy")),
                                                 "DEGENERATE model (constant validation scores)"
                                                 if m.get("degenerate") else "") if x)


def _app_rows(a: Mapping[str, Any], add: Callable, rows: list) -> None:
    """The web app's load test: one row per database (requests/s, latency p50/p95, errors, lost)."""
    if not a:
        return
    s = a.get("settings") or {}
    backends = a.get("backends") or {"sqlite": {}, "postgresql": {}}
    for db, r in backends.items():
        label = (f"web app, {s.get('users', 'n/a')} users x {s.get('uploads_per_user', 'n/a')} uploads, "
                 f"{s.get('server_workers', 'n/a')} workers, {db}")
        if r.get("status") != "ok":
            add(label, "app_load", f"{r.get('status', 'n/a')}: {r.get('reason', '')}".rstrip(": "))
            rows[-1]["goal"] = ""
            continue
        lat = r.get("latency_seconds") or {}
        store = r.get("storage") or {}
        p50, p95 = (number(lat.get(k)) for k in ("p50", "p95"))
        add(label, "app_load",
            f"{cell(r.get('requests_per_second'), 1)} requests/s; latency p50 "
            f"{'n/a' if p50 is None else f'{p50 * 1000:.0f} ms'}, p95 {'n/a' if p95 is None else f'{p95 * 1000:.0f} ms'};"
            f" {r.get('errors', 'n/a')} errors, {store.get('lost', 'n/a')} lost, {store.get('duplicated', 'n/a')} "
            f"duplicated of {r.get('accepted', 'n/a')} accepted")
        ok = bool(r.get("goal_met"))
        rows[-1]["goal"] = f"{a.get('goal', 'p95 <= 1 s, zero errors, zero lost')}: {'met' if ok else 'not met'}"


def speed_block(outputs: Path) -> str:
    """One row per benchmark: ours, the reference way, the ratio, each median [min, max]."""
    b = load_json(outputs / "benchmarks.json")
    rows = []

    def add(name: str, key: str, ours: str, theirs: str = "", ratio: str = "") -> None:
        d = b.get(key) or {}
        status = d.get("status", "not_run")
        if status != "ok":
            ours, theirs, ratio = f"{status}: {d.get('error', d.get('reason', ''))}".rstrip(": "), "", ""
        goal = d.get("goal")
        goal = "; ".join(f"{k}: {v}" for k, v in goal.items()) if isinstance(goal, Mapping) else goal
        rows.append({"benchmark": name, "ours": ours, "reference way": theirs, "ratio": ratio,
                     "goal": "" if goal is None else str(goal)})

    ip, fb, wb, pr, bf = (b.get(k) or {} for k in ("input_pipeline", "frozen_backbone", "workbook", "prediction",
                                                     "backbone_features"))
    s = ip.get("settings") or {}
    pairs = s.get("repeats")
    pairs = f", {pairs} pairs" if pairs and pairs != (b.get("settings") or {}).get("repeats") else ""
    add(f"input pipeline, {s.get('n_images', 'n/a')} images at {s.get('image_size', 'n/a')} px, one epoch{pairs}",
        "input_pipeline", fmt_stats(ip.get("ours_images_per_second")),
        fmt_stats(ip.get("theirs_images_per_second")), fmt_stats(ip.get("ratio"), "x"))
    rows[-1]["goal"] = rows[-1]["goal"] or _goals(ip.get("ratio"))
    s = fb.get("settings") or {}
    passes = (fb.get("backbone_image_passes") or {})
    passes = passes.get("pass_ratio", passes.get("ratio_bound"))  # ratio_bound: the name before issue 20
    cost = fb.get("passes_times_cost_ratio")
    add(f"frozen {s.get('backbone', 'n/a')} head, {s.get('epochs', 'n/a')} epochs, {s.get('image_size', 'n/a')} px,"
        f" {s.get('n_train', 'n/a')} train + {s.get('n_val', 'n/a')} val images", "frozen_backbone",
        fmt_stats(fb.get("ours_seconds")), fmt_stats(fb.get("theirs_seconds")),
        f"{fmt_stats(fb.get('ratio'), 'x')} ({cell(passes, 0)}x the base passes"
        + (f"; passes x cost per pass: {fmt_stats(cost, 'x')}" if isinstance(cost, Mapping) else "")
        + f"); features cached: {fmt_stats(fb.get('ratio_features_cached'), 'x')}")
    rows[-1]["goal"] = rows[-1]["goal"] or _goals(fb.get("ratio"))
    if bf:
        s = bf.get("settings") or {}
        add(f"frozen {s.get('backbone', 'n/a')} features, {s.get('n_images', 'n/a')} images at "
            f"{s.get('image_size', 'n/a')} px: ONNX Runtime vs Keras", "backbone_features",
            _with_gflops(bf, "ours"), _with_gflops(bf, "theirs"), fmt_stats(bf.get("ratio"), "x"))
        rows[-1]["goal"] = _goals(bf.get("ratio"), bf.get("ours_images_per_second"))
    models = pr.get("models") or {}
    if models:
        for name, m in models.items():
            add(f"`predict` {name} ({m.get('image_size', 'n/a')} px, {m.get('engine', 'n/a')}): new process to "
                "first answer / warm per image, scores only", "prediction",
                f"{fmt_stats(m.get('cold_start_first_answer_seconds'))} / "
                f"{fmt_stats(m.get('warm_scores_only_seconds_per_image'))}")
            rows[-1]["goal"] = _goals(m.get("cold_start_first_answer_seconds"),
                                      m.get("warm_scores_only_seconds_per_image"))
        g = pr.get("gradcam") or {}
        if g:
            add(f"`predict` {g.get('model', 'n/a')} with Grad-CAM overlay: first answer / exit (Keras loaded) / "
                "warm per image", "prediction",
                f"{fmt_stats(g.get('cold_start_first_answer_seconds'))} / {fmt_stats(g.get('cold_start_seconds'))}"
                f" / {fmt_stats(g.get('warm_seconds_per_image'))}")
            rows[-1]["goal"] = ""
    else:
        add("`predict`, one image, new process to exit", "prediction", fmt_stats(pr.get("cold_start_seconds")))
        add("`predict`, warm, per image (scores only / with Grad-CAM)", "prediction",
            f"{fmt_stats(pr.get('warm_scores_only_seconds_per_image'))} / {fmt_stats(pr.get('warm_seconds_per_image'))}")
    _int8_rows(b.get("int8") or {}, add, rows)
    _app_rows(b.get("app_load") or {}, add, rows)
    nbs = ", ".join(f"{n[:2]} {fmt_stats(st)}" for n, st in (wb.get("notebooks") or {}).items())
    profile = (wb.get("settings") or {}).get("profile")
    add(f"whole workbook{f' ({profile} profile)' if profile else ''}", "workbook",
        f"{fmt_stats(wb.get('total_seconds'))} total ({nbs}); peak kernel memory "
        f"{fmt_stats(wb.get('peak_rss_mib_kernels'))}")
    rows[-1]["goal"] = _goals(wb.get("total_seconds"))
    df = pd.DataFrame(rows)
    if not (df["goal"] != "").any():
        df = df.drop(columns="goal")
    git, mach, st = b.get("git"), b.get("machine") or {}, b.get("settings") or {}
    prov = (f"*Generated by `python -m cxrbook tables` from `benchmarks.json`: {b.get('date_utc', 'unknown')[:10]}, "
            f"commit {commit_text(git)}, "
            f"{mach.get('cores', 'unknown')} cores ({mach.get('cpu', 'unknown')}), "
            f"{st.get('data_source', 'unknown')} data, {st.get('repeats', 'unknown')} repeats "
            "(median [min, max]; ratios per interleaved pair, > 1: ours faster).*")
    return paragraphs(table_markdown(df), prov)
