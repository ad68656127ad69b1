"""Small generated stand-ins for the three collections, for tests and offline benchmarks.

The folder layout and metadata columns mirror the real collections, so every
loader, notebook and CLI runs on them unchanged. Images are synthetic "chests":
two dark lung fields on a brighter body; COVID-19 images get bright patchy
opacities inside the lungs, other pneumonias one dense patch, so a model has a
real (lung) signal to find. With ``defects=True`` the metadata also lists the
defects cleaning must catch: CT rows, lateral views, ``todo`` findings, missing,
empty, truncated and non-image files, an exact duplicate, and 16-bit and RGBA
PNGs (which must be kept and decoded). ``make_fake_external`` writes the two
external test collections (Hannover COVID-19, NIH adult normals) in their real
layout under ``<root>/external``; ``make_fake_lung_boxes`` the Cohen lung-box
annotations (COCO) with the real file's caveats.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import SOURCES
from .lung_boxes import BOXES_FILE

COHEN_COLUMNS = ["patientid", "offset", "sex", "age", "finding", "survival", "view", "modality",
                 "date", "location", "folder", "filename", "doi", "url", "license", "clinical_notes"]
ACTUALMED_COLUMNS = ["patientid", "offset", "sex", "age", "finding", "survival", "view", "modality",
                     "imagename", "notes"]


LUNG_CENTERS_X = (0.32, 0.68)   # image left (the patient's right lung), image right
LUNG_SEMI_AXES = (0.16, 0.3)    # x, y, as fractions of the side


def chest_image(label: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A synthetic frontal chest image (uint8, size x size) carrying a label-specific lung signal."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 150 + 30 * rng.standard_normal((size, size)) * 0.3
    lungs = np.zeros((size, size), bool)
    for cx in LUNG_CENTERS_X:
        lungs |= ((xx - cx) / LUNG_SEMI_AXES[0]) ** 2 + ((yy - 0.5) / LUNG_SEMI_AXES[1]) ** 2 < 1
    img[lungs] = 60 + 10 * rng.standard_normal(lungs.sum())
    if label == "covid":
        for _ in range(4):
            cx, cy = rng.choice([0.32, 0.68]) + rng.uniform(-0.08, 0.08), rng.uniform(0.35, 0.7)
            blob = ((xx - cx) / 0.07) ** 2 + ((yy - cy) / 0.07) ** 2 < 1
            img[blob & lungs] += 70
    elif label == "other_pneumonia":
        cx, cy = rng.choice([0.32, 0.68]), rng.uniform(0.45, 0.65)
        blob = ((xx - cx) / 0.12) ** 2 + ((yy - cy) / 0.1) ** 2 < 1
        img[blob & lungs] += 110
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def make_fake_external(root: str | Path, n_patients: int = 5, seed: int = 1,
                       hannover_size: int = 96, nih_size: int = 64) -> Path:
    """Write fake ``external/hannover-covid`` and ``external/nih-adult-normal`` under ``root``; return the external folder.

    Same files and columns as the real ones: Hannover ``data.csv`` (patient_id,
    image_id, sex, modality, projection) with 8-bit grayscale ``png/<image_id>.png``;
    NIH ``metadata.csv`` (filename, patient_id, finding) with 64x64 RGB PNGs under
    ``images/``. Patients have 1-3 images.
    """
    rng = np.random.default_rng(seed)
    ext = Path(root) / "external"
    hann, nih = ext / "hannover-covid", ext / "nih-adult-normal"
    h_rows, n_rows = [], []
    for p in range(n_patients):
        pid = f"{rng.integers(0, 16 ** 8):08x}"
        for k in range(int(rng.integers(1, 4))):
            image_id = f"{rng.integers(0, 16 ** 8):08x}"
            _save(chest_image("covid", rng, hannover_size), hann / "png" / f"{image_id}.png")
            h_rows.append(dict(patient_id=pid, image_id=image_id, sex=rng.choice(["m", "f"]),
                               modality=rng.choice(["CR", "DX"]), projection=rng.choice(["ap", "pa"])))
    for p in range(n_patients):
        pid = f"{90000 + p:08d}"
        for k in range(int(rng.integers(1, 4))):
            name = f"{pid}_{k:03d}.png"
            gray = chest_image("normal", rng, nih_size)
            _save(np.dstack([gray, gray, gray]), nih / "images" / name)
            n_rows.append(dict(filename=name, patient_id=pid, finding="No Finding"))
    _write_csv(hann / "data.csv", ["patient_id", "image_id", "sex", "modality", "projection"], h_rows)
    _write_csv(nih / "metadata.csv", ["filename", "patient_id", "finding"], n_rows)
    return ext


def make_fake_lung_boxes(cohen_dir: str | Path, file_names: list[str], image_size: int) -> Path:
    """Write the Cohen lung-box file (COCO, as ``annotations/imageannotation_ai_lung_bounding_boxes.json``).

    One "Right Lung" and one "Left Lung" box per listed image: the bounding boxes of
    :func:`chest_image`'s two lung fields. As in the real file the JSON sizes are the
    originals', twice the local files' size (boxes scale by local / JSON width), and
    the known defects are there: the first image's left box is null, one listed file
    is absent from ``images/``, and one JSON size has another aspect than its local
    file (its boxes cannot be mapped). Returns the file's path.
    """
    if len(file_names) < 3:
        raise ValueError("need at least 3 images: one for each caveat besides the usable ones")
    coco = {"info": {"description": "generated stand-in for the Cohen lung boxes"},
            "categories": [{"id": 1, "name": "Right Lung"}, {"id": 2, "name": "Left Lung"}],
            "images": [], "annotations": [], "licenses": []}
    json_side = 2 * image_size
    names = list(file_names) + ["absent-from-images.png"]
    for i, name in enumerate(names, start=1):
        width, height = (json_side, json_side) if i != 2 else (json_side, json_side + image_size // 2)
        coco["images"].append({"id": i, "file_name": name, "width": width, "height": height})
        for cat, cx in zip((1, 2), LUNG_CENTERS_X):
            (ax, ay) = LUNG_SEMI_AXES
            bbox = [(cx - ax) * width, (0.5 - ay) * height, 2 * ax * width, 2 * ay * height]
            if i == 1 and cat == 2:
                bbox = [None, None, None, None]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": cat,
                                        "bbox": bbox})
    path = Path(cohen_dir) / BOXES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco), encoding="utf-8")
    return path


def _add_pathogen_patients(rows: list[dict], cohen_dir: Path, n: int, pid: int,
                           rng: np.random.Generator, image_size: int) -> int:
    """Append ``n`` viral and ``n`` bacterial non-COVID pneumonia patients (one image each) to the
    Cohen rows; viral images get the COVID-like patchy signal, bacterial the dense patch. Returns the
    last patient id used."""
    for finding, look in (("SARS", "covid"), ("Influenza", "covid"), ("Klebsiella", "other_pneumonia"),
                          ("Legionella", "other_pneumonia")):
        for _ in range((n + 1) // 2 if finding in ("SARS", "Klebsiella") else n // 2):
            pid += 1
            name = f"p{pid:03d}-path.png"
            _save(chest_image(look, rng, image_size), cohen_dir / "images" / name)
            rows.append(dict(patientid=pid, offset=0, sex=rng.choice(["M", "F"]), age=int(rng.integers(25, 85)),
                             finding=finding, survival="", view="PA", modality="X-ray",
                             location="Toronto, Canada", folder="images", filename=name, license="CC BY 4.0"))
    return pid


def make_fake_collections(root: str | Path, n_patients: int = 8, image_size: int = 64,
                          seed: int = 0, defects: bool = True, external: bool = True,
                          pathogen_patients: int = 0, lung_boxes: bool = True) -> Path:
    """Write the three fake collections under ``root`` and return ``root``.

    ``n_patients`` patients per (label, source) stratum (at least 3, so every split
    gets every class); patients have 1-3 images. ``pathogen_patients`` adds that many
    Cohen patients with a named virus and as many with a named bacterium (for
    ``task=four_class``; 0 leaves the output unchanged). Returns the data folder to
    use as ``CXR_DATA_DIR``. With ``external=True`` the two external test collections
    are written too (``make_fake_external``), with ``lung_boxes=True`` the lung boxes of
    the Cohen images (``make_fake_lung_boxes``).
    """
    if n_patients < 3:
        raise ValueError("need at least 3 patients per stratum for train/val/test")
    rng = np.random.default_rng(seed)
    root = Path(root)
    cohen_dir, am_dir, ped_dir = (root / SOURCES[k] for k in ("cohen", "actualmed", "pediatric"))
    cohen, actualmed, pediatric = [], [], []
    findings = {"covid": ["COVID-19", "COVID-19, ARDS"], "normal": ["No Finding"],
                "other_pneumonia": ["Streptococcus", "SARS", "Pneumocystis", "Pneumonia",
                                    "Mycoplasma Bacterial Pneumonia"]}
    pid = 0
    for label, names in findings.items():
        for p in range(n_patients):
            pid += 1
            age = int(rng.integers(25, 85))
            for k in range(int(rng.integers(1, 4))):
                name = f"p{pid:03d}-{k}.{'png' if k % 2 else 'jpg'}"
                _save(chest_image(label, rng, image_size), cohen_dir / "images" / name)
                cohen.append(dict(patientid=pid, offset=k, sex=rng.choice(["M", "F"]), age=age,
                                  finding=names[p % len(names)], survival=rng.choice(["Y", "N", ""]),
                                  view=rng.choice(["PA", "AP", "AP Supine"]), modality="X-ray",
                                  location=rng.choice(["Milan, Italy", "Wuhan, China", "Madrid, Spain"]),
                                  folder="images", filename=name, license="CC BY 4.0"))
    pid = _add_pathogen_patients(cohen, cohen_dir, pathogen_patients, pid, rng, image_size)
    for label, finding in (("covid", "COVID-19"), ("normal", "No finding")):
        for p in range(n_patients):
            name = f"CR.{label}.{p}.png"
            _save(chest_image(label, rng, image_size), am_dir / "images" / name)
            actualmed.append(dict(patientid=f"ANON{label}{p}", finding=finding, view="PA",
                                  modality="X-ray", imagename=name))
    for p in range(2 * n_patients):
        name = f"IM-{p:04d}-0001.jpeg"
        _save(chest_image("normal", rng, image_size), ped_dir / "images" / name)
        pediatric.append(dict(filename=name, finding="No Finding", view="AP", modality="X-ray",
                              age_group="pediatric (1-5 years)"))

    if defects:
        img = chest_image("covid", rng, image_size)
        base = dict(sex="M", age=50, finding="COVID-19", view="PA", modality="X-ray",
                    folder="images", location="Rome, Italy", license="CC BY 4.0")
        # kept: 16-bit and RGBA PNGs must decode
        Image.fromarray(img.astype(np.uint16) * 257).save(cohen_dir / "images" / "d-16bit.png")
        Image.fromarray(np.dstack([img, img, img, np.full_like(img, 255)]), "RGBA").save(
            cohen_dir / "images" / "d-rgba.png")
        # dropped, one per reason
        (cohen_dir / "images" / "d-empty.jpg").write_bytes(b"")
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG")
        (cohen_dir / "images" / "d-truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
        (cohen_dir / "images" / "d-text.png").write_text("this is not an image\n")
        (cohen_dir / "images" / "d-dup.jpg").write_bytes((cohen_dir / "images" / cohen[0]["filename"]).read_bytes())
        extra = [
            dict(patientid=900, filename="d-16bit.png"), dict(patientid=901, filename="d-rgba.png"),
            dict(patientid=902, filename="d-empty.jpg"), dict(patientid=903, filename="d-truncated.jpg"),
            dict(patientid=904, filename="d-text.png"), dict(patientid=905, filename="d-dup.jpg"),
            dict(patientid=906, filename="d-missing.jpg"),
            dict(patientid=907, filename="d-ct.jpg", modality="CT", view="Axial", folder="volumes"),
            dict(patientid=908, filename="d-lateral.jpg", view="L"),
            dict(patientid=909, filename="d-todo.jpg", finding="todo"),
        ]
        cohen += [{**base, **e} for e in extra]
        actualmed.append(dict(patientid="ANON999", finding="", view="PA", modality="X-ray", imagename="CR.blank.png"))
        actualmed.append(dict(patientid="ANON998", finding="COVID-19", view="PA", modality="X-ray", imagename="CR.absent.png"))

    _write_csv(cohen_dir / "metadata.csv", COHEN_COLUMNS, cohen)
    _write_csv(am_dir / "metadata.csv", ACTUALMED_COLUMNS, actualmed)
    _write_csv(ped_dir / "metadata.csv", ["filename", "finding", "view", "modality", "age_group"], pediatric)
    if lung_boxes:
        make_fake_lung_boxes(cohen_dir, [r["filename"] for r in cohen if not r["filename"].startswith("d-")],
                             image_size)
    if external:
        make_fake_external(root, n_patients=max(3, n_patients - 1), seed=seed + 1)
    return root
