import io

import numpy as np
import pytest
from PIL import Image

from cxrbook.data.cleaning import clean, reason_table
from cxrbook.data.images import UnreadableImage, load_gray
from cxrbook.data.metadata import load_all


@pytest.fixture(scope="module")
def cleaned(fake_data):
    tidy = load_all(fake_data)
    kept, log = clean(tidy)
    return tidy, kept, log


def _reason_of(log, filename):
    rows = log[log["image_path"].str.endswith(filename)]
    assert len(rows) == 1, f"{filename} should be logged once, got {len(rows)}"
    return rows["reason"].iloc[0]


@pytest.mark.parametrize("filename,reason", [
    ("d-empty.jpg", "empty_file"), ("d-truncated.jpg", "truncated_or_corrupt"),
    ("d-text.png", "not_an_image"), ("d-missing.jpg", "missing_file"), ("d-dup.jpg", "duplicate_image"),
    ("d-ct.jpg", "non_xray_modality"), ("d-lateral.jpg", "view_not_kept"), ("d-todo.jpg", "unknown_finding"),
    ("CR.blank.png", "unknown_finding"), ("CR.absent.png", "missing_file"),
])
def test_each_reason(cleaned, filename, reason):
    _, _, log = cleaned
    assert _reason_of(log, filename) == reason


def test_16bit_and_rgba_are_kept_and_decode(cleaned):
    _, kept, _ = cleaned
    for name in ("d-16bit.png", "d-rgba.png"):
        path = kept.loc[kept["image_path"].str.endswith(name), "image_path"]
        assert len(path) == 1, f"{name} must be kept"
        arr = load_gray(path.iloc[0])
        assert arr.dtype == np.uint8 and arr.ndim == 2 and arr.max() > 100


def test_16bit_is_rescaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    arr = load_gray(tmp_path / "ramp.png")
    assert arr.min() == 0 and arr.max() == 255 and len(np.unique(arr)) > 200


def test_every_row_accounted_for(cleaned):
    tidy, kept, log = cleaned
    assert len(kept) + len(log) == len(tidy)
    keys = set(zip(kept["source"], kept["row_id"])) | set(zip(log["source"], log["row_id"]))
    assert keys == set(zip(tidy["source"], tidy["row_id"]))
    assert (log["reason"] != "").all() and set(log.columns) >= {"source", "row_id", "image_path", "reason"}
    table = reason_table(tidy, log)
    assert table.loc["kept", "total"] == len(kept) and table.loc["input rows", "total"] == len(tidy)


def test_views_parameter(fake_data):
    tidy = load_all(fake_data)
    kept, log = clean(tidy, views=("PA",))
    assert set(kept["view"]) == {"PA"}
    assert len(kept) + len(log) == len(tidy)


def test_unreadable_message_names_file(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(UnreadableImage) as e:
        load_gray(p)
    assert str(p) in str(e.value)


def test_truncated_jpeg_is_not_padded(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(buf, format="JPEG")
    p = tmp_path / "t.jpg"
    p.write_bytes(buf.getvalue()[:-100])
    with pytest.raises(UnreadableImage) as e:
        load_gray(p)
    assert e.value.reason == "truncated_or_corrupt"
