"""Write output files atomically: a temporary file in the destination folder, then ``os.replace``.

An interrupted run (Ctrl-C, a killed kernel, a full disk) therefore leaves either the old
complete file or the new complete file, never a truncated one; at worst a hidden
``.<name>.*.tmp<suffix>`` file stays behind. Every table, JSON and cache the workbook
writes goes through :func:`atomic_write`.

Every CSV goes through :func:`write_csv` or :func:`write_rows`, which make text cells safe to open
in a spreadsheet (:func:`spreadsheet_safe`, OWASP "CSV injection"): a cell such as
``=HYPERLINK(...).png`` is written ``'=HYPERLINK(...).png``, which Excel, LibreOffice and Google
Sheets show as the text it is instead of running it. Programs get the value back exactly with
:func:`spreadsheet_original` (or :func:`read_csv`).

A write that fails for want of room or rights raises :class:`WriteError`, an ``OSError`` whose
message names the file meant, not its temporary name: "disk full writing outputs/x.csv".
Files that belong together (``evaluate``'s predictions and metrics) are replaced all or none by
:func:`write_together`; a file that must not replace anything (an overlay beside the user's own
files) is written by :func:`create_new`; :func:`check_output_dir` tests a folder before any work.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it onto ``path``.

    The temporary name keeps ``path``'s suffix (``np.savez``/``pandas`` key on it). On any error or
    interrupt the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        wrapped = as_write_error(e, path)
        if wrapped is e:
            raise
        raise wrapped from e


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """``Path.write_text``, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike, **dumps_kwargs: Any) -> Path:
    """JSON (indent 2, sorted keys unless told otherwise) with a trailing newline, atomically."""
    dumps_kwargs = {"indent": 2, "sort_keys": True, **dumps_kwargs}
    return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


# A cell starting with one of these is a formula to a spreadsheet (OWASP CSV injection), ' is the escape itself.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = "'"
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is text a spreadsheet would run as a formula.

    Text starting with ``= + - @``, a tab or a carriage return is prefixed (a plain number such as
    ``-0.5`` is not: it is no formula), and so is text that already starts with ``'``, so that
    :func:`spreadsheet_original` can undo it exactly. Non-text values are returned unchanged.
    """
    if isinstance(value, str) and value[:1] in (*FORMULA_START, _ESCAPE) and not _PLAIN_NUMBER.fullmatch(value):
        return _ESCAPE + value
    return value


def spreadsheet_original(value: Any) -> Any:
    """The value :func:`spreadsheet_safe` was given: one leading ``'`` removed where it added one."""
    if isinstance(value, str) and value[:1] == _ESCAPE and value[1:2] in (*FORMULA_START, _ESCAPE):
        return value[1:]
    return value


def _text_columns(df) -> list:
    return [c for c in df.columns if df[c].dtype == object or str(df[c].dtype) in ("string", "str")]


def write_csv(df, path: str | os.PathLike, index: bool = False, **to_csv_kwargs: Any) -> Path:
    """``DataFrame.to_csv`` (no index by default), atomically, text cells made :func:`spreadsheet_safe`."""
    text = _text_columns(df)
    if text:
        df = df.copy()
        df[text] = df[text].map(spreadsheet_safe)
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=index, **to_csv_kwargs)
    return Path(path)


def rows_writer(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Callable[[Path], None]:
    """A function writing ``header`` and ``rows`` as CSV (``csv.writer``, every cell :func:`spreadsheet_safe`)
    to the path it is given: one of :func:`write_together`'s writers, or :func:`write_rows`'s."""
    def write(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([spreadsheet_safe(h) for h in header])
            w.writerows([spreadsheet_safe(v) for v in row] for row in rows)
    return write


def write_rows(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV of ``header`` and ``rows``, atomically, every cell :func:`spreadsheet_safe`."""
    with atomic_write(path) as tmp:
        rows_writer(header, rows)(tmp)
    return Path(path)


def read_csv(path: str | os.PathLike, **read_csv_kwargs: Any):
    """``pandas.read_csv`` of a file written by :func:`write_csv`/:func:`write_rows`, text cells as they were given."""
    import pandas as pd
    df = pd.read_csv(path, **read_csv_kwargs)
    text = _text_columns(df)
    if text:
        df[text] = df[text].map(spreadsheet_original)
    return df


def nan_to_none(x: Any) -> float | None:
    """``None`` for None / NaN / inf, else the float (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def to_jsonable(x: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, NaN/inf -> None, DataFrames -> records, paths -> str."""
    pd = sys.modules.get("pandas")  # only an imported pandas can have made a pandas object
    if pd is not None:
        if isinstance(x, pd.DataFrame):
            return to_jsonable(x.to_dict(orient="records"))
        if x is pd.NA or x is pd.NaT:
            return None
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return nan_to_none(x)
    if isinstance(x, Path):
        return str(x)
    return x


# --------------------------------------------------------------------------- failures, file sets, new files, folders

# errno -> the words a message gives (a write failing for one of these is a WriteError naming the file)
WRITE_FAILURES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                  errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EFBIG: "file too large",
                  errno.EIO: "I/O error", errno.EISDIR: "a folder of that name is in the way"}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
MIN_FREE_BYTES = 1 << 20  # check_output_dir: a folder on a file system with less room than this counts as full


class WriteError(OSError):
    """Writing ``path`` failed: ``str()`` is one line such as "disk full writing outputs/predictions.csv"."""

    def __init__(self, path: str | os.PathLike, err: OSError):
        self.path = Path(path)
        super().__init__(err.errno, f"{failure_reason(err)} writing {self.path}")

    def __str__(self) -> str:
        return str(self.strerror)

    @property
    def disk_full(self) -> bool:
        return self.errno in DISK_FULL


def failure_reason(err: OSError) -> str:
    """"disk full", "read-only file system", ... or the error's own words."""
    return WRITE_FAILURES.get(err.errno) or err.strerror or str(err) or type(err).__name__


def as_write_error(err: BaseException, path: str | os.PathLike) -> BaseException:
    """``err`` as a WriteError naming ``path`` when it is an OSError of ``WRITE_FAILURES``; else ``err`` itself."""
    if isinstance(err, OSError) and not isinstance(err, WriteError) and err.errno in WRITE_FAILURES:
        return WriteError(path, err)
    return err


def _temporary(path: Path) -> Path:
    """An empty hidden temporary file beside ``path`` keeping its suffix (its folder made if needed)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        raise as_write_error(e, path) from e
    os.close(fd)
    return Path(tmp)


def write_together(writers: Mapping[str | os.PathLike, Callable[[Path], Any]],
                   remove: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Write files that only make sense together, all or none; return their paths.

    ``writers`` maps each target to a function writing its content to the path it is given (a
    temporary file beside the target). Every file is written first, so a full disk fails before any
    target is touched (WriteError naming the target); then each old file is moved aside, each new
    one renamed in, and the old ones deleted only when all are in. If a rename fails every old file
    is put back, so a folder never holds a mix of two runs. ``remove``: files of an earlier run that
    this one does not write (metrics beside predictions made without labels), deleted with the swap.
    """
    targets = [Path(t) for t in writers]
    tmps: list[Path] = []
    try:
        for target, write in zip(targets, writers.values()):
            tmps.append(_temporary(target))
            try:
                write(tmps[-1])
                os.chmod(tmps[-1], _file_mode())
            except OSError as e:
                raise as_write_error(e, target) from e
        _swap(list(zip(tmps, targets)), [Path(r) for r in remove])
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return targets


def _swap(pairs: list[tuple[Path, Path]], remove: list[Path]) -> None:
    """Rename each (tmp, target) in and delete ``remove``; on any failure restore every old file."""
    aside: list[tuple[Path, Path]] = []   # (old file moved aside, where it was)
    placed: list[Path] = []
    try:
        for old in [t for _, t in pairs] + remove:
            if old.is_file():
                backup = old.with_name(f".{old.name}.{os.getpid()}.old.tmp")
                os.replace(old, backup)
                aside.append((backup, old))
        for tmp, target in pairs:
            try:
                os.replace(tmp, target)
            except OSError as e:
                raise as_write_error(e, target) from e
            placed.append(target)
    except BaseException:
        for target in placed:
            target.unlink(missing_ok=True)
        for backup, old in aside:
            try:
                os.replace(backup, old)
            except OSError:  # put back what can be; the hidden backup keeps the rest
                continue
        raise
    for backup, _ in aside:
        backup.unlink(missing_ok=True)


@contextmanager
def create_new(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_write`, but never replaces a file: FileExistsError at once if ``path`` exists.

    The name is reserved first (created exclusively, so two writers cannot both take it), the content
    written to a temporary file and renamed onto the reservation; on failure the reservation is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        raise
    except OSError as e:
        raise as_write_error(e, path) from e
    try:
        with atomic_write(path) as tmp:
            yield tmp
    except BaseException:
        path.unlink(missing_ok=True)
        raise


class OutputDirError(ValueError):
    """An output folder that cannot be used: a file, read-only, not creatable, or on a full disk."""


def check_output_dir(path: str | os.PathLike, what: str = "--out",
                     min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """``path`` (created if missing) once a file could be written there and its disk has room; else
    OutputDirError naming ``what`` (the option that gave it) and the reason. Run before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputDirError(f"{what} {path}: a part of that path is a file, not a folder") from None
    except OSError as e:
        raise OutputDirError(f"{what} {path}: cannot create the folder ({failure_reason(e)})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".cxrbook-probe.", dir=path)
        try:
            os.write(fd, b"cxrbook")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputDirError(f"{what} {path}: cannot write there ({failure_reason(e)})") from None
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < min_free_bytes:
        raise OutputDirError(f"{what} {path}: disk full ({free} bytes free, at least {min_free_bytes} needed)")
    return path
