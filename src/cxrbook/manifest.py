"""Provenance of a run: git commit, package versions, a hash of the data, timings."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

from .config import PROJECT_ROOT, SOURCES

PACKAGES = ["cxrbook", "tensorflow-cpu", "tensorflow", "keras", "torch", "torchvision",
            "torchxrayvision", "numpy", "pandas", "scikit-learn", "scikit-image", "matplotlib",
            "seaborn", "papermill", "pillow"]


def git_commit() -> dict:
    """Commit hash and whether the tree had uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}


def provenance() -> dict:
    """What every output file records about the code that made it: commit, dirty flag, UTC time."""
    from datetime import datetime, timezone
    return {**git_commit(), "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def data_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 over the metadata files' bytes and every image's relative path and size.

    Cheap (no image is read) and changes when a file is added, removed or resized.
    """
    data_dir = Path(data_dir)
    h = hashlib.sha256()
    for folder in sorted(SOURCES.values()):
        root = data_dir / folder
        meta = root / "metadata.csv"
        if meta.is_file():
            h.update(meta.read_bytes())
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "metadata.csv":
                h.update(f"{p.relative_to(data_dir)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def machine() -> dict:
    """Cores and CPU model of this machine (benchmarks and manifests state them)."""
    import os
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


def write_json(obj: dict, path: str | Path) -> Path:
    """Write JSON with sorted keys and a trailing newline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path
