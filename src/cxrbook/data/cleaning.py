"""Cleaning: keep usable frontal X-rays with a known label; log every dropped row.

Rules are applied in this order; a row is logged once, with the first rule it fails:

=====================  ===========================================================
reason                 meaning
=====================  ===========================================================
outside_collection     the row's path (absolute, ``../``, or a symlink) resolves outside
                       its collection's folder: never opened
non_xray_modality      modality is not X-ray (CT etc.)
view_not_kept          view is not one of the kept views (lateral, axial, blank...)
unknown_finding        label is ``unknown`` (todo, blank, ARDS alone, unrecognized)
missing_file           the listed image file does not exist
is_a_directory         the listed path is a folder
dangling_symlink       a symbolic link to nothing
symlink_loop           a symbolic link that leads back to itself
not_a_regular_file     a named pipe, socket or device (never opened)
permission_denied      the file cannot be read
empty_file             zero-byte file
dicom_unsupported      a DICOM file (convert it to PNG first; the detail says how)
too_many_pixels        over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)
not_an_image           not a decodable image format
truncated_or_corrupt   starts like an image but does not decode
too_small              a side under ``images.MIN_SIDE_PX`` (32) pixels
extreme_aspect_ratio   one side over ``images.MAX_ASPECT_RATIO`` (4) times the other
constant_image         every pixel the same value
duplicate_image        same bytes as an earlier kept image, with the same label (detail names it)
label_conflict         same bytes as another usable row whose label differs: every copy is
                       dropped (detail names the others and their labels); which label is
                       right cannot be told from the files, so neither is trusted
=====================  ===========================================================

The rows without a ``collection_dir`` column (a table built by hand) are not confined.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from .images import REASONS, check_image, file_sha256

DEFAULT_VIEWS = ("PA", "AP", "AP Supine")
LOG_COLUMNS = ["source", "row_id", "image_path", "reason", "detail"]
# metadata rules, then every image reason of images.REASONS (in its order), then duplicates
REASON_ORDER = ["outside_collection", "non_xray_modality", "view_not_kept", "unknown_finding", *REASONS,
                "duplicate_image", "label_conflict"]


def outside_collection(image_path: str, collection_dir: str) -> str | None:
    """None when ``image_path``, symlinks and ``..`` resolved, lies inside ``collection_dir``; else the detail.

    Only resolves names (``os.path.realpath`` never opens the file, and returns for a symlink loop).
    """
    real, root = os.path.realpath(image_path), os.path.realpath(collection_dir)
    if os.path.commonpath([real, root]) == root:
        return None
    return f"resolves to {real}, outside the collection folder {root}"


def clean(tidy: pd.DataFrame, views: Sequence[str] = DEFAULT_VIEWS,
          progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the tidy table into (kept rows, log of dropped rows with reason and detail).

    ``len(kept) + len(log) == len(tidy)`` always holds; the function checks it.
    """
    reasons: dict[int, tuple[str, str]] = {}
    confined = "collection_dir" in tidy.columns
    for i, row in tidy.iterrows():
        outside = outside_collection(row["image_path"], row["collection_dir"]) if confined else None
        if outside:
            reasons[i] = ("outside_collection", outside)
        elif row["modality"] != "X-ray":
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
    copies: dict[str, list[int]] = {}  # content hash -> usable rows with those bytes, in table order
    for i in iterator:
        path = tidy.at[i, "image_path"]
        reason, detail = check_image(path)
        if reason:  # a reason without a detail of its own (missing_file) is explained in words
            reasons[i] = (reason, detail or REASONS.get(reason, ""))
        else:
            copies.setdefault(file_sha256(path), []).append(i)
    reasons.update(_duplicates(tidy, copies))

    dropped = sorted(reasons)
    log = tidy.loc[dropped, ["source", "row_id", "image_path"]].copy()
    log["reason"] = [reasons[i][0] for i in dropped]
    log["detail"] = [reasons[i][1] for i in dropped]
    kept = tidy.drop(index=dropped)
    if len(kept) + len(log) != len(tidy):  # pragma: no cover - invariant
        raise AssertionError("cleaning lost rows")
    return kept.reset_index(drop=True), log.reset_index(drop=True)[LOG_COLUMNS]


def _duplicates(tidy: pd.DataFrame, copies: dict[str, list[int]]) -> dict[int, tuple[str, str]]:
    """Rows to drop among byte-identical copies: the later copies when all share one label
    (``duplicate_image``), every copy when their labels differ (``label_conflict``)."""
    def name(i: int) -> str:
        return f"{tidy.at[i, 'source']} row {tidy.at[i, 'row_id']} ({tidy.at[i, 'image_path']})"

    out: dict[int, tuple[str, str]] = {}
    for rows in copies.values():
        if len(rows) < 2:
            continue
        if tidy.loc[rows, "label"].nunique() == 1:
            out.update({i: ("duplicate_image", f"same bytes as {name(rows[0])}") for i in rows[1:]})
            continue
        for i in rows:
            others = "; ".join(f"{name(j)} labelled {tidy.at[j, 'label']}" for j in rows if j != i)
            out[i] = ("label_conflict", f"labelled {tidy.at[i, 'label']}, but the same bytes are {others}")
    return out


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
    from ..config import SOURCES

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
