"""Frozen ImageNet backbones and their cached features (Keras 3).

Transfer learning follows the keras-io guide: the frozen base runs in inference
mode (``training=False``) and its pooled features are computed once per image and
cached (``cached_features``); ``models.transfer_head`` then trains on them.
Inputs are raw RGB floats in [0, 255] (``pipeline.to_rgb_float``); each
backbone's ``preprocess_input`` is a layer inside the model
(``layers.ImagenetPreprocess``).

Features run through Keras by default (``engine="keras"``), through ONNX
Runtime (``engine="onnx"``: the base is exported once per backbone, size and
weights and cached, ``backbone_onnx``), or through that export quantized to int8
(``engine="int8"``: ``backbone_onnx_int8``, static quantization calibrated on
training images, ``models.quantization``). On this 2-core CPU ONNX Runtime was not
faster than Keras in fp32 for VGG16 at 224 px (ratio ~0.9-1.1x, see ``make bench``:
backbone_features), and the export costs 10-40 s per backbone on a cold run, so
Keras stays the default; int8 is faster (``make bench``: int8) and changes the
features slightly, so it is a parameter, never the default.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import keras
import numpy as np

from .layers import ImagenetPreprocess
from ..atomic import write_json
from .onnx_export import cached_export
from .onnx_session import OnnxModel
from .quantization import N_CALIBRATION, calibration_indices, image_batches, quantize_onnx
from ..data.pipeline import SPLITS, CachedData, read_npz, save_npz, to_rgb_float

# name -> (constructor, preprocess_input, smallest input side keras accepts)
BACKBONES = {
    "VGG16": (keras.applications.VGG16, keras.applications.vgg16.preprocess_input, 32),
    "DenseNet121": (keras.applications.DenseNet121, keras.applications.densenet.preprocess_input, 32),
    "ResNet50V2": (keras.applications.ResNet50V2, keras.applications.resnet_v2.preprocess_input, 32),
    "InceptionV3": (keras.applications.InceptionV3, keras.applications.inception_v3.preprocess_input, 75),
    "MobileNetV2": (keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input, 32),
    # The seeds' own, larger backbones: selectable in notebook 06 (`backbones`), not in any
    # profile's default list because of their CPU cost (README "The seeds' backbones").
    "DenseNet169": (keras.applications.DenseNet169, keras.applications.densenet.preprocess_input, 32),
    "ResNet152V2": (keras.applications.ResNet152V2, keras.applications.resnet_v2.preprocess_input, 32),
    "ResNet101": (keras.applications.ResNet101, keras.applications.resnet.preprocess_input, 32),
}
# The `mode` each preprocess_input uses in keras.applications.imagenet_utils;
# ImagenetPreprocess re-implements those modes as a serialisable layer
# (tests check it against the functions above).
PREPROCESS_MODE = {"VGG16": "caffe", "DenseNet121": "torch", "ResNet50V2": "tf",
                   "InceptionV3": "tf", "MobileNetV2": "tf",
                   "DenseNet169": "torch", "ResNet152V2": "tf", "ResNet101": "caffe"}  # resnet (v1): caffe
# First layer of each base's last block: fine_tune unfreezes from here to the end.
LAST_BLOCK = {"VGG16": "block5_conv1", "DenseNet121": "conv5_block16_0_bn",
              "ResNet50V2": "conv5_block3_preact_bn", "InceptionV3": "mixed9",
              "MobileNetV2": "block_16_expand", "DenseNet169": "conv5_block32_0_bn",
              "ResNet152V2": "conv5_block3_preact_bn", "ResNet101": "conv5_block3_1_conv"}
FEATURE_CACHE_VERSION = 1
FEATURE_ENGINES = ("onnx", "keras", "int8")

def resolve_weights(weights: str | os.PathLike) -> str | None:
    """What to pass to a keras.applications constructor.

    ``"imagenet"`` -> "imagenet" (downloaded by Keras; ``build_backbone`` raises
    RuntimeError when that fails), an existing file -> its path, ``"none"`` ->
    None (random init, asked for explicitly). A missing file raises
    FileNotFoundError; there is never a silent fallback from ImageNet to random.
    """
    if weights is None:
        raise TypeError("weights must be 'imagenet', 'none' or a path to a weights file; "
                        "pass 'none' (a string) to train from random initialisation")
    text = os.fspath(weights)
    if text.lower() == "imagenet":
        return "imagenet"
    if text.lower() == "none":
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist "
                                "(weights must be 'imagenet', 'none' or an existing .h5 file)")
    return str(path.resolve())


class WeightsUnavailable(RuntimeError):
    """The ImageNet weights could not be downloaded. In a notebook (IPython, JupyterLab, papermill) the
    error shows as its one message line, not the download's chained urllib tracebacks."""

    def _render_traceback_(self) -> list[str]:  # IPython calls this instead of formatting the traceback
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


def _offline_error(name: str, error: Exception) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"no internet / cannot download ImageNet weights for {name} ({' '.join(str(error).split())}); "
        f"pass weights=<path to local .h5 file> or weights='none' explicitly "
        f"(in JupyterLab: start it with `make lab WEIGHTS=none`; Keras caches downloads in ~/.keras/models/)")


def build_backbone(name: str, image_size: int, weights: str | os.PathLike, seed: int = 0) -> keras.Model:
    """A frozen ImageNet base: raw RGB [0, 255] image in, pooled feature vector out.

    ``include_top=False, pooling="avg"``; the backbone's ``preprocess_input`` is
    a layer inside the model, and the base is called with ``training=False`` so
    its BatchNorm layers stay in inference mode, also when fine-tuned.
    With ``weights="none"`` the random initialisation is seeded with ``seed``
    (this resets Keras' global seeds), so features and models built later match.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    constructor, _, min_size = BACKBONES[name]
    if image_size < min_size:
        raise ValueError(f"{name} needs images of at least {min_size} px, got {image_size}")
    resolved = resolve_weights(weights)
    if resolved is None:
        keras.utils.set_random_seed(seed)
    try:
        base = constructor(include_top=False, weights=resolved, input_shape=(image_size, image_size, 3),
                           pooling="avg")
    except Exception as e:
        # Keras reports a failed download as a bare Exception("URL fetch failure ...").
        download_failed = (isinstance(e, OSError) or type(e) is Exception or "URL fetch failure" in str(e))
        if resolved == "imagenet" and download_failed:
            raise _offline_error(name, e) from None  # the message names the cause; no urllib chain
        raise
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = ImagenetPreprocess(PREPROCESS_MODE[name], name="preprocess")(inputs)
    outputs = base(x, training=False)
    return keras.Model(inputs, outputs, name=f"{name}_backbone")


def extract_features(backbone: keras.Model | OnnxModel, x_uint8: np.ndarray, batch_size: int = 32,
                     progress: bool = False) -> np.ndarray:
    """Pooled features (n, d) of grayscale uint8 images; converts to RGB floats batch by batch.

    ``backbone``: a Keras model from ``build_backbone`` or its ONNX export (``backbone_onnx``).
    """
    n = len(x_uint8)
    dim = int(backbone.output_shape[-1])
    out = np.zeros((n, dim), dtype=np.float32)
    from tqdm.auto import tqdm
    for start in tqdm(range(0, n, batch_size), desc=f"{backbone.name} features", disable=not progress):
        batch = to_rgb_float(x_uint8[start:start + batch_size])
        out[start:start + len(batch)] = np.asarray(backbone.predict_on_batch(batch), dtype=np.float32)
    return out


@dataclass
class CachedFeatures:
    """Backbone features per split (``feats["train"]`` is (n, d)), with cache provenance."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    backbone: str
    weights: str
    key: str
    path: Path
    hit: bool

    def __getitem__(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; choose one of {SPLITS}")
        return getattr(self, split)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(split name, features) for train, val, test."""
        return ((s, self[s]) for s in SPLITS)


def _weights_id(weights: str | os.PathLike, seed: int) -> str:
    resolved = resolve_weights(weights)
    if resolved is None:
        return f"none(seed={seed})"
    if resolved == "imagenet":
        return "imagenet"
    from ..data.images import file_sha256
    return f"file:{file_sha256(resolved)}"  # content, so a moved file still matches


def backbone_onnx(backbone_name: str, image_size: int, weights: str | os.PathLike, seed: int = 0,
                  cache_dir: str | os.PathLike | None = None) -> OnnxModel:
    """The frozen ``build_backbone`` as an ONNX Runtime model, exported once and cached in ``cache_dir``.

    Keyed by backbone, image size and weights (file content hash for a weights
    file, the seed for "none"); the first call builds the Keras base and exports
    it (tens of seconds for the large bases), later calls only load the file.
    """
    if cache_dir is None:
        from ..data.pipeline import default_cache_dir
        cache_dir = default_cache_dir()
    spec = {"kind": "backbone", "backbone": backbone_name, "image_size": int(image_size),
            "weights": _weights_id(weights, seed)}
    path = cached_export(lambda: build_backbone(backbone_name, image_size, weights, seed=seed), spec, cache_dir)
    return OnnxModel(path)


def backbone_onnx_int8(backbone_name: str, image_size: int, weights: str | os.PathLike, calibration_x: np.ndarray,
                       calibration_id: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> OnnxModel:
    """``backbone_onnx``'s base quantized statically to int8, calibrated on ``calibration_x``; cached beside it.

    ``calibration_x``: grayscale uint8 TRAINING images (never validation or test);
    ``calibration_id`` names them in the cache key (e.g. the image cache's key, the
    split, the seed that drew them). Keyed also by the fp32 export and
    ``quantization``'s settings; a JSON beside the file records the quantization.
    """
    fp32 = backbone_onnx(backbone_name, image_size, weights, seed=seed, cache_dir=cache_dir)
    spec = {"fp32": fp32.path.name, "calibration": calibration_id, "n_calibration": int(len(calibration_x))}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    path = fp32.path.with_name(f"onnx_{key}.int8.onnx")
    if not path.is_file():
        info = quantize_onnx(fp32.path, path, image_batches(calibration_x))
        write_json({"spec": spec, "quantization": info}, path.with_suffix(".json"), indent=2)
    return OnnxModel(path)


def cached_features(backbone_name: str, image_size: int, weights: str | os.PathLike, data: CachedData,
                    cache_dir: str | os.PathLike | None = None, batch_size: int = 32, progress: bool = True,
                    seed: int = 0, engine: str = "keras") -> CachedFeatures:
    """Features of every split from the frozen backbone, computed once and cached.

    Stored as ``cache_dir/features_<key>.npz`` keyed by the image cache key, the
    backbone, image size, weights (file content hash for a weights file, the seed
    for "none"), the engine and the Keras backend. On a hit the backbone is not
    even built. ``engine``: "keras" (``build_backbone``) or "onnx" (ONNX Runtime
    on the cached export, ``backbone_onnx``); they agree to ~1e-6. "int8":
    ``backbone_onnx_int8`` calibrated on ``quantization.N_CALIBRATION`` images of
    ``data``'s training split drawn with ``seed`` (about 1% of the features' scale
    apart from fp32; ``make bench`` checks what that does to a head's AUC).
    """
    if image_size != data.image_size:
        raise ValueError(f"image_size {image_size} differs from the cached images' size {data.image_size}")
    if engine not in FEATURE_ENGINES:
        raise ValueError(f"engine must be one of {FEATURE_ENGINES}, got {engine!r}")
    if cache_dir is None:
        from ..data.pipeline import default_cache_dir
        cache_dir = default_cache_dir()
    weights_id = _weights_id(weights, seed)
    spec = {"data": data.key, "backbone": backbone_name, "image_size": int(image_size),
            "weights": weights_id, "backend": keras.backend.backend(), "version": FEATURE_CACHE_VERSION}
    if engine != "keras":  # the default engine keeps the key it always had, so existing caches stay valid
        spec["engine"] = engine
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"features_{key}.npz"
    stored, hit = None, False
    if path.is_file():
        try:  # a truncated or foreign file (read_npz: ValueError) is recomputed, not trusted
            stored, hit = read_npz(path), True
            if set(stored) != set(SPLITS):
                raise ValueError(f"{path} holds {sorted(stored)}, not the splits {list(SPLITS)}")
        except ValueError as e:
            warnings.warn(f"feature cache {path} is unreadable ({e}); computing the features again")
            stored, hit = None, False
    if stored is None:
        if engine == "int8":
            pick = calibration_indices(len(data.train), N_CALIBRATION, seed)
            backbone = backbone_onnx_int8(backbone_name, image_size, weights, data.train.x[pick],
                                          f"{data.key}:train:{len(pick)}:seed={seed}", seed, cache_dir)
        elif engine == "onnx":
            backbone = backbone_onnx(backbone_name, image_size, weights, seed, cache_dir)
        else:
            backbone = build_backbone(backbone_name, image_size, weights, seed=seed)
        stored = {s: extract_features(backbone, data[s].x, batch_size=batch_size, progress=progress)
                  for s in SPLITS}
        save_npz(path, stored)
    return CachedFeatures(train=stored["train"], val=stored["val"], test=stored["test"],
                          backbone=backbone_name, weights=weights_id, key=key, path=path, hit=hit)
