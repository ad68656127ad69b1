"""The run manifest: git commit, package versions, a hash of the data, timings, status."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path

from .. import atomic
from ..config import SOURCES
from ..provenance import git_commit

PACKAGES = ["cxrbook", "tensorflow-cpu", "tensorflow", "keras", "torch", "torchvision",
            "torchxrayvision", "numpy", "pandas", "scikit-learn", "scikit-image", "matplotlib",
            "seaborn", "papermill", "pillow"]


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
    """Write JSON with sorted keys and a trailing newline, atomically (non-JSON values as str)."""
    return atomic.write_json(obj, path, default=str)


def write_manifest(manifest: dict, path: str | Path, fallback: bool = True) -> str | None:
    """Write the run manifest; None when written, else one line saying what happened.

    The atomic write needs room for a second copy. On a full disk, with ``fallback``, the file is
    overwritten in place instead (its blocks are already allocated), compact, or shortened to the
    run's status and each notebook's status when even that is longer than the old file, so a run
    that ended never keeps saying "running".
    """
    path = Path(path)
    try:
        write_json(manifest, path)
        return None
    except OSError as e:
        first = str(atomic.as_write_error(e, path))
    if not fallback:
        return first
    try:
        size = path.stat().st_size
        body = json.dumps(manifest, default=str, sort_keys=True, separators=(",", ":")).encode()
        if len(body) > size:
            short = {k: manifest.get(k) for k in ("status", "started_utc", "finished_utc", "profile", "seed")}
            short["notebooks"] = [{k: n.get(k) for k in ("notebook", "status", "error")}
                                  for n in manifest.get("notebooks", [])]
            short["note"] = "shortened: written in place on a full disk"
            body = json.dumps(short, default=str, sort_keys=True, separators=(",", ":")).encode()
        if len(body) > size:
            return f"{first}; run_manifest.json could not be updated and may still say running"
        with open(path, "r+b") as f:
            f.write(body)
            f.truncate()
        return f"{first}; run_manifest.json was overwritten in place instead (status {manifest.get('status')})"
    except OSError as e:
        return f"{first}; run_manifest.json could not be updated either ({atomic.failure_reason(e)})"
