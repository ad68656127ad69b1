"""Score X-ray image files with a saved model: what ``python -m cxrbook predict`` runs.

RESEARCH TOOL, NOT A DIAGNOSIS: every printed line, CSV row, JSON and overlay
image says so. The models were trained on a few hundred public images whose
labels are confounded with the hospital they came from (see notebook 07).

Preprocessing follows the model's sidecar (``<model>.json``) exactly as the
training pipeline did: ``images.load_gray`` (grayscale, RGBA flattened on
black, 16-bit rescaled by its own range), optional CLAHE at full resolution,
bilinear resize to ``image_size``, gray copied to three channels, values 0-255.

Speed: importing TensorFlow takes longer than the whole answer should, so
scores come from ONNX Runtime (``engine="onnx"``, the default; every model is loaded,
checked and scored by ``cxrbook.inference.saved_model.load_model``): a ``.keras`` model gets an
``.onnx`` export beside it on its first use (once; later runs reuse it), and the pixel logistic
regression (``.joblib``) runs the graph written when it was saved (its graph takes the
thumbnails; the pickle is never loaded). Scoring imports neither TensorFlow nor scikit-learn. A Grad-CAM overlay needs gradients, so the first overlay
loads the Keras model (TensorFlow, seconds); ``--no-gradcam`` skips it.
``--engine keras`` scores with Keras instead.

Scoring a whole folder (``evaluate``) lives in :mod:`cxrbook.inference.folder`, the command line in
:mod:`cxrbook.workflow.cli`, the notebook picker and notebook 07's example in
:mod:`cxrbook.inference.widget`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import check_output_dir, create_new
from ..data.images import UnreadableImage, load_gray, prepare
from .lung_crop import LUNG_CROP_KEY
from .saved_model import SavedModel, keras_scorer, load_model
from ..models.overlay import overlay_image
from ..models.sidecar import DISCLAIMER

OVERLAY_SUFFIX = "_gradcam.png"


def track_record_sentence(scorer: SavedModel) -> str:
    """What this model's recorded tests say (``track_record``), printed and captioned beside every score.

    Read from the workbook outputs the model sits in (``<outputs>/models/<name>.keras`` ->
    ``<outputs>/metrics/<name>.json`` and ``<outputs>/external.json``), the sentence the web app shows.
    """
    from .track_record import track_record
    src = scorer.path
    if src is None or src.parent.name != "models":
        where = "an in-memory model" if src is None else f"{src.parent} is not a workbook's outputs/models/ folder"
        return f"Track record: not found ({where}; notebooks 04-08 record each model's tests beside outputs/models/)."
    return track_record(src.parent.parent, src.stem, scorer.classes, scorer.threshold, scorer.image_size).sentence


# =========================================================================== preprocessing and output

def preprocess_file(path: str | os.PathLike, sidecar: dict, crop=None,
                    crop_info: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(full-resolution gray uint8 image, model input (s, s, 3) float32 in [0, 255]).

    As in training (``images.prepare``, also used by the cache): decode with ``images.load_gray``, CLAHE
    at full resolution when ``sidecar["preprocessing"]["clahe"]``, bilinear
    resize to ``sidecar["image_size"]``, gray copied to three channels.
    ``crop``: a ``lung_crop.LungCropper``; the image is first cropped to its lungs (and the gray
    image returned is the crop; ``crop_info``, when given, receives what the crop did). A model
    trained on lung crops is refused without one.
    Raises ``images.UnreadableImage`` (with ``.reason``) for files that cannot be used.
    """
    if crop is None and sidecar.get(LUNG_CROP_KEY):
        raise ValueError("this model was trained on lung crops: score it through predict --crop-lungs "
                         "(lung_crop.cropper_for), never on whole images")
    gray = load_gray(path)
    if crop is not None:
        gray, info = crop.crop(gray)
        if crop_info is not None:
            crop_info.update(info)
        if gray.min() == gray.max():
            raise UnreadableImage(path, "constant_image", f"its lung crop ({gray.shape[1]}x{gray.shape[0]} px) "
                                                          f"is all of value {gray.min()}")
    clahe = bool((sidecar.get("preprocessing") or {}).get("clahe"))
    small = prepare(gray, int(sidecar["image_size"]), clahe).astype(np.float32)  # same function as training
    return gray, np.repeat(small[..., None], 3, axis=-1)


def decide(probs: np.ndarray, classes: Sequence[str], threshold: float | None) -> list[str]:
    """Predicted class names: binary ``P(positive) >= threshold``, otherwise argmax."""
    probs = np.asarray(probs)
    if len(classes) == 2:
        if threshold is None:
            raise ValueError("a binary model needs its validation-chosen threshold; none was given")
        return [classes[1] if p >= float(threshold) else classes[0] for p in probs[:, 1]]
    return [classes[i] for i in probs.argmax(axis=1)]


def _save_png(img, path: Path, meta: dict) -> None:
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    for k, v in meta.items():
        info.add_text(k, str(v))
    img.save(path, format="PNG", pnginfo=info, compress_level=1)


def save_overlay(img, src: Path, out_dir: Path | None, meta: dict, max_tries: int = 1000) -> tuple[Path, Path | None]:
    """Write an overlay PNG as ``<stem>_gradcam.png`` beside ``src`` (or in ``out_dir``) without replacing
    any file: a name already taken (the user's own file, an earlier run's overlay, this run's overlay
    of another image with the same stem) gives ``<stem>_2_gradcam.png``, ``_3``, ...

    Returns (the path written, the first name tried when it was taken, else None). OSError (a
    ``atomic.WriteError`` for a full disk or a read-only folder) when it cannot be written at all.
    """
    folder = out_dir if out_dir is not None else src.parent
    first = folder / f"{src.stem}{OVERLAY_SUFFIX}"
    for i in range(1, max_tries + 1):
        target = first if i == 1 else folder / f"{src.stem}_{i}{OVERLAY_SUFFIX}"
        try:
            with create_new(target) as tmp:
                _save_png(img, tmp, meta)
        except FileExistsError:
            continue
        return target, (first if i > 1 else None)
    raise FileExistsError(f"{first} and {max_tries - 1} numbered variants of it already exist")


def format_probs(classes: Sequence[str], probs: Sequence[float]) -> str:
    """``P(normal)=0.160  P(covid)=0.840``: one score per class, as printed and captioned."""
    return "  ".join(f"P({c})={p:.3f}" for c, p in zip(classes, probs))


# =========================================================================== predict

def predict_files(scorer: SavedModel, files: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                  overlays: bool = True, echo: Callable[[str], None] | None = print, crop=None) -> list[dict]:
    """Score image files one by one; one dict per file (``status`` "ok" or "unreadable").

    Keys: file, status, reason, probabilities (dict), predicted, threshold,
    overlay (path or None), message, note, caution (``SavedModel.caution``:
    what a high score of this model may really mean) and track_record (``track_record_sentence``: what its
    recorded tests say), both printed and captioned beside every score, lungs (how the image was cropped,
    with ``crop``; else None). With ``overlays`` a Grad-CAM
    overlay ``<stem>_gradcam.png`` is written beside each original (or in
    ``out_dir``, checked before any image is scored: ``atomic.OutputDirError``; on the crop when
    cropping), never over an existing file (``save_overlay`` picks a free name and says so). An overlay
    that cannot be written is reported (``overlay_failed`` True in its row), the scores are still given.
    ``crop``: a ``lung_crop.LungCropper`` (``predict --crop-lungs``); each image is cropped to its lungs first.
    """
    classes, t = scorer.classes, scorer.threshold
    out = Path(out_dir) if out_dir else None
    if out is not None and overlays:
        check_output_dir(out, "--out")
    say = echo or (lambda s: None)
    rows = []
    rule = f"P({classes[1]}) >= {t:.3f}" if len(classes) == 2 else "argmax"
    caution = scorer.caution
    track = track_record_sentence(scorer)
    for f in files:
        path = Path(f)
        row = {"file": str(path), "status": "ok", "reason": "", "probabilities": {}, "predicted": None,
               "threshold": t, "overlay": None, "overlay_failed": False, "message": "", "note": DISCLAIMER,
               "caution": caution, "track_record": track, "lungs": None}
        try:
            lungs: dict = {}
            gray, x = preprocess_file(path, scorer.sidecar, crop=crop, crop_info=lungs)
            row["lungs"] = lungs or None
        except UnreadableImage as e:
            from ..data.images import REASONS
            hint = ("; to score every image under a folder use `python -m cxrbook evaluate --model MODEL "
                    f"--images {path}`" if e.reason == "is_a_directory" else "")
            row.update(status="unreadable", reason=e.reason,
                       message=f"{path}: not scored: {REASONS.get(e.reason, e.reason)}"
                               + (f" ({e.detail})" if e.detail else "") + hint)
            say(row["message"])
            rows.append(row)
            continue
        probs = scorer.probabilities(x[None])  # the answer first: a heatmap may have to load Keras
        label = decide(probs, classes, t)[0]
        row.update(probabilities={c: float(p) for c, p in zip(classes, probs[0])}, predicted=label)
        say(f"{path}: {format_probs(classes, probs[0])} -> {label} (rule {rule}) [{DISCLAIMER}]")
        if row["lungs"] is not None:
            say(f"  {crop.describe(row['lungs'])}")
        say(f"  {caution}")
        say(f"  {track}")
        heat = scorer.heatmaps(x[None]) if overlays and scorer.has_gradcam else None
        if overlays and heat is None:
            row["message"] = f"no Grad-CAM overlay: {scorer.name} is not a CNN"
            say(f"  {row['message']}")
        if heat is not None:
            caption = (f"{DISCLAIMER.upper()}\n{scorer.name}: {format_probs(classes, probs[0])} -> {label}"
                       f"\n{caution}\n{track}")
            try:
                target, taken = save_overlay(
                    overlay_image(gray, heat[0], caption), path, out,
                    {"Disclaimer": DISCLAIMER, "Source": str(path), "Model": scorer.name, "Prediction": label,
                     "Probabilities": json.dumps(row["probabilities"]), "Caution": caution, "TrackRecord": track})
                row["overlay"] = str(target)
                say(f"  Grad-CAM overlay: {target}" + (f" ({taken.name} already exists and was left as it was)"
                                                       if taken else ""))
            except OSError as e:
                row["overlay_failed"] = True
                row["message"] = (f"cannot write the overlay ({e.strerror or e}) in {out or path.parent}; "
                                  "pass --out DIR to write overlays elsewhere")
                say(f"  {row['message']}")
        rows.append(row)
    return rows


def predict_images(model, sidecar: dict | None, paths: Sequence[str | os.PathLike] | str,
                   out_dir: str | os.PathLike | None = None, overlays: bool = True, echo=print,
                   engine: str = "onnx"):
    """Notebook entry point: score files with a Keras model (+ sidecar) or a ``SavedModel``, as a DataFrame.

    ``model`` may be a ``SavedModel``, a path to a saved model (``load_model`` on ``engine``: a ``.keras``,
    ``.joblib`` or ``ensemble.json``, its sidecar read beside it) or an in-memory Keras model with its ``sidecar``
    dict. One row per file: file, status, P(<class>) columns, predicted, threshold, overlay, message, note,
    caution, track_record.
    """
    import pandas as pd
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(model, SavedModel):
        scorer = model
    elif isinstance(model, (str, os.PathLike)):
        scorer = load_model(model, engine=engine)
    else:
        if sidecar is None:
            raise ValueError("pass the model's sidecar dict (classes, image_size, threshold, preprocessing)")
        scorer = keras_scorer(model, sidecar)
    rows = predict_files(scorer, paths, out_dir=out_dir, overlays=overlays, echo=echo)
    flat = [{"file": r["file"], "status": r["status"], "reason": r["reason"],
             **{f"P({c})": r["probabilities"].get(c) for c in scorer.classes},
             "predicted": r["predicted"], "threshold": r["threshold"], "overlay": r["overlay"],
             "message": r["message"], "note": r["note"], "caution": r["caution"],
             "track_record": r["track_record"]} for r in rows]
    return pd.DataFrame(flat)
