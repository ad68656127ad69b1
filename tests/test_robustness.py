"""Bad inputs and faults a new user meets (issue 11, "Robustness"): each one is a clear message naming the
file, or one logged row, never a traceback or an aborted run; reruns never mix outputs; runs are quiet."""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbook.data import cleaning
from cxrbook.data import images
from cxrbook.data import metadata
from cxrbook.inference import folder as EV
from cxrbook.inference import predict as P
from cxrbook.workflow import cli as CLI
from cxrbook.__main__ import build_parser
from cxrbook.inference.saved_model import SavedModel, load_model

# --------------------------------------------------------------------------- helpers


def bomb_png(path: Path, side: int = 14000) -> Path:
    """A valid 1-bit PNG of side x side pixels (over Pillow's decompression-bomb limit), written cheaply."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def dicom_file(path: Path) -> Path:
    """128-byte preamble + ``DICM`` magic: what every DICOM Part 10 file starts with."""
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\x00" * 64)
    return path


def gray_png(path: Path, value: int = 120, size: int = 40) -> Path:
    """A size x size checkerboard of value -/+ 1 (mean ``value``; not constant, which would be refused)."""
    board = np.indices((size, size)).sum(axis=0) % 2 * 2 - 1
    Image.fromarray((value + board).astype(np.uint8)).save(path)
    return path


def fake_scorer(size: int = 16) -> SavedModel:
    """A binary scorer without TensorFlow: P(covid) is the mean pixel value / 255."""
    def predict(x):
        return np.asarray(x, np.float64).mean(axis=(1, 2, 3))[:, None] / 255.0

    def cam(x):
        return np.zeros(x.shape[:3], np.float32)

    side = {"classes": ["normal", "covid"], "image_size": size, "threshold": 0.5, "task": "covid_vs_normal",
            "weights": "none (test)", "preprocessing": {"clahe": False}}
    return SavedModel("keras", "onnx", "fake", side, predict, cam)


def cli_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args([str(a) for a in argv])


# --------------------------------------------------------------------------- 1. one bad image = one row

def test_decompression_bomb_is_one_unreadable_reason(tmp_path):
    big = bomb_png(tmp_path / "big.png")
    reason, detail = images.check_image(big)
    assert reason == "too_many_pixels" and "pixels" in detail
    with pytest.raises(images.UnreadableImage) as e:
        images.load_gray(big)
    assert e.value.reason == "too_many_pixels" and str(big) in str(e.value)
    assert reason in images.REASONS and reason in cleaning.REASON_ORDER


def test_cleaning_logs_a_bomb_instead_of_stopping(tmp_path):
    rows = [{"source": "cohen", "row_id": i, "patient_id": f"p{i}", "image_path": str(p), "finding": "COVID-19",
             "label": "covid", "view": "PA", "modality": "X-ray"}
            for i, p in enumerate([gray_png(tmp_path / "a.png", 10), bomb_png(tmp_path / "big.png"),
                                   gray_png(tmp_path / "b.png", 200), dicom_file(tmp_path / "scan.png")])]
    tidy = pd.DataFrame(rows)
    kept, log = cleaning.clean(tidy)
    assert len(kept) + len(log) == len(tidy)
    assert list(kept["image_path"]) == [rows[0]["image_path"], rows[2]["image_path"]]
    assert dict(zip(log["row_id"], log["reason"])) == {1: "too_many_pixels", 3: "dicom_unsupported"}
    table = cleaning.reason_table(tidy, log)
    assert {"too_many_pixels", "dicom_unsupported"} <= set(table.index)


def test_predict_and_evaluate_list_a_bomb_and_go_on(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good, big = gray_png(folder / "good.png", 200), bomb_png(folder / "big.png")
    rows = P.predict_files(fake_scorer(), [big, good], overlays=False, echo=print)
    assert [r["status"] for r in rows] == ["unreadable", "ok"] and rows[0]["reason"] == "too_many_pixels"
    summary = EV.evaluate_folder(fake_scorer(), folder, out_dir=tmp_path / "out", echo=print)
    assert summary["n_scored"] == 1 and summary["n_unreadable"] == 1
    bad = pd.read_csv(summary["unreadable_csv"])
    assert list(bad["file"]) == ["big.png"] and list(bad["reason"]) == ["too_many_pixels"]
    assert "not scored: big.png: too_many_pixels" in capsys.readouterr().out


def test_real_pillow_limit_is_used(tmp_path, monkeypatch):
    """The same code path with Pillow's own limit lowered: a small image now trips the bomb check."""
    small = gray_png(tmp_path / "s.png", size=64)
    assert images.check_image(small) == (None, "")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 = 4096 > 2 * 1000: DecompressionBombError
    assert images.check_image(small)[0] == "too_many_pixels"


# --------------------------------------------------------------------------- 2, 3. empty metadata

def test_empty_metadata_csv_names_the_file(fake_collections):
    path = fake_collections / "covid-chestxray-dataset" / "metadata.csv"
    path.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        metadata.load_all(fake_collections)
    assert str(path) in str(e.value) and "empty" in str(e.value)


def test_header_only_metadata_is_an_error_naming_the_collection(fake_collections):
    path = fake_collections / "covid-chestxray-dataset" / "metadata.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(metadata.EmptyCollectionError) as e:
        metadata.load_all(fake_collections)
    assert "cohen" in str(e.value) and str(path) in str(e.value) and "allow_empty" in str(e.value)
    tidy = metadata.load_all(fake_collections, allow_empty=True)  # the explicit opt-out
    assert "cohen" not in set(tidy["source"]) and len(tidy) > 0


@pytest.fixture()
def fake_collections(tmp_path) -> Path:
    from cxrbook.data.synthetic import make_fake_collections
    return make_fake_collections(tmp_path / "data", n_patients=3, seed=0)


# --------------------------------------------------------------------------- 5. clear messages

def test_predict_on_a_folder_says_folder_and_suggests_evaluate(tmp_path):
    rows = P.predict_files(fake_scorer(), [tmp_path], overlays=False, echo=None)
    msg = rows[0]["message"]
    assert rows[0]["reason"] == "is_a_directory"
    assert "does not exist" not in msg and "folder" in msg and f"evaluate --model MODEL --images {tmp_path}" in msg


@pytest.mark.parametrize("name", ["scan.dcm", "scan.png"])
def test_dicom_is_named_as_dicom_with_how_to_convert(tmp_path, name):
    path = dicom_file(tmp_path / name) if name.endswith(".png") else tmp_path / name
    if name.endswith(".dcm"):
        path.write_bytes(b"not even a preamble, but named .dcm")
    rows = P.predict_files(fake_scorer(), [path], overlays=False, echo=None)
    assert rows[0]["reason"] == "dicom_unsupported"
    assert "DICOM" in rows[0]["message"] and "dcmj2pnm" in rows[0]["message"] and "pydicom" in rows[0]["message"]


@pytest.mark.parametrize("engine", ["keras", "onnx"])
def test_truncated_keras_file_is_called_truncated(tmp_path, engine):
    whole = tmp_path / "whole.keras"
    with zipfile.ZipFile(whole, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
        z.writestr("model.weights.h5", b"\x00" * 4096)
    model = tmp_path / "model.keras"
    model.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    model.with_suffix(".json").write_text(json.dumps({"classes": ["normal", "covid"], "image_size": 16,
                                                      "threshold": 0.5}))
    with pytest.raises(ValueError) as e:
        load_model(model, engine=engine)
    msg = str(e.value)
    assert str(model) in msg and "truncated or corrupt" in msg and "File not found" not in msg


# --------------------------------------------------------------------------- 6, 7. names and exit codes

def test_evaluate_names_labelled_files_not_found(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        gray_png(folder / f"{i}.png", 60 + 30 * i)
    (folder / "broken.png").write_text("oops")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\n" + "".join(f"{i}.png,{'covid' if i > 2 else 'normal'}\n" for i in range(6))
                      + "ghost.png,covid\nsub/phantom.png,normal\nbroken.png,normal\n")
    s = EV.evaluate_folder(fake_scorer(), folder, labels_csv=labels, out_dir=tmp_path / "out", n_boot=20, echo=print)
    out = capsys.readouterr().out
    assert "ghost.png" in out and "sub/phantom.png" in out
    extra = json.loads(Path(s["metrics_json"]).read_text())["extra"]
    assert extra["labels_not_found"] == ["ghost.png", "sub/phantom.png"]
    assert extra["labels_unreadable"] == ["broken.png"]
    assert s["n_labels_not_found"] == 2


def test_exit_codes_tell_some_inputs_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(CLI, "load_model", lambda *a, **k: fake_scorer())
    good, bad = gray_png(tmp_path / "good.png"), tmp_path / "missing.png"

    def predict(*files):
        args = cli_args("predict", *files, "--model", "m.keras", "--no-gradcam")
        return args.func(args)
    assert predict(good) == CLI.EXIT_OK == 0
    assert predict(good, bad) == CLI.EXIT_SOME_FAILED == 3
    assert str(bad) in capsys.readouterr().out.splitlines()[-1]  # the summary names what failed
    assert predict(bad) == CLI.EXIT_NONE_SCORED == 1

    folder = tmp_path / "imgs"
    folder.mkdir()
    gray_png(folder / "a.png")

    def evaluate():
        args = cli_args("evaluate", "--model", "m.keras", "--images", folder, "--out", tmp_path / "o")
        return args.func(args)
    assert evaluate() == 0
    (folder / "b.png").write_text("oops")
    assert evaluate() == 3


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_help_documents_exit_codes(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 every image scored" in text and "3 some images scored, others" in text


# --------------------------------------------------------------------------- 4. interrupted reruns

def _interrupt_replace(monkeypatch):
    """Make the final rename of an atomic write fail as a Ctrl-C would."""
    import cxrbook.atomic as A

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(A.os, "replace", boom)


def test_interrupted_writes_leave_the_old_file_whole(tmp_path, monkeypatch):
    from cxrbook.workflow import manifest as MF
    from cxrbook.evaluation import metrics as M
    from cxrbook.evaluation import records as R
    from cxrbook.config import Paths
    rec = R.metrics_record(M.evaluate(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]), np.arange(4),
                                      ["normal", "covid"], threshold=0.5, n_boot=10, seed=0),
                           model="m", task="covid_vs_normal", weights="none", threshold_rule="fixed")
    paths = Paths(data=tmp_path, outputs=tmp_path, profile="smoke")
    targets = {"metrics": tmp_path / "m.json", "manifest": tmp_path / "run_manifest.json",
               "clean": paths.clean_csv}
    for t in targets.values():
        t.write_text("old complete content\n")
    _interrupt_replace(monkeypatch)
    writers = {"metrics": lambda: R.save_metrics(rec, targets["metrics"]),
               "manifest": lambda: MF.write_json({"status": "complete"}, targets["manifest"]),
               "clean": lambda: paths.save_table(pd.DataFrame({"a": range(5)}), paths.clean_csv)}
    for name, write in writers.items():
        with pytest.raises(KeyboardInterrupt):
            write()
        assert targets[name].read_text() == "old complete content\n", name
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name], "temporary files left behind"


def test_notebook_refuses_tables_from_another_data_folder_or_profile(tmp_path):
    from cxrbook.config import Paths
    from cxrbook.provenance import ProvenanceMismatch
    a, b, out = tmp_path / "data_a", tmp_path / "data_b", tmp_path / "out"
    a.mkdir(), b.mkdir()
    writer = Paths.resolve(a, out, profile="smoke")
    writer.save_table(pd.DataFrame({"image_path": ["x.png"]}), writer.clean_csv)
    assert writer.require(writer.clean_csv, "02") == writer.clean_csv  # same folder and profile: fine
    with pytest.raises(ProvenanceMismatch) as e:
        Paths.resolve(b, out, profile="smoke").require(writer.clean_csv, "02")
    msg = str(e.value)
    assert str(writer.clean_csv) in msg and str(a.resolve()) in msg and str(b.resolve()) in msg
    with pytest.raises(ProvenanceMismatch, match="profile full"):
        Paths.resolve(a, out, profile="full").require(writer.clean_csv, "02")
    # a table without its record (interrupted between table and record, or an older version) is refused
    (out / "clean.provenance.json").unlink()
    with pytest.raises(ProvenanceMismatch, match="no provenance record"):
        writer.require(writer.clean_csv, "02")


def _fake_execute(calls, on_call=None):
    """papermill.execute_notebook without a kernel: writes an empty executed copy to ``dst``, as papermill would."""
    import nbformat

    def execute(src, dst, **kw):
        calls.append(Path(src).name)
        nbformat.write(nbformat.v4.new_notebook(), dst)
        if on_call:
            on_call(len(calls))
    return execute


def test_manifest_says_running_until_done_and_records_interruptions(fake_data, tmp_path, monkeypatch):
    import papermill as pm

    from cxrbook.workflow import runner
    out = tmp_path / "out"
    seen, calls = [], []

    def look(n):
        seen.append(json.loads((out / "run_manifest.json").read_text())["status"])
        if n == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(pm, "execute_notebook", _fake_execute(calls, look))
    with pytest.raises(KeyboardInterrupt):
        runner.run(only=["01", "02", "03"], data_dir=str(fake_data), output_dir=str(out), html_index=False)
    m = json.loads((out / "run_manifest.json").read_text())
    assert seen == ["running", "running"] and m["status"] == "interrupted"
    assert [(n["notebook"][:2], n["status"]) for n in m["notebooks"]] == [("01", "ok"), ("02", "interrupted")]
    monkeypatch.setattr(pm, "execute_notebook", _fake_execute(calls))
    runner.run(only=["01"], data_dir=str(fake_data), output_dir=str(out), html_index=False)
    assert json.loads((out / "run_manifest.json").read_text())["status"] == "complete"


# --------------------------------------------------------------------------- quiet, readable runs

NOISE = re.compile(r"tensorflow|cuda|cuInit|oneDNN|absl::|without encryption|KeyboardInterrupt", re.IGNORECASE)


def _run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # as `make report` runs: no TF_CPP_MIN_LOG_LEVEL from outside, and no PYTEST_CURRENT_TEST (with it,
    # ipykernel does not capture C-level output into the notebook)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTEST_CURRENT_TEST")}
    return subprocess.run([sys.executable, "-m", "cxrbook", "run", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    """01-04 (04 imports Keras and trains) on generated data through the CLI, as `make report` runs them."""
    from cxrbook.data.synthetic import make_fake_collections
    root = tmp_path_factory.mktemp("quiet")
    data = make_fake_collections(root / "data", n_patients=3, seed=0)
    r = _run_cli("--only", "01,02,03,04", "--data-dir", data, "--output-dir", root / "out", "-p", "weights=none",
                 "-p", "epochs=1")
    return root, data, r


def test_a_run_prints_one_line_per_notebook_and_no_noise(quiet_run):
    root, _, r = quiet_run
    assert r.returncode == 0, r.stdout + r.stderr
    noise = [ln for ln in (r.stdout + r.stderr).splitlines() if NOISE.search(ln)]
    assert not noise, noise
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:-1]] == [
        "01_metadata_visualization.ipynb", "02_data_cleaning.ipynb", "03_segregation_and_splits.ipynb",
        "04_custom_cnn.ipynb"]
    assert r.stderr.strip() == "", r.stderr
    manifest = json.loads((root / "out" / "run_manifest.json").read_text())
    assert manifest["status"] == "complete"
    # the noise went to the kernel's log, not away: a user can still read it
    assert "kernel_log" in manifest["notebooks"][3]


def test_a_failing_notebook_still_prints_its_error_in_full(quiet_run):
    """A rerun of 03 on another data folder into the same outputs: refused, and the refusal is shown."""
    from cxrbook.data.synthetic import make_fake_collections
    root, data, _ = quiet_run
    other = make_fake_collections(root / "other", n_patients=3, seed=1)
    r = _run_cli("--only", "03", "--data-dir", other, "--output-dir", root / "out")
    assert r.returncode == 1
    text = r.stdout + r.stderr
    assert "FAILED: 03_segregation_and_splits.ipynb failed in cell" in r.stderr
    assert "ProvenanceMismatch" in r.stderr and "Traceback" in r.stderr  # the kernel's traceback, in full
    assert str(root / "out" / "clean.csv") in r.stderr and str(data) in r.stderr and str(other) in r.stderr
    assert not [ln for ln in text.splitlines() if NOISE.search(ln)]
    assert json.loads((root / "out" / "run_manifest.json").read_text())["status"] == "failed"


KERNEL_CHECK = """
import json, sys
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
    "import time\\nimport tensorflow as tf\\nprint('GPUs:', len(tf.config.list_physical_devices('GPU')))\\n"
    "time.sleep(1)  # let ipykernel forward captured C-level output before the cell ends")])
km = KernelManager(kernel_name="cxrbook", kernel_spec_manager=KernelSpecManager(kernel_dirs=[sys.argv[1]]))
NotebookClient(nb, km=km, timeout=300).execute()
print(json.dumps(nb.cells[0].outputs))
"""


def test_the_installed_kernel_keeps_tensorflow_logs_out_of_the_notebook(tmp_path):
    """What a student sees in JupyterLab: a cell importing TensorFlow shows only its own output."""
    from cxrbook.workflow.kernel import install
    dest = install(prefix=str(tmp_path))
    spec = json.loads((dest / "kernel.json").read_text())
    assert spec["env"]["TF_CPP_MIN_LOG_LEVEL"] == "3" and "CUDA_VISIBLE_DEVICES" not in spec["env"]
    # outside pytest's environment: ipykernel does not capture C-level output when PYTEST_CURRENT_TEST is set
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "TF_CPP_MIN_LOG_LEVEL")}
    r = subprocess.run([sys.executable, "-c", KERNEL_CHECK, str(dest.parent)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    outputs = json.loads(r.stdout.strip().splitlines()[-1])
    text = "".join(o.get("text", "") for o in outputs)
    assert text.startswith("GPUs: ") and not NOISE.search(text), outputs
    assert [o["name"] for o in outputs if o["output_type"] == "stream"] == ["stdout"], outputs  # no red stderr
