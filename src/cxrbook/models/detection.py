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
  :func:`cxrbook.models.backbones.resolve_weights`.
* Output: per image and lung, the most confident box of that class after KerasHub's
  NMS and its confidence (NaN when none, :func:`detect`); below a confidence the
  training split's **mean box** stands in (:func:`with_fallback`).
* Cropping: the union of an image's two lung boxes widened by a margin
  (:func:`crop_region`) cut from the full-resolution image (:func:`crop_to_region`);
  notebook 09 and ``predict --crop-lungs`` crop the same way.

Saved (:func:`save_detector`) as weights only, ``<name>.weights.h5``, from a fresh copy of
the network without an optimizer (so no optimizer state), beside a JSON sidecar
(configuration, lung order, mean box, margin, confidence). :func:`load_detector` rebuilds
the network with this module's code from the sidecar's checked fields and reads the
weights into it: no model configuration, layer or pickle from the file is ever
deserialised, so a file handed over cannot run code (Keras' ``safe_mode`` guards the
deserialisation this path never does). Training lives in
:mod:`cxrbook.models.detection_training`, so ``predict`` can load a detector without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..atomic import to_jsonable, write_json

if TYPE_CHECKING:  # Keras is imported where a network is built or run, so the settings and crops load fast
    import keras

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
SIDECAR_VERSION = 2         # 2: weights without optimizer state; margin and min_confidence recorded
WEIGHTS_SUFFIX = ".weights.h5"
MAX_IMAGE_SIZE = 1024       # a sidecar asking for more is refused (memory)
MAX_HEAD_LAYERS = 8
MAX_SIDECAR_BYTES = 1_000_000


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
        if not isinstance(self.image_size, int) or not 64 <= self.image_size <= MAX_IMAGE_SIZE \
                or self.image_size % 32:
            raise ValueError(f"detector image_size must be a multiple of 32 in [64, {MAX_IMAGE_SIZE}], "
                             f"got {self.image_size!r}")
        if not isinstance(self.head_layers, int) or not 0 <= self.head_layers <= MAX_HEAD_LAYERS:
            raise ValueError(f"detector head_layers must be an integer in [0, {MAX_HEAD_LAYERS}], "
                             f"got {self.head_layers!r}")
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

    import keras

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
    """An uncompiled RetinaNet for the two lungs (see module docstring); seeded by ``config.seed``."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(config.seed)
    s = config.image_size
    encoder = _image_encoder(config)
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=MIN_LEVEL, max_level=MAX_LEVEL,
                                                  use_p5=False, image_shape=(s, s, 3))
    anchors = keras_hub.layers.AnchorGenerator(MODEL_FORMAT, min_level=MIN_LEVEL, max_level=MAX_LEVEL,
                                               num_scales=3, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=s / 64)
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=len(LUNG_CLASSES), bounding_box_format=MODEL_FORMAT,
        anchor_generator=anchors,  # its default label encoder matches on these anchors
        prediction_decoder=keras_hub.layers.NonMaxSuppression(
            bounding_box_format=MODEL_FORMAT, from_logits=True, confidence_threshold=DECODER_CONFIDENCE,
            max_detections=20),
        pre_logits_num_conv_layers=config.head_layers, use_prediction_head_norm=config.head_norm)


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


# --------------------------------------------------------------------------- what a crop is

def crop_region(boxes: np.ndarray, margin: float) -> np.ndarray:
    """``(n, 4)`` rel_xyxy: the union of each image's lung boxes ``(n, lungs, 4)``, widened on every side
    by ``margin`` x its width / height, clipped to the image."""
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin must lie in [0, 1], got {margin}")
    b = np.asarray(boxes, dtype=np.float64)
    lo, hi = b[..., :2].min(axis=1), b[..., 2:].max(axis=1)
    pad = (hi - lo) * margin
    return np.clip(np.concatenate([lo - pad, hi + pad], axis=1), 0.0, 1.0)


@dataclass
class LungRegions:
    """The detector's answer for a batch of images, as the crops use it."""

    boxes: np.ndarray       # (n, 2, 4) rel_xyxy as used: the detector's, or the mean box where it fell back
    scores: np.ndarray      # (n, 2) the detector's confidence (NaN: no box)
    fell_back: np.ndarray   # (n, 2) bool: that lung's box is the mean box
    regions: np.ndarray     # (n, 4) rel_xyxy crop: union of the two boxes widened by the margin


def lung_regions(model: keras.Model, x_uint8: np.ndarray, mean_box: np.ndarray, margin: float,
                 min_confidence: float, batch_size: int = 16) -> LungRegions:
    """Detect both lungs on images at the detector's size, fall back to the mean box below
    ``min_confidence``, and return the crop region of each image (notebook 09 and ``predict`` alike)."""
    pred, scores = detect(model, x_uint8, batch_size=batch_size)
    used, fell = with_fallback(pred, scores, mean_box, min_confidence)
    return LungRegions(used, scores, fell, crop_region(used, margin))


def _widen(lo: int, hi: int, size: int, need: int) -> tuple[int, int]:
    """[lo, hi) widened about its centre to at least ``need`` pixels, kept inside [0, size)."""
    need = min(need, size)
    if hi - lo >= need:
        return lo, hi
    lo = max(0, min((lo + hi - need) // 2, size - need))
    return lo, lo + need


def crop_to_region(gray: np.ndarray, region: Sequence[float]) -> np.ndarray:
    """The pixels of ``region`` (rel_xyxy) of a full-resolution image.

    Widened where needed so that the crop is an image the workbook scores at all
    (``data.images``: each side at least ``MIN_SIDE_PX``, at most ``MAX_ASPECT_RATIO``:1), as
    the image itself is; a detector's sliver of a box never becomes a 1-pixel crop.
    """
    from ..data.images import MAX_ASPECT_RATIO, MIN_SIDE_PX
    h, w = gray.shape[:2]
    x0, y0, x1, y1 = region
    c0, c1 = int(np.floor(x0 * w)), int(np.ceil(x1 * w))
    r0, r1 = int(np.floor(y0 * h)), int(np.ceil(y1 * h))
    c0, r0 = min(max(c0, 0), w - 1), min(max(r0, 0), h - 1)
    c1, r1 = min(max(c1, c0 + 1), w), min(max(r1, r0 + 1), h)
    c0, c1 = _widen(c0, c1, w, MIN_SIDE_PX)
    r0, r1 = _widen(r0, r1, h, MIN_SIDE_PX)
    c0, c1 = _widen(c0, c1, w, int(np.ceil((r1 - r0) / MAX_ASPECT_RATIO)))
    r0, r1 = _widen(r0, r1, h, int(np.ceil((c1 - c0) / MAX_ASPECT_RATIO)))
    return gray[r0:r1, c0:c1]


# --------------------------------------------------------------------------- saved detector

def sidecar_path(path: str | os.PathLike) -> Path:
    """``x.weights.h5`` -> ``x.json``."""
    p = Path(path)
    return p.with_name(p.name[: -len(WEIGHTS_SUFFIX)] + ".json")


def save_detector(model: keras.Model, config: DetectorConfig, path: str | os.PathLike, *, mean_box: np.ndarray,
                  margin: float, min_confidence: float, extra: dict | None = None) -> Path:
    """Weights to ``<path>`` (``.weights.h5``) and the JSON sidecar beside it; returns the weights path.

    The weights come from a fresh copy of the network with its optimizer removed, so the
    file holds the model's variables only (no optimizer, no optimizer state). The sidecar records the
    configuration (with ``weights: "none"``: loading never downloads), the lung order,
    the training split's ``mean_box`` ``(2, 4)`` rel_xyxy, the crop ``margin`` and the
    ``min_confidence`` below which the mean box stands in.
    """
    import keras

    path = Path(path)
    if not path.name.endswith(WEIGHTS_SUFFIX):
        raise ValueError(f"detector path must end in {WEIGHTS_SUFFIX}, got {path}")
    mean_box = np.asarray(mean_box, dtype=np.float64)
    _check_crop_settings(mean_box, margin, min_confidence, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = build_detector(DetectorConfig(**{**asdict(config), "weights": "none"}))
    clean.set_weights(model.get_weights())
    clean.optimizer = None  # KerasHub compiles every task it builds: drop even that fresh optimizer
    clean.save_weights(path)
    meta = {**(extra or {}), "config": {**asdict(config), "weights": "none"}, "trained_from": str(config.weights),
            "lungs": list(LUNG_CLASSES), "box_format": "rel_xyxy", "mean_box": mean_box,
            "margin": float(margin), "min_confidence": float(min_confidence),
            "sidecar_version": SIDECAR_VERSION, "keras_version": keras.__version__}
    write_json(to_jsonable(meta), sidecar_path(path))
    return path


def _check_crop_settings(mean_box: np.ndarray, margin, min_confidence, where: str) -> None:
    if mean_box.shape != (len(LUNG_CLASSES), 4) or not np.all(np.isfinite(mean_box)) \
            or not np.all((mean_box >= 0) & (mean_box <= 1)) or not np.all(mean_box[:, 2:] > mean_box[:, :2]):
        raise ValueError(f"{where}: mean_box must be {len(LUNG_CLASSES)} rel_xyxy boxes inside [0, 1]")
    for name, v in (("margin", margin), ("min_confidence", min_confidence)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{where}: {name} must be a number in [0, 1], got {v!r}")


def read_detector_sidecar(path: str | os.PathLike) -> tuple[DetectorConfig, dict]:
    """The checked configuration and sidecar of a saved detector; ValueError naming the file and the problem."""
    path = Path(path)
    if not path.name.endswith(WEIGHTS_SUFFIX) or not path.is_file():
        raise FileNotFoundError(f"detector weights {path} do not exist (a {WEIGHTS_SUFFIX} file written by "
                                "notebook 09, cxrbook.models.detection.save_detector)")
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"detector sidecar {side} for {path} is missing")
    if side.stat().st_size > MAX_SIDECAR_BYTES:
        raise ValueError(f"detector sidecar {side} is over {MAX_SIDECAR_BYTES} bytes: not a sidecar of save_detector")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        fields = {k: v for k, v in meta["config"].items() if k in DetectorConfig.__dataclass_fields__}
        config = DetectorConfig(**{**fields, "weights": "none", "extra": {}})  # loading never downloads
        if list(meta["lungs"]) != list(LUNG_CLASSES):
            raise ValueError(f"lungs {meta['lungs']!r} are not {list(LUNG_CLASSES)}")
        mean_box = np.asarray(meta["mean_box"], dtype=np.float64)
        _check_crop_settings(mean_box, meta["margin"], meta["min_confidence"], str(side))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"detector sidecar {side} is unusable ({type(e).__name__}: {e})") from None
    return config, {**meta, "mean_box": mean_box}


def load_detector(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """A detector saved by :func:`save_detector` and its sidecar (``mean_box`` as an array).

    The network is built by :func:`build_detector` from the sidecar's checked fields (random
    initialisation, never a download) and the HDF5 weights are read into it; nothing in
    either file is executed or unpickled. Errors name the file.
    """
    config, meta = read_detector_sidecar(path)
    model = build_detector(config)
    model.optimizer = None  # for detection only; the file holds no optimizer either
    try:
        model.load_weights(Path(path))
    except Exception as e:  # h5py and Keras raise many types for a truncated or foreign file
        raise ValueError(f"detector weights {path} do not fit the network its sidecar describes "
                         f"({type(e).__name__}: {e})") from None
    return model, meta
