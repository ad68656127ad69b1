"""Where an output came from: the code that wrote it, and the data folder and profile of each shared table.

Every record (metrics, ``audit.json``, ``external.json``) carries :func:`code_stamp` (commit,
dirty flag, time), so a table still names its code after a later run overwrote the manifest.

``tidy.csv``, ``clean.csv``, ``cleaning_log.csv`` and ``splits.csv`` are written with
:func:`save_table`, which leaves ``<name>.provenance.json`` beside each (data folder, profile,
time). ``config.Paths.require`` calls :func:`check` before a notebook reads one of them and
refuses a table written from another data folder or profile, or one without a record (an
interrupted write, an older version, a hand-made file).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from .atomic import write_csv, write_json

def git_commit(where: str | os.PathLike | None = None) -> dict:
    """Commit hash of the code running now and whether its tree had uncommitted changes (None outside git).

    ``where``: a folder inside the checkout (default: the package's own, not the caller's folder).
    "Dirty" counts untracked files too (a new module not yet added runs but is in no commit);
    ignored ones (``outputs/``) do not count.
    """
    here = Path(where) if where is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def code_stamp() -> dict:
    """What every output file records about the code that made it: commit, dirty flag, UTC time."""
    return {**git_commit(), "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


TRACKED = ("tidy.csv", "clean.csv", "cleaning_log.csv", "splits.csv")


class ProvenanceMismatch(RuntimeError):
    """A table was written from another data folder or profile than the one this notebook runs on."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """``outputs/clean.csv`` -> ``outputs/clean.provenance.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".provenance.json")


def save_table(df, path: str | os.PathLike, data_dir: str | os.PathLike, profile: str) -> Path:
    """Write ``df`` as CSV atomically, then its provenance record (also atomically).

    The old record is removed first, so a run interrupted between the two writes leaves a
    table without a record (refused by :func:`check`), never a new table vouched for by an old record.
    """
    path = Path(path)
    side = sidecar_path(path)
    side.unlink(missing_ok=True)
    write_csv(df, path)
    write_json({"file": path.name, "data_dir": str(data_dir), "profile": profile, "rows": int(len(df)),
                "written_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}, side)
    return path


def check(path: str | os.PathLike, data_dir: str | os.PathLike, profile: str, notebook: str) -> None:
    """Raise ProvenanceMismatch naming ``path``, where it came from and what is asked, when they differ.

    Files with a record are always checked; the tracked tables (``TRACKED``) must have one.
    An empty ``profile`` (on either side) is not compared.
    """
    path, side = Path(path), sidecar_path(path)
    rerun = (f"rerun notebook {notebook} (and the ones after it) on this data folder and profile, e.g. "
             f"python -m cxrbook run --only {notebook} --data-dir {data_dir}"
             + (f" --profile {profile}" if profile else ""))
    if not side.is_file():
        if path.name in TRACKED:
            raise ProvenanceMismatch(f"{path} has no provenance record ({side.name} is missing: an interrupted "
                                     f"write, an older cxrbook or a hand-made file), so it may come from another "
                                     f"data folder than {data_dir}: {rerun}")
        return
    try:
        rec = json.loads(side.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ProvenanceMismatch(f"{side} (provenance of {path}) is not valid JSON ({e}): {rerun}") from None
    wrote_data, wrote_profile = rec.get("data_dir"), rec.get("profile") or ""
    if wrote_data != str(data_dir) or (profile and wrote_profile and wrote_profile != profile):
        raise ProvenanceMismatch(
            f"{path} was written from data folder {wrote_data} (profile {wrote_profile or '?'}), but this "
            f"notebook runs on data folder {data_dir} (profile {profile or '?'}): refusing to mix them; {rerun}")
