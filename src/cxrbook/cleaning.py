"""Cleaning: keep usable frontal X-rays with a known label; log every dropped row.

Rules are applied in this order; a row is logged once, with the first rule it fails:

=====================  ===========================================================
reason                 meaning
=====================  ===========================================================
non_xray_modality      modality is not X-ray (CT etc.)
view_not_kept          view is not one of the kept views (lateral, axial, blank...)
unknown_finding        label is ``unknown`` (todo, blank, ARDS alone, unrecognized)
missing_file           the listed image file does not exist
is_a_directory         the listed path is a folder
empty_file             zero-byte file
dicom_unsupported      a DICOM file (convert it to PNG first; the detail says how)
too_many_pixels        over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)
not_an_image           not a decodable image format
truncated_or_corrupt   starts like an image but does not decode
duplicate_image        same bytes as an earlier kept image (detail names it)
=====================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .images import REASONS, check_image, file_sha256

DEFAULT_VIEWS = ("PA", "AP", "AP Supine")
LOG_COLUMNS = ["source", "row_id", "image_path", "reason", "detail"]
# metadata rules, then every image reason of images.REASONS (in its order), then duplicates
REASON_ORDER = ["non_xray_modality", "view_not_kept", "unknown_finding", *REASONS, "duplicate_image"]


def clean(tidy: pd.DataFrame, views: Sequence[str] = DEFAULT_VIEWS,
          progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the tidy table into (kept rows, log of dropped rows with reason and detail).

    ``len(kept) + len(log) == len(tidy)`` always holds; the function checks it.
    """
    reasons: dict[int, tuple[str, str]] = {}
    for i, row in tidy.iterrows():
        if row["modality"] != "X-ray":
            reasons[i] = ("non_xray_modality", f"modality={row['modality']}")
        elif row["view"] not in views:
            reasons[i] = ("view_not_kept", f"view={row['view']}")
        elif row["label"] == "unknown":
            reasons[i] = ("unknown_finding", f"finding={row['finding']!r}")

    candidates = [i for i in tidy.index if i not in reasons]
    iterator = candidates
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(candidates, desc="decoding images", unit="img")
    seen: dict[str, str] = {}  # content hash -> "source row N (path)" of the first kept copy
    for i in iterator:
        path = tidy.at[i, "image_path"]
        reason, detail = check_image(path)
        if reason:
            reasons[i] = (reason, detail)
            continue
        digest = file_sha256(path)
        if digest in seen:
            reasons[i] = ("duplicate_image", f"same bytes as {seen[digest]}")
        else:
            seen[digest] = f"{tidy.at[i, 'source']} row {tidy.at[i, 'row_id']} ({path})"

    dropped = sorted(reasons)
    log = tidy.loc[dropped, ["source", "row_id", "image_path"]].copy()
    log["reason"] = [reasons[i][0] for i in dropped]
    log["detail"] = [reasons[i][1] for i in dropped]
    kept = tidy.drop(index=dropped)
    if len(kept) + len(log) != len(tidy):  # pragma: no cover - invariant
        raise AssertionError("cleaning lost rows")
    return kept.reset_index(drop=True), log.reset_index(drop=True)[LOG_COLUMNS]


def reason_table(tidy: pd.DataFrame, log: pd.DataFrame) -> pd.DataFrame:
    """Rows in, dropped per reason and kept, per source (the before/after table)."""
    counts = pd.crosstab(log["reason"], log["source"]).reindex(
        [r for r in REASON_ORDER if r in set(log["reason"])])
    rows_in = tidy.groupby("source").size().rename("input rows")
    dropped = log.groupby("source").size()
    kept = (rows_in - dropped.reindex(rows_in.index, fill_value=0)).rename("kept")
    table = pd.concat([rows_in.to_frame().T, counts, kept.to_frame().T]).fillna(0).astype(int)
    table["total"] = table.sum(axis=1)
    return table


def verify_with_torchxrayvision(kept: pd.DataFrame, data_dir, views: Sequence[str] = DEFAULT_VIEWS,
                                progress: bool = False) -> pd.DataFrame:
    """Load every kept Cohen image through ``torchxrayvision.datasets.COVID19_Dataset``.

    The reference work used this loader; agreeing with it shows our cleaning keeps
    only images its users could load too. Returns one row per kept Cohen image with
    ``xrv_ok``, on failure the error, and ``explained`` (True when it loaded, or when it
    is a 16-bit image that torchxrayvision rejects by design and our loader rescales). Run it in a process that has NOT imported
    TensorFlow (torchxrayvision after TensorFlow segfaults).
    """
    import sys
    from pathlib import Path
    if "tensorflow" in sys.modules:
        raise RuntimeError("import torchxrayvision before TensorFlow (or in another process): "
                           "the other order segfaults")
    xrv = _import_torchxrayvision()
    from .config import SOURCES

    root = Path(data_dir) / SOURCES["cohen"]
    ds = xrv.datasets.COVID19_Dataset(imgpath=str(root / "images"), csvpath=str(root / "metadata.csv"),
                                      views=list(views))
    index = {name: i for i, name in enumerate(ds.csv["filename"])}
    cohen = kept[kept["source"] == "cohen"]
    rows = []
    iterator = cohen["image_path"]
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="torchxrayvision", unit="img")
    for path in iterator:
        name = Path(path).name
        if name not in index:
            rows.append((path, False, None, "not in COVID19_Dataset for these views"))
            continue
        try:
            shape = tuple(ds[index[name]]["img"].shape)
            rows.append((path, True, shape, ""))
        except Exception as e:  # report every failure, do not stop
            rows.append((path, False, None, f"{type(e).__name__}: {e}"))
    out = pd.DataFrame(rows, columns=["image_path", "xrv_ok", "xrv_shape", "error"])
    out["explained"] = [ok or _is_high_bit_depth(p) for ok, p in zip(out["xrv_ok"], out["image_path"])]
    return out


# Operator schemas defined by _import_torchxrayvision, kept referenced: a torch Library removes
# its definitions when it is garbage-collected.
_TORCHVISION_SCHEMAS: list = []


def _import_torchxrayvision():
    """Import torchxrayvision, also beside a torchvision whose compiled operators cannot load.

    torchxrayvision imports torchvision (transforms, model classes). PyPI's torchvision for Linux
    x86_64 is built against PyPI's CUDA torch; beside the CPU build of torch (our lock) its C++
    extension does not load, and torchvision 0.28 then fails at import, registering fake kernels
    for two of those operators without checking that they exist ("operator torchvision::nms does
    not exist"). On exactly that error this defines the two schemas, without kernels, and imports
    again: torchvision's Python part loads, and calling nms or qnms raises. With a torchvision
    built for the installed torch (PyTorch's CPU index, or CUDA torch) the first import works and
    nothing is defined.
    """
    import importlib
    import sys
    try:
        return importlib.import_module("torchxrayvision")
    except RuntimeError as e:
        if not ("operator torchvision::" in str(e) and "does not exist" in str(e)):
            raise
    import torch
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "torchxrayvision")]:
        del sys.modules[name]   # the half-imported packages, imported again below
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SCHEMAS.append(lib)
    return importlib.import_module("torchxrayvision")


def _is_high_bit_depth(path: str) -> bool:
    """torchxrayvision's normalize() rejects pixel values above 255; our loader rescales
    16-bit images, so such a failure is explained, not a broken file."""
    from PIL import Image
    with Image.open(path) as img:
        return img.mode in ("I;16", "I;16B", "I;16L", "I", "F")
