"""Execute the notebooks in order with papermill; the HTML index is ``cxrbook.reporting.index``.

Everything a run needs is checked before anything is written (arguments, ``-p`` names, the
notebooks, the data folder, the kernel, the outputs folder): a wrong one raises :class:`RunRefused`
and the command exits 2 with one line. Then the run takes the outputs folder's lock
(:mod:`cxrbook.workflow.lock`), so a second run into the same folder is refused, not mixed in.
Each notebook executes into a hidden temporary copy renamed into place when it ends, so a full
disk never leaves a truncated executed notebook, and ``run_manifest.json`` always ends as
complete, failed or interrupted, never stuck at running.
"""

from __future__ import annotations

import os
import re
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import OutputDirError, WriteError, as_write_error, check_output_dir
from ..config import KERNEL_NAME, Paths, profile_settings, resolve_data_dir, resolve_output_dir
from ..config import notebooks_dir as workbook_notebooks
from .kernel import quiet_kernel_manager
from .lock import outputs_lock
from .manifest import data_fingerprint, git_commit, machine, package_versions, write_manifest

# run_manifest.json "status": "running" from the start until the run ends, then one of these.
RUN_STATUSES = ("running", "complete", "failed", "interrupted")
# notebook parameters the runner sets itself, and the option that sets each (never -p NAME=...)
RUNNER_PARAMETERS = {"data_dir": "--data-dir", "output_dir": "--output-dir", "profile": "--profile",
                     "seed": "--seed"}
SEED_RANGE = (0, 2**32 - 1)  # what numpy's and Keras' seeding accept
DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|disk full|disk quota exceeded")


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error.

    ``disk_full``: the error was a full disk (the command exits with its write-failure code).
    """

    def __init__(self, message: str, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


class RunRefused(ValueError):
    """Nothing was run or written: an argument or the set-up is wrong; the message says which."""


class RunWriteFailed(RuntimeError):
    """Writing the run's own files failed (disk full, read-only, ...); the message names the file and
    what ``run_manifest.json`` now says."""


def list_notebooks(only: list[str] | None = None, notebooks_dir: Path | None = None) -> list[Path]:
    """Notebooks named ``NN_*.ipynb`` in order, optionally only those whose NN is in ``only``.

    ``notebooks_dir``: default the workbook's ``notebooks/`` (``config.notebooks_dir``).
    """
    folder = notebooks_dir if notebooks_dir is not None else workbook_notebooks()
    nbs = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
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


def check_run_arguments(profile: str, seed: int, extra: dict | None, cell_timeout: int) -> None:
    """RunRefused naming the option for a bad profile, seed or cell timeout, or a ``-p`` the runner owns."""
    owned = sorted(set(extra or {}) & set(RUNNER_PARAMETERS))
    if owned:
        raise RunRefused("; ".join(f"-p {k}=... is set by the runner: use {RUNNER_PARAMETERS[k]} instead"
                                   for k in owned))
    try:
        profile_settings(profile)
    except ValueError as e:
        raise RunRefused(f"--profile: {e}") from None
    lo, hi = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not lo <= seed <= hi:
        raise RunRefused(f"--seed must be a whole number from {lo} to {hi}, got {seed!r}")
    if isinstance(cell_timeout, bool) or not isinstance(cell_timeout, int) or cell_timeout < 1:
        raise RunRefused(f"--cell-timeout must be a whole number of seconds >= 1, got {cell_timeout!r}")


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(profile: str = "smoke", only: list[str] | None = None, data_dir: str | None = None,
        output_dir: str | None = None, seed: int = 42, extra: dict | None = None,
        cell_timeout: int = 1800, kernel_name: str = KERNEL_NAME, html_index: bool = True) -> dict:
    """Execute notebooks in order; return the run manifest (also written to outputs/).

    Parameters reach each notebook's ``parameters`` cell; only names that cell
    declares are passed (others are reported, not silently injected); ``extra`` may not
    set the runner's own (``RUNNER_PARAMETERS``). Raises RunRefused (nothing done) for a
    wrong argument, data folder, kernel or outputs folder, ``lock.OutputsLocked`` when another
    run holds the outputs folder, NotebookFailed, RunWriteFailed (disk full, ...).
    ``run_manifest.json`` says ``"status": "running"`` from the start (rewritten after each
    notebook) and ends as complete, failed or interrupted (Ctrl-C), so a stopped run never
    looks finished. Kernels run quiet (``cxrbook.workflow.kernel``); their own stdout/stderr go to
    ``outputs/logs/<notebook>.kernel.log``, and a failure prints the full traceback.
    """
    check_run_arguments(profile, seed, extra, cell_timeout)
    try:
        notebooks = list_notebooks(only)
        data = resolve_data_dir(data_dir)
        check_kernel(kernel_name)
        outputs, origin = resolve_output_dir(output_dir)
        check_output_dir(outputs, "--output-dir")
    except (ValueError, FileNotFoundError, RuntimeError, OutputDirError) as e:  # nothing written yet
        raise RunRefused(str(e)) from None
    with outputs_lock(outputs):
        return _run_locked(notebooks, profile, data, outputs, origin, seed, extra, cell_timeout, kernel_name,
                           html_index)


def _run_locked(notebooks: list[Path], profile: str, data: Path, outputs: Path, origin: str, seed: int,
                extra: dict | None, cell_timeout: int, kernel_name: str, html_index: bool) -> dict:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    paths = Paths.resolve(data, outputs)
    base_params = {"data_dir": str(paths.data), "output_dir": str(paths.outputs),
                   "profile": profile, "seed": seed, **(extra or {})}
    started = datetime.now(timezone.utc)
    manifest = {
        "started_utc": started.isoformat(timespec="seconds"), "profile": profile, "seed": seed,
        "parameters": base_params, "git": git_commit(), "packages": package_versions(),
        "machine": machine(), "data_dir": str(paths.data),
        "data_sha256": data_fingerprint(paths.data), "notebooks": [], "status": "running",
    }
    manifest_path = paths.outputs / "run_manifest.json"
    problem = write_manifest(manifest, manifest_path, fallback=False)
    if problem:
        raise RunWriteFailed(f"{problem}; nothing was run")
    _say(f"cxrbook run: profile={profile} data={paths.data} outputs={paths.outputs} (from {origin}) "
         f"({len(notebooks)} notebooks)")
    t_total = time.perf_counter()
    for nb in notebooks:
        declared = pm.inspect_notebook(str(nb))
        params = {k: coerce_parameter(v, declared[k].get("default")) for k, v in base_params.items()
                  if k in declared}
        ignored = sorted(set(base_params) - set(declared) - set(RUNNER_PARAMETERS))
        out_nb = paths.notebooks / nb.name
        partial = paths.notebooks / f".{nb.stem}.partial.ipynb"  # renamed to out_nb when the notebook ends
        log = paths.outputs / "logs" / f"{nb.stem}.kernel.log"
        for stale in (log, out_nb, partial):  # this run's copies replace them; none may pass for this run's
            stale.unlink(missing_ok=True)
        t0 = time.perf_counter()
        entry = {"notebook": nb.name, "parameters": params, "kernel_log": str(log)}
        try:
            pm.execute_notebook(str(nb), str(partial), parameters=params, kernel_name=kernel_name,
                                cwd=str(nb.parent), progress_bar=False, log_output=False,
                                execution_timeout=cell_timeout, kernel_manager_class=quiet_kernel_manager(log))
            os.replace(partial, out_nb)
        except PapermillExecutionError as e:
            _keep_if_whole(partial, out_nb)
            full = bool(DISK_FULL_TEXT.search(f"{e.ename}: {e.evalue}"))
            entry.update(status="failed", seconds=round(time.perf_counter() - t0, 1),
                         cell=e.exec_count, error=f"{e.ename}: {e.evalue}")
            manifest["notebooks"].append(entry)
            note = _finish(manifest, paths, t_total, html_index, "failed")
            raise NotebookFailed(
                ("disk full: " if full else "")
                + f"{nb.name} failed in cell [{e.exec_count}] (index {e.cell_index}): {e.ename}: {e.evalue}\n"
                f"{_plain(e.traceback)}\nexecuted copy with the traceback: {out_nb}" + _also(note),
                disk_full=full) from None
        except BaseException as e:  # Ctrl-C, a dead kernel, a timeout, a full disk: the manifest must not look finished
            err = as_write_error(e, out_nb if getattr(e, "filename", None) in (None, str(partial)) else e.filename)
            if isinstance(err, WriteError):
                partial.unlink(missing_ok=True)  # truncated by the failed write
            else:
                _keep_if_whole(partial, out_nb)
            entry.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                         seconds=round(time.perf_counter() - t0, 1), error=f"{type(err).__name__}: {err}")
            manifest["notebooks"].append(entry)
            note = _finish(manifest, paths, t_total, html_index and not isinstance(err, WriteError), entry["status"])
            if isinstance(e, KeyboardInterrupt):
                raise
            if isinstance(err, WriteError):
                raise RunWriteFailed(f"{nb.name}: {err}" + _also(note)) from None
            raise NotebookFailed(f"{nb.name} did not finish: {type(e).__name__}: {e}\n"
                                 f"last lines of the kernel's own output ({log}):\n{_tail(log)}" + _also(note)) from e
        entry.update(status="ok", seconds=round(time.perf_counter() - t0, 1))
        manifest["notebooks"].append(entry)
        problem = write_manifest(manifest, manifest_path, fallback=False)  # still "running"
        if problem:
            raise RunWriteFailed(problem + _also(_finish(manifest, paths, t_total, False, "failed")))
        note = f"  (not declared, not passed: {ignored})" if ignored else ""
        _say(f"  {nb.name:<40} ok  {entry['seconds']:7.1f} s{note}")
    problem = _finish(manifest, paths, t_total, html_index, "complete")
    if problem:
        raise RunWriteFailed(problem)
    _say(f"done in {manifest['total_seconds']:.1f} s; outputs in {paths.outputs}; index: {paths.outputs / 'index.html'}")
    return manifest


def _keep_if_whole(partial: Path, out_nb: Path) -> None:
    """The executed copy of a notebook that stopped, renamed into place if it is a whole notebook; else removed."""
    import nbformat
    try:
        nbformat.read(partial, as_version=4)
    except FileNotFoundError:
        return
    except Exception:  # a half-written file is no record of anything
        partial.unlink(missing_ok=True)
        return
    os.replace(partial, out_nb)


def _also(note: str | None) -> str:
    return f"\n{note}" if note else ""


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


def _finish(manifest: dict, paths: Paths, t_total: float, html_index: bool, status: str) -> str | None:
    """Mark the run ended in its manifest (and write the index); None, or what could not be written.

    Never raises for a full disk: a run that failed writing must still say it failed.
    """
    manifest["status"] = status
    manifest["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["total_seconds"] = round(time.perf_counter() - t_total, 1)
    # ru_maxrss of reaped children (the kernels) in KiB on Linux
    manifest["peak_rss_mib_kernels"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    manifest["peak_rss_mib_runner"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    problem = write_manifest(manifest, paths.outputs / "run_manifest.json")
    if html_index and not problem:  # after a failure or Ctrl-C too: the index shows the manifest's real status
        from ..reporting.index import build_index
        try:
            build_index(paths.outputs, manifest)
        except OSError as e:
            problem = str(as_write_error(e, paths.outputs / "index.html"))
        except Exception as e:  # never hide the run's own outcome behind an index error
            _say(f"index.html not rebuilt: {type(e).__name__}: {e} (python -m cxrbook index retries)")
    return problem


def coerce_parameter(value, declared_default: str | None):
    """``value`` as the notebook's parameter expects it: a string given for a list parameter
    (declared default ``[...]``) is split on commas, so ``-p backbones=DenseNet169,ResNet101``
    and ``-p backbones=DenseNet169`` reach the notebook as lists of names."""
    if isinstance(value, str) and str(declared_default or "").strip().startswith("["):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value
