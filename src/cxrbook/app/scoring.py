"""The app's one adapter to the rest of cxrbook: find the saved models, load each once, score one image.

Everything the app needs from the workbook comes through here (``saved_model.load_model`` on ONNX
Runtime, ``predict.preprocess_file`` as in training, ``predict.decide`` at the model's validation
threshold, the model's confound caution, ``overlay.overlay_image`` for Grad-CAM, ``track_record`` for what its tests say), so the package's
layout can change behind this one module.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cxrbook.atomic import atomic_write
from cxrbook.data.images import DICOM_HELP, REASONS, UnreadableImage
from cxrbook.inference.predict import decide, preprocess_file
from cxrbook.inference.saved_model import load_model
from cxrbook.inference.track_record import TrackRecord, track_record
from cxrbook.models.sidecar import DISCLAIMER, InvalidSidecar, check_fields

__all__ = ["DISCLAIMER", "BadImage", "ModelInfo", "ModelUnavailable", "Models", "Scored", "TrackRecord", "track_record"]

DICOM_SUFFIXES = (".dcm", ".dicom")
MODEL_SUFFIXES = (".keras", ".joblib")
_GRADCAM_LOCK = threading.Lock()  # Keras gradients one at a time (the model is shared by every thread)


class BadImage(ValueError):
    """An upload that cannot be scored; ``reason`` is a key of ``images.REASONS``, the message names the file."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class ModelUnavailable(ValueError):
    """No such model, or it cannot be loaded (the message says why)."""


@dataclass(frozen=True)
class ModelInfo:
    """A saved model the app offers: its name (file stem), file and sidecar."""

    name: str
    path: Path
    sidecar: dict

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.sidecar["classes"]]

    @property
    def threshold(self) -> float | None:
        t = self.sidecar.get("threshold")
        return None if t is None else float(t)

    @property
    def image_size(self) -> int:
        return int(self.sidecar["image_size"])

    @property
    def kind(self) -> str:
        return "ensemble" if self.path.suffix == ".json" else self.path.suffix.lstrip(".")


@dataclass
class Scored:
    """One scored image: probabilities per class, the decision and what must be said beside it."""

    model: str
    classes: list[str]
    probabilities: list[float]
    predicted: str
    threshold: float | None
    score: float            # P(positive) for a binary model, else P(predicted class)
    score_label: str        # e.g. "P(covid)"
    caution: str
    disclaimer: str = DISCLAIMER
    overlay_written: bool = False
    messages: list[str] = field(default_factory=list)


def discover(models_dir: str | os.PathLike) -> dict[str, ModelInfo]:
    """Every usable saved model in ``models_dir``: ``.keras``/``.joblib`` files with a sidecar, and notebook 06's
    ensembles (``.json`` with ``"kind": "ensemble"``); binary models without a stored threshold are left out."""
    found: dict[str, ModelInfo] = {}
    folder = Path(models_dir)
    if not folder.is_dir():
        return found
    for p in sorted(folder.iterdir()):
        side_path = p if p.suffix == ".json" else p.with_suffix(".json")
        if p.suffix not in MODEL_SUFFIXES + (".json",) or not side_path.is_file():
            continue
        try:
            side = json.loads(side_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(side, dict):
            continue
        try:  # the checks load_model makes again when the model is first used
            check_fields(side, side_path, thumbnails=p.suffix == ".joblib")
        except InvalidSidecar:
            continue
        if p.suffix == ".json" and side.get("kind") != "ensemble":
            continue  # a model's sidecar, listed with its model file
        if len(side["classes"]) == 2 and side.get("threshold") is None:
            continue  # predict refuses it too: no validation threshold
        if side.get("lung_crop"):
            continue  # trained on lung crops (notebook 09): predict --crop-lungs scores it with its detector
        found[p.stem] = ModelInfo(p.stem, p, side)
    return found


class Models:
    """The models of one folder, each loaded on first use and kept for the life of the process."""

    def __init__(self, models_dir: str | os.PathLike, default: str | None = None):
        self.models_dir = Path(models_dir)
        self.available = discover(self.models_dir)
        self.default = default if default in self.available else next(iter(self.available), None)
        self._scorers: dict[str, object] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self.available)

    def info(self, name: str | None) -> ModelInfo:
        """The model called ``name`` (the default for None or ""); ModelUnavailable when there is none."""
        name = name or self.default
        if name is None:
            raise ModelUnavailable(f"no saved model in {self.models_dir}: run `make report` "
                                   "(notebooks 04-07 save them)")
        if name not in self.available:
            raise ModelUnavailable(f"unknown model {name!r}; choose one of {', '.join(self.available) or 'none'}")
        return self.available[name]

    def scorer(self, name: str | None):
        """The loaded scorer (ONNX Runtime; exported once on first use), loaded once per process."""
        info = self.info(name)
        with self._lock:
            if info.name not in self._scorers:
                try:
                    self._scorers[info.name] = load_model(info.path, engine="onnx")
                except ValueError as e:
                    raise ModelUnavailable(f"model {info.name} cannot be loaded: {e}") from None
            return self._scorers[info.name]

    def has_gradcam(self, name: str | None) -> bool:
        return bool(self.scorer(name).has_gradcam)

    def score_file(self, name: str | None, path: Path, original_name: str, max_pixels: int,
                   overlay_path: Path | None = None) -> Scored:
        """Score the stored upload ``path`` (shown to the user as ``original_name``); with ``overlay_path`` also
        write the Grad-CAM overlay there when the model has one. BadImage when the file cannot be scored."""
        scorer = self.scorer(name)
        info = self.info(name)
        check_upload(path, original_name, max_pixels)
        try:
            gray, x = preprocess_file(path, scorer.sidecar)
        except UnreadableImage as e:
            raise BadImage(e.reason, _unreadable_message(e, path, original_name)) from None
        probs = scorer.probabilities(x[None])
        classes = list(scorer.classes)
        label = decide(probs, classes, scorer.threshold)[0]
        p = [float(v) for v in probs[0]]
        if len(classes) == 2:
            score, score_label = p[1], f"P({classes[1]})"
        else:
            score, score_label = p[classes.index(label)], f"P({label})"
        out = Scored(info.name, classes, p, label, scorer.threshold, score, score_label,
                     scorer.caution)
        if overlay_path is not None:
            if not scorer.has_gradcam:
                out.messages.append(f"no Grad-CAM overlay: {info.name} is not a CNN")
            else:
                try:
                    write_overlay(scorer, gray, x, out, overlay_path)
                    out.overlay_written = True
                except (ValueError, OSError, RuntimeError) as e:
                    overlay_path.unlink(missing_ok=True)
                    out.messages.append(f"no Grad-CAM overlay: {type(e).__name__}: {e}")
        return out


def write_overlay(scorer, gray, x, scored: Scored, path: Path) -> None:
    """The captioned Grad-CAM overlay PNG of one image (as ``predict`` writes it)."""
    from cxrbook.models.overlay import overlay_image
    with _GRADCAM_LOCK:
        heat = scorer.heatmaps(x[None])
    probs = "  ".join(f"P({c})={v:.3f}" for c, v in zip(scored.classes, scored.probabilities))
    caption = f"{DISCLAIMER.upper()}\n{scored.model}: {probs} -> {scored.predicted}\n{scored.caution}"
    with atomic_write(path) as tmp:
        overlay_image(gray, heat[0], caption).save(tmp, format="PNG", compress_level=1)


def check_upload(path: Path, original_name: str, max_pixels: int) -> None:
    """BadImage for a DICOM (by name or content) and for images over ``max_pixels`` (read from the header only,
    before anything is decoded: a decompression bomb never reaches the decoder)."""
    if Path(original_name).suffix.lower() in DICOM_SUFFIXES:
        raise BadImage("dicom_unsupported", f"{original_name}: not scored: {REASONS['dicom_unsupported']} "
                                            f"({DICOM_HELP})")
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - not an image (or a broken header): preprocess_file says which
        return
    if w * h > max_pixels:
        raise BadImage("too_many_pixels", f"{original_name}: not scored: the image is {w}x{h} = {w * h:,} pixels, "
                                          f"more than this server's limit of {max_pixels:,} (a decompression bomb "
                                          "or a very large scan): downscale it first")


def _unreadable_message(e: UnreadableImage, path: Path, original_name: str) -> str:
    detail = (e.detail or "").replace(str(path), original_name).replace(path.name, original_name)
    if e.reason == "dicom_unsupported":
        detail = DICOM_HELP
    elif e.reason not in ("too_many_pixels",):
        detail = ""  # decoder internals say nothing useful to the user
    return f"{original_name}: not scored: {REASONS.get(e.reason, e.reason)}" + (f" ({detail})" if detail else "")
