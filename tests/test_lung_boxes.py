"""The lung-box loader: every caveat of the real COCO file, on a small generated copy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrbook.config import DataNotFoundError
from cxrbook.data.lung_boxes import BOX_FORMATS, BOXES_FILE, LUNGS, convert_boxes, load_lung_boxes

COLUMNS = ["patientid", "offset", "sex", "age", "finding", "survival", "view", "modality", "location",
           "folder", "filename", "license"]


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)).save(path)


def make_box_collection(root: Path) -> Path:
    """A Cohen folder with one image per caveat; returns the data folder (CXR_DATA_DIR)."""
    base = root / "covid-chestxray-dataset"
    images = [  # file, JSON size, local size (None: file absent), right bbox, left bbox, csv patient, modality
        ("same.png", (400, 300), (400, 300), [40, 30, 120, 210], [240, 30, 120, 210], "7", "X-ray"),
        ("scaled.png", (1600, 1200), (800, 600), [160, 120, 480, 840], [960, 120, 480, 840], "8", "X-ray"),
        ("null.png", (400, 300), (400, 300), [None, None, None, None], [240, 30, 120, 210], "9", "X-ray"),
        ("absent.png", (400, 300), None, [40, 30, 120, 210], [240, 30, 120, 210], "10", "X-ray"),
        ("ciaa-like.png", (466, 399), (359, 345), [95, 67, 119, 254], [253, 68, 118, 230], "11", "X-ray"),
        ("ct.png", (400, 300), (400, 300), [40, 30, 120, 210], [240, 30, 120, 210], "12", "CT"),
        ("unlisted.png", (400, 300), (400, 300), [40, 30, 120, 210], [240, 30, 120, 210], None, "X-ray"),
        ("outside.png", (400, 300), (400, 300), [300, 30, 120, 210], [240, 30, 120, 210], "13", "X-ray"),
        ("one-lung.png", (400, 300), (400, 300), [40, 30, 120, 210], None, "14", "X-ray"),
        ("flat.png", (400, 300), (400, 300), [40, 30, 120, 210], [240, 30, 120, 210], "15", "X-ray"),
    ]
    coco = {"categories": [{"id": 1, "name": "Right Lung"}, {"id": 2, "name": "Left Lung"}],
            "images": [], "annotations": [], "licenses": []}
    rows = []
    for i, (name, (jw, jh), local, right, left, patient, modality) in enumerate(images, start=1):
        # the embedded metadata is OLDER than metadata.csv: its patient ids must not be used
        coco["images"].append({"id": i, "file_name": name, "width": jw, "height": jh,
                               "metadata": {"patientid": f"old-{i}"}})
        for cat, box in ((1, right), (2, left)):
            if box is not None:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i,
                                            "category_id": cat, "bbox": box})
        if local is not None:
            _image(base / "images" / name, *local)
        if patient is not None:
            rows.append(dict(patientid=patient, offset=0, sex="F", age=50, finding="COVID-19", survival="",
                             view="PA", modality=modality, location="Rome, Italy", folder="images",
                             filename=name, license=""))
    Image.fromarray(np.full((300, 400), 128, np.uint8)).save(base / "images" / "flat.png")  # constant: unusable
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    (base / BOXES_FILE).write_text(json.dumps(coco))
    with open(base / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture
def boxes(tmp_path):
    return load_lung_boxes(make_box_collection(tmp_path))


def test_every_caveat_is_dropped_with_its_reason(boxes):
    reasons = boxes.log.set_index("file_name")["reason"].to_dict()
    assert reasons == {"null.png": "null_box", "absent.png": "missing_file", "ciaa-like.png": "size_not_scaled",
                       "ct.png": "non_xray_modality", "unlisted.png": "not_in_metadata",
                       "outside.png": "box_outside_image", "one-lung.png": "missing_lung",
                       "flat.png": "unreadable_image"}
    assert sorted(boxes.images["file_name"]) == ["same.png", "scaled.png"]
    c = boxes.counts()
    assert (c["json_images"], c["kept"], c["dropped"]) == (10, 2, 8)
    assert sum(c["dropped_by_reason"].values()) == 8
    assert "constant_image" in boxes.log.set_index("file_name").loc["flat.png", "detail"]
    mis = boxes.log[boxes.log.reason == "size_not_scaled"]["detail"].iloc[0]
    assert "359x345" in mis and "466x399" in mis


def test_downsized_images_scale_boxes_by_local_over_json_width(boxes):
    row = boxes.images.set_index("file_name").loc["scaled.png"]
    assert (row["width"], row["height"], row["scale"]) == (800, 600, 0.5)
    i = list(boxes.images["file_name"]).index("scaled.png")
    # JSON pixels [160, 120, 480, 840] (xywh) of a 1600 x 1200 image -> half that on the 800 x 600 file
    np.testing.assert_allclose(boxes.boxes("right", "xywh")[i], [80, 60, 240, 420])
    np.testing.assert_allclose(boxes.boxes("right")[i], [0.1, 0.1, 0.4, 0.8])
    np.testing.assert_allclose(boxes.boxes("left", "xyxy")[i], [480, 60, 720, 480])


def test_patients_come_from_the_current_metadata_csv(boxes):
    assert dict(zip(boxes.images["file_name"], boxes.images["patient_id"])) == {
        "same.png": "cohen:7", "scaled.png": "cohen:8"}


def test_missing_or_broken_files_fail_naming_the_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="imageannotation_ai_lung_bounding_boxes.json"):
        load_lung_boxes(tmp_path)
    root = make_box_collection(tmp_path / "d")
    (root / "covid-chestxray-dataset" / BOXES_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="imageannotation_ai_lung_bounding_boxes.json.*not readable JSON"):
        load_lung_boxes(root)
    root = make_box_collection(tmp_path / "e")
    (root / "covid-chestxray-dataset" / "metadata.csv").unlink()
    with pytest.raises(DataNotFoundError, match="metadata.csv"):
        load_lung_boxes(root)


def test_box_conversions_match_keras():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    w, h = 640.0, 480.0
    xy = rng.uniform(0, 300, (5, 2))
    xywh = np.concatenate([xy, rng.uniform(10, 200, (5, 2))], axis=1)
    for source in BOX_FORMATS:
        boxes = convert_boxes(xywh, "xywh", source, width=w, height=h)
        for target in BOX_FORMATS:
            ours = convert_boxes(boxes, source, target, width=w, height=h)
            theirs = keras.ops.convert_to_numpy(keras.utils.bounding_boxes.convert_format(
                boxes.astype("float32"), source=source, target=target, height=h, width=w))
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3, err_msg=f"{source} -> {target}")
    with pytest.raises(ValueError, match="needs the image width"):
        convert_boxes(xywh, "xywh", "rel_xyxy")


@pytest.mark.realdata
def test_real_file_counts(real_data):
    b = load_lung_boxes(real_data)
    c = b.counts()
    assert c["json_images"] == 167
    assert c["dropped_by_reason"] == {"missing_file": 9, "non_xray_modality": 2, "null_box": 1,
                                      "size_not_scaled": 3}
    assert c["kept"] == 152 and set(LUNGS) == {"right", "left"}
    assert set(b.log.loc[b.log.reason == "size_not_scaled", "file_name"]) == {
        f"ciaa199.pdf-001-{k}.png" for k in "abc"}
    rel = np.stack([b.boxes(lung) for lung in LUNGS], axis=1)
    assert np.all((rel >= 0) & (rel <= 1)) and np.all(rel[..., 2:] > rel[..., :2])
    # the patient's right lung is on the image's left
    assert np.all(rel[:, 0, 0] < rel[:, 1, 0])


def test_the_generated_collection_has_a_lung_box_file_with_the_real_ones_defects(tmp_path):
    from cxrbook.data.synthetic import make_fake_collections
    b = load_lung_boxes(make_fake_collections(tmp_path, n_patients=3, external=False))
    c = b.counts()
    assert {"null_box", "missing_file", "size_not_scaled"} <= set(c["dropped_by_reason"])
    assert c["kept"] == c["json_images"] - c["dropped"] > 10
    assert set(b.images["scale"]) == {0.5}   # JSON sizes are the originals', twice the local files'
    # the boxes are chest_image's lung fields: ellipses centred at x 0.32 / 0.68, half-axes 0.16 x 0.3
    np.testing.assert_allclose(b.boxes("right"), [[0.16, 0.2, 0.48, 0.8]] * c["kept"], atol=1e-9)
    np.testing.assert_allclose(b.boxes("left"), [[0.52, 0.2, 0.84, 0.8]] * c["kept"], atol=1e-9)
