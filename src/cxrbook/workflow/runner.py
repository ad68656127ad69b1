"""Execute the notebooks in order with papermill and render an HTML index."""

from __future__ import annotations

import html
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import write_text
from ..config import KERNEL_NAME, NOTEBOOKS_DIR, Paths, profile_settings
from .kernel import quiet_kernel_manager
from .manifest import data_fingerprint, git_commit, machine, package_versions, write_json

# run_manifest.json "status": "running" from the start until the run ends, then one of these.
RUN_STATUSES = ("running", "complete", "failed", "interrupted")


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


def list_notebooks(only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Notebooks named ``NN_*.ipynb`` in order, optionally only those whose NN is in ``only``."""
    nbs = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.strip().zfill(2) for o in only if o.strip()}
        unknown = wanted - {p.name[:2] for p in nbs}
        if unknown:
            raise ValueError(f"--only names no notebook: {sorted(unknown)}; have {[p.name for p in nbs]}")
        nbs = [p for p in nbs if p.name[:2] in wanted]
    return nbs


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    """Fail clearly when the fixed kernel is not registered (instead of using another one)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise RuntimeError(
            f"Jupyter kernel {kernel_name!r} is not registered. Run `make venv` (it runs "
            f"`python -m cxrbook kernel-install`).") from None


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(profile: str = "smoke", only: list[str] | None = None, data_dir: str | None = None,
        output_dir: str | None = None, seed: int = 42, extra: dict | None = None,
        cell_timeout: int = 1800, kernel_name: str = KERNEL_NAME, html_index: bool = True) -> dict:
    """Execute notebooks in order; return the run manifest (also written to outputs/).

    Parameters reach each notebook's ``parameters`` cell; only names that cell
    declares are passed (others are reported, not silently injected).
    ``run_manifest.json`` says ``"status": "running"`` from the start (rewritten after each
    notebook) and ends as complete, failed or interrupted (Ctrl-C), so a stopped run never
    looks finished. Kernels run quiet (``cxrbook.workflow.kernel``); their own stdout/stderr go to
    ``outputs/logs/<notebook>.kernel.log``, and a failure prints the full traceback.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    profile_settings(profile)  # validate early
    paths = Paths.resolve(data_dir, output_dir)
    check_kernel(kernel_name)
    notebooks = list_notebooks(only)
    base_params = {"data_dir": str(paths.data), "output_dir": str(paths.outputs),
                   "profile": profile, "seed": seed, **(extra or {})}
    started = datetime.now(timezone.utc)
    manifest = {
        "started_utc": started.isoformat(timespec="seconds"), "profile": profile, "seed": seed,
        "parameters": base_params, "git": git_commit(), "packages": package_versions(),
        "machine": machine(), "data_dir": str(paths.data),
        "data_sha256": data_fingerprint(paths.data), "notebooks": [], "status": "running",
    }
    write_json(manifest, paths.outputs / "run_manifest.json")
    _say(f"cxrbook run: profile={profile} data={paths.data} outputs={paths.outputs} "
         f"({len(notebooks)} notebooks)")
    t_total = time.perf_counter()
    for nb in notebooks:
        declared = pm.inspect_notebook(str(nb))
        params = {k: coerce_parameter(v, declared[k].get("default")) for k, v in base_params.items()
                  if k in declared}
        ignored = sorted(set(base_params) - set(declared) - {"data_dir", "output_dir", "profile", "seed"})
        out_nb = paths.notebooks / nb.name
        log = paths.outputs / "logs" / f"{nb.stem}.kernel.log"
        log.unlink(missing_ok=True)
        t0 = time.perf_counter()
        entry = {"notebook": nb.name, "parameters": params, "kernel_log": str(log)}
        try:
            pm.execute_notebook(str(nb), str(out_nb), parameters=params, kernel_name=kernel_name,
                                cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=False,
                                execution_timeout=cell_timeout, kernel_manager_class=quiet_kernel_manager(log))
        except PapermillExecutionError as e:
            entry.update(status="failed", seconds=round(time.perf_counter() - t0, 1),
                         cell=e.exec_count, error=f"{e.ename}: {e.evalue}")
            manifest["notebooks"].append(entry)
            _finish(manifest, paths, t_total, html_index, "failed")
            raise NotebookFailed(
                f"{nb.name} failed in cell [{e.exec_count}] (index {e.cell_index}): {e.ename}: {e.evalue}\n"
                f"{_plain(e.traceback)}\nexecuted copy with the traceback: {out_nb}") from None
        except BaseException as e:  # Ctrl-C, a dead kernel, a timeout: the manifest must not look finished
            entry.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                         seconds=round(time.perf_counter() - t0, 1), error=f"{type(e).__name__}: {e}")
            manifest["notebooks"].append(entry)
            _finish(manifest, paths, t_total, False, entry["status"])
            if isinstance(e, KeyboardInterrupt):
                raise
            raise NotebookFailed(f"{nb.name} did not finish: {type(e).__name__}: {e}\n"
                                 f"last lines of the kernel's own output ({log}):\n{_tail(log)}") from e
        entry.update(status="ok", seconds=round(time.perf_counter() - t0, 1))
        manifest["notebooks"].append(entry)
        write_json(manifest, paths.outputs / "run_manifest.json")  # still "running"
        note = f"  (not declared, not passed: {ignored})" if ignored else ""
        _say(f"  {nb.name:<40} ok  {entry['seconds']:7.1f} s{note}")
    _finish(manifest, paths, t_total, html_index, "complete")
    _say(f"done in {manifest['total_seconds']:.1f} s; index: {paths.outputs / 'index.html'}")
    return manifest


def _plain(lines: list[str] | str) -> str:
    """A kernel traceback (list of ANSI-coloured strings) as plain text."""
    import re
    text = "\n".join(lines) if isinstance(lines, list) else str(lines)
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no kernel output)"


def _finish(manifest: dict, paths: Paths, t_total: float, html_index: bool, status: str) -> None:
    manifest["status"] = status
    manifest["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["total_seconds"] = round(time.perf_counter() - t_total, 1)
    # ru_maxrss of reaped children (the kernels) in KiB on Linux
    manifest["peak_rss_mib_kernels"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    manifest["peak_rss_mib_runner"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_json(manifest, paths.outputs / "run_manifest.json")
    if html_index:
        render_index(paths, manifest)


def render_index(paths: Paths, manifest: dict) -> Path:
    """Write outputs/index.html linking each executed notebook (as HTML) and every figure."""
    import nbformat
    from nbconvert import HTMLExporter

    html_dir = paths.outputs / "html"
    html_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    rows = []
    for entry in manifest["notebooks"]:
        nb_path = paths.notebooks / entry["notebook"]
        link = ""
        if nb_path.is_file():
            body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
            target = html_dir / (nb_path.stem + ".html")
            write_text(target, body)
            link = f'<a href="html/{target.name}">{html.escape(nb_path.name)}</a>'
        status = entry["status"] + (f" — {html.escape(entry.get('error', ''))}" if entry["status"] != "ok" else "")
        rows.append(f"<tr><td>{link or html.escape(entry['notebook'])}</td><td>{status}</td>"
                    f"<td>{entry['seconds']:.1f}</td></tr>")
    figs = sorted(paths.figures.glob("*.png"))
    fig_html = "\n".join(
        f'<figure><a href="figures/{f.name}"><img src="figures/{f.name}" width="360"></a>'
        f"<figcaption>{html.escape(f.name)}</figcaption></figure>" for f in figs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cxrbook run</title>
<style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:.5em}}
td,th{{padding:.2em .8em;text-align:left}}</style></head><body>
<h1>cxrbook workbook run</h1>
<p>Research and teaching tool, not a diagnostic device. Run {html.escape(manifest.get('status', '?'))}. Profile <b>{html.escape(manifest['profile'])}</b>,
seed {manifest['seed']}, commit {html.escape(str(manifest['git'].get('commit')))}, data sha256
{manifest['data_sha256'][:12]}…, total {manifest['total_seconds']:.1f} s.</p>
<table><tr><th>notebook</th><th>status</th><th>seconds</th></tr>{''.join(rows)}</table>
<h2>Figures ({len(figs)})</h2>{fig_html}
<p><a href="run_manifest.json">run_manifest.json</a></p></body></html>"""
    index = paths.outputs / "index.html"
    write_text(index, page)
    return index


def main_run(args) -> int:
    """CLI entry for `python -m cxrbook run`."""
    only = args.only.split(",") if args.only else None
    extra = {}
    for kv in args.param or []:
        k, _, v = kv.partition("=")
        extra[k] = _literal(v)
    try:
        run(profile=args.profile, only=only, data_dir=args.data_dir, output_dir=args.output_dir,
            seed=args.seed, extra=extra, cell_timeout=args.cell_timeout)
    except NotebookFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("INTERRUPTED: run_manifest.json records the run as interrupted", file=sys.stderr)
        return 130
    return 0


def coerce_parameter(value, declared_default: str | None):
    """``value`` as the notebook's parameter expects it: a string given for a list parameter
    (declared default ``[...]``) is split on commas, so ``-p backbones=DenseNet169,ResNet101``
    and ``-p backbones=DenseNet169`` reach the notebook as lists of names."""
    if isinstance(value, str) and str(declared_default or "").strip().startswith("["):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _literal(text: str):
    import ast
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
