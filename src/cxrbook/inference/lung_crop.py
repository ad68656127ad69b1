"""Crop an image to its lungs before scoring: ``predict --crop-lungs`` and the models notebook 09 trains on crops.

A crop here is exactly notebook 09's: the image decoded at full resolution
(``images.load_gray``), resized to the detector's input, both lungs detected
(``models.detection.lung_regions``; a lung below the detector's confidence gets the
training split's mean box), the union of the two boxes widened by the margin cut from
the full-resolution image. The classifier's own preprocessing then runs on the crop.

A model trained on crops says so in its sidecar (notebook 09 writes it)::

    "lung_crop": {"detector": "lung_detector.weights.h5", "detector_sha256": str,
                  "margin": float, "min_confidence": float}

and is always scored on crops; without its detector it is refused. ``--crop-lungs`` on a
model trained on whole images crops too, with the detector's own margin, and warns that
the model never saw crops. The detector is ``--detector PATH``, else the one named by the
sidecar beside the model, else ``lung_crops/lung_detector.weights.h5`` under the model's
folder (where notebook 09 saves it). Loading it imports TensorFlow (seconds) and runs no
code from its files (``models.detection.load_detector``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

LUNG_CROP_KEY = "lung_crop"
DETECTOR_NAME = "lung_detector.weights.h5"
CROP_FOLDER = "lung_crops"   # under outputs/models/: notebook 09's detector and crop-trained models


def crop_settings(sidecar: dict) -> dict | None:
    """The sidecar's ``lung_crop`` entry (a model trained on lung crops), checked; None for a whole-image model."""
    entry = sidecar.get(LUNG_CROP_KEY)
    if entry is None:
        return None
    try:
        name = str(entry["detector"])
        margin, conf = float(entry["margin"]), float(entry["min_confidence"])
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"the sidecar's {LUNG_CROP_KEY!r} entry is unusable ({type(e).__name__}: {e})") from None
    if Path(name).name != name or not name.endswith(".weights.h5"):
        raise ValueError(f"the sidecar's {LUNG_CROP_KEY}.detector must be a bare .weights.h5 file name, got {name!r}")
    if not (0.0 <= margin <= 1.0 and 0.0 <= conf <= 1.0):
        raise ValueError(f"the sidecar's {LUNG_CROP_KEY} margin and min_confidence must lie in [0, 1]")
    return {**entry, "detector": name, "margin": margin, "min_confidence": conf}


def find_detector(model_path: str | os.PathLike, sidecar: dict, detector: str | os.PathLike | None = None
                  ) -> Path | None:
    """The detector to crop with: ``detector`` if given, else the sidecar's beside the model, else notebook
    09's ``lung_crops/lung_detector.weights.h5`` under the model's folder; None when none exists."""
    if detector:
        return Path(detector)
    folder = Path(model_path).parent
    settings = crop_settings(sidecar)
    candidates = ([folder / settings["detector"]] if settings else []) + [folder / CROP_FOLDER / DETECTOR_NAME]
    return next((p for p in candidates if p.is_file()), None)


class LungCropper:
    """A loaded lung detector that crops full-resolution grayscale images (``crop(gray)``)."""

    def __init__(self, path: str | os.PathLike, margin: float | None = None, min_confidence: float | None = None):
        from ..models.detection import load_detector
        try:
            self.model, self.meta = load_detector(path)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        self.path = Path(path)
        self.image_size = int(self.meta["config"]["image_size"])
        self.margin = float(self.meta["margin"] if margin is None else margin)
        self.min_confidence = float(self.meta["min_confidence"] if min_confidence is None else min_confidence)

    def crop(self, gray: np.ndarray) -> tuple[np.ndarray, dict]:
        """(the crop of ``gray``, what was done: region, per-lung confidence and fallback)."""
        from ..data.images import prepare
        from ..models.detection import LUNG_CLASSES, crop_to_region, lung_regions
        found = lung_regions(self.model, prepare(gray, self.image_size)[None], self.meta["mean_box"], self.margin,
                             self.min_confidence, batch_size=1)
        info = {"region": [round(float(v), 4) for v in found.regions[0]],
                "fell_back": [lung for k, lung in enumerate(LUNG_CLASSES) if found.fell_back[0, k]],
                "confidence": {lung: (None if np.isnan(found.scores[0, k]) else round(float(found.scores[0, k]), 3))
                               for k, lung in enumerate(LUNG_CLASSES)}}
        return crop_to_region(gray, found.regions[0]), info

    def describe(self, info: dict) -> str:
        """One line saying how an image was cropped."""
        x0, y0, x1, y1 = info["region"]
        fell = (f"; the mean box stands in for the {' and '.join(info['fell_back'])} lung "
                f"(confidence below {self.min_confidence:g})" if info["fell_back"] else "")
        return (f"lungs: cropped to x {x0:.2f}-{x1:.2f}, y {y0:.2f}-{y1:.2f} of the image "
                f"(detector {self.path.name}, margin {self.margin:g}){fell}")


def cropper_for(model_path: str | os.PathLike, sidecar: dict, requested: bool = False,
                detector: str | os.PathLike | None = None) -> tuple[LungCropper | None, list[str]]:
    """(the cropper a model needs or was asked for, warnings to print); (None, []) when no crop is wanted.

    ValueError (the command's usage error) when a crop is needed, because the model was
    trained on crops or ``requested``, and no detector is found or it cannot be loaded.
    """
    settings = crop_settings(sidecar)
    if settings is None and not requested and not detector:
        return None, []
    path = find_detector(model_path, sidecar, detector)
    why = (f"{model_path} was trained on lung crops (its sidecar's {LUNG_CROP_KEY})" if settings
           else "--crop-lungs was asked for")
    if path is None:
        raise ValueError(f"{why}, but no lung detector was found (looked for "
                         f"{settings['detector'] + ' beside the model, ' if settings else ''}"
                         f"{Path(model_path).parent / CROP_FOLDER / DETECTOR_NAME}); pass --detector PATH "
                         "(notebook 09 saves one) instead of scoring whole images")
    warnings = []
    if settings is None:
        cropper = LungCropper(path)
        warnings.append(f"warning: {Path(model_path).name} was trained on whole images, not lung crops: its scores "
                        "on crops are outside what it was trained and tested on")
    else:
        cropper = LungCropper(path, settings["margin"], settings["min_confidence"])
        want = settings.get("detector_sha256")
        if want:
            from ..data.images import file_sha256
            if file_sha256(path) != want:
                warnings.append(f"warning: detector {path} is not the one {Path(model_path).name} was trained with "
                                f"({settings['detector']}, sha256 {want[:12]}...): its crops may differ")
    return cropper, warnings
