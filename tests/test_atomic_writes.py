"""Every file the package writes goes through its one atomic writer (``cxrbook.atomic``).

An AST scan of ``src/cxrbook`` finds the calls that write files: ``open`` for writing,
``Path.write_text/write_bytes``, pandas ``to_csv``/``to_json``, NumPy ``save``/``savez``,
``json.dump``, ``joblib.dump``, ``model.save``/``img.save``/``onnx.save``, ``model.export``,
``fig.savefig``, ``shutil`` copies. A call is fine inside ``atomic.py`` or lexically inside a
``with atomic_write(...)`` / ``with create_new(...)`` block (it then writes the temporary file that is
renamed into place);
anywhere else it is a defect unless listed in ``ALLOWED`` with the reason the file needs no
rename (it is never read half-written).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrbook"

WRITER_METHODS = {"write_text", "write_bytes", "to_csv", "to_json", "to_parquet", "to_excel", "to_pickle",
                  "savefig", "save", "savez", "savez_compressed", "dump", "export", "tofile", "touch"}
WRITER_FUNCTIONS = {"copy", "copy2", "copyfile", "copytree", "move"}   # shutil.*
READ_ONLY_SAVE = {"InputSpec"}   # attribute calls named like writers that write nothing (none so far)

# (file relative to src/cxrbook, function) -> why its writes need no atomic rename
ALLOWED = {
    ("data/synthetic.py", "*"): "writes generated stand-in collections for tests, some files broken on purpose; "
                                "no output of the workbook",
    ("app/storage.py", "save_stream"): "copies an upload to a fresh random name opened with O_EXCL; a failed "
                                       "copy is deleted and no reader knows the name until the upload is stored",
    ("app/settings.py", "secret_key"): "writes a private temporary file and links it into place (os.link), "
                                       "atomic and never overwriting another worker's key",
    ("workflow/kernel.py", "*"): "appends the kernel's own log as it runs (a log is read while it grows)",
    ("workflow/lock.py", "outputs_lock"): "opens the run's lock file, which is the lock itself (flock), not an output",
    ("workflow/manifest.py", "write_manifest"): "rewrites the manifest in place only after its atomic write failed "
                                               "on a full disk, so that it does not keep saying 'running'",
    ("inference/predict.py", "_save_png"): "writes the temporary path that save_overlay's atomic.create_new hands "
                                           "it (renamed into place, never replacing a file)",
    ("models/onnx_export.py", "_export_graph"): "exports to a hidden temporary file that _place renames onto the "
                                                "target only after the parity check passed (removed otherwise)",
    ("models/onnx_export.py", "export_pixel_logreg"): "the same: a temporary ONNX file, checked, then _place",
}
ATOMIC_CONTEXTS = {"atomic_write", "create_new"}   # context managers of cxrbook.atomic that rename into place


def _writer_name(call: ast.Call) -> str | None:
    """The writer a call is, or None."""
    f = call.func
    if isinstance(f, ast.Name) and f.id == "open":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+"):
            return f"open(..., {mode.value!r})"
        return None
    if isinstance(f, ast.Attribute):
        owner = f.value.id if isinstance(f.value, ast.Name) else None
        if f.attr == "open" and owner == "os":
            return "os.open"
        if f.attr in WRITER_FUNCTIONS and owner == "shutil":
            return f"shutil.{f.attr}"
        if f.attr in WRITER_METHODS and owner not in READ_ONLY_SAVE:
            return f".{f.attr}(...)"
    return None


def _is_atomic_with(node: ast.AST) -> bool:
    if not isinstance(node, (ast.With, ast.AsyncWith)):
        return False
    for item in node.items:
        e = item.context_expr
        if isinstance(e, ast.Call):
            f = e.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ATOMIC_CONTEXTS:
                return True
    return False


def writers_outside_atomic(src: Path = SRC) -> list[str]:
    """``file:line function: writer`` for every writing call not covered by the atomic writer or ALLOWED."""
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel == "atomic.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node: ast.AST, function: str, covered: bool) -> None:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                function = node.name if function == "<module>" else function
            covered = covered or _is_atomic_with(node)
            if isinstance(node, ast.Call) and not covered:
                what = _writer_name(node)
                if what and (rel, function) not in ALLOWED and (rel, "*") not in ALLOWED:
                    found.append(f"{rel}:{node.lineno} {function}: {what}")
            for child in ast.iter_child_nodes(node):
                visit(child, function, covered)

        visit(tree, "<module>", False)
    return found


def test_every_output_is_written_through_the_atomic_writer():
    assert writers_outside_atomic() == []


def test_the_scan_finds_a_plain_writer(tmp_path):
    """The scan itself can fail: plain writes are found, the same writes inside atomic_write are not."""
    pkg = tmp_path / "cxrbook"
    pkg.mkdir()
    (pkg / "atomic.py").write_text("def write_text(p, t):\n    open(p, 'w').write(t)\n")
    (pkg / "bad.py").write_text(
        "import json, numpy as np\n"
        "def save(df, fig, model, path):\n"
        "    df.to_csv(path)\n"
        "    fig.savefig(path)\n"
        "    model.save(path)\n"
        "    np.savez(path, a=1)\n"
        "    with open(path, 'w') as f:\n"
        "        json.dump({}, f)\n"
        "    path.write_text('x')\n"
        "    open(path).read()\n"                      # reading is fine
        "    with atomic_write(path) as tmp, open(tmp, 'wb') as f:\n"
        "        np.savez(f, a=1)\n"
        "        model.save(tmp)\n")
    found = writers_outside_atomic(pkg)
    assert [f.split(" ", 2)[2] for f in found] == [
        ".to_csv(...)", ".savefig(...)", ".save(...)", ".savez(...)", "open(..., 'w')", ".dump(...)",
        ".write_text(...)"], found
    assert all(f.startswith("bad.py:") and " save: " in f for f in found)


@pytest.mark.parametrize("key", sorted(ALLOWED))
def test_every_allowed_writer_still_exists(key):
    """An ALLOWED entry whose function no longer writes is stale: remove it."""
    rel, function = key
    path = SRC / rel
    assert path.is_file(), rel
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree] if function == "*" else [n for n in ast.walk(tree)
                                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and
                                          n.name == function]
    assert any(_writer_name(c) for n in nodes for c in ast.walk(n) if isinstance(c, ast.Call)), key
