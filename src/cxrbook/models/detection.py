"""A single-shot lung detector: KerasHub's ``RetinaNetObjectDetector`` on a ResNet backbone.

Why KerasHub's RetinaNet and not torchvision's SSD300/SSDlite: it is Keras 3 on the same
TensorFlow as every other model of the workbook, so notebook 09 can train it and then
retrain the Keras CNN in one kernel (importing torchvision after TensorFlow segfaults
here), it needs no second deep-learning stack in a CPU-only install, and it brings the
parts that must not be written by hand: anchors (``AnchorGenerator``), anchor matching
(``RetinaNetLabelEncoder``), focal loss, box regression and non-max suppression.

Design for two large objects per image (a lung is ~0.4 x 0.7 of a chest X-ray):

* Input: a square grayscale image repeated to RGB, ``(x / 255 - mean) / std`` with the
  ImageNet mean and std (:func:`detector_input`), the input the ImageNet ResNet presets
  expect. Boxes inside the model are pixel ``xyxy`` of that square; outside it they are
  ``rel_xyxy`` (:mod:`cxrbook.data.lung_boxes`).
* Pyramid levels 4-6 only (strides 16-64) with anchors scaled to the input size
  (``anchor_size = image_size / 64``: base anchors of 1/4, 1/2 and 1 of the image side,
  3 scales x 3 aspect ratios): every lung matches anchors of IoU >= 0.5, and the levels
  for small objects (3, 7) that cost most of the compute are left out.
* Backbones (``DetectorConfig.backbone``): ``resnet18`` is KerasHub's ResNet-18
  (``resnet_18_imagenet`` architecture), the one that can start from ImageNet;
  ``resnet_small`` has one basic block per stage and half the widths of the last two
  stages, random initialisation only, for the smoke profile's time budget.
* ``weights``: ``"imagenet"`` (KerasHub preset ``resnet_18_imagenet``, downloaded from
  Kaggle: fails with one line when offline), a path to a local KerasHub preset folder
  of that backbone, or ``"none"`` (random initialisation, seeded), the convention of
  :func:`cxrbook.backbones.resolve_weights`.
* Training: Keras 3 augmentation layers that move the boxes with the pixels (random
  translation and zoom; no flips, which would swap the lungs' sides), a cosine-decayed
  Adam learning rate, box loss weighted ``box_loss_weight`` against the focal loss.
* Output: per image and lung, the most confident box of that class after KerasHub's
  NMS and its confidence (NaN when none, :func:`detect`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from ..atomic import write_json
from ..records import to_jsonable

LUNG_CLASSES = ("right", "left")  # class index = position; cxrbook.data.lung_boxes.LUNGS
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGENET_PRESET = "resnet_18_imagenet"
MODEL_FORMAT = "xyxy"  # pixel corners of the square input, inside the model
BACKBONES = {
    # name -> ResNetBackbone arguments (KerasHub requires 64 filters in the first stage)
    "resnet18": dict(stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2]),
    "resnet_small": dict(stackwise_num_filters=[64, 64, 128, 256], stackwise_num_blocks=[1, 1, 1, 1]),
}
MIN_LEVEL, MAX_LEVEL = 4, 6
DECODER_CONFIDENCE = 0.01   # NMS keeps boxes down to this; `detect` reports the best one per lung
SIDECAR_VERSION = 1


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that defines a detector's architecture and training; saved in its sidecar."""

    image_size: int = 128
    backbone: str = "resnet_small"
    weights: str = "none"
    head_layers: int = 2           # conv layers of each prediction head before its logits
    head_norm: bool = True         # GroupNorm in the heads (batch-size independent)
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    box_loss_weight: float = 10.0
    translate: float = 0.1         # augmentation: fraction of the side
    zoom: float = 0.2              # augmentation: fraction of the side
    seed: int = 0
    clahe: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown detector backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
        if self.image_size < 64 or self.image_size % 32:
            raise ValueError(f"detector image_size must be a multiple of 32 (>= 64), got {self.image_size}")
        if str(self.weights).lower() == "imagenet" and self.backbone != "resnet18":
            raise ValueError(f"ImageNet weights exist for backbone 'resnet18' only, not {self.backbone!r}")


def detector_input(x_uint8: np.ndarray) -> np.ndarray:
    """``(n, s, s[, 1])`` uint8 grayscale -> ``(n, s, s, 3)`` float32, ImageNet-normalised."""
    x = np.asarray(x_uint8)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"expected (n, s, s) or (n, s, s, 1) square images, got shape {np.asarray(x_uint8).shape}")
    rgb = np.repeat(x[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    return (rgb - IMAGENET_MEAN) / IMAGENET_STD


def _offline_error(error: Exception) -> RuntimeError:
    return RuntimeError(f"cannot download the ImageNet preset {IMAGENET_PRESET} from Kaggle (no internet? "
                        f"{type(error).__name__}); pass weights=<local KerasHub preset folder> or weights='none'")


def _image_encoder(config: DetectorConfig):
    import keras_hub

    shape = (config.image_size, config.image_size, 3)
    weights = os.fspath(config.weights)
    if weights.lower() == "none":
        keras.utils.set_random_seed(config.seed)
        return keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_strides=[1, 2, 2, 2],
            block_type="basic_block", image_shape=shape, **BACKBONES[config.backbone])
    if weights.lower() == "imagenet":
        try:
            return keras_hub.models.ResNetBackbone.from_preset(IMAGENET_PRESET, image_shape=shape)
        except OSError as e:  # requests' ConnectionError and kagglehub's errors are OSErrors
            raise _offline_error(e) from e
    folder = Path(weights).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"weights {folder} is not a KerasHub preset folder (no config.json); "
                                "weights must be 'imagenet', 'none' or such a folder")
    return keras_hub.models.ResNetBackbone.from_preset(str(folder), image_shape=shape)


def build_detector(config: DetectorConfig) -> keras.Model:
    """A compiled RetinaNet for the two lungs (see module docstring); seeded by ``config.seed``."""
    import keras_hub

    keras.utils.set_random_seed(config.seed)
    s = config.image_size
    encoder = _image_encoder(config)
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=MIN_LEVEL, max_level=MAX_LEVEL,
                                                  use_p5=False, image_shape=(s, s, 3))
    anchors = keras_hub.layers.AnchorGenerator(MODEL_FORMAT, min_level=MIN_LEVEL, max_level=MAX_LEVEL,
                                               num_scales=3, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=s / 64)
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=len(LUNG_CLASSES), bounding_box_format=MODEL_FORMAT,
        anchor_generator=anchors,  # its default label encoder matches on these anchors
        prediction_decoder=keras_hub.layers.NonMaxSuppression(
            bounding_box_format=MODEL_FORMAT, from_logits=True, confidence_threshold=DECODER_CONFIDENCE,
            max_detections=20),
        pre_logits_num_conv_layers=config.head_layers, use_prediction_head_norm=config.head_norm)
    return model


def _steps(n: int, config: DetectorConfig) -> int:
    return max(1, config.epochs * int(np.ceil(n / config.batch_size)))


def train_detector(model: keras.Model, x_uint8: np.ndarray, boxes_rel: np.ndarray, config: DetectorConfig,
                   echo: Callable[[str], None] | None = None) -> dict:
    """Fit ``model`` on images ``(n, s, s[, 1])`` uint8 and their boxes ``(n, 2, 4)`` rel_xyxy (lung order).

    Shuffled each epoch (seeded), augmented by translation and zoom that move the boxes
    too. Returns the Keras history dict plus ``seconds``.
    """
    import tensorflow as tf
    from time import perf_counter

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


def detect(model: keras.Model, x_uint8: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Each lung's most confident box and its confidence: ``(n, 2, 4)`` rel_xyxy and ``(n, 2)``.

    NaN where NMS kept no box of that lung (above ``DECODER_CONFIDENCE``). KerasHub's NMS
    needs a fixed batch size in its graph: batches are padded to ``batch_size``, and the
    predict function is traced afresh when a model meets a new ``batch_size``.
    """
    x = detector_input(x_uint8)
    n, s = len(x), x.shape[1] if len(x) else 0
    if getattr(model, "_cxr_predict_batch", None) != batch_size:  # a new batch size needs a fresh trace
        model.make_predict_function(force=True)
        model._cxr_predict_batch = batch_size
    boxes = np.full((n, len(LUNG_CLASSES), 4), np.nan)
    scores = np.full((n, len(LUNG_CLASSES)), np.nan)
    for start in range(0, n, batch_size):
        chunk = x[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), dtype=chunk.dtype)])
        out = model.predict(chunk, batch_size=batch_size, verbose=0)
        labels, conf, pred = (np.asarray(out[k]) for k in ("labels", "confidence", "boxes"))
        for i in range(batch_size - pad):
            for k in range(len(LUNG_CLASSES)):
                mine = (labels[i] == k) & (conf[i] > 0)
                if mine.any():
                    j = np.flatnonzero(mine)[np.argmax(conf[i][mine])]
                    boxes[start + i, k] = np.clip(pred[i, j] / s, 0.0, 1.0)
                    scores[start + i, k] = conf[i, j]
    return boxes, scores


def with_fallback(boxes: np.ndarray, scores: np.ndarray, baseline: np.ndarray,
                  min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes to use: the detector's where its confidence >= ``min_confidence``, else the mean box.

    Returns ``(boxes (n, 2, 4), fell_back (n, 2) bool)``.
    """
    boxes, scores = np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    fell_back = ~(np.nan_to_num(scores, nan=-1.0) >= min_confidence)
    out = np.where(fell_back[..., None], np.broadcast_to(np.asarray(baseline, dtype=np.float64), boxes.shape), boxes)
    return out, fell_back


def save_detector(model: keras.Model, config: DetectorConfig, path: str | os.PathLike, sidecar: dict) -> Path:
    """Weights to ``<path>.weights.h5`` and a JSON sidecar (config, lung order, mean box, ...) beside it.

    Only weights are saved: loading rebuilds the architecture from the sidecar's config,
    so no saved file can bring code or custom objects along.
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"detector path must end in .weights.h5, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    meta = {**sidecar, "config": {**asdict(config), "weights": "none"}, "trained_from": str(config.weights),
            "lungs": list(LUNG_CLASSES), "box_format": "rel_xyxy", "sidecar_version": SIDECAR_VERSION,
            "keras_version": keras.__version__}
    write_json(to_jsonable(meta), sidecar_path(path))
    return path


def sidecar_path(path: str | os.PathLike) -> Path:
    """``x.weights.h5`` -> ``x.json``."""
    p = Path(path)
    return p.with_name(p.name[: -len(".weights.h5")] + ".json")


def load_detector(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """A detector saved by :func:`save_detector` and its sidecar; clear errors naming a missing or bad file."""
    path = Path(path)
    side = sidecar_path(path) if path.name.endswith(".weights.h5") else None
    if side is None or not path.is_file():
        raise FileNotFoundError(f"detector weights {path} do not exist (a .weights.h5 file saved by save_detector)")
    if not side.is_file():
        raise FileNotFoundError(f"detector sidecar {side} for {path} is missing")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        config = DetectorConfig(**{k: v for k, v in meta["config"].items() if k in DetectorConfig.__dataclass_fields__})
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"detector sidecar {side} is unusable ({type(e).__name__}: {e})") from None
    model = build_detector(config)
    model.load_weights(path)
    return model, meta
