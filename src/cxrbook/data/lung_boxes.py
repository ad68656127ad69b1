"""Lung bounding boxes of the Cohen collection, every caveat handled and logged.

Source: ``covid-chestxray-dataset/annotations/imageannotation_ai_lung_bounding_boxes.json``
(COCO; General Blockchain, Inc., CC BY 4.0; see that folder's README). Each image has
one "Right Lung" and one "Left Lung" box, ``bbox = [x, y, width, height]`` in pixels of
the image size recorded in the JSON (the original resolution).

What :func:`load_lung_boxes` does with the file's known defects (one ``log`` row per
dropped image and reason; an image with two defects gets two rows):

* ``null_box``: an annotation whose ``bbox`` holds nulls (annotations 317-318, image 159).
* ``missing_file``: the ``file_name`` is not in ``images/`` (9 upstream).
* ``size_not_scaled``: the local image is neither the JSON size nor the JSON size scaled
  by ONE factor (most local images were downsized to a longest side of 800 px, aspect
  kept). Boxes scale by local width / JSON width; for an image whose two sides scale
  differently (the three ``ciaa199.pdf-001-*`` figure crops: 359x345 against 466x399)
  no mapping of the boxes is known, so it is dropped.
* ``non_xray_modality``: metadata.csv marks the image as CT (two coronal slices); the
  detector and the classifiers use radiographs only (as notebook 02's cleaning).
* ``box_outside_image``, ``degenerate_box``, ``missing_lung``, ``duplicate_lung``,
  ``unreadable_image``, ``not_in_metadata``, ``ambiguous_patient``: checks that the
  current file passes but a changed one may not.

Patients come from the collection's CURRENT ``metadata.csv`` (via
:func:`cxrbook.data.metadata.load_cohen`, the ``patient_id`` every other table uses), not
from the older copy embedded in the JSON, so splits of the boxes are by patient.

Box formats carry their names, the strings of ``keras.utils.bounding_boxes``:
``xywh`` (COCO pixels), ``xyxy``/``yxyx`` (pixels, corners) and ``rel_xyxy``/
``rel_yxyx`` (fractions of width and height). The table stores ``rel_xyxy`` (it
does not change when an image is resized); :func:`convert_boxes` is the one place
that converts between formats.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import SOURCES, DataNotFoundError
from .images import UnreadableImage, load_gray
from .metadata import load_cohen, normalize_finding

BOXES_FILE = Path("annotations") / "imageannotation_ai_lung_bounding_boxes.json"
# Model class order. The patient's right lung is on the image's left (radiological convention).
LUNGS = ("right", "left")
CATEGORY_NAMES = {"Right Lung": "right", "Left Lung": "left"}
BOX_FORMATS = ("xywh", "xyxy", "yxyx", "rel_xyxy", "rel_yxyx")
STORED_FORMAT = "rel_xyxy"
COORDS = ("x0", "y0", "x1", "y1")
MAX_JSON_BYTES = 50_000_000  # the file is 0.3 MB; a bigger one is not this file
SIZE_TOLERANCE_PX = 1.0  # rounding of the downsized side

DROP_REASONS = {
    "null_box": "an annotation's bbox holds nulls",
    "degenerate_box": "a box has zero or negative width or height",
    "box_outside_image": "a box reaches outside the image size recorded in the JSON",
    "missing_lung": "the image lacks a usable box for one lung",
    "duplicate_lung": "the image has two boxes for one lung",
    "missing_file": "the annotated file is not in images/",
    "unreadable_image": "the image cannot be used (data.images.load_gray refuses it, as cleaning does)",
    "size_not_scaled": ("the local size is neither the JSON size nor the JSON size scaled by one factor, "
                        "so the boxes cannot be mapped onto the local image"),
    "not_in_metadata": "the file is not listed in metadata.csv, so it has no patient id",
    "ambiguous_patient": "metadata.csv lists the file under more than one patient",
    "non_xray_modality": "metadata.csv says the image is not an X-ray (CT slices; the detector is for radiographs)",
}
LOG_COLUMNS = ["image_id", "file_name", "reason", "detail"]
IMAGE_COLUMNS = (["image_id", "file_name", "image_path", "patient_id", "finding", "label", "modality", "view", "age",
                  "json_width", "json_height", "width", "height", "scale"]
                 + [f"{lung}_{c}" for lung in LUNGS for c in COORDS])


def convert_boxes(boxes: np.ndarray, source: str, target: str, width: float | None = None,
                  height: float | None = None) -> np.ndarray:
    """Boxes ``(..., 4)`` from one named format to another (names as in ``keras.utils.bounding_boxes``).

    ``width``/``height`` (pixels) are needed when exactly one side is relative.
    """
    for name in (source, target):
        if name not in BOX_FORMATS:
            raise ValueError(f"unknown box format {name!r}; choose one of {BOX_FORMATS}")
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 values in their last axis, got shape {b.shape}")
    relative = source.startswith("rel_") != target.startswith("rel_")
    if relative and (width is None or height is None):
        raise ValueError(f"converting {source} -> {target} needs the image width and height")
    # to pixel xyxy
    if source == "xywh":
        x0, y0, w, h = np.moveaxis(b, -1, 0)
        x0, y0, x1, y1 = x0, y0, x0 + w, y0 + h
    elif source.endswith("xyxy"):
        x0, y0, x1, y1 = np.moveaxis(b, -1, 0)
    else:  # yxyx
        y0, x0, y1, x1 = np.moveaxis(b, -1, 0)
    if relative and source.startswith("rel_"):
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    elif relative:
        x0, x1, y0, y1 = x0 / width, x1 / width, y0 / height, y1 / height
    if target == "xywh":
        out = (x0, y0, x1 - x0, y1 - y0)
    elif target.endswith("xyxy"):
        out = (x0, y0, x1, y1)
    else:
        out = (y0, x0, y1, x1)
    return np.stack(out, axis=-1)


@dataclass
class LungBoxes:
    """Kept images with both lungs' boxes (``images``), and what was dropped and why (``log``)."""

    images: pd.DataFrame   # IMAGE_COLUMNS; boxes in STORED_FORMAT as <lung>_x0 .. <lung>_y1
    log: pd.DataFrame      # LOG_COLUMNS; one row per dropped image and reason
    n_json_images: int
    source: Path

    def boxes(self, lung: str, box_format: str = STORED_FORMAT) -> np.ndarray:
        """``(n, 4)`` boxes of one lung, in ``box_format`` (pixels of the LOCAL image for pixel formats)."""
        if lung not in LUNGS:
            raise ValueError(f"unknown lung {lung!r}; choose one of {LUNGS}")
        rel = self.images[[f"{lung}_{c}" for c in COORDS]].to_numpy(dtype=np.float64)
        w = self.images["width"].to_numpy(dtype=np.float64)
        h = self.images["height"].to_numpy(dtype=np.float64)
        return convert_boxes(rel, STORED_FORMAT, box_format, width=w, height=h)

    def counts(self) -> dict:
        """Images in the JSON, kept, dropped (distinct) and dropped per reason (an image may count twice)."""
        per_reason = (self.log.groupby("reason")["image_id"].nunique().sort_index().astype(int).to_dict()
                      if len(self.log) else {})
        return {"json_images": int(self.n_json_images), "kept": int(len(self.images)),
                "dropped": int(self.log["image_id"].nunique()) if len(self.log) else 0,
                "dropped_by_reason": per_reason}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataNotFoundError(
            f"lung box file {path} does not exist: it is `{BOXES_FILE.as_posix()}` of the Cohen collection "
            "(github.com/ieee8023/covid-chestxray-dataset); see that folder's README")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"lung box file {path} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit for this "
                         "0.3 MB file: not the expected annotations")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"lung box file {path} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"lung box file {path}: expected a COCO object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"lung box file {path} lacks the COCO list {key!r}")
    return data


def _category_lungs(data: dict, path: Path) -> dict[int, str]:
    lungs = {}
    for c in data["categories"]:
        if isinstance(c, dict) and c.get("name") in CATEGORY_NAMES:
            lungs[c.get("id")] = CATEGORY_NAMES[c["name"]]
    if sorted(lungs.values()) != sorted(LUNGS):
        names = [c.get("name") for c in data["categories"] if isinstance(c, dict)]
        raise ValueError(f"lung box file {path}: categories {names} do not name both {list(CATEGORY_NAMES)}")
    return lungs


def _usable_box(bbox, width: float, height: float) -> tuple[str | None, str]:
    """(None, '') for a usable COCO box inside width x height, else (reason, detail)."""
    if (not isinstance(bbox, list) or len(bbox) != 4
            or any(v is None or isinstance(v, bool) or not isinstance(v, (int, float)) for v in bbox)):
        return "null_box", f"bbox {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        return "degenerate_box", f"bbox {bbox!r}"
    if x < 0 or y < 0 or x + w > width + SIZE_TOLERANCE_PX or y + h > height + SIZE_TOLERANCE_PX:
        return "box_outside_image", f"bbox {bbox!r} in a {width:g}x{height:g} image"
    return None, ""


def _local_size(path: Path) -> tuple[int, int]:
    """(width, height) as the one decoder returns the image (EXIF orientation applied); UnreadableImage for a
    file cleaning would drop too (unreadable, under 32 px, over 4:1, constant)."""
    height, width = load_gray(path).shape
    return width, height


def _scale(local: tuple[int, int], stated: tuple[float, float]) -> float | None:
    """Local width / JSON width when one factor maps the JSON size onto the local one, else None."""
    (w, h), (jw, jh) = local, stated
    s = w / jw
    if abs(jh * s - h) <= SIZE_TOLERANCE_PX and s <= 1.0 + 1e-9:
        return s
    return None


def _patients(root: Path) -> pd.DataFrame:
    tidy = load_cohen(root)
    tidy = tidy.assign(file_name=[Path(p).name for p in tidy["image_path"]],
                       folder=[Path(p).parent.name for p in tidy["image_path"]])
    return tidy[tidy["folder"] == "images"]


def load_lung_boxes(data_dir: str | os.PathLike) -> LungBoxes:
    """Kept images with both lungs' boxes in ``rel_xyxy``, and a log of every dropped image with its reason.

    ``data_dir`` is the folder holding ``covid-chestxray-dataset/`` (as ``CXR_DATA_DIR``).
    A missing JSON or metadata.csv raises ``DataNotFoundError`` naming it; a malformed
    JSON raises ValueError naming it. One bad image or box never aborts the load.
    """
    root = Path(data_dir)
    base = root / SOURCES["cohen"]
    path = base / BOXES_FILE
    data = _read_json(path)
    lungs_of = _category_lungs(data, path)
    meta = _patients(root)
    log: list[dict] = []

    def drop(image_id, file_name, reason: str, detail: str = "") -> None:
        log.append({"image_id": image_id, "file_name": file_name, "reason": reason, "detail": detail})

    anns: dict = {}
    for a in data["annotations"]:
        if isinstance(a, dict):
            anns.setdefault(a.get("image_id"), []).append(a)
    rows = []
    for im in data["images"]:
        image_id, name = im.get("id"), str(im.get("file_name", ""))
        reasons_before = len(log)
        jw, jh = im.get("width"), im.get("height")
        if not (isinstance(jw, (int, float)) and isinstance(jh, (int, float)) and jw > 0 and jh > 0):
            drop(image_id, name, "size_not_scaled", f"JSON size {jw!r}x{jh!r} is not a positive size")
            continue
        boxes: dict[str, list] = {}
        seen = {lung: 0 for lung in LUNGS}
        for a in anns.get(image_id, []):
            lung = lungs_of.get(a.get("category_id"))
            if lung is None:
                continue
            seen[lung] += 1
            reason, detail = _usable_box(a.get("bbox"), jw, jh)
            if reason:
                drop(image_id, name, reason, f"annotation {a.get('id')}: {detail}")
                continue
            boxes.setdefault(lung, []).append(a["bbox"])
        for lung in LUNGS:
            n = len(boxes.get(lung, []))
            if n > 1:
                drop(image_id, name, "duplicate_lung", f"{n} boxes for the {lung} lung")
            elif seen[lung] == 0:
                drop(image_id, name, "missing_lung", f"no box for the {lung} lung")
        file = base / "images" / name
        local = None
        if not name or not file.is_file():
            drop(image_id, name, "missing_file", f"{file} does not exist")
        else:
            try:
                local = _local_size(file)
            except UnreadableImage as e:
                drop(image_id, name, "unreadable_image", f"{file}: {e.reason}" + (f" ({e.detail})" if e.detail else ""))
        scale = None
        if local is not None:
            scale = _scale(local, (jw, jh))
            if scale is None:
                drop(image_id, name, "size_not_scaled",
                     f"local {local[0]}x{local[1]} vs JSON {jw}x{jh}: width ratio {local[0] / jw:.3f}, "
                     f"height ratio {local[1] / jh:.3f}")
        match = meta[meta["file_name"] == name]
        if match.empty:
            drop(image_id, name, "not_in_metadata", f"{name} not in {base / 'metadata.csv'} (folder images)")
        elif match["patient_id"].nunique() > 1:
            drop(image_id, name, "ambiguous_patient", f"patients {sorted(match['patient_id'].unique())}")
        elif (match["modality"] != "X-ray").any():
            drop(image_id, name, "non_xray_modality", f"modality={match['modality'].iloc[0]}")
        if len(log) > reasons_before:
            continue
        m = match.iloc[0]
        row = {"image_id": image_id, "file_name": name, "image_path": str(file), "patient_id": m["patient_id"],
               "finding": m["finding"], "label": normalize_finding(m["finding"]),
               "modality": m["modality"], "view": m["view"],
               "age": m["age"], "json_width": jw, "json_height": jh, "width": local[0], "height": local[1],
               "scale": scale}
        for lung in LUNGS:
            rel = convert_boxes(boxes[lung][0], "xywh", STORED_FORMAT, width=jw, height=jh)
            row.update({f"{lung}_{c}": float(v) for c, v in zip(COORDS, rel)})
        rows.append(row)
    images = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    return LungBoxes(images=images.reset_index(drop=True), log=pd.DataFrame(log, columns=LOG_COLUMNS),
                     n_json_images=len(data["images"]), source=path)
