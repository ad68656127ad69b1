"""Small text pieces every generated README table shares (:mod:`cxrbook.reporting.tables`, :mod:`cxrbook.reporting.speed_table`).

A number or n/a, markdown paragraphs, the commit a file names, and an output JSON
read with an error that names the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping


def number(x: Any) -> float | None:
    """A finite float, or None for null / NaN / non-numbers."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def paragraphs(*parts: str) -> str:
    """Markdown paragraphs (tables, lists, lines) separated by one blank line; empty parts dropped."""
    return "\n\n".join(p.strip("\n") for p in parts if p and p.strip())


def cell(x: Any, digits: int = 3) -> str:
    """A number to ``digits`` decimals; n/a for null / NaN / non-numbers."""
    v = number(x)
    return "n/a" if v is None else f"{v:.{digits}f}"


def commit_text(git: Mapping | None) -> str:
    """`abc1234` (short hash, in backticks) and whether the tree was dirty; "unknown" without a commit."""
    git = git or {}
    short = f"`{str(git['commit'])[:7]}`" if git.get("commit") else "unknown"
    return short + (" (uncommitted changes)" if git.get("dirty") else "")


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
