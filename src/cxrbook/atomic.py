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
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def write_rows(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV of ``header`` and ``rows`` (``csv.writer``), atomically, every cell :func:`spreadsheet_safe`."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([spreadsheet_safe(h) for h in header])
        w.writerows([spreadsheet_safe(v) for v in row] for row in rows)
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
