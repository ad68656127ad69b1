"""``outputs/index.html``: one page over what ``outputs/`` holds now (``python -m cxrbook index``).

Rebuilt from the files alone, so it works after ``python -m cxrbook run`` (the runner calls
:func:`build_index` when a run ends: complete, failed or interrupted) and after work in JupyterLab.

- **Status** from ``run_manifest.json`` as it is: "complete" only for a complete run; a failed or
  interrupted run says so and names the notebook. Executed-notebook pages are linked only when the
  run wrote them (file time not before the run's start).
- **Generated tables and paragraphs** at the top: the README's tables and sentences
  (:func:`cxrbook.reporting.tables.render`), each with the line saying which run wrote it.
- **Figures** grouped by notebook, at their own size (capped at the page width). A figure is shown
  only if the latest execution of its notebook wrote it: every notebook's Setup records when it
  started (:func:`record_start`, ``outputs/logs/<NN>.started.json``); a figure older than that start
  is left over from an earlier execution (another task, a renamed figure) and is listed by name as
  stale, not shown. Without a start record, the run's start decides.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from ..atomic import write_json, write_text

STATUS_TEXT = {"complete": "Run complete", "failed": "Run FAILED", "interrupted": "Run INTERRUPTED",
               "running": "Run still running, or stopped without recording its end (status 'running')"}
# Generated sections shown at the top, conclusions first (names of ``tables.SECTIONS``).
SECTION_ORDER = ("audit", "external", "comparison", "claims", "paired", "speed")
SECTION_TITLES = {"audit": "Trust audit (notebook 07)", "external": "External validation (notebook 08)",
                  "comparison": "Model comparison (notebook 06)", "claims": "Published claims beside ours (06)",
                  "paired": "Paired AUC tests (06)", "speed": "Speed (make bench)"}
MTIME_SLACK_S = 0.01  # notebook start records are stored to the microsecond; file times can be a little coarser


# --------------------------------------------------------------------------- when each notebook last started

def start_record(outputs: str | os.PathLike, notebook: str) -> Path:
    """``outputs/logs/<NN>.started.json``: when notebook ``NN`` last started (its Setup cell)."""
    return Path(outputs) / "logs" / f"{str(notebook).zfill(2)}.started.json"


def record_start(outputs: str | os.PathLike, notebook: str) -> Path:
    """Record that notebook ``notebook`` ("07") starts now; its figures are those written after this."""
    now = datetime.now(timezone.utc)
    return write_json({"notebook": str(notebook).zfill(2), "started_utc": now.isoformat(),
                       "started_unix": now.timestamp(), "pid": os.getpid()}, start_record(outputs, notebook))


def notebook_starts(outputs: str | os.PathLike) -> dict[str, float]:
    """``{"07": unix time}`` of every recorded notebook start (unreadable records are skipped)."""
    out = {}
    for p in sorted((Path(outputs) / "logs").glob("[0-9][0-9].started.json")):
        try:
            out[p.name[:2]] = float(json.loads(p.read_text())["started_unix"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _unix(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except (TypeError, ValueError):
        return None


def _when(t: float | None) -> str:
    return "unknown" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------- which figures are current

@dataclass
class Figures:
    """Figures of ``outputs/figures/``: ``current[NN]`` written by notebook NN's latest execution (by name),
    ``stale`` left over from earlier ones (path, why)."""

    current: dict[str, list[Path]] = field(default_factory=dict)
    stale: list[tuple[Path, str]] = field(default_factory=list)


def classify_figures(figures_dir: str | os.PathLike, starts: Mapping[str, float],
                     run_start: float | None) -> Figures:
    """Split the PNGs of ``figures_dir`` into current and stale (see the module docstring)."""
    out = Figures()
    for f in sorted(Path(figures_dir).glob("*.png")):
        nb = f.name[:2] if re.match(r"\d\d_", f.name) else "other"
        start, basis = (starts[nb] - MTIME_SLACK_S, f"notebook {nb}'s latest start") if nb in starts else (
            (run_start, "the run's start") if run_start is not None else (None, "no record"))
        mtime = f.stat().st_mtime
        if start is not None and mtime < start:
            out.stale.append((f, f"written {_when(mtime)}, before {basis} ({_when(start)})"))
        else:
            out.current.setdefault(nb, []).append(f)
    return out


# --------------------------------------------------------------------------- the page

def read_manifest(outputs: str | os.PathLike) -> dict | None:
    """``run_manifest.json`` as a dict, or None when missing or unreadable."""
    try:
        data = json.loads((Path(outputs) / "run_manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status_line(manifest: dict | None) -> str:
    """What the page says about the run, from the manifest as it is."""
    if manifest is None:
        return ("No workbook run is recorded here (no readable run_manifest.json): this page shows what outputs/ "
                "holds, e.g. after working in JupyterLab.")
    status = str(manifest.get("status", "unknown"))
    text = STATUS_TEXT.get(status, f"Run status {status!r}")
    bad = [n for n in manifest.get("notebooks") or [] if n.get("status") not in ("ok", None)]
    if bad and status in ("failed", "interrupted"):
        n = bad[-1]
        text += f" in {n.get('notebook')}" + (f" (cell {n['cell']})" if n.get("cell") is not None else "") + \
            (f": {n.get('error')}" if n.get("error") else "")
    return text + "."


def written_by_run(path: Path, run_start: float | None, notebook_start: float | None = None) -> bool:
    """Whether the run that started at ``run_start`` (the manifest's, whole seconds, rounded down) wrote
    ``path``; with ``notebook_start`` (its notebook's start record) that notebook must have started in it too."""
    if not path.is_file():
        return False
    if run_start is None:
        return True
    if notebook_start is not None and notebook_start < run_start:
        return False  # the notebook's latest start predates the run: it never got to its Setup
    return path.stat().st_mtime >= run_start


def _notebook_rows(manifest: dict | None, outputs: Path, run_start: float | None, html_pages: bool,
                   starts: Mapping[str, float]) -> str:
    if manifest is None:
        return ""
    rows = []
    for entry in manifest.get("notebooks") or []:
        name = str(entry.get("notebook", "?"))
        executed = outputs / "notebooks" / name
        link = html.escape(name)
        fresh = written_by_run(executed, run_start, starts.get(name[:2]))
        if fresh and html_pages:
            page = _notebook_html(executed, outputs / "html")
            if page is not None:
                link = f'<a href="html/{html.escape(page.name)}">{html.escape(name)}</a>'
        status = html.escape(str(entry.get("status", "?")))
        if entry.get("status") != "ok" and entry.get("error"):
            status += f" — {html.escape(str(entry['error']))}"
        seconds = entry.get("seconds")
        rows.append(f"<tr><td>{link}</td><td>{status}</td>"
                    f"<td>{'' if seconds is None else f'{float(seconds):.1f}'}</td></tr>")
    return ("<table><tr><th>notebook (executed copy)</th><th>status</th><th>seconds</th></tr>"
            + "".join(rows) + "</table>")


def _notebook_html(executed: Path, html_dir: Path) -> Path | None:
    import nbformat
    from nbconvert import HTMLExporter
    try:
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    except Exception:  # a notebook cut off mid-write by an interrupt: no page, still an index
        return None
    target = html_dir / f"{executed.stem}.html"
    write_text(target, body)
    return target


def _sections(outputs: Path) -> str:
    from nbconvert.filters.markdown import markdown2html

    from .tables import render
    blocks = render(outputs)
    parts, missing = [], []
    for name in SECTION_ORDER:
        b = blocks.get(name)
        if b is None:
            continue
        if b.missing:
            missing.append(f"{SECTION_TITLES[name]}: {html.escape(b.missing)}")
            continue
        parts.append(f"<section><h3>{html.escape(SECTION_TITLES[name])}</h3>{markdown2html(b.text)}</section>")
    if missing:
        parts.append("<p class=note>Not generated: " + "; ".join(missing) + ".</p>")
    return "\n".join(parts)


def _notebook_titles() -> dict[str, str]:
    from ..config import WorkbookNotFoundError, notebooks_dir
    try:
        folder = notebooks_dir()
    except WorkbookNotFoundError:  # outside a checkout: groups are named by number only
        return {}
    return {p.name[:2]: p.stem[3:].replace("_", " ") for p in folder.glob("[0-9][0-9]_*.ipynb")}


def _figures_html(figs: Figures, manifest: dict | None, starts: Mapping[str, float]) -> str:
    titles = _notebook_titles()
    in_run = {str(n.get("notebook", ""))[:2] for n in (manifest or {}).get("notebooks") or []}
    parts = []
    for nb in sorted(figs.current):
        when = (f"last executed {_when(starts[nb])}" if nb in starts else "no record of its last execution")
        run = "in this run" if nb in in_run else "not in the recorded run"
        head = f"{nb} · {titles.get(nb, 'other figures')}" if nb != "other" else "other figures"
        items = "\n".join(
            f'<figure><a href="figures/{html.escape(f.name)}"><img src="figures/{html.escape(f.name)}" '
            f'alt="{html.escape(f.stem)}" loading="lazy"></a><figcaption>{html.escape(f.name)}</figcaption></figure>'
            for f in figs.current[nb])
        parts.append(f"<h3>{html.escape(head)} <small>({len(figs.current[nb])}; {run}; {when})</small></h3>{items}")
    if figs.stale:
        rows = "".join(f"<li>{html.escape(p.name)}: {html.escape(why)}</li>" for p, why in figs.stale)
        parts.append(f"<details><summary>{len(figs.stale)} stale figure(s) in figures/ not shown: left over from "
                     f"earlier executions of their notebook</summary><ul>{rows}</ul></details>")
    return "\n".join(parts) or "<p>No figures in outputs/figures/.</p>"


def build_index(outputs: str | os.PathLike, manifest: dict | None = None, html_pages: bool = True) -> Path:
    """Write ``outputs/index.html`` from what ``outputs`` holds (``manifest``: the run's, else read from the
    folder). ``html_pages``: also convert this run's executed notebooks to ``outputs/html/``."""
    outputs = Path(outputs)
    manifest = manifest if manifest is not None else read_manifest(outputs)
    run_start = _unix((manifest or {}).get("started_utc"))
    starts = notebook_starts(outputs)
    figs = classify_figures(outputs / "figures", starts, run_start)
    meta = ""
    if manifest is not None:
        git = manifest.get("git") or {}
        total = manifest.get("total_seconds")
        meta = (f"Profile <b>{html.escape(str(manifest.get('profile', '?')))}</b>, seed "
                f"{html.escape(str(manifest.get('seed', '?')))}, started {html.escape(str(manifest.get('started_utc')))}"
                f", commit {html.escape(str(git.get('commit')))}{' (dirty)' if git.get('dirty') else ''}, data sha256 "
                f"{html.escape(str(manifest.get('data_sha256', ''))[:12])}…"
                + (f", total {float(total):.1f} s" if total is not None else "")
                + f". Parameters: <code>{html.escape(json.dumps(manifest.get('parameters') or {}, sort_keys=True))}"
                  "</code>. <a href=\"run_manifest.json\">run_manifest.json</a>")
    status = str((manifest or {}).get("status", "none"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cxrbook outputs</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}figure{{display:inline-block;vertical-align:top;
margin:.5em;max-width:100%}}figure img{{max-width:100%;height:auto;border:1px solid #ddd}}
td,th{{padding:.2em .8em;text-align:left;vertical-align:top}}table{{border-collapse:collapse}}
section table td,section table th{{border-bottom:1px solid #eee;font-size:.9em}}.status-complete{{color:#060}}
.status-failed,.status-interrupted,.status-running{{color:#b00000}}.note{{color:#555;font-size:.9em}}</style></head>
<body><h1>cxrbook workbook outputs</h1>
<p><b>Research and teaching tool, not a diagnostic device.</b></p>
<p class="status-{html.escape(status)}"><b>{html.escape(status_line(manifest))}</b> {meta}</p>
{_notebook_rows(manifest, outputs, run_start, html_pages, starts)}
<h2>Results (generated from outputs/)</h2>
{_sections(outputs)}
<h2>Figures, by notebook</h2>
{_figures_html(figs, manifest, starts)}
<p class=note>Rebuild this page after working in JupyterLab: <code>python -m cxrbook index</code>.</p>
</body></html>"""
    index = outputs / "index.html"
    write_text(index, page)
    return index


def main_index(args: argparse.Namespace) -> int:
    """CLI entry for ``python -m cxrbook index``."""
    from ..config import resolve_output_dir
    outputs, origin = resolve_output_dir(args.outputs, "--outputs")
    if not outputs.is_dir():
        print(f"outputs folder {outputs} (from {origin}) does not exist: run the notebooks first", flush=True)
        return 2
    print(build_index(outputs))
    return 0
