"""Training, scoring and saving any Keras model of the workbook (Keras 3).

``fit`` trains with early stopping on validation loss and balanced class
weights, ``predict_scores`` returns per-image scores (a one-sigmoid model's
score is never argmaxed), ``EpochLine`` prints one line per epoch, and
``save_model``/``load_model`` write and read a ``.keras`` file with its ``.json``
sidecar and an ONNX export beside it (``onnx_export``), so ``predict``/``evaluate``
score without TensorFlow. The architectures themselves are in ``models`` and
``backbones``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import keras
import numpy as np

from . import layers  # registers the custom layers, so load_model reads every saved model
from ..atomic import atomic_write, to_jsonable, write_json
from .onnx_export import export_in_subprocess
from ..data.pipeline import to_rgb_float, training_batches
from .sidecar import read_sidecar

def _as_model_input(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Grayscale uint8 batches become RGB floats when the model takes 3 channels."""
    x = np.asarray(x)
    if _gray_images_for_rgb_model(model, x):
        return to_rgb_float(x)
    return x


def _gray_images_for_rgb_model(model: keras.Model, x: np.ndarray) -> bool:
    shape = model.input_shape
    return len(shape) == 4 and shape[-1] == 3 and (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 1))


@contextmanager
def training_input(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int
                   ) -> Iterator[tuple[object, dict]]:
    """The training data ``fit`` hands to ``model.fit``, and the keyword arguments that go with it.

    Grayscale uint8 images (the cache's pixels) for a model that takes three channels go through
    ``pipeline.training_batches``: uint8 until a parallel tf.data map converts each batch, prefetched
    so it overlaps with the training step. When the model starts with the reference augmentation
    (``layers.leading_augmentation``), that map applies the augmentation to the one gray channel
    before repeating it, and the layer inside the model passes its input through meanwhile
    (``layers.applied_in_input_pipeline``): the same transforms, drawn from the same distribution, a
    third of the resampling and outside the model step. Anything else (RGB floats, features) goes
    to ``model.fit`` as arrays, shuffled, and an augmentation layer inside the model acts as before.
    (``shuffle`` is False for the pipeline only because it shuffles itself, every epoch.)
    """
    x = np.asarray(x)
    if not (x.dtype == np.uint8 and _gray_images_for_rgb_model(model, x)):
        yield (x, y), {"batch_size": batch_size, "shuffle": True}
        return
    how = {"validation_batch_size": batch_size, "shuffle": False}
    augment = layers.leading_augmentation(model)
    if augment is None:
        yield (training_batches(x, y, batch_size, seed, augment=None), None), how
        return
    with layers.applied_in_input_pipeline(model, augment) as params:
        yield (training_batches(x, y, batch_size, seed, augment=params), None), how


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        epochs: int, batch_size: int = 32, class_weight: str | dict | None = "balanced",
        patience: int = 5, seed: int = 0, verbose: int = 2, callbacks: list | None = None
        ) -> keras.callbacks.History:
    """Train with early stopping on val_loss (best weights restored) and balanced class weights.

    ``y`` holds integer class indices; for softmax models they are one-hot encoded
    here. Grayscale uint8 training images go through ``training_input`` (a tf.data
    pipeline that applies the model's augmentation to one channel, outside the model
    step); validation images are converted to RGB floats when the model takes 3
    channels. ``keras.utils.set_random_seed(seed)`` makes runs repeatable.
    """
    from sklearn.utils.class_weight import compute_class_weight
    keras.utils.set_random_seed(seed)
    x_val = _as_model_input(model, x_val)
    y, y_val = np.asarray(y), np.asarray(y_val)
    if class_weight == "balanced":
        y_int = y.argmax(axis=1) if y.ndim == 2 and y.shape[1] > 1 else y.ravel().astype(int)
        present = np.unique(y_int)
        weights = compute_class_weight("balanced", classes=present, y=y_int)
        class_weight = {int(c): float(w) for c, w in zip(present, weights)}
    k = int(model.output_shape[-1])  # 1: one sigmoid; k > 1: softmax
    if k > 1:
        if y.ndim == 1:
            y = keras.utils.to_categorical(y, k)
        if y_val.ndim == 1:
            y_val = keras.utils.to_categorical(y_val, k)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    with training_input(model, x, y, batch_size, seed) as ((data, labels), how):
        return model.fit(data, labels, validation_data=(x_val, y_val), epochs=epochs, class_weight=class_weight,
                         callbacks=[stop, *(callbacks or [])], verbose=verbose, **how)


def predict_scores(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Scores: (n,) positive-class probability for a one-sigmoid model, (n, k) for softmax.

    A single sigmoid is never argmaxed: threshold the (n,) score instead.

    The model is called directly on each batch (inference mode), not through ``model.predict``:
    ``predict`` builds a ``tf.function`` per model and retraces it for every new input size, and
    notebooks that score several freshly trained models (07 trains four or more) then print
    TensorFlow's "triggered tf.function retracing" warnings. A direct call traces nothing.
    """
    x = _as_model_input(model, x)
    if len(x) == 0:
        p = np.zeros((0, *model.output_shape[1:]), np.float32)
        return p[:, 0] if p.ndim == 2 and p.shape[1] == 1 else p
    parts = [keras.ops.convert_to_numpy(model(x[i:i + batch_size], training=False))
             for i in range(0, len(x), batch_size)]
    p = np.concatenate(parts).astype(np.float32, copy=False)
    return p[:, 0] if p.ndim == 2 and p.shape[1] == 1 else p


class EpochLine(keras.callbacks.Callback):
    """One short line per epoch, ``training <name>: epoch n/N, loss .., val_loss .., auc .., val_auc .. (s)``.

    For notebooks and papermill logs: one line per epoch, no step counter or progress bar (``verbose=2``
    prints two lines per epoch with every metric), yet a long cell visibly advances. Early stopping shows
    as the last line's epoch n being below N.
    """

    def __init__(self, name: str, epochs: int, echo=print):
        """``echo``: a function taking one line of text (``print`` by default)."""
        super().__init__()
        self.label, self.epochs, self.echo = name, int(epochs), echo
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        from time import perf_counter
        self._t0 = perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from time import perf_counter
        logs = logs or {}
        shown = ", ".join(f"{k} {float(logs[k]):.3f}" for k in ("loss", "val_loss", "auc", "val_auc") if k in logs)
        self.echo(f"training {self.label}: epoch {epoch + 1}/{self.epochs}"
                  + (f", {shown}" if shown else "") + f" ({perf_counter() - self._t0:.1f} s)")


def save_model(model: keras.Model, path: str | os.PathLike, sidecar: dict, onnx: bool = False,
               parity: np.ndarray | None = None) -> Path:
    """Save ``model`` as a .keras file and a ``.json`` sidecar; with ``onnx``, its ONNX export (``.onnx``) too.

    The sidecar should hold classes, image_size, preprocessing (incl. clahe),
    threshold, weights, task, backbone and normals; it is checked as ``predict`` will
    check it (``sidecar.check_fields``). Keras version and backend are added.

    ``parity``: validation images ((n, s, s[, 1]) uint8, e.g. ``data.val.x``): up to 32 of them and the
    model's outputs on them are stored as ``<name>.parity.npz`` (``onnx_export.write_parity_sample``),
    and the sidecar's ``parity_sample`` entry binds that file to this ``.keras`` by its SHA-256. The
    ONNX export is checked on them in logit space (``onnx_export.check_parity``); without them, on
    generated images. An ``.onnx``, ``.int8.onnx`` or parity sample left from an earlier save is
    removed, since it no longer matches.

    The ONNX export that ``predict`` / ``evaluate`` score with is made on first use
    (``inference.saved_model``) and recorded in the sidecar; ``onnx=True`` makes it now instead.
    Either way it runs in a child process (``onnx_export.export_in_subprocess``). Exporting takes
    seconds to tens of seconds per model, which the workbook's notebooks do not need to pay: they
    score with Keras, and only ``predict`` / ``evaluate`` run ONNX. Returns the model path.
    """
    from ..data.images import file_sha256
    from .onnx_export import parity_path, write_parity_sample
    from .quantization import int8_path
    from .sidecar import check_fields
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model path must end in .keras, got {path}")
    check_fields(sidecar, f"the sidecar of {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".onnx").unlink(missing_ok=True)
    parity_path(path).unlink(missing_ok=True)
    int8_path(path).unlink(missing_ok=True)  # quantized from the old export: quantization.quantize_saved_model again
    meta = {**{k: v for k, v in sidecar.items() if k not in ("onnx", "parity_sample")},
            "keras_version": keras.__version__, "keras_backend": keras.backend.backend()}
    entry = write_parity_sample(model, path, parity) if parity is not None else None
    with atomic_write(path) as tmp:
        model.save(tmp)
    if entry is not None:
        meta["parity_sample"] = {**entry, "model_sha256": file_sha256(path)}
    write_json(to_jsonable(meta), path.with_suffix(".json"), indent=2, sort_keys=True)
    if onnx:  # in its own process: tf2onnx's memory never stays in the notebook's kernel
        export_in_subprocess(path)
    return path


def load_model(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """A model saved by ``save_model`` and its checked sidecar dict, for further training in a notebook
    (scoring goes through ``cxrbook.inference.saved_model.load_model``). Keras' ``safe_mode`` stays on:
    no Python code from the file is run."""
    sidecar = read_sidecar(path)
    return keras.saving.load_model(Path(path), safe_mode=True), sidecar


def plot_history(history, title: str):
    """Loss and AUC per epoch, training vs validation (a Keras History or its ``.history`` dict)."""
    from matplotlib.ticker import MaxNLocator

    from ..plots import plt
    h = history.history if hasattr(history, "history") else dict(history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "auc", "AUC")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in h:
                ax.plot(np.arange(1, len(h[key]) + 1), h[key], style, marker="o", ms=3,
                        label="validation" if key.startswith("val_") else "training")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(label)
        ax.set_title(f"{label}: training vs validation")
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
