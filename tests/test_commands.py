"""The commands never lose or mix results and say the right exit code (issue 16, items 4, 5, 7-10, 17, 18, 21).

``run`` is driven through ``python -m cxrbook``'s own ``main`` with papermill's ``execute_notebook``
replaced by a stand-in that writes an executed copy as papermill does (no kernel, seconds); ``predict``
and ``evaluate`` use a fake scorer without TensorFlow. A full disk is simulated by making a write or a
rename raise ``OSError(ENOSPC)``; a read-only folder by making the probe file's creation raise ``EROFS``
(the tests run as root, which ignores file modes).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxrbook import atomic
from cxrbook.__main__ import build_parser, main
from cxrbook.inference import predict as P
from cxrbook.workflow import cli as CLI
from cxrbook.workflow.lock import LOCK_NAME
from test_robustness import _fake_execute, fake_scorer, gray_png

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIXTURE = ROOT / "tests" / "fixtures" / "outputs_small"


def no_space(*args, **kwargs):
    """Stands in for a write or a rename on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device")


def no_traceback(text: str) -> bool:
    return "Traceback" not in text


@pytest.fixture
def papermill_stub(monkeypatch):
    """``papermill.execute_notebook`` replaced: returns the list of notebooks it was asked to run."""
    import papermill as pm
    calls: list[str] = []
    monkeypatch.setattr(pm, "execute_notebook", _fake_execute(calls))
    return calls


# --------------------------------------------------------------------------- 4. predict never overwrites

def test_predict_never_overwrites_a_file_it_did_not_write(tmp_path, monkeypatch, capsys):
    scan = gray_png(tmp_path / "scan.png", 150)
    mine = tmp_path / "scan_gradcam.png"
    mine.write_bytes(b"the user's own file")
    rows = P.predict_files(fake_scorer(), [scan], echo=print)
    assert mine.read_bytes() == b"the user's own file"
    assert rows[0]["overlay"] == str(tmp_path / "scan_2_gradcam.png") and Path(rows[0]["overlay"]).is_file()
    assert "scan_gradcam.png already exists and was left as it was" in capsys.readouterr().out
    # a second run keeps the first run's overlay too; two images with one stem in one run get two names
    again = P.predict_files(fake_scorer(), [scan], echo=None)
    assert again[0]["overlay"] == str(tmp_path / "scan_3_gradcam.png")
    (tmp_path / "b").mkdir()
    twin = gray_png(tmp_path / "b" / "scan.png", 90)
    out = tmp_path / "out"
    both = P.predict_files(fake_scorer(), [scan, twin], out_dir=out, echo=None)
    assert [Path(r["overlay"]).name for r in both] == ["scan_gradcam.png", "scan_2_gradcam.png"]
    assert not [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name]
    # through the command: the line printed says where each overlay went
    monkeypatch.setattr(CLI, "load_model", lambda *a, **k: fake_scorer())
    assert main(["predict", str(scan), "--model", "m.keras"]) == CLI.EXIT_OK
    text = capsys.readouterr().out
    assert "overlays: beside each image" in text and "scan_4_gradcam.png" in text
    assert mine.read_bytes() == b"the user's own file"


def test_an_overlay_that_cannot_be_written_is_exit_4_and_named(tmp_path, monkeypatch, capsys):
    scan = gray_png(tmp_path / "scan.png", 150)
    monkeypatch.setattr(CLI, "load_model", lambda *a, **k: fake_scorer())
    monkeypatch.setattr(P, "_save_png", no_space)
    assert main(["predict", str(scan), "--model", "m.keras"]) == CLI.EXIT_WRITE_FAILED
    out = capsys.readouterr().out
    assert "P(covid)=" in out and "cannot write the overlay (disk full writing" in out
    assert f"overlay not written: {scan}" in out
    assert [p.name for p in tmp_path.iterdir()] == ["scan.png"]  # no empty reservation, no temporary file


# --------------------------------------------------------------------------- 5. one run per outputs folder

def test_a_second_run_into_the_same_folder_is_refused_with_the_holders_pid(fake_data, tmp_path, papermill_stub,
                                                                         capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom cxrbook.workflow.lock import outputs_lock\n"
                               "with outputs_lock(sys.argv[1]) as r:\n    print(r['pid'], r['started_utc'], flush=True)\n"
                               "    sys.stdin.read()\n", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid, started = holder.stdout.readline().split()
        code = main(["run", "--only", "01", "--data-dir", str(fake_data), "--output-dir", str(out)])
        err = capsys.readouterr().err
    finally:
        holder.communicate("", timeout=30)
    assert code == CLI.EXIT_LOCKED == 5, err
    assert f"pid {pid}" in err and f"started {started}" in err and str(out) in err and no_traceback(err)
    assert papermill_stub == [] and not (out / "run_manifest.json").exists()
    assert not (out / LOCK_NAME).exists()  # the holder released it on its way out
    assert main(["run", "--only", "01", "--data-dir", str(fake_data), "--output-dir", str(out)]) == 0


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_note(fake_data, tmp_path, papermill_stub, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "here", "started_utc": "2026-01-01T00:00:00+00:00",
                                             "command": "python -m cxrbook run"}))
    assert main(["run", "--only", "01", "--data-dir", str(fake_data), "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"took over the lock {out / LOCK_NAME}" in err and f"pid {dead.pid}" in err and "no longer running" in err
    assert papermill_stub == ["01_metadata_visualization.ipynb"] and not (out / LOCK_NAME).exists()


# --------------------------------------------------------------------------- 7. a full disk

def _evaluate(folder: Path, labels: Path | None, out: Path) -> int:
    return main(["evaluate", "--model", "m.keras", "--images", str(folder), "--out", str(out), "--n-bootstrap", "20"]
                + (["--labels", str(labels)] if labels else []))


@pytest.fixture
def labelled_folder(tmp_path, monkeypatch):
    """Six generated images with labels, and a ``use(name)`` that makes the command load a fake model ``name``."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        gray_png(folder / f"{i}.png", 40 + 35 * i)
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\n" + "".join(f"{i}.png,{'covid' if i > 2 else 'normal'}\n" for i in range(6)))

    def use(name: str) -> None:
        def load(*a, **k):
            s = fake_scorer()
            s.name = name
            return s
        monkeypatch.setattr(CLI, "load_model", load)
    return folder, labels, use


@pytest.mark.parametrize("fault", ["writing metrics.json", "renaming unreadable.csv"])
def test_evaluate_on_a_full_disk_keeps_the_earlier_results_whole(labelled_folder, tmp_path, monkeypatch, capsys,
                                                                 fault):
    from cxrbook.evaluation import records as R
    folder, labels, use = labelled_folder
    out = tmp_path / "out"
    use("model_a")
    assert _evaluate(folder, labels, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(before["metrics.json"])["model"] == "model_a"
    capsys.readouterr()
    use("model_b")
    (folder / "0.png").write_bytes(b"now unreadable")  # model_b's predictions differ in content too
    if fault == "writing metrics.json":
        monkeypatch.setattr(R, "save_metrics", no_space)
    else:
        real = os.replace

        def replace(src, dst, *a, **k):  # the new file's rename fails; putting the old one back works
            if Path(dst).name == "unreadable.csv" and ".old." not in Path(src).name:
                no_space()
            return real(src, dst, *a, **k)
        monkeypatch.setattr(atomic.os, "replace", replace)
    code = _evaluate(folder, labels, out)
    err = capsys.readouterr().err
    assert code == CLI.EXIT_WRITE_FAILED == 4 and no_traceback(err)
    assert re.search(r"disk full writing \S*/(metrics\.json|unreadable\.csv)", err), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # model_a's files, whole, nothing else


def test_evaluate_without_labels_removes_an_earlier_runs_metrics(labelled_folder, tmp_path, capsys):
    folder, labels, use = labelled_folder
    out = tmp_path / "out"
    use("model_a")
    assert _evaluate(folder, labels, out) == 0
    use("model_b")
    assert _evaluate(folder, None, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "skipped.csv", "unreadable.csv"]
    assert "metrics.json of an earlier run" in capsys.readouterr().out


def test_a_run_on_a_full_disk_ends_failed_with_one_message(fake_data, tmp_path, monkeypatch, capsys):
    import papermill as pm
    out = tmp_path / "out"
    real_replace = os.replace

    def execute(src, dst, **kw):
        Path(dst).write_text('{"cells": [{"cell_type": "code", "sou')  # half an executed notebook
        # from here on nothing fits: every atomic write's rename fails too
        monkeypatch.setattr(atomic.os, "replace", no_space)
        no_space()
    monkeypatch.setattr(pm, "execute_notebook", execute)
    code = main(["run", "--only", "01,02", "--data-dir", str(fake_data), "--output-dir", str(out)])
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    cap = capsys.readouterr()
    assert code == CLI.EXIT_WRITE_FAILED == 4 and no_traceback(cap.err + cap.out)
    nb = out / "notebooks" / "01_metadata_visualization.ipynb"
    assert f"disk full writing {nb}" in cap.err and "overwritten in place" in cap.err
    assert not list((out / "notebooks").iterdir())  # no truncated executed notebook, no temporary copy
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert [(n["notebook"][:2], n["status"]) for n in manifest["notebooks"]] == [("01", "failed")]
    assert "disk full" in manifest["notebooks"][0]["error"]
    assert not (out / LOCK_NAME).exists()


def test_a_notebook_that_fills_the_disk_is_exit_4(fake_data, tmp_path, monkeypatch, capsys):
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    def execute(src, dst, **kw):
        Path(dst).write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        raise PapermillExecutionError(3, 2, "savefig()", "OSError", "[Errno 28] No space left on device", [])
    monkeypatch.setattr(pm, "execute_notebook", execute)
    code = main(["run", "--only", "01", "--data-dir", str(fake_data), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == CLI.EXIT_WRITE_FAILED and err.startswith("FAILED: disk full: 01_metadata_visualization.ipynb")
    assert json.loads((tmp_path / "out" / "run_manifest.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- 8. tables: all blocks or none

def marked_readme(path: Path) -> Path:
    from cxrbook.reporting.tables import SECTIONS
    path.write_text("# T\n\n" + "\n\n".join(f"<!-- tables:{s}:start -->\nstale block {s}\n<!-- tables:{s}:end -->"
                                          for s in SECTIONS) + "\n", encoding="utf-8")
    return path


def test_tables_write_readme_with_one_corrupt_file_writes_no_block(tmp_path, capsys):
    outputs = Path(shutil.copytree(FIXTURE, tmp_path / "outputs"))
    bad = outputs / "metrics" / "vgg16.json"
    bad.write_text('{"model": "vgg16", "metr')
    readme = marked_readme(tmp_path / "README.md")
    before = readme.read_bytes()
    code = main(["tables", "--outputs", str(outputs), "--write-readme", str(readme)])
    err = capsys.readouterr().err
    assert code == CLI.EXIT_BROKEN_INPUT == 3 and str(bad) in err and "no README block was written" in err
    assert readme.read_bytes() == before
    assert main(["tables", "--outputs", str(outputs)]) == 3  # printing says so too
    shutil.copy(FIXTURE / "metrics" / "vgg16.json", bad)
    assert main(["tables", "--outputs", str(outputs), "--write-readme", str(readme)]) == 0
    assert "stale block" not in readme.read_text()


def test_tables_write_failure_and_usage_errors(tmp_path, monkeypatch, capsys):
    readme = marked_readme(tmp_path / "README.md")
    before = readme.read_bytes()
    monkeypatch.setattr(atomic.os, "replace", no_space)
    assert main(["tables", "--outputs", str(FIXTURE), "--write-readme", str(readme)]) == CLI.EXIT_WRITE_FAILED
    assert f"disk full writing {readme}" in capsys.readouterr().err and readme.read_bytes() == before
    monkeypatch.undo()
    assert main(["tables", "--outputs", str(FIXTURE), "--write-readme", str(tmp_path / "nope.md")]) == CLI.EXIT_FATAL
    assert main(["tables", "--outputs", str(tmp_path / "nowhere")]) == CLI.EXIT_FATAL
    err = capsys.readouterr().err
    assert "nope.md" in err and "nowhere (from --outputs) does not exist" in err and no_traceback(err)


# --------------------------------------------------------------------------- 9. -p for the runner's own names

@pytest.mark.parametrize("name,option", [("profile", "--profile"), ("output_dir", "--output-dir"),
                                         ("data_dir", "--data-dir"), ("seed", "--seed")])
def test_p_cannot_set_what_the_runner_sets(fake_data, tmp_path, papermill_stub, capsys, name, option):
    out = tmp_path / "out"
    code = main(["run", "--only", "01", "--data-dir", str(fake_data), "--output-dir", str(out), "-p", f"{name}=x"])
    err = capsys.readouterr().err
    assert code == CLI.EXIT_FATAL and f"-p {name}=... is set by the runner: use {option} instead" in err
    assert papermill_stub == [] and not out.exists()


# --------------------------------------------------------------------------- 10. --out checked up front

def _refuse_probe(monkeypatch, code: int):
    real = atomic.tempfile.mkstemp

    def mkstemp(*a, prefix="", **k):
        if prefix.startswith(".cxrbook-probe"):
            raise OSError(code, os.strerror(code))
        return real(*a, prefix=prefix, **k)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("case,words", [("a file", "is a file, not a folder"),
                                        ("read-only", "cannot write there (read-only file system)"),
                                        ("full", "disk full (0 bytes free")])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys, command, case, words):
    loaded = []
    monkeypatch.setattr(CLI, "load_model", lambda *a, **k: loaded.append(1) or fake_scorer())
    (tmp_path / "imgs").mkdir()
    img = gray_png(tmp_path / "imgs" / "a.png")
    out = tmp_path / "out"  # beside the images: an --out inside --images is refused for its own reason
    if case == "a file":
        out.write_text("a file")
    elif case == "read-only":
        _refuse_probe(monkeypatch, errno.EROFS)
    else:
        real = os.statvfs
        monkeypatch.setattr(atomic.os, "statvfs", lambda p: os.statvfs_result(
            (*real(p)[:4], 0, *real(p)[5:])))  # f_bavail = 0
    argv = (["predict", str(img)] if command == "predict" else ["evaluate", "--images", str(img.parent)])
    code = main(argv + ["--model", "m.keras", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == CLI.EXIT_FATAL and f"--out {out}" in err and words in err and no_traceback(err), err
    assert loaded == []  # refused before the model was loaded


# --------------------------------------------------------------------------- 17. run: one line, exit 2

def test_run_set_up_errors_are_one_line_and_exit_2(fake_data, tmp_path, papermill_stub, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["run", "--only", "99", "--data-dir", str(fake_data), "--output-dir", str(out)]) == CLI.EXIT_FATAL
    err = capsys.readouterr().err
    assert err.startswith("error: --only names no notebook: ['99']") and len(err.splitlines()) == 1
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv("CXR_DATA_DIR", str(a_file))
    assert main(["run", "--only", "01", "--output-dir", str(out)]) == CLI.EXIT_FATAL
    err = capsys.readouterr().err
    assert err.startswith(f"error: data folder {a_file} (from $CXR_DATA_DIR) is a file, not a folder.")
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "missing"))
    assert main(["run", "--only", "01", "--output-dir", str(out)]) == CLI.EXIT_FATAL
    err = capsys.readouterr().err
    assert err.startswith(f"error: data folder {tmp_path / 'missing'} (from $CXR_DATA_DIR) does not exist.")
    assert no_traceback(err) and papermill_stub == [] and not out.exists()


def test_run_outside_a_workbook_says_so(fake_data, tmp_path, papermill_stub, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--data-dir", str(fake_data), "--output-dir", str(tmp_path / "out")]) == CLI.EXIT_FATAL
    err = capsys.readouterr().err
    assert f"no cxrbook workbook in or above {tmp_path}" in err and papermill_stub == []


# --------------------------------------------------------------------------- 18. values checked before any work

@pytest.mark.parametrize("argv,option", [
    (["run", "--seed", "-1"], "--seed"), (["run", "--seed", "4294967296"], "--seed"),
    (["run", "--cell-timeout", "0"], "--cell-timeout"), (["run", "-p", "weights"], "-p"),
    (["evaluate", "--n-bootstrap", "0"], "--n-bootstrap"), (["evaluate", "--n-bootstrap", "-5"], "--n-bootstrap"),
    (["evaluate", "--n-bootstrap", "ten"], "--n-bootstrap"), (["evaluate", "--seed", "-1"], "--seed")])
def test_bad_values_are_refused_before_any_work(tmp_path, papermill_stub, monkeypatch, capsys, argv, option):
    monkeypatch.setattr(CLI, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    rest = (["--images", str(tmp_path), "--model", "m.keras", "--out", str(tmp_path / "o")]
            if argv[0] == "evaluate" else ["--output-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        main(argv + rest)
    err = capsys.readouterr().err
    assert e.value.code == CLI.EXIT_FATAL and f"argument {option}" in err and no_traceback(err), err
    assert not (tmp_path / "o").exists() and papermill_stub == []


def test_the_library_checks_the_same_values(tmp_path):
    from cxrbook.inference.folder import evaluate_folder
    from cxrbook.workflow.runner import RunRefused, run
    with pytest.raises(ValueError, match=r"n_boot \(--n-bootstrap\) must be a whole number >= 1, got 0"):
        evaluate_folder(fake_scorer(), tmp_path, n_boot=0, out_dir=tmp_path / "o")
    with pytest.raises(RunRefused, match="--seed must be a whole number from 0"):
        run(seed=-1, output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 21. outputs not beside the package

def _installed_copy(tmp_path: Path) -> Path:
    """src/cxrbook copied as a non-editable install would place it: .../lib/python3.11/site-packages/cxrbook."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    shutil.copytree(ROOT / "src" / "cxrbook", site / "cxrbook", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _in(site: Path, cwd: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("CXR_OUTPUT_DIR", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**environ, "PYTHONPATH": str(site), **env})


def test_outputs_go_to_the_workbook_never_into_site_packages(tmp_path):
    site = _installed_copy(tmp_path)
    workbook = tmp_path / "my workbook"
    (workbook / "notebooks").mkdir(parents=True)
    (workbook / "pyproject.toml").write_text('[project]\nname = "cxrbook"\n')
    (workbook / "notebooks" / "deeper").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import cxrbook\nfrom cxrbook.config import DEFAULT_OUTPUT_DIR\n"
            "print(cxrbook.__file__); print(DEFAULT_OUTPUT_DIR)")
    for cwd, expected in [(workbook, workbook / "outputs"), (workbook / "notebooks" / "deeper", workbook / "outputs"),
                          (elsewhere, elsewhere / "outputs")]:
        r = _in(site, cwd, code)
        assert r.returncode == 0, r.stderr
        where, out = r.stdout.splitlines()
        assert where.startswith(str(site)) and Path(out) == expected, (cwd, r.stdout)
    r = _in(site, elsewhere, code, CXR_OUTPUT_DIR=str(tmp_path / "chosen"))
    assert Path(r.stdout.splitlines()[1]) == tmp_path / "chosen"
    # a pyproject.toml of another project is not a workbook
    (elsewhere / "notebooks").mkdir()
    (elsewhere / "pyproject.toml").write_text('[project]\nname = "other"\n')
    r = _in(site, elsewhere, "from cxrbook.config import default_output_dir; print(default_output_dir()[1])")
    assert r.stdout.startswith("the current folder: no cxrbook workbook"), r.stdout + r.stderr
    # and the commands say where outputs go
    (workbook / "outputs").mkdir()
    r = _in(site, workbook, "from cxrbook.__main__ import main; main(['tables'])")
    assert f"tables from {workbook / 'outputs'} (from the workbook at {workbook})" in r.stderr, r.stderr


def test_each_command_says_where_its_outputs_go(fake_data, tmp_path, papermill_stub, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["run", "--only", "01", "--data-dir", str(fake_data), "--output-dir", str(out)]) == 0
    assert f"outputs={out} (from --output-dir)" in capsys.readouterr().out
    monkeypatch.setenv("CXR_OUTPUT_DIR", str(tmp_path / "env_out"))
    monkeypatch.setattr(CLI, "load_model", lambda *a, **k: fake_scorer())
    folder = tmp_path / "imgs"
    folder.mkdir()
    gray_png(folder / "a.png")
    assert main(["evaluate", "--model", "m.keras", "--images", str(folder)]) == 0
    expected = tmp_path / "env_out" / "evaluate" / "imgs"
    assert f"outputs: {expected} (from default; $CXR_OUTPUT_DIR)" in capsys.readouterr().out
    assert (expected / "predictions.csv").is_file()
    assert main(["predict", str(folder / "a.png"), "--model", "m.keras", "--out", str(tmp_path / "ov")]) == 0
    assert f"overlays: into {tmp_path / 'ov'} (--out)" in capsys.readouterr().out


# --------------------------------------------------------------------------- README, --help and the code agree

def readme_exit_codes(text: str) -> dict[str, dict[int, str]]:
    """``{command: {code: meaning}}`` from the README's tables whose header is ``| `command` | meaning |``."""
    tables: dict[str, dict[int, str]] = {}
    current = None
    for line in text.splitlines():
        head = re.fullmatch(r"\| `(\w+)` exit code \| meaning \|", line.strip())
        if head:
            current = tables.setdefault(head.group(1), {})
            continue
        row = re.fullmatch(r"\| (\d+) \| (.+) \|", line.strip())
        if current is not None and row:
            current[int(row.group(1))] = row.group(2).strip()
        elif current is not None and not line.startswith("| ---"):
            current = None
    return tables


def help_exit_codes(command: str, capsys) -> dict[int, str]:
    """``{code: meaning}`` from the ``exit codes:`` epilog of ``python -m cxrbook COMMAND --help``."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    epilog = capsys.readouterr().out.split("\nexit codes:\n", 1)[1]
    codes: dict[int, str] = {}
    for line in epilog.splitlines():
        m = re.match(r"  (\d+)\s+(.*)", line)
        if m:
            last = int(m.group(1))
            codes[last] = m.group(2)
        elif line.strip():
            codes[last] += " " + line.strip()
    return codes


def test_readme_help_and_code_agree_on_exit_codes(capsys):
    readme = readme_exit_codes(README.read_text(encoding="utf-8"))
    assert set(readme) == set(CLI.EXIT_CODES) == {"run", "predict", "evaluate", "tables"}
    for command, codes in CLI.EXIT_CODES.items():
        assert readme[command] == codes, command
        assert help_exit_codes(command, capsys) == codes, command


def test_the_comparison_sees_a_difference(capsys):
    """The parsers above are not blind: a changed word, a missing code and an extra row are all seen."""
    text = README.read_text(encoding="utf-8")
    changed = text.replace("| 5 | another run holds", "| 5 | another job holds", 1)
    assert readme_exit_codes(changed)["run"] != CLI.EXIT_CODES["run"]
    dropped = re.sub(r"\n\| 130 \|[^\n]*", "", text, count=1)
    assert readme_exit_codes(dropped)["run"] != CLI.EXIT_CODES["run"]
    assert pd.Series(help_exit_codes("run", capsys)).equals(pd.Series(CLI.EXIT_CODES["run"]))
