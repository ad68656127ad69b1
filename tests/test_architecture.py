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


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``src/cxrbook/evaluation/metrics.py`` -> ``cxrbook.evaluation.metrics`` (a package's ``__init__`` -> the package)."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str, package: Path = PACKAGE) -> bool:
    """Whether ``cxrbook.x.y`` names a module or package of the source tree."""
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    base = package / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def private_reaches(source: str, module: str, package: Path = PACKAGE) -> list[str]:
    """``module:line name`` for every use of another cxrbook module's private name in ``source``.

    ``module`` is the dotted name of the module whose ``source`` this is (``cxrbook.audit.checks``).
    """
    tree = ast.parse(source)
    is_pkg = (package / Path(*module.split(".")[1:]) / "__init__.py").is_file() if "." in module else True
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    aliases: dict[str, str] = {}  # local name -> the cxrbook module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "cxrbook":
                target = node.module
            else:
                continue
            for a in node.names:
                if is_module(f"{target}.{a.name}", package):  # from ..evaluation import metrics as M
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
                elif _private(a.name) and target != module:
                    found.append(f"{module}:{node.lineno} from {target} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cxrbook."):
                    aliases[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = aliases.get(node.value.id)
            if target and target != module:
                found.append(f"{module}:{node.lineno} {node.value.id}.{node.attr} ({target})")
    return found


def test_the_checker_sees_both_forms():
    src = ("from ..evaluation import metrics as M\nfrom ..data.pipeline import _read_npz\n"
           "x = M._patient_codes\ny = M.evaluate\n")
    assert private_reaches(src, "cxrbook.audit.checks") == [
        "cxrbook.audit.checks:2 from cxrbook.data.pipeline import _read_npz",
        "cxrbook.audit.checks:3 M._patient_codes (cxrbook.evaluation.metrics)"]
    # a public name from a module whose file name is private, and a dunder name, are not reaches
    assert private_reaches("from ._version import v\nfrom .x import __all__\n", "cxrbook.audit.checks") == []
    # a module's own private names are its own business
    assert private_reaches("from .runs import _x\n", "cxrbook.audit.runs") == []


def test_no_module_uses_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += private_reaches(path.read_text(encoding="utf-8"), module_name(path))
    assert not found, "make these public (or move them) instead:\n" + "\n".join(found)


def test_the_package_is_a_house_of_stage_folders():
    """At most 10 modules at the top; every other module sits in a folder with a docstring saying its stage."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, f"{len(top)} top-level modules: {top}"
    folders = sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))
    assert len(folders) >= 5
    for folder in folders:
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 8, f"{folder.name}/__init__.py needs a docstring saying what the folder holds"
    nested = [p for p in PACKAGE.rglob("*.py") if len(p.relative_to(PACKAGE).parts) > 2 and "app" not in p.parts]
    assert not nested, f"one level of folders is enough: {nested}"


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed in this environment")
def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    r = subprocess.run([exe], cwd=PACKAGE.parents[1], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
