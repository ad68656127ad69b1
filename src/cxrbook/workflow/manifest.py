"""The run manifest: git commit, package versions, a hash of the data, timings, status."""

from __future__ import annotations

import hashlib
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
