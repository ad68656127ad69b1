"""Decode every image once, cache the pixel arrays, reuse them in every notebook.

Decoding a few thousand full-size X-rays (and CLAHE on them) takes minutes; the
models only need small squares. ``load_arrays`` does that work once per split
manifest and image size and stores the result in ``cache_dir/<key>.npz``; later
calls with the same inputs read the file back and decode nothing.

The cache key covers the manifest (which files, their labels, patients, sources
and splits) and the preprocessing parameters, not the image bytes: if a file is
replaced in place, delete the cache folder. Nothing here imports Keras, so the
caching works in any notebook (and before torchxrayvision, see ``__init__``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_write
from .images import CLAHE_CLIP_LIMIT, load_gray, prepare

# Bump when the decoding or the file layout changes, so old caches stop matching.
CACHE_VERSION = 1
SPLITS = ("train", "val", "test")
# skimage's default clip limit for equalize_adapthist (fraction of the tile's
# pixels a histogram bin may hold); kernel size is its default, 1/8 of each side.
_MANIFEST_COLUMNS = ["image_path", "label", "split", "patient_id", "source"]
_META_FIELDS = ("labels", "patient_id", "image_path", "source")


@dataclass
class SplitArrays:
    """Pixels and row metadata of one split, in a stable order (sorted by image_path)."""

    x: np.ndarray           # (n, size, size, 1) uint8 grayscale
    labels: np.ndarray      # (n,) str
    patient_id: np.ndarray  # (n,) str
    image_path: np.ndarray  # (n,) str
    source: np.ndarray      # (n,) str

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class CachedData:
    """The three splits as arrays, plus where they came from.

    ``hit`` is True when the arrays were read from an existing cache file.
    Index by split name: ``data["train"].x``.
    """

    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    key: str
    path: Path
    hit: bool
    image_size: int
    clahe: bool

    def __getitem__(self, split: str) -> SplitArrays:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; choose one of {SPLITS}")
        return getattr(self, split)

    def items(self) -> Iterator[tuple[str, SplitArrays]]:
        """(split name, arrays) for train, val, test."""
        return ((s, self[s]) for s in SPLITS)


def _manifest(splits_df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in _MANIFEST_COLUMNS if c not in splits_df.columns]
    if missing:
        raise ValueError(f"splits table lacks columns {missing}; it needs {_MANIFEST_COLUMNS}")
    bad = sorted(set(splits_df["split"].astype(str)) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown split values {bad}; expected {SPLITS}")
    m = splits_df[_MANIFEST_COLUMNS].astype(str)
    # Sorting makes the key and the stored order independent of the table's row order.
    return m.sort_values(["split", "image_path", "label", "patient_id"], kind="mergesort").reset_index(drop=True)


def cache_key(splits_df: pd.DataFrame, image_size: int, clahe: bool) -> str:
    """sha256 of the sorted split manifest and the preprocessing parameters.

    Covers image_path, label, split, patient_id (and source, which is stored too),
    image_size, clahe (with its clip limit) and CACHE_VERSION.
    """
    m = _manifest(splits_df)
    h = hashlib.sha256()
    params = {"image_size": int(image_size), "clahe": bool(clahe),
              "clahe_clip_limit": CLAHE_CLIP_LIMIT if clahe else None, "version": CACHE_VERSION}
    h.update(json.dumps(params, sort_keys=True).encode())
    for row in m.itertuples(index=False):
        # Unit separator between fields: no path or id contains it, so rows cannot collide.
        h.update(("\x1f".join(row) + "\n").encode())
    return h.hexdigest()


def _decode(path: str, image_size: int, clahe: bool) -> np.ndarray:
    return prepare(load_gray(path), image_size, clahe)


def default_cache_dir() -> Path:
    """``outputs/cache`` of the default output folder (used when no cache folder is given)."""
    from ..config import DEFAULT_OUTPUT_DIR
    return DEFAULT_OUTPUT_DIR / "cache"


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed .npz next to its destination, then rename it into place.

    A crash mid-write leaves a stray temp file, never a truncated cache that a
    later run would trust.
    """
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_npz(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an .npz written by :func:`save_npz` or ``np.savez``, without pickles.

    Each array's header is read first, so an object array is refused and an array that
    claims more bytes than its archive member holds (a truncated or crafted file) is never
    allocated; a truncated or corrupt archive (cut zip, bad CRC) is a ValueError naming the
    file, so callers rebuild a cache instead of crashing. ``max_bytes`` bounds the arrays'
    total size, for files a user may hand us.
    """
    import zipfile
    import zlib
    from numpy.lib import format as npy
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            total = sum(m.file_size for m in members)
            if max_bytes is not None and total > max_bytes:
                raise ValueError(f"it holds {total:,} bytes of arrays, more than the {max_bytes:,} allowed")
            for m in members:
                if not m.filename.endswith(".npy"):
                    raise ValueError(f"member {m.filename!r} is not an array")
                with archive.open(m) as f:
                    version = npy.read_magic(f)
                    shape, fortran, dtype = (npy.read_array_header_1_0(f) if version == (1, 0)
                                             else npy.read_array_header_2_0(f))
                    if dtype.hasobject:
                        raise ValueError(f"array {m.filename!r} holds Python objects (a pickle), which are not read")
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if nbytes > m.file_size:
                        raise ValueError(f"array {m.filename!r} claims {nbytes:,} bytes but its member holds "
                                         f"{m.file_size:,}")
                    buf = bytearray(nbytes)
                    if f.readinto(buf) != nbytes or f.read(1):  # reading to the end checks the CRC
                        raise ValueError(f"array {m.filename!r} is cut short or has trailing bytes")
                out[m.filename[:-4]] = np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path} is truncated or corrupt ({e})") from None
    return out


def load_arrays(splits_df: pd.DataFrame, image_size: int, clahe: bool = False,
                cache_dir: str | os.PathLike | None = None, progress: bool = True) -> CachedData:
    """Pixels of every image in the splits table, decoded once and cached.

    Each image is decoded with ``images.load_gray``, optionally equalised with
    CLAHE (``CLAHE_CLIP_LIMIT``), and resized once to ``image_size`` squares.
    The arrays are stored in ``cache_dir/<cache_key>.npz`` (default
    ``outputs/cache``); a later call with the same manifest and parameters reads
    that file (``hit=True``) and decodes nothing. Rows within a split are sorted
    by image_path.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(splits_df, image_size, clahe)
    path = cache_dir / f"{key}.npz"
    stored: dict[str, np.ndarray] | None = None
    hit = False
    if path.is_file():
        try:
            stored, hit = read_npz(path), True
            lacking = sorted({f"{s}__{f}" for s in SPLITS for f in ("x", *_META_FIELDS)} - set(stored))
            if lacking:
                raise ValueError(f"{path} lacks the arrays {lacking}")
        except ValueError as e:
            warnings.warn(f"cache file {path} is unreadable ({e}); decoding the images again")
            stored, hit = None, False
    if stored is None:
        m = _manifest(splits_df)
        stored = {}
        from tqdm.auto import tqdm
        bar = tqdm(total=len(m), desc=f"decoding images ({image_size}px{', CLAHE' if clahe else ''})",
                   disable=not progress)
        for split in SPLITS:
            rows = m[m["split"] == split]
            x = np.zeros((len(rows), image_size, image_size, 1), dtype=np.uint8)
            for i, p in enumerate(rows["image_path"]):
                x[i, :, :, 0] = _decode(p, image_size, clahe)
                bar.update(1)
            stored[f"{split}__x"] = x
            for field, column in zip(_META_FIELDS, ("label", "patient_id", "image_path", "source")):
                stored[f"{split}__{field}"] = rows[column].to_numpy(dtype=str)
        bar.close()
        save_npz(path, stored)

    def split_arrays(split: str) -> SplitArrays:
        return SplitArrays(x=stored[f"{split}__x"],
                           **{f: stored[f"{split}__{f}"] for f in _META_FIELDS})

    return CachedData(train=split_arrays("train"), val=split_arrays("val"), test=split_arrays("test"),
                      key=key, path=path, hit=hit, image_size=int(image_size), clahe=bool(clahe))


def encode_labels(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Integer index of each label in ``classes`` (binary ("normal", "covid"): covid = 1)."""
    classes = list(classes)
    labels = np.asarray(labels, dtype=str)
    unknown = sorted(set(labels.tolist()) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[lab] for lab in labels], dtype=np.int64)


def to_rgb_float(x_uint8: np.ndarray) -> np.ndarray:
    """(n, s, s[, 1]) uint8 grayscale to (n, s, s, 3) float32 in [0, 255].

    The ImageNet backbones expect three channels; the model-specific
    ``preprocess_input`` is applied inside each model, not here.
    """
    x = np.asarray(x_uint8)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected (n, s, s) or (n, s, s, 1|3) images, got shape {x.shape}")
    x = x.astype(np.float32)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


# --------------------------------------------------------------------------- training input

def reference_affine(u, height: int, width: int, zoom: float, shear_degrees: float, flip: bool, ops):
    """(n, 8) projective transforms (output pixel -> input pixel) of the reference augmentation.

    ``u`` holds (n, 4) uniform draws in [0, 1): zoom factors ``zx, zy ~ U(1 - zoom, 1 + zoom)``,
    a shear angle ``~ U(-shear_degrees, shear_degrees)`` degrees and a horizontal flip with
    p = 0.5 (``flip``), composed about the image centre into one affine map in the layout of
    ``ImageProjectiveTransformV3`` / ``keras.ops.image.affine_transform``. ``ops`` is
    ``keras.ops`` (the Keras layer) or ``tensorflow`` (the tf.data pipeline): the same
    arithmetic on the same draws, so both give the same distribution of transforms.
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    zx = (1.0 - zoom) + (2.0 * zoom) * u[:, 0]
    zy = (1.0 - zoom) + (2.0 * zoom) * u[:, 1]
    shear = (-shear_degrees + (2.0 * shear_degrees) * u[:, 2]) * (3.141592653589793 / 180.0)
    sign = ops.where(u[:, 3] < 0.5, -1.0, 1.0) if flip else ops.ones_like(zx)
    zero = ops.zeros_like(zx)
    # output (x, y) -> input: centre + Flip . Shear . Zoom . (output - centre)
    m00, m01 = sign * zx, -sign * ops.sin(shear) * zy
    m10, m11 = zero, ops.cos(shear) * zy
    return ops.stack([m00, m01, cx - m00 * cx - m01 * cy, m10, m11, cy - m10 * cx - m11 * cy, zero, zero], axis=1)


def training_batches(x_uint8: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                     augment: dict | None = None, channels: int = 3):
    """A ``tf.data.Dataset`` of shuffled training batches ``(images, y)`` for ``model.fit``, built from the cache's
    uint8 grayscale pixels.

    The arrays stay uint8 with one channel (a quarter of the float bytes, a twelfth of three float
    channels) until a parallel ``map`` turns each batch into float32 in [0, 255], applies the
    reference augmentation to the ONE gray channel when ``augment`` is given (a dict of
    ``ReferenceAugmentation``'s ``zoom``, ``shear_degrees``, ``flip``: ``reference_affine`` on
    stateless uniform draws, one bilinear resampling pass with nearest fill), and only then
    repeats it to ``channels`` channels. ``prefetch`` lets the next batches be prepared while the
    model trains on this one. The order is reshuffled and the transforms redrawn every epoch
    (seeded by ``seed``: the same seed gives the same batches). Imports TensorFlow.
    """
    import tensorflow as tf

    x = np.asarray(x_uint8)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1 or x.dtype != np.uint8:
        raise ValueError(f"expected (n, s, s[, 1]) uint8 grayscale images, got {x.dtype} {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    height, width = int(x.shape[1]), int(x.shape[2])
    pairs = tf.data.Dataset.from_tensor_slices((x, np.asarray(y)))
    pairs = pairs.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    # One int64 per batch, redrawn each epoch: the seed of that batch's stateless draws.
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def prepare(batch, draw):
        images, labels = batch
        images = tf.cast(images, tf.float32)
        if augment is not None:
            u = tf.random.stateless_uniform((tf.shape(images)[0], 4), seed=tf.stack([draw, tf.constant(seed, tf.int64)]))
            transforms = reference_affine(u, height, width, float(augment["zoom"]), float(augment["shear_degrees"]),
                                          bool(augment["flip"]), tf)
            images = tf.raw_ops.ImageProjectiveTransformV3(
                images=images, transforms=transforms, output_shape=tf.constant([height, width]),
                fill_value=tf.constant(0.0), interpolation="BILINEAR", fill_mode="NEAREST")
        if channels != 1:
            images = tf.repeat(images, channels, axis=-1)
        return images, labels

    # tf.data runs each map call's ops on one thread unless told otherwise; the resampling op can use
    # every core (on 2 cores: 786 -> 1229 images/s for the augmented map alone, measured side by side).
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return (tf.data.Dataset.zip((pairs, draws))
            .map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE)
            .with_options(options))
