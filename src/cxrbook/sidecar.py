"""The JSON sidecar saved beside every model: how to use it (classes, image size, threshold, ...).

Light on purpose (json only): ``predict`` reads sidecars without importing Keras,
and ``models`` reads them without importing ``predict``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class SidecarError(ValueError, FileNotFoundError):
    """The model file or its sidecar JSON is missing (a ValueError for the CLI, a FileNotFoundError for callers)."""


def read_sidecar(model_path: str | os.PathLike) -> dict:
    """The JSON sidecar saved beside a model by ``models.save_model``; ValueError with the reason if unusable."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise SidecarError(f"model file {model_path} does not exist (train one in notebook 04 or pass --model)")
    side = model_path.with_suffix(".json")
    if not side.is_file():
        raise SidecarError(f"sidecar {side} for model {model_path} is missing: it records the classes, image size, "
                           "threshold and preprocessing the model needs (saved by cxrbook.models.save_model)")
    try:
        meta = json.loads(side.read_text())
    except ValueError as e:
        raise ValueError(f"sidecar {side} is not valid JSON ({e})") from None
    missing = [k for k in ("classes", "image_size") if k not in meta]
    if missing:
        raise ValueError(f"sidecar {side} lacks {missing}")
    return meta
