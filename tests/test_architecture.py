"""The package's layering: no module reaches into another module's ``_private`` names.

import-linter (contract in pyproject.toml, run below) checks which modules may import
which; it cannot see names, so this test parses every module of ``cxrbook`` and
fails on ``from .x import _name`` and on ``x._name`` where ``x`` is another cxrbook
module.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cxrbook"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches(source: str, module: str) -> list[str]:
    """``module:line name`` for every use of another cxrbook module's private name in ``source``."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> cxrbook module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            internal = node.level > 0 or (node.module or "").split(".")[0] == "cxrbook"
            if not internal:
                continue
            target = (node.module or "").split(".")[-1]
            for a in node.names:
                if target and _private(a.name) and target != module:
                    found.append(f"{module}:{node.lineno} from {target} import {a.name}")
                if not node.module or node.module == "cxrbook":  # from . import metrics as M
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cxrbook."):
                    aliases[a.asname or a.name] = a.name.split(".")[-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = aliases.get(node.value.id)
            if target and target != module:
                found.append(f"{module}:{node.lineno} {node.value.id}.{node.attr} ({target})")
    return found


def test_the_checker_sees_both_forms():
    src = "from . import metrics as M\nfrom .pipeline import _read_npz\nx = M._patient_codes\ny = M.evaluate\n"
    assert private_reaches(src, "audit") == ["audit:2 from pipeline import _read_npz",
                                             "audit:3 M._patient_codes (metrics)"]
    # a public name from a module whose file name is private, and a dunder name, are not reaches
    assert private_reaches("from ._version import v\nfrom .x import __all__\n", "audit") == []


def test_no_module_uses_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        found += private_reaches(path.read_text(encoding="utf-8"), path.stem)
    assert not found, "make these public (or move them) instead:\n" + "\n".join(found)


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed in this environment")
def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    r = subprocess.run([exe], cwd=PACKAGE.parents[1], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
