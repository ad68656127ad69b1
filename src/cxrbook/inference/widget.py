"""Prediction inside a notebook: the upload picker, its HTML result and notebook 07's example prediction.

Every score comes from :mod:`cxrbook.inference.predict`, exactly as ``python -m cxrbook predict`` gives it, with the
disclaimer and the model's confound caution beside it. Research tool, not a diagnosis.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Callable, Sequence

from ..atomic import write_bytes
from .saved_model import SavedModel, keras_scorer, load_model
from .predict import format_probs, predict_files, predict_images
from ..models.sidecar import DISCLAIMER


# =========================================================================== notebook upload widget

def upload_widget(model, out_dir: str | os.PathLike, sidecar: dict | None = None):
    """An ``ipywidgets`` file picker that scores the chosen X-ray like ``predict`` and shows its overlay.

    ``model``: a ``SavedModel``, a saved model's path (``load_model``) or a Keras model (+ ``sidecar``).
    Returns the widget box; nothing runs until a file is picked, so executing
    the cell non-interactively (papermill) only displays it.
    """
    import ipywidgets as W
    from IPython.display import Image as IPImage
    from IPython.display import display

    scorer = model if isinstance(model, SavedModel) else (  # Keras, as the notebooks score: no ONNX export here
        load_model(model, engine="keras") if isinstance(model, (str, os.PathLike))
        else keras_scorer(model, sidecar or {}))
    folder = Path(out_dir)
    up = W.FileUpload(accept="image/*,.png,.jpg,.jpeg,.tif,.tiff,.bmp", multiple=False,
                      description="Chest X-ray")
    shown = W.Output()

    def on_upload(change) -> None:
        value = change["new"]
        items = list(value.values()) if isinstance(value, dict) else list(value)  # ipywidgets 7 / 8
        with shown:
            shown.clear_output()
            for item in items:
                name = Path(item.get("name") or item.get("metadata", {}).get("name", "upload")).name
                target = folder / "uploads" / name
                write_bytes(target, bytes(item["content"]))
                rows = predict_files(scorer, [target], out_dir=folder, echo=None)
                display(W.HTML(result_html(rows[0], scorer.classes)))
                if rows[0]["overlay"]:
                    display(IPImage(filename=rows[0]["overlay"]))

    up.observe(on_upload, names="value")
    note = W.HTML(f"<b>{DISCLAIMER.upper()}.</b> Pick a chest X-ray file; it is scored by <code>{scorer.name}</code> "
                  f"({scorer.engine} engine) exactly as <code>python -m cxrbook predict</code> would.<br>"
                  f"<span style='color:#b00000'>{html.escape(scorer.caution)}</span>")
    return W.VBox([note, up, shown])


def result_html(row: dict, classes: Sequence[str]) -> str:
    """One scored (or unreadable) file of ``predict_files`` as HTML for the notebook: the score, the label and,
    right beside them, the disclaimer, the model's confound caution (``row["caution"]``) and its track record
    (``row["track_record"]``)."""
    name = html.escape(Path(row["file"]).name)
    if row["status"] != "ok":
        return f"<p><b>{name}</b>: {html.escape(row['message'])}</p>"
    probs = html.escape(format_probs(classes, [row["probabilities"][c] for c in classes]))
    track = row.get("track_record")
    return (f"<p><b>{name}</b>: {probs} &rarr; <b>{html.escape(str(row['predicted']))}</b> "
            f"[{DISCLAIMER}]<br><span style='color:#b00000'>&#9888; {html.escape(row['caution'])}</span>"
            + (f"<br>{html.escape(track)}" if track else "") + "</p>")


# =========================================================================== notebook 07's prediction section

DEFAULT_EXAMPLE_MODEL = "custom_cnn"  # notebook 04's reference CNN


def resolve_model(paths, model_path: str | os.PathLike = "", task: str = "covid_vs_normal") -> Path:
    """The ``.keras`` file a notebook's ``model_path`` parameter names.

    Empty: notebook 04's reference CNN for ``task`` (``outputs/models/custom_cnn.keras``; FileNotFoundError
    saying to run notebook 04 when it is missing). Otherwise the path as given (relative to the current
    folder), or, for a bare file name such as ``vgg16.keras``, that file in ``outputs/models/``.
    """
    from ..config import model_name
    if not str(model_path).strip():
        return paths.require(paths.models / f"{model_name(DEFAULT_EXAMPLE_MODEL, task)}.keras", "04")
    p = Path(model_path).expanduser()
    if not p.exists() and not p.is_absolute() and p.parent == Path("."):
        in_models = paths.models / (p.name if p.suffix else f"{p.name}.keras")
        if in_models.exists():
            return in_models
        raise FileNotFoundError(f"model_path {str(model_path)!r}: neither {p.resolve()} nor {in_models} exists "
                                "(notebooks 04-06 save models as outputs/models/<name>.keras)")
    return p


def first_test_image(paths) -> str:
    """The first test image of ``outputs/splits.csv`` (image paths sorted, as the training arrays are)."""
    import pandas as pd
    splits = pd.read_csv(paths.require(paths.splits_csv, "03"), usecols=["image_path", "split"])
    test = sorted(splits.loc[splits["split"] == "test", "image_path"].astype(str))
    if not test:
        raise ValueError(f"{paths.splits_csv} has no test image: rerun notebook 03")
    return test[0]


def known_label(paths, image: str | os.PathLike) -> str:
    """The label and split ``outputs/splits.csv`` (else ``clean.csv``) gives ``image``, e.g. ``covid (test
    split)``; ``unknown (not in splits.csv or clean.csv)`` for any other file."""
    import pandas as pd
    target = os.path.realpath(image)
    for table, cols in ((paths.splits_csv, ["image_path", "label", "split"]), (paths.clean_csv, ["image_path", "label"])):
        if not os.path.isfile(table):
            continue
        df = pd.read_csv(table, usecols=cols, dtype=str)
        hit = df[[os.path.realpath(p) == target for p in df["image_path"]]]
        if len(hit):
            row = hit.iloc[0]
            where = f"{row['split']} split of splits.csv" if "split" in row else "clean.csv, in no split"
            return f"{row['label']} ({where})"
    return "unknown (not in splits.csv or clean.csv)"


def example_prediction(paths, model_path: str | os.PathLike = "", example_image: str | os.PathLike = "",
                       task: str = "covid_vs_normal", echo: Callable[[str], None] | None = print):
    """Notebook 07's prediction section in one call; it needs only the setup cell (``paths``), no audit result.

    Scores ``example_image`` (empty: ``first_test_image``) with ``resolve_model(paths, model_path, task)``
    like ``python -m cxrbook predict --engine keras`` (the notebooks score with Keras, so no ONNX export is
    made here) and writes its Grad-CAM overlay to ``outputs/predictions/``. Returns ``predict_images``'
    one-row DataFrame (scores, label, overlay path, caution, track record) with ``true_label`` first:
    the image's label in ``splits.csv`` (``known_label``).
    """
    model = resolve_model(paths, model_path, task)
    image = str(example_image).strip() or first_test_image(paths)
    truth = known_label(paths, image)
    if echo:
        echo(f"model {model}; image {image}; true label: {truth}")
    df = predict_images(model, None, [image], out_dir=paths.outputs / "predictions", echo=echo, engine="keras")
    df.insert(1, "true_label", truth)
    return df
