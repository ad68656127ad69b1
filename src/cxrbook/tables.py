"""README tables generated from ``outputs/``: ``python -m cxrbook tables``.

Every results table of the README is rendered here from the files the notebooks
and benchmarks write, never typed by hand. Sections (README markers
``<!-- tables:NAME:start -->`` ... ``<!-- tables:NAME:end -->``):

* ``comparison``: notebook 06, ``comparison.csv`` + ``metrics/<model>.json``;
* ``paired``: notebook 06, ``paired_auc_tests.csv``;
* ``claims``: notebook 06, ``published_claims.csv``;
* ``audit``: notebook 07, ``audit.json``;
* ``external``: notebook 08, ``external.json`` ("not run" when absent);
* ``speed``: ``make bench``, ``benchmarks.json``.

Under every table a provenance line names the run (``run_manifest.json``:
commit, date, profile, seed, parameters) or, for speed, the benchmark JSON's
own metadata. A field the files lack is written "unknown".
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from .metrics import table_markdown

SECTIONS = ("comparison", "paired", "claims", "audit", "external", "speed")
FLAGS = {"excludes_point": ("†", "the bootstrap interval excludes the point estimate (skewed or "
                                 "degenerate resamples): read the point estimate with caution."),
         "zero_width": ("‡", "zero-width interval: every resample gave the same value "
                             "(constant scores or too few cases of a class).")}
REGENERATE = "python -m cxrbook tables --write-readme README.md"
_MARK = re.compile(r"<!-- tables:(?P<name>[a-z_]+):(?P<end>start|end) -->")


@dataclass
class Block:
    """One generated section: its markdown, or why it could not be generated."""

    name: str
    text: str
    missing: str | None = None   # e.g. "outputs/audit.json is missing: run notebook 07"


# --------------------------------------------------------------------------- formatting

def _num(x: Any) -> float | None:
    """A finite float, or None for null / NaN / non-numbers."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_interval(m: Mapping[str, Any] | None, digits: int = 3, flags: set | None = None) -> str:
    """``0.912 [0.871, 0.947]`` (+ a footnote symbol when ``ci_flag`` is set); ``n/a`` if undefined.

    Same format as ``metrics._fmt`` (private there; duplicated until ``metrics`` exposes
    a public formatter). ``flags`` collects the flags used, for the footnotes.
    """
    if not m or _num(m.get("value")) is None:
        return "n/a"
    text = f"{_num(m['value']):.{digits}f}"
    lo, hi = (_num(b) for b in (m.get("ci95") or [None, None]))
    if lo is not None and hi is not None:
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    flag = m.get("ci_flag")
    if flag:
        if flags is not None:
            flags.add(flag)
        text += FLAGS.get(flag, ("*", ""))[0]
    return text


def _footnotes(flags: set) -> list[str]:
    return [f"{FLAGS.get(f, ('*', ''))[0]} {FLAGS[f][1] if f in FLAGS else f'interval flagged {f!r}.'}"
            for f in sorted(flags)]


def _paragraphs(*parts: str) -> str:
    """Markdown paragraphs (tables, lists, lines) separated by one blank line; empty parts dropped."""
    return "\n\n".join(p.strip("\n") for p in parts if p and p.strip())


def _cell(x: Any, digits: int = 3) -> str:
    """A number to ``digits`` decimals; n/a for null / NaN / non-numbers."""
    v = _num(x)
    return "n/a" if v is None else f"{v:.{digits}f}"


def _commit(git: Mapping | None) -> str:
    """`abc1234` (short hash, in backticks) and whether the tree was dirty; "unknown" without a commit."""
    git = git or {}
    short = f"`{str(git['commit'])[:7]}`" if git.get("commit") else "unknown"
    return short + (" (uncommitted changes)" if git.get("dirty") else "")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- provenance

def provenance(outputs: Path, notebook: str, extra: Mapping[str, Any] | None = None) -> str:
    """One italic line naming the run that wrote a section (from ``run_manifest.json``).

    ``notebook``: e.g. "06"; if the manifest's run did not execute it, the line says
    so (that manifest then does not describe this table). ``extra``: the section
    file's own metadata (profile, seed, ...), which wins over the manifest's.
    """
    path = outputs / "run_manifest.json"
    man = _load_json(path) if path.is_file() else {}
    params = {k: v for k, v in (man.get("parameters") or {}).items() if k not in ("data_dir", "output_dir")}
    info = {"profile": man.get("profile", "unknown"), "seed": man.get("seed", "unknown"),
            "weights": "unknown", "fine_tune_epochs": "unknown", **params, **(extra or {})}
    ran = [str(e.get("notebook", ""))[:2] for e in man.get("notebooks", []) if e.get("status") == "ok"]
    where = "" if notebook in ran else (
        f" Notebook {notebook} is not among this manifest's notebooks ({', '.join(ran) or 'none'}), "
        f"so its run is unknown." if man else " No `run_manifest.json`: run unknown.")
    date = str(man.get("started_utc", "unknown"))[:10]
    parts = ", ".join(f"{k} {v}" for k, v in info.items())
    return f"*Generated by `python -m cxrbook tables` from notebook {notebook}'s outputs; run commit " \
           f"{_commit(man.get('git'))}, {date}, {parts}.{where}*"


# --------------------------------------------------------------------------- notebook 06

def _records(outputs: Path) -> list[dict]:
    """Metrics records of the models listed in ``comparison.csv``, in its order."""
    names = pd.read_csv(outputs / "comparison.csv")["model"].astype(str).tolist()
    records = []
    for n in names:
        p = outputs / "metrics" / f"{n}.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p} is listed in comparison.csv but missing: rerun notebook 06")
        rec = _load_json(p)
        lacking = [k for k in ("model", "weights", "threshold", "metrics", "n_test", "n_patients") if k not in rec]
        if lacking:
            raise ValueError(f"{p} lacks {lacking}")
        records.append(rec)
    return records


def _display(rec: Mapping[str, Any]) -> str:
    return str((rec.get("extra") or {}).get("display_name") or rec["model"])


def comparison_block(outputs: Path) -> str:
    """Test-set line, one row per model of notebook 06, interval footnotes, provenance."""
    records = _records(outputs)
    flags: set = set()
    rows, sets = [], []
    for r in records:
        m = r["metrics"]
        auc = m.get("roc_auc", m.get("macro_auc"))
        rows.append({"model": _display(r), "weights": r["weights"], "threshold (val)": _cell(r["threshold"]),
                     **{k: fmt_interval(m.get(key), flags=flags) for k, key in
                        (("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"))},
                     "ROC AUC": fmt_interval(auc, flags=flags), "Brier": fmt_interval(m.get("brier"), flags=flags)})
        counts = [sum(row) for row in r.get("confusion_matrix", [])]
        per_class = ", ".join(f"{n} {c}" for c, n in zip(r.get("classes", []), counts))
        line = f"{r['n_test']} images of {r['n_patients']} patients" + (f" ({per_class})" if per_class else "")
        if line not in sets:
            sets.append(line)
    boots = sorted({str((r.get("extra") or {}).get("n_bootstrap", "unknown")) for r in records})
    return _paragraphs(f"**Test set:** {'; '.join(sets)}." if len(sets) == 1 else
                       f"**Test sets differ between models:** {'; '.join(sets)}.", table_markdown(pd.DataFrame(rows)),
                       f"Intervals: 95% patient-bootstrap percentile intervals ({', '.join(boots)} resamples); "
                       "the threshold was chosen on validation.", *_footnotes(flags), provenance(outputs, "06"))


def paired_block(outputs: Path) -> str:
    """Paired AUC differences against the reference model, from ``paired_auc_tests.csv``."""
    df = pd.read_csv(outputs / "paired_auc_tests.csv")
    names = {}
    if (outputs / "comparison.csv").is_file():
        names = {r["model"]: _display(r) for r in _records(outputs)}
    rows = []
    for r in df.to_dict(orient="records"):
        ci = r.get("ci95")
        ci = ast.literal_eval(ci) if isinstance(ci, str) else [None, None]
        ci = [_num(b) for b in ci]
        diff = {"value": _num(r.get("diff")), "ci95": ci}
        covers = "n/a" if None in ci else ("yes" if ci[0] <= 0 <= ci[1] else "no")
        rows.append({"model": names.get(r["model"], r["model"]), "against": names.get(r["reference"], r["reference"]),
                     "AUC model": _cell(r.get("auc_model")), "AUC against": _cell(r.get("auc_reference")),
                     "difference [95% CI]": fmt_interval(diff), "interval covers 0": covers,
                     "p": _cell(r.get("p_value"))})
    text = table_markdown(pd.DataFrame(rows, columns=["model", "against", "AUC model", "AUC against",
                                                      "difference [95% CI]", "interval covers 0", "p"]))
    return _paragraphs("Paired patient bootstrap on the same test images: an interval that covers 0 means this "
                       "test set cannot tell the two models apart.", text, provenance(outputs, "06"))


def claims_block(outputs: Path) -> str:
    """``published_claims.csv`` as written by notebook 06 (missing cells as n/a)."""
    df = pd.read_csv(outputs / "published_claims.csv", dtype=str, keep_default_na=False)
    df = df.replace({"": "n/a"})
    return _paragraphs(table_markdown(df), provenance(outputs, "06"))


# --------------------------------------------------------------------------- notebook 07

def _run_metric(section: Mapping, run: str, metric: str) -> tuple[dict | None, str]:
    r = (section.get("runs") or {}).get(run)
    if not r:
        return None, "n/a"
    n = f"{r.get('n_test', 'n/a')} ({r.get('n_test_patients', 'n/a')} patients)"
    return (r.get("metrics") or {}).get(metric), n


def audit_block(outputs: Path) -> str:
    """Headline findings of the trust audit and its generated sentences (``audit.json``)."""
    a = _load_json(outputs / "audit.json")
    normals, lungs = a.get("normals") or {}, a.get("lungs_hidden") or {}
    probe, cal = a.get("source_probe") or {}, a.get("calibration") or {}
    auc = lungs.get("auc_metric") or ("macro_auc" if len(normals.get("classes") or [0, 1]) > 2 else "roc_auc")
    flags: set = set()
    rows = []

    def add(check: str, m: dict | None, n: str) -> None:
        rows.append({"check": check, "value [95% CI]": fmt_interval(m, flags=flags), "test images": n})

    add("AUC, all normals (pediatric included)", *_run_metric(normals, "all", auc))
    add("AUC, adult normals only", *_run_metric(normals, "adult", auc))
    add("AUC difference, adult - all", (normals.get("difference") or {}).get(auc), "independent bootstraps")
    if "all_on_adult_test" in (normals.get("runs") or {}):
        add("specificity of the all-normals model on adult test images",
            *_run_metric(normals, "all_on_adult_test", "specificity"))
    n_probe = f"{probe.get('n_test', 'n/a')} ({probe.get('n_test_patients', 'n/a')} patients)"
    add("source probe accuracy (which collection)", probe.get("accuracy"), n_probe)
    add(f"always the majority source ({probe.get('majority_source', 'n/a')})",
        {"value": probe.get("chance_majority_share")}, n_probe)
    add("AUC, lungs hidden (centre blanked)", *_run_metric(lungs, "center_blanked", auc))
    add("AUC, only the centre kept", *_run_metric(lungs, "center_only", auc))
    ece = {n: _num((c.get("ece") or {}).get("value")) for n, c in (cal.get("models") or {}).items()}
    ece = {n: v for n, v in ece.items() if v is not None}
    span = "n/a" if not ece else (f"{min(ece.values()):.3f} ({min(ece, key=ece.get)}) to "
                                  f"{max(ece.values()):.3f} ({max(ece, key=ece.get)})")
    rows.append({"check": f"calibration: ECE range across {len(ece)} models", "value [95% CI]": span,
                 "test images": "n/a"})
    sentences = a.get("sentences") or {}
    order = ["normals", "source_probe", "lungs_hidden", "groups", "calibration"]
    order += sorted(set(sentences) - set(order))
    meta = {k: a.get(k, "unknown") for k in ("task", "profile", "seed", "arch", "image_size", "epochs",
                                              "n_bootstrap")}
    said = [f"- **{k.replace('_', ' ')}:** {sentences[k]}" for k in order if k in sentences]
    return _paragraphs(table_markdown(pd.DataFrame(rows)), *_footnotes(flags), "\n".join(said),
                       provenance(outputs, "07", meta))


# --------------------------------------------------------------------------- notebook 08

def external_block(outputs: Path) -> str:
    """Internal vs external sensitivity / specificity and external AUC per model (``external.json``)."""
    path = outputs / "external.json"
    if not path.is_file():
        return "External test: not run (no `outputs/external.json`; notebook 08 writes it)."
    e = _load_json(path)
    flags: set = set()
    rows = []
    for m in e.get("models", []):
        i, x = m.get("internal") or {}, m.get("external") or {}
        rows.append({"model": m.get("display_name") or m.get("model"), "weights": m.get("weights", "n/a"),
                     "normals": m.get("normals", "n/a"), "threshold (val)": _cell(m.get("threshold")),
                     "sensitivity internal": fmt_interval(i.get("sensitivity"), flags=flags),
                     "sensitivity external": fmt_interval(x.get("sensitivity"), flags=flags),
                     "specificity internal": fmt_interval(i.get("specificity"), flags=flags),
                     "specificity external": fmt_interval(x.get("specificity"), flags=flags),
                     "ROC AUC external (union)": fmt_interval(x.get("roc_auc"), flags=flags)})
    cols = ", ".join(f"{name}: {c.get('n_images', 'n/a')} images of {c.get('n_patients', 'n/a')} patients, "
                     f"all {c.get('label', 'n/a')} (measures {c.get('measures', 'n/a')})"
                     for name, c in (e.get("collections") or {}).items())
    meta = {k: e.get(k, "unknown") for k in ("task", "profile", "seed", "n_bootstrap")}
    return _paragraphs(f"**External collections:** {cols or 'n/a'}.", table_markdown(pd.DataFrame(rows)),
                       *_footnotes(flags), str(e.get("paragraph") or "n/a"), provenance(outputs, "08", meta))


# --------------------------------------------------------------------------- benchmarks

def fmt_stats(st: Any, unit: str = "") -> str:
    """``607 img/s [418, 609]`` from a benchmark stats object; n/a when absent."""
    if not isinstance(st, Mapping) or _num(st.get("median")) is None:
        return "n/a"
    unit = unit or str(st.get("unit", ""))
    scale, unit = (1000.0, "ms") if unit == "s" and st["median"] < 0.2 else (1.0, unit)
    digits = {"img/s": 0, "ms": 0, "MiB": 0, "x": 2}.get(unit, 2 if st["median"] * scale < 1 else 1)
    v = [f"{_num(st.get(k)) * scale:.{digits}f}" if _num(st.get(k)) is not None else "n/a"
         for k in ("median", "min", "max")]
    sep = "" if unit == "x" else " "
    return f"{v[0]}{sep}{unit} [{v[1]}, {v[2]}]"


def speed_block(outputs: Path) -> str:
    """One row per benchmark: ours, the reference way, the ratio, each median [min, max]."""
    b = _load_json(outputs / "benchmarks.json")
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

    ip, fb, wb, pr = (b.get(k) or {} for k in ("input_pipeline", "frozen_backbone", "workbook", "prediction"))
    s = ip.get("settings") or {}
    add(f"input pipeline, {s.get('n_images', 'n/a')} images at {s.get('image_size', 'n/a')} px, one epoch",
        "input_pipeline", fmt_stats(ip.get("ours_images_per_second")),
        fmt_stats(ip.get("theirs_images_per_second")), fmt_stats(ip.get("ratio"), "x"))
    s = fb.get("settings") or {}
    bound = (fb.get("backbone_image_passes") or {}).get("ratio_bound")
    add(f"frozen {s.get('backbone', 'n/a')} head, {s.get('epochs', 'n/a')} epochs, {s.get('image_size', 'n/a')} px,"
        f" {s.get('n_train', 'n/a')} train + {s.get('n_val', 'n/a')} val images", "frozen_backbone",
        fmt_stats(fb.get("ours_seconds")), fmt_stats(fb.get("theirs_seconds")),
        f"{fmt_stats(fb.get('ratio'), 'x')} (bound {_cell(bound, 0)}x); features cached: "
        f"{fmt_stats(fb.get('ratio_features_cached'), 'x')}")
    add("`predict`, one image, new process to exit", "prediction", fmt_stats(pr.get("cold_start_seconds")))
    add("`predict`, warm, per image (scores only / with Grad-CAM)", "prediction",
        f"{fmt_stats(pr.get('warm_scores_only_seconds_per_image'))} / {fmt_stats(pr.get('warm_seconds_per_image'))}")
    nbs = ", ".join(f"{n[:2]} {fmt_stats(st)}" for n, st in (wb.get("notebooks") or {}).items())
    profile = (wb.get("settings") or {}).get("profile")
    add(f"whole workbook{f' ({profile} profile)' if profile else ''}", "workbook",
        f"{fmt_stats(wb.get('total_seconds'))} total ({nbs}); peak kernel memory "
        f"{fmt_stats(wb.get('peak_rss_mib_kernels'))}")
    df = pd.DataFrame(rows)
    if not (df["goal"] != "").any():
        df = df.drop(columns="goal")
    git, mach, st = b.get("git"), b.get("machine") or {}, b.get("settings") or {}
    prov = (f"*Generated by `python -m cxrbook tables` from `benchmarks.json`: {b.get('date_utc', 'unknown')[:10]}, "
            f"commit {_commit(git)}, "
            f"{mach.get('cores', 'unknown')} cores ({mach.get('cpu', 'unknown')}), "
            f"{st.get('data_source', 'unknown')} data, {st.get('repeats', 'unknown')} repeats "
            "(median [min, max]; ratios per interleaved pair, > 1: ours faster).*")
    return _paragraphs(table_markdown(df), prov)


# --------------------------------------------------------------------------- sections and the README

_RUN = "run notebook {0} (`python -m cxrbook run --only {0}`)"
RENDERERS: dict[str, tuple[Callable[[Path], str], tuple[str, ...], str]] = {
    "comparison": (comparison_block, ("comparison.csv",), _RUN.format("06")),
    "paired": (paired_block, ("paired_auc_tests.csv",), _RUN.format("06")),
    "claims": (claims_block, ("published_claims.csv",), _RUN.format("06")),
    "audit": (audit_block, ("audit.json",), _RUN.format("07")),
    "external": (external_block, (), "run notebook 08"),
    "speed": (speed_block, ("benchmarks.json",), "run `make bench`"),
}


def render(outputs: str | Path) -> dict[str, Block]:
    """Every section generated from ``outputs``; a section whose input is missing says what to run."""
    outputs = Path(outputs)
    blocks = {}
    for name, (fn, needs, how) in RENDERERS.items():
        lacking = [f for f in needs if not (outputs / f).is_file()]
        why = f"`{'`, `'.join(lacking)}` missing in {outputs}: {how}" if lacking else None
        if not why:
            try:
                blocks[name] = Block(name, fn(outputs).rstrip("\n"))
                continue
            except (OSError, ValueError) as e:  # a listed file missing, malformed JSON: named, not a crash
                why = f"{e}"
        blocks[name] = Block(name, f"*Not generated: {why}.*", missing=why)
    return blocks


def markdown(blocks: Mapping[str, Block]) -> str:
    """All sections, each under a ``### name`` heading (what the command prints)."""
    return "\n\n".join(f"### {b.name}\n\n{b.text}" for b in blocks.values()) + "\n"


def readme_blocks(text: str, source: str = "README") -> dict[str, tuple[int, int]]:
    """``{name: (start, end)}`` character spans between each marker pair; errors name the bad marker."""
    spans, open_ = {}, {}
    for m in _MARK.finditer(text):
        name = m["name"]
        if m["end"] == "start":
            if name in open_ or name in spans:
                raise ValueError(f"{source}: marker 'tables:{name}:start' appears twice")
            open_[name] = m.end()
        else:
            if name not in open_:
                raise ValueError(f"{source}: 'tables:{name}:end' without a start marker before it")
            spans[name] = (open_.pop(name), m.start())
    if open_:
        raise ValueError(f"{source}: start marker(s) without an end: {sorted(open_)}")
    unknown = sorted(set(spans) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown table section(s) {unknown}; known: {SECTIONS}")
    return spans


def fill(text: str, blocks: Mapping[str, Block]) -> tuple[str, list[str]]:
    """README text with each marker pair's content replaced; and one note per section not replaced."""
    spans = readme_blocks(text)
    notes = [f"{n}: no markers in README, not written" for n in blocks if n not in spans]
    for name, (a, z) in sorted(spans.items(), key=lambda kv: -kv[1][0]):
        b = blocks[name]
        if b.missing:
            notes.append(f"{name}: left unchanged ({b.missing})")
            continue
        text = text[:a] + "\n" + b.text + "\n" + text[z:]
    return text, notes


def check(text: str, blocks: Mapping[str, Block]) -> list[str]:
    """Problems: README blocks that differ from the outputs, or that cannot be checked."""
    spans = readme_blocks(text)
    if not spans:
        return ["README holds no tables markers"]
    problems = []
    for name, (a, z) in spans.items():
        if blocks[name].missing:
            problems.append(f"{name}: cannot check ({blocks[name].missing})")
        elif text[a:z] != "\n" + blocks[name].text + "\n":
            problems.append(f"{name}: README block differs from what the outputs generate")
    return problems


def main_tables(args: argparse.Namespace) -> int:
    """CLI entry for ``python -m cxrbook tables``."""
    from .config import DEFAULT_OUTPUT_DIR
    outputs = Path(args.outputs) if args.outputs else DEFAULT_OUTPUT_DIR
    blocks = render(outputs)
    if not (args.write_readme or args.check):
        sys.stdout.write(markdown(blocks))
        return 0
    status = 0
    if args.write_readme:
        path = Path(args.write_readme)
        new, notes = fill(path.read_text(encoding="utf-8"), blocks)
        path.write_text(new, encoding="utf-8")
        print(f"wrote {path}" + "".join(f"\n  {n}" for n in notes))
    if args.check:
        problems = check(Path(args.check).read_text(encoding="utf-8"), blocks)
        print(f"{args.check}: " + ("every table matches the outputs" if not problems else
                                   "OUT OF DATE\n  " + "\n  ".join(problems) + f"\n  fix: {REGENERATE}"))
        status = 1 if problems else 0
    return status

