"""Read chest X-ray files robustly: one decoder for every notebook and the CLI.

Every image becomes an 8-bit grayscale array, upright: the EXIF orientation tag is applied
(``ImageOps.exif_transpose``), as every viewer does. 16-bit PNGs are rescaled by their
own range, RGBA is flattened onto black, palette and RGB images are converted
with the ITU-R 601 luma weights (PIL's ``L``). Files that cannot be used raise
``UnreadableImage`` whose ``reason`` is one of ``REASONS``; no other exception
escapes ``load_gray`` for a bad file, so every caller (cleaning, the training
cache, ``predict``/``evaluate``, the app) can log one row and go on.

Images that decode but carry no chest X-ray to score are refused with the same rule everywhere
(cleaning drops them, ``predict``/``evaluate`` report them as not scored): a side under
``MIN_SIDE_PX`` pixels, a longer side over ``MAX_ASPECT_RATIO`` times the shorter one, or a
constant image (every pixel the same grey). Resized to the model's square input, such a file
still gets a confident-looking score (a 1x1 pixel got "covid at 0.851"), which would be noise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..config import PATH_PROBLEMS, path_problem

# Decode fully or fail: never pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Smallest side, and the most elongated shape, of an image we score or train on (see the module docstring).
# Real collections: smallest side 64 px (NIH thumbnails), most elongated 2.2:1 (a Cohen figure).
MIN_SIDE_PX = 32
MAX_ASPECT_RATIO = 4.0

REASONS = {
    "missing_file": "the listed image file does not exist",
    "is_a_directory": "the path is a folder, not an image file",
    **{k: f"the path {v}" for k, v in PATH_PROBLEMS.items() if k not in ("missing_file", "is_a_directory")},
    "empty_file": "the file has zero bytes",
    "dicom_unsupported": "the file is DICOM, which is not supported: convert it to PNG first",
    "too_many_pixels": "the image has more pixels than Pillow's decompression-bomb limit allows",
    "not_an_image": "the file is not in any image format PIL knows",
    "truncated_or_corrupt": "the file starts like an image but does not decode",
    "too_small": f"the image is smaller than {MIN_SIDE_PX} px on a side: too little to score",
    "extreme_aspect_ratio": f"one side of the image is over {MAX_ASPECT_RATIO:g} times the other: not a chest film",
    "constant_image": "every pixel has the same value: there is no image to score",
}

DICOM_HELP = ("convert it to an 8- or 16-bit PNG first, e.g. with DCMTK `dcmj2pnm --write-png in.dcm out.png`, "
              "or with pydicom + Pillow: `Image.fromarray(pydicom.dcmread('in.dcm').pixel_array).save('out.png')`")


class UnreadableImage(ValueError):
    """An image file that cannot be used; ``reason`` is a key of ``REASONS``."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def to_gray_uint8(img: Image.Image) -> np.ndarray:
    """Convert any PIL image (1, L, P, RGB, RGBA, LA, I;16, I, F) to an HxW uint8 array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return np.round(scaled).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` name or a file with the DICOM magic ``DICM`` at byte 128."""
    p = Path(path)
    if p.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def load_gray(path: str | Path) -> np.ndarray:
    """Decode one image file to an HxW uint8 array, or raise UnreadableImage saying why.

    Only ``UnreadableImage`` leaves this function for a bad file: decoder errors of any type
    (Pillow's ``DecompressionBombError`` for images over ``Image.MAX_IMAGE_PIXELS``, plugin
    bugs, ...) are turned into one with a reason and the original error as detail.
    """
    p = Path(path)
    problem = path_problem(p)  # never opens it: a named pipe would block
    if problem is not None:
        raise UnreadableImage(p, *problem)
    if p.stat().st_size == 0:
        raise UnreadableImage(p, "empty_file")
    if is_dicom(p):
        raise UnreadableImage(p, "dicom_unsupported", DICOM_HELP)
    try:
        with Image.open(p) as img:
            check_shape(p, *img.size)  # from the header: a 50000x1 strip is refused before decoding
            img.load()
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            gray = to_gray_uint8(ImageOps.exif_transpose(img))
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImage(p, "too_many_pixels", str(e)) from None
    except UnidentifiedImageError as e:
        raise UnreadableImage(p, "not_an_image", str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(p, "truncated_or_corrupt", str(e)) from None
    except MemoryError:
        raise UnreadableImage(p, "too_many_pixels", "not enough memory to decode it") from None
    except Exception as e:  # any other decoder failure is still one bad file, not an aborted run
        raise UnreadableImage(p, "truncated_or_corrupt", f"{type(e).__name__}: {e}") from None
    if gray.min() == gray.max():
        raise UnreadableImage(p, "constant_image", f"{gray.shape[1]}x{gray.shape[0]} px, all of value {gray.min()}")
    return gray


def check_shape(path: str | Path, width: int, height: int) -> None:
    """UnreadableImage ``too_small`` or ``extreme_aspect_ratio`` for a shape no chest film has."""
    short, long = min(width, height), max(width, height)
    if short < MIN_SIDE_PX:
        raise UnreadableImage(path, "too_small", f"{width}x{height} px; the smaller side must be at least "
                                                 f"{MIN_SIDE_PX} px")
    if long > MAX_ASPECT_RATIO * short:
        raise UnreadableImage(path, "extreme_aspect_ratio", f"{width}x{height} px, {long / short:.1f}:1; at most "
                                                            f"{MAX_ASPECT_RATIO:g}:1 is scored")


def check_image(path: str | Path) -> tuple[str | None, str]:
    """(None, '') when the image decodes, else (reason, detail)."""
    try:
        load_gray(path)
        return None, ""
    except UnreadableImage as e:
        return e.reason, e.detail


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file's bytes (exact-duplicate detection)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxW uint8 image to size x size (bilinear, aspect ratio not kept, as the reference work)."""
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def thumbnails(x: np.ndarray, size: int = 32) -> np.ndarray:
    """(n, size*size) float32 pixels of (n, s, s[, 1]) uint8 images, downsampled for classical models
    (the pixel logistic regression; here so that scoring it imports nothing heavy)."""
    return np.stack([resize_square(im[..., 0] if im.ndim == 3 else im, size).ravel() for im in x]).astype(np.float32)


# skimage's default clip limit; part of every cache key and model sidecar that uses CLAHE.
CLAHE_CLIP_LIMIT = 0.01


def prepare(gray: np.ndarray, image_size: int, clahe: bool = False) -> np.ndarray:
    """The one training/inference preprocessing of a decoded image: optional CLAHE at full
    resolution (its tiles then see full detail), then a bilinear resize to image_size squares."""
    if clahe:
        from skimage.exposure import equalize_adapthist
        gray = np.round(equalize_adapthist(gray, clip_limit=CLAHE_CLIP_LIMIT) * 255).astype(np.uint8)
    return resize_square(gray, image_size)
