"""Bad inputs and faults a new user meets (issue 11, "Robustness"): each one is a clear message naming the
file, or one logged row, never a traceback or an aborted run; reruns never mix outputs; runs are quiet."""

from __future__ import annotations

import argparse
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbook import cleaning, images, metadata
from cxrbook import predict as P
from cxrbook.__main__ import build_parser

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
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def fake_scorer(size: int = 16) -> P.Scorer:
    """A binary scorer without TensorFlow: P(covid) is the mean pixel value / 255."""
    def predict(x):
        return np.asarray(x, np.float64).mean(axis=(1, 2, 3))[:, None] / 255.0

    def cam(x):
        return predict(x), np.zeros(x.shape[:3], np.float32)

    side = {"classes": ["normal", "covid"], "image_size": size, "threshold": 0.5, "task": "covid_vs_normal",
            "weights": "none (test)", "preprocessing": {"clahe": False}}
    return P.Scorer(side, "numpy", "fake", predict, cam)


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
    summary = P.evaluate_folder(fake_scorer(), folder, out_dir=tmp_path / "out", echo=print)
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
    from cxrbook.synthetic import make_fake_collections
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


@pytest.mark.parametrize("engine", ["keras", "auto"])
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
        P.load_scorer(model, engine=engine)
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
    s = P.evaluate_folder(fake_scorer(), folder, labels_csv=labels, out_dir=tmp_path / "out", n_boot=20, echo=print)
    out = capsys.readouterr().out
    assert "ghost.png" in out and "sub/phantom.png" in out
    extra = json.loads(Path(s["metrics_json"]).read_text())["extra"]
    assert extra["labels_not_found"] == ["ghost.png", "sub/phantom.png"]
    assert extra["labels_unreadable"] == ["broken.png"]
    assert s["n_labels_not_found"] == 2


def test_exit_codes_tell_some_inputs_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(P, "load_scorer", lambda *a, **k: fake_scorer())
    good, bad = gray_png(tmp_path / "good.png"), tmp_path / "missing.png"

    def predict(*files):
        args = cli_args("predict", *files, "--model", "m.keras", "--no-gradcam")
        return args.func(args)
    assert predict(good) == P.EXIT_OK == 0
    assert predict(good, bad) == P.EXIT_SOME_FAILED == 3
    assert str(bad) in capsys.readouterr().out.splitlines()[-1]  # the summary names what failed
    assert predict(bad) == P.EXIT_NONE_SCORED == 1

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
    assert "exit codes: 0 every input scored" in text and "3 some inputs scored, others failed" in text
