"""One run at a time per outputs folder: a lock file ``<outputs>/.cxrbook-run.lock``.

Two ``run``s writing one folder would each overwrite the other's tables, models and manifest, and
both would say they finished. The lock is an advisory ``flock`` on that file, which the kernel
releases when its holder ends however it ends (Ctrl-C, ``kill -9``, a crash), so a lock can never
outlive its run. The file itself records who holds it (pid, host, start time, command) for the
refusal message; a record left by a run that died is taken over with a note saying so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".cxrbook-run.lock"


class OutputsLocked(RuntimeError):
    """Another run holds the outputs folder; ``holder`` is its record (pid, host, started_utc, command)."""

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = path, holder
        super().__init__(
            f"another run is writing to {path.parent}: pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started_utc', '?')} "
            f"({holder.get('command', '?')}); wait for it to end or choose another --output-dir "
            f"(lock file {path})")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        rec = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError):
        rec = {"command": f"unreadable lock record {raw[:80]!r}"}
    return rec if isinstance(rec, dict) else {}


@contextmanager
def outputs_lock(outputs: str | os.PathLike, note: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Hold the lock of ``outputs`` for the block; yield this run's record.

    Raises OutputsLocked (naming the holder's pid and start time) when another live process holds it.
    ``note`` receives one line when a record left by a run that ended without releasing it is taken over.
    """
    say = note or (lambda s: print(s, file=sys.stderr, flush=True))
    path = Path(outputs) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise OutputsLocked(path, holder) from None
        try:  # the file we locked must still be the one at `path` (a releasing run unlinks it)
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read(fd)
    if previous.get("pid") is not None:
        state = "still running, but not holding the lock" if _alive(previous["pid"]) else "no longer running"
        say(f"note: took over the lock {path}: its previous holder, pid {previous['pid']} "
            f"(started {previous.get('started_utc', '?')}), is {state}")
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv) or "python"}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    try:
        yield record
    finally:
        try:
            path.unlink(missing_ok=True)  # while still locked: the next run creates a fresh file
        finally:
            os.close(fd)  # releases the flock
