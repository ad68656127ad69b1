"""Training the lung detector of :mod:`cxrbook.models.detection` (notebook 09).

Keras 3 augmentation layers that move the boxes with the pixels (random translation and
zoom; no flips, which would swap the lungs' sides), a cosine-decayed Adam learning rate,
and the box loss weighted ``box_loss_weight`` against the focal loss. Kept apart from the
detector itself so that ``predict`` (which may not import training code) can load one.
"""

from __future__ import annotations

from time import perf_counter
from typing import Callable

import keras
import numpy as np

from .detection import LUNG_CLASSES, MODEL_FORMAT, DetectorConfig, detector_input


def _steps(n: int, config: DetectorConfig) -> int:
    return max(1, config.epochs * int(np.ceil(n / config.batch_size)))


def train_detector(model: keras.Model, x_uint8: np.ndarray, boxes_rel: np.ndarray, config: DetectorConfig,
                   echo: Callable[[str], None] | None = None) -> dict:
    """Fit ``model`` on images ``(n, s, s[, 1])`` uint8 and their boxes ``(n, 2, 4)`` rel_xyxy (lung order).

    Shuffled each epoch (seeded), augmented by translation and zoom that move the boxes
    too. Returns the Keras history dict plus ``seconds``.
    """
    import tensorflow as tf

    boxes_rel = np.asarray(boxes_rel, dtype=np.float32)
    if boxes_rel.shape[1:] != (len(LUNG_CLASSES), 4) or len(boxes_rel) != len(x_uint8):
        raise ValueError(f"boxes must have shape ({len(x_uint8)}, {len(LUNG_CLASSES)}, 4), got {boxes_rel.shape}")
    s = config.image_size
    x = detector_input(x_uint8)
    if x.shape[1] != s:
        raise ValueError(f"images are {x.shape[1]} px but the detector takes {s} px")
    targets = {"boxes": boxes_rel * s,
               "labels": np.tile(np.arange(len(LUNG_CLASSES), dtype=np.float32), (len(x), 1))}
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
                      config.learning_rate, _steps(len(x), config))),
                  loss_weights={"bbox_regression": config.box_loss_weight, "cls_logits": 1.0})
    layers = []
    if config.translate > 0:
        layers.append(keras.layers.RandomTranslation(config.translate, config.translate, fill_mode="constant",
                                                     bounding_box_format=MODEL_FORMAT, seed=config.seed + 1))
    if config.zoom > 0:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="constant",
                                              bounding_box_format=MODEL_FORMAT, seed=config.seed + 2))

    def augment(images, target):
        data = {"images": images, "bounding_boxes": dict(target)}
        for layer in layers:
            data = layer(data)
        return data["images"], {"boxes": data["bounding_boxes"]["boxes"], "labels": data["bounding_boxes"]["labels"]}

    ds = (tf.data.Dataset.from_tensor_slices((x, targets))
          .shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
          .batch(config.batch_size))
    if layers:
        ds = ds.map(augment)
    callbacks = []
    if echo is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: echo(f"detector epoch {e + 1}/{config.epochs}: loss {logs['loss']:.3f}")))
    t0 = perf_counter()
    history = model.fit(ds, epochs=config.epochs, verbose=0, callbacks=callbacks, shuffle=False)  # ds shuffles
    return {**{k: [float(v) for v in vals] for k, vals in history.history.items()}, "seconds": perf_counter() - t0}
