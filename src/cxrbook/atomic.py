"""Write output files atomically: a temporary file in the destination folder, then ``os.replace``.

An interrupted run (Ctrl-C, a killed kernel, a full disk) therefore leaves either the old
complete file or the new complete file, never a truncated one; at worst a hidden
``.<name>.*.tmp<suffix>`` file stays behind. Every table, JSON and cache the workbook
writes goes through :func:`atomic_write`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
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


def write_csv(df, path: str | os.PathLike, index: bool = False, **to_csv_kwargs: Any) -> Path:
    """``DataFrame.to_csv`` (no index by default), atomically."""
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=index, **to_csv_kwargs)
    return Path(path)


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
