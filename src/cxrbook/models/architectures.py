"""The workbook's architectures: the reference CNN, its improved variant, and the transfer-learning head (Keras 3).

Everything uses backend-neutral Keras 3 APIs, so the models also run with
``KERAS_BACKEND=torch``. Inputs to every image model are raw RGB floats in
[0, 255] (``pipeline.to_rgb_float``); rescaling and each backbone's
``preprocess_input`` happen inside the model, so a saved model takes the same
input as it did in training.

Transfer learning follows the keras-io guide: a small head (``transfer_head``)
trains on the frozen base's cached features (``backbones``), then
``full_transfer_model`` joins base and head into one image model for Grad-CAM,
fine-tuning (``fine_tune``) and saving. Training, scoring and saving any of
these models is in ``training``.
"""

from __future__ import annotations

from typing import Iterator

import keras

from .backbones import LAST_BLOCK
from .layers import augmentation  # importing layers registers the custom layers

# Moving-statistics momentum of the improved CNN's BatchNorm layers: settles within
# one epoch of ~25 steps (0.9**25 ~ 0.07); Keras' default 0.99 needs ~500 steps.
BN_MOMENTUM = 0.9
REFERENCE_CNN_PARAMS_150 = 8_777_089

# --------------------------------------------------------------------------- compile helpers

def _output_layer(n_classes: int) -> keras.layers.Layer:
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if n_classes == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="output")
    return keras.layers.Dense(n_classes, activation="softmax", name="output")


def _compile(model: keras.Model, optimizer) -> keras.Model:
    """Binary cross-entropy for one sigmoid output; categorical for softmax.

    Categorical (not sparse) so that the AUC metric sees one-hot targets;
    ``training.fit`` one-hot encodes integer labels for multi-class models.
    """
    k = int(model.output_shape[-1])
    if k == 1:
        model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    else:
        model.compile(optimizer=optimizer, loss="categorical_crossentropy",
                      metrics=[keras.metrics.AUC(name="auc", multi_label=True, num_labels=k)])
    return model


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
