"""The reference CNN, its improved variant, and ImageNet transfer learning (Keras 3).

Everything uses backend-neutral Keras 3 APIs, so the models also run with
``KERAS_BACKEND=torch``. Inputs to every image model are raw RGB floats in
[0, 255] (``pipeline.to_rgb_float``); rescaling and each backbone's
``preprocess_input`` happen inside the model, so a saved model takes the same
input as it did in training.

Transfer learning follows the keras-io guide: the frozen base runs in inference
mode (``training=False``), its pooled features are computed once per image and
cached (``cached_features``), a small head is trained on them, and
``full_transfer_model`` joins base and head into one image model for Grad-CAM,
fine-tuning and saving. Frozen-backbone features run through Keras by default
(``engine="keras"``) or through ONNX Runtime (``engine="onnx"``: the base is
exported once per backbone, size and weights and cached). On this 2-core CPU
ONNX Runtime was not faster for VGG16 at 224 px (ratio ~0.9-1.1x, see
``make bench``: backbone_features), and the export costs 10-40 s per backbone
on a cold run, so Keras stays the default.

``save_model`` writes an ONNX file beside every ``.keras`` file
(``onnx_export``), so ``predict``/``evaluate`` score without TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import keras
import numpy as np

from .atomic import write_json
from .layers import ImagenetPreprocess, augmentation  # importing layers registers the custom layers
from .onnx_export import cached_export, export_in_subprocess
from .onnx_session import OnnxModel
from .pipeline import SPLITS, CachedData, read_npz, save_npz, to_rgb_float
from .records import to_jsonable
from .sidecar import read_sidecar

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
FEATURE_ENGINES = ("onnx", "keras")
# Moving-statistics momentum of the improved CNN's BatchNorm layers: settles within
# one epoch of ~25 steps (0.9**25 ~ 0.07); Keras' default 0.99 needs ~500 steps.
BN_MOMENTUM = 0.9
REFERENCE_CNN_PARAMS_150 = 8_777_089

# --------------------------------------------------------------------------- compile helpers

def _n_outputs(model: keras.Model) -> int:
    return int(model.output_shape[-1])


def _output_layer(n_classes: int) -> keras.layers.Layer:
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if n_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="output")
    return keras.layers.Dense(n_classes, activation="softmax", name="output")


def _compile(model: keras.Model, optimizer) -> keras.Model:
    """Binary cross-entropy for one sigmoid output; categorical for softmax.

    Categorical (not sparse) so that the AUC metric sees one-hot targets;
    ``fit`` one-hot encodes integer labels for multi-class models.
    """
    k = _n_outputs(model)
    if k == 1:
        model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    else:
        model.compile(optimizer=optimizer, loss="categorical_crossentropy",
                      metrics=[keras.metrics.AUC(name="auc", multi_label=True, num_labels=k)])
    return model


def _as_model_input(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Grayscale uint8 batches become RGB floats when the model takes 3 channels."""
    x = np.asarray(x)
    shape = model.input_shape
    if len(shape) == 4 and shape[-1] == 3 and (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 1)):
        return to_rgb_float(x)
    return x


# --------------------------------------------------------------------------- CNNs

def custom_cnn(image_size: int = 150, augment: bool = True, seed: int = 0, n_classes: int = 2) -> keras.Model:
    """The published CNN: 4 conv layers, Dense(32), Dropout(0.25), sigmoid output.

    Input (s, s, 3) floats in [0, 255]; optional augmentation and Rescaling(1/255)
    add no parameters (8,777,089 trainable at 150 px). Compiled with RMSprop and
    binary cross-entropy, AUC metric. ``n_classes=3`` swaps only the output layer
    for Dense(3, softmax) with categorical cross-entropy (not in the publication).
    Weight initialisation is seeded via ``keras.utils.set_random_seed(seed)``
    (which also reseeds Python, NumPy and the backend globally).
    """
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((image_size, image_size, 3), name="image")]
    if augment:
        layers.append(augmentation(seed))
    layers += [
        keras.layers.Rescaling(1.0 / 255, name="rescale"),
        keras.layers.Conv2D(32, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(2, name="pool1"),
        keras.layers.Conv2D(64, 3, activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(2, name="pool2"),
        keras.layers.Conv2D(128, 3, activation="relu", name="conv3"),
        keras.layers.Conv2D(256, 3, activation="relu", name="conv4"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(32, activation="relu", name="dense"),
        keras.layers.Dropout(0.25, name="dropout"),
        _output_layer(n_classes),
    ]
    model = keras.Sequential(layers, name="custom_cnn")
    return _compile(model, keras.optimizers.RMSprop())


def improved_cnn(image_size: int = 150, n_classes: int = 2, augment: bool = True, seed: int = 0,
                 filters: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.3,
                 learning_rate: float = 1e-3) -> keras.Model:
    """A small CNN with BatchNorm and global average pooling (reported beside the reference, never instead).

    Conv-BN-ReLU blocks with max pooling between them, then GAP instead of the
    reference's Flatten + Dense(32): ~390k parameters instead of ~8.8M, so it
    overfits small data sets less. Adam optimiser.

    BatchNorm momentum is ``BN_MOMENTUM`` (0.9), not Keras' 0.99: with ~26 steps
    an epoch the default moving statistics never settle, and since
    ``EarlyStopping(restore_best_weights=True)`` restores them with the weights,
    inference then used stale statistics (every image scored ~0.98).
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = augmentation(seed)(inputs) if augment else inputs
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(x)
    for i, f in enumerate(filters, start=1):
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}")(x)
        if i < len(filters):
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = _output_layer(n_classes)(x)
    model = keras.Model(inputs, outputs, name="improved_cnn")
    return _compile(model, keras.optimizers.Adam(learning_rate))


# --------------------------------------------------------------------------- transfer learning

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


def _offline_error(name: str, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"no internet / cannot download ImageNet weights for {name} ({error}); "
        f"pass weights=<path to local .h5 file> or weights='none' explicitly "
        f"(Keras caches downloads in ~/.keras/models/)")


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
            raise _offline_error(name, e) from e
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
    from .images import file_sha256
    return f"file:{file_sha256(resolved)}"  # content, so a moved file still matches


def backbone_onnx(backbone_name: str, image_size: int, weights: str | os.PathLike, seed: int = 0,
                  cache_dir: str | os.PathLike | None = None) -> OnnxModel:
    """The frozen ``build_backbone`` as an ONNX Runtime model, exported once and cached in ``cache_dir``.

    Keyed by backbone, image size and weights (file content hash for a weights
    file, the seed for "none"); the first call builds the Keras base and exports
    it (tens of seconds for the large bases), later calls only load the file.
    """
    if cache_dir is None:
        from .pipeline import default_cache_dir
        cache_dir = default_cache_dir()
    spec = {"kind": "backbone", "backbone": backbone_name, "image_size": int(image_size),
            "weights": _weights_id(weights, seed)}
    path = cached_export(lambda: build_backbone(backbone_name, image_size, weights, seed=seed), spec, cache_dir)
    return OnnxModel(path)


def cached_features(backbone_name: str, image_size: int, weights: str | os.PathLike, data: CachedData,
                    cache_dir: str | os.PathLike | None = None, batch_size: int = 32, progress: bool = True,
                    seed: int = 0, engine: str = "keras") -> CachedFeatures:
    """Features of every split from the frozen backbone, computed once and cached.

    Stored as ``cache_dir/features_<key>.npz`` keyed by the image cache key, the
    backbone, image size, weights (file content hash for a weights file, the seed
    for "none"), the engine and the Keras backend. On a hit the backbone is not
    even built. ``engine``: "keras" (``build_backbone``) or "onnx" (ONNX Runtime
    on the cached export, ``backbone_onnx``); they agree to ~1e-6.
    """
    if image_size != data.image_size:
        raise ValueError(f"image_size {image_size} differs from the cached images' size {data.image_size}")
    if engine not in FEATURE_ENGINES:
        raise ValueError(f"engine must be one of {FEATURE_ENGINES}, got {engine!r}")
    if cache_dir is None:
        from .pipeline import default_cache_dir
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
        try:
            stored, hit = read_npz(path), True
        except (OSError, ValueError, EOFError):
            stored = None
    if stored is None:
        backbone = (backbone_onnx(backbone_name, image_size, weights, seed, cache_dir) if engine == "onnx"
                    else build_backbone(backbone_name, image_size, weights, seed=seed))
        stored = {s: extract_features(backbone, data[s].x, batch_size=batch_size, progress=progress)
                  for s in SPLITS}
        save_npz(path, stored)
    return CachedFeatures(train=stored["train"], val=stored["val"], test=stored["test"],
                          backbone=backbone_name, weights=weights_id, key=key, path=path, hit=hit)


def transfer_head(feature_dim: int, n_classes: int = 2, dropout: float = 0.3, units: int = 256,
                  learning_rate: float = 1e-3, seed: int = 0) -> keras.Model:
    """Dense(units, relu) - Dropout - output, on pooled backbone features; compiled with Adam."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((feature_dim,), name="features")
    x = keras.layers.Dense(units, activation="relu", name="head_dense")(inputs)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = _output_layer(n_classes)(x)
    return _compile(keras.Model(inputs, outputs, name="head"), keras.optimizers.Adam(learning_rate))


def full_transfer_model(backbone: keras.Model, head: keras.Model) -> keras.Model:
    """image -> backbone -> head as one model (Grad-CAM, fine-tuning, saving).

    Compiled with Adam at 1e-5; ``fine_tune`` recompiles after unfreezing.
    """
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    outputs = head(backbone(inputs))
    model = keras.Model(inputs, outputs, name=f"{backbone.name}_transfer")
    return _compile(model, keras.optimizers.Adam(1e-5))


def _base_of(model: keras.Model) -> keras.Model:
    """The keras.applications base: the first (nested) model holding conv layers directly."""
    if any(isinstance(layer, keras.layers.Conv2D) for layer in model.layers):
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            try:
                return _base_of(layer)
            except ValueError:
                continue
    raise ValueError(f"model {model.name!r} holds no convolutional base")


def _nested_models(model: keras.Model) -> Iterator[keras.Model]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield layer
            yield from _nested_models(layer)


def fine_tune(model: keras.Model, backbone_name: str, last_block_layers: str | int | None = None,
              lr: float = 1e-5) -> keras.Model:
    """Unfreeze the base's last block and recompile at a low learning rate (keras-io idiom).

    ``last_block_layers``: the name of the block's first layer (default
    ``LAST_BLOCK[backbone_name]``, VGG16: ``block5_conv1``, i.e. all ``block5_*``)
    or a number of final base layers. Everything before stays frozen; the base
    keeps running in inference mode, so BatchNorm statistics do not drift.
    """
    base = _base_of(model)
    names = [layer.name for layer in base.layers]
    spec = LAST_BLOCK.get(backbone_name) if last_block_layers is None else last_block_layers
    if spec is None:
        raise ValueError(f"no default last block for {backbone_name!r}; pass last_block_layers")
    if isinstance(spec, int):
        if not 0 < spec <= len(names):
            raise ValueError(f"last_block_layers={spec} outside 1..{len(names)}")
        start = len(names) - spec
    else:
        if spec not in names:
            raise ValueError(f"layer {spec!r} is not in {base.name}; its last layers are {names[-8:]}")
        start = names.index(spec)
    # Keras 3 does not propagate trainable=True into a nested model that was frozen
    # explicitly, so every enclosing model and the base are unfrozen one by one.
    model.trainable = True
    for sub in _nested_models(model):
        sub.trainable = True
    for layer in base.layers[:start]:
        layer.trainable = False
    return _compile(model, keras.optimizers.Adam(lr))


# --------------------------------------------------------------------------- training and prediction

def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        epochs: int, batch_size: int = 32, class_weight: str | dict | None = "balanced",
        patience: int = 5, seed: int = 0, verbose: int = 2, callbacks: list | None = None
        ) -> keras.callbacks.History:
    """Train with early stopping on val_loss (best weights restored) and balanced class weights.

    ``y`` holds integer class indices; for softmax models they are one-hot encoded
    here. Grayscale uint8 images are converted to RGB floats when the model takes
    3 channels. ``keras.utils.set_random_seed(seed)`` makes runs repeatable.
    """
    from sklearn.utils.class_weight import compute_class_weight
    keras.utils.set_random_seed(seed)
    x, x_val = _as_model_input(model, x), _as_model_input(model, x_val)
    y, y_val = np.asarray(y), np.asarray(y_val)
    if class_weight == "balanced":
        y_int = y.argmax(axis=1) if y.ndim == 2 and y.shape[1] > 1 else y.ravel().astype(int)
        present = np.unique(y_int)
        weights = compute_class_weight("balanced", classes=present, y=y_int)
        class_weight = {int(c): float(w) for c, w in zip(present, weights)}
    k = _n_outputs(model)
    if k > 1:
        if y.ndim == 1:
            y = keras.utils.to_categorical(y, k)
        if y_val.ndim == 1:
            y_val = keras.utils.to_categorical(y_val, k)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    return model.fit(x, y, validation_data=(x_val, y_val), epochs=epochs, batch_size=batch_size,
                     class_weight=class_weight, callbacks=[stop, *(callbacks or [])], shuffle=True,
                     verbose=verbose)


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


# --------------------------------------------------------------------------- saving

REQUIRED_SIDECAR_KEYS = ("classes", "image_size")


def save_model(model: keras.Model, path: str | os.PathLike, sidecar: dict, onnx: bool = True) -> Path:
    """Save ``model`` as a .keras file, its ONNX export (``.onnx``) and a ``.json`` sidecar.

    The sidecar should hold classes, image_size, preprocessing (incl. clahe),
    threshold, weights, task and backbone; classes and image_size are required.
    Keras version and backend are added, and with ``onnx`` the export's entry
    (file, opset, max |ONNX - Keras| on random inputs; ``onnx_export.export_onnx``)
    that ``predict``/``evaluate`` use to score without TensorFlow. Returns the model path.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model path must end in .keras, got {path}")
    missing = [k for k in REQUIRED_SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise ValueError(f"sidecar lacks {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    meta = {**sidecar, "keras_version": keras.__version__, "keras_backend": keras.backend.backend()}
    write_json(to_jsonable(meta), path.with_suffix(".json"), indent=2, sort_keys=True)
    if onnx:  # in its own process: tf2onnx's memory never stays in the notebook's kernel
        path.with_suffix(".onnx").unlink(missing_ok=True)
        export_in_subprocess(path)
    return path


def load_model(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """A model saved by ``save_model`` and its sidecar dict."""
    sidecar = read_sidecar(path)
    return keras.saving.load_model(Path(path)), sidecar


def plot_history(history, title: str):
    """Loss and AUC per epoch, training vs validation (a Keras History or its ``.history`` dict)."""
    from matplotlib.ticker import MaxNLocator

    from .plots import plt
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
