"""Benchmark 3: wall time of every notebook and of the whole ``run --profile smoke``, plus peak memory.

The run happens in a subprocess (``python -m cxrbook run --profile smoke -p
weights=none --output-dir <temp>``), so its kernels' peak RSS
(``peak_rss_mib_kernels`` = ru_maxrss of the reaped kernels) is not mixed up
with this process or with other benchmarks' subprocesses. The figures are read
from the run's ``run_manifest.json``; ``--manifest PATH`` reads an existing
manifest instead of running. Every run starts from an empty output folder, so
the image and feature caches are cold: this is the first-run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .common import say, stopwatch, summary, with_goal

GOAL_SECONDS = 300.0  # issue 10: the whole smoke workbook within 5 minutes here

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def total_with_goal(total: dict, profile: str | None, names: list[str], failed: bool) -> dict:
    """The total's stats with the goal; met only for a complete, successful smoke run within it."""
    complete = profile == "smoke" and not failed and len(names) == len(list(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
    return with_goal(total, f"<= {GOAL_SECONDS:g} s (smoke profile, every notebook)",
                     complete and total["median"] <= GOAL_SECONDS)


def _from_manifests(manifests: list[dict], outer_seconds: list[float] | None, settings: dict) -> dict:
    names = [nb["notebook"] for nb in manifests[0]["notebooks"]]
    failed = [(nb["notebook"], nb.get("error", "")) for m in manifests for nb in m["notebooks"]
              if nb.get("status") != "ok"]
    per_nb = {}
    for name in names:
        secs = [nb["seconds"] for m in manifests for nb in m["notebooks"] if nb["notebook"] == name]
        per_nb[name] = summary(secs, "s", 1)
    out = {
        "status": "failed" if failed else "ok",
        "settings": {**settings, "profile": manifests[0].get("profile"),
                     "parameters": {k: v for k, v in manifests[0].get("parameters", {}).items()
                                    if k not in ("data_dir", "output_dir")},
                     "manifest_started_utc": [m.get("started_utc") for m in manifests],
                     "manifest_machine": manifests[0].get("machine")},
        "notebooks": per_nb,
        "total_seconds": total_with_goal(summary([m["total_seconds"] for m in manifests], "s", 1),
                                          manifests[0].get("profile"), names, bool(failed)),
        "peak_rss_mib_kernels": summary([m["peak_rss_mib_kernels"] for m in manifests], "MiB", 1),
    }
    if outer_seconds is not None:
        out["process_seconds"] = summary(outer_seconds, "s", 1)  # incl. interpreter start, HTML index
    if failed:
        out["error"] = "; ".join(f"{n}: {e}" for n, e in failed)
    return out


def from_manifest(path: Path) -> dict:
    """The ``workbook`` JSON section from an existing run manifest (no run)."""
    m = json.loads(Path(path).read_text())
    return _from_manifests([m], None, {"source": f"manifest {path}", "repeats": 1,
                                       "data_dir": m.get("data_dir")})


def run(data_dir: Path, workdir: Path, repeats: int, seed: int, data_source: str,
        notebooks: str | None = None, timeout_s: int = 3600) -> dict:
    """Run the smoke profile ``repeats`` times into fresh folders; returns the ``workbook`` JSON section.

    ``notebooks``: comma-separated numbers passed to ``--only`` (None: every notebook).
    """
    manifests, outer = [], []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for r in range(repeats):
        out_dir = workdir / f"workbook_{r}"
        cmd = [sys.executable, "-m", "cxrbook", "run", "--profile", "smoke", "--data-dir", str(data_dir),
               "--output-dir", str(out_dir), "--seed", str(seed), "-p", "weights=none"]
        if notebooks:
            cmd += ["--only", notebooks]
        say(f"[workbook] run {r + 1}/{repeats}: smoke profile on {data_source} data ({data_dir})")
        with stopwatch() as t:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        manifest_path = out_dir / "run_manifest.json"
        if not manifest_path.is_file():
            tail = (proc.stdout + proc.stderr)[-2000:]
            return {"status": "failed", "error": f"exit {proc.returncode}, no run_manifest.json: {tail}"}
        m = json.loads(manifest_path.read_text())
        manifests.append(m)
        outer.append(t["seconds"])
        say(f"  total {m['total_seconds']:.1f} s, peak kernel RSS {m['peak_rss_mib_kernels']:.0f} MiB"
            + ("" if proc.returncode == 0 else f" (exit {proc.returncode})"))
        if proc.returncode != 0:
            break
    return _from_manifests(manifests, outer, {"source": f"run on {data_source} data", "repeats": len(manifests),
                                              "fresh_output_dir": True, "only": notebooks or "all"})
