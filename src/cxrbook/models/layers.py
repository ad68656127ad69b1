"""Custom Keras layers the saved models need; importing this module registers them for ``load_model``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import keras
import numpy as np

from ..data.pipeline import reference_affine


@keras.saving.register_keras_serializable(package="cxrbook")
class ReferenceAugmentation(keras.layers.Layer):
    """The reference ``ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True)``
    as one Keras layer that resamples each image ONCE.

    Per image, as ImageDataGenerator draws them: a horizontal flip with p = 0.5,
    zoom factors ``zx, zy ~ U(1 - zoom, 1 + zoom)`` drawn independently, and a
    shear angle ``~ U(-shear_degrees, shear_degrees)`` degrees (ImageDataGenerator's
    ``shear_range`` is in degrees). They are composed into one affine map about the
    image centre and applied by ``keras.ops.image.affine_transform`` with nearest
    fill, so the cost is one resampling pass instead of one per transform. Active
    only when called with ``training=True`` (inside ``fit``); inference is identity.
    Channels-last images.
    """

    def __init__(self, zoom: float = 0.2, shear_degrees: float = 0.2, flip: bool = True,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.zoom, self.shear_degrees, self.flip, self.seed = float(zoom), float(shear_degrees), bool(flip), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True
        # True while ``training.fit`` applies this layer's transforms in its tf.data input pipeline
        # (``applied_in_input_pipeline``): the layer then passes its (already augmented) input through.
        self.applied_by_input_pipeline = False

    def call(self, images, training=None):
        if not training or self.applied_by_input_pipeline:
            return images
        ops = keras.ops
        n = ops.shape(images)[0]
        # four uniform draws per image, in the order ImageDataGenerator's parameters are listed
        u = ops.stack([keras.random.uniform((n,), 0.0, 1.0, seed=self.seed_generator) for _ in range(4)], axis=1)
        transform = reference_affine(u, images.shape[1], images.shape[2], self.zoom, self.shear_degrees, self.flip, ops)
        return ops.image.affine_transform(images, ops.cast(transform, images.dtype),
                                          interpolation="bilinear", fill_mode="nearest")

    @property
    def params(self) -> dict:
        """The distribution's parameters, as ``pipeline.training_batches(augment=...)`` takes them."""
        return {"zoom": self.zoom, "shear_degrees": self.shear_degrees, "flip": self.flip}

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "zoom": self.zoom, "shear_degrees": self.shear_degrees,
                "flip": self.flip, "seed": self.seed}


# The reference: ImageDataGenerator(rescale=1/255, shear_range=0.2, zoom_range=0.2,
# horizontal_flip=True). shear_range is an angle in DEGREES (a near no-op, kept for
# fidelity); there is no rotation in the reference.
REFERENCE_ZOOM = 0.2
REFERENCE_SHEAR_DEGREES = 0.2


def augmentation(seed: int = 0, zoom: float = REFERENCE_ZOOM, shear_degrees: float = REFERENCE_SHEAR_DEGREES):
    """The reference augmentation (flip, zoom, shear) as Keras preprocessing, training time only.

    One ``layers.ReferenceAugmentation`` layer composes the three transforms and
    resamples each image once (3-4x faster on CPU than separate RandomFlip /
    RandomShear / RandomZoom layers, each of which resamples). It acts only when
    the model is called with ``training=True`` (inside ``fit``).
    """
    return keras.Sequential([ReferenceAugmentation(zoom=zoom, shear_degrees=shear_degrees, seed=seed)],
                            name="augmentation")


def leading_augmentation(model: keras.Model) -> ReferenceAugmentation | None:
    """The ``ReferenceAugmentation`` a model applies first to its input (directly or as ``augmentation()``), else None."""
    first = next((layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)), None)
    if isinstance(first, keras.Sequential) and first.layers and isinstance(first.layers[0], ReferenceAugmentation):
        return first.layers[0]
    return first if isinstance(first, ReferenceAugmentation) else None


@contextmanager
def applied_in_input_pipeline(model: keras.Model, layer: ReferenceAugmentation) -> Iterator[dict]:
    """While inside, ``layer`` passes its input through because the input pipeline already applied its
    transforms (``pipeline.training_batches(augment=layer.params)``); yields those parameters.

    The model's compiled training step is dropped on entry and on exit, so that it is traced
    again with the layer in the state it has then (Keras caches it across ``fit`` calls). Nested
    use changes nothing: inside an enclosing block (e.g. around several one-epoch ``fit`` calls)
    the step traced once stays valid.
    """
    if layer.applied_by_input_pipeline:
        yield layer.params
        return
    model.train_function = None
    layer.applied_by_input_pipeline = True
    try:
        yield layer.params
    finally:
        layer.applied_by_input_pipeline = False
        model.train_function = None


_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="cxrbook")
class ImagenetPreprocess(keras.layers.Layer):
    """``keras.applications`` preprocess_input as a layer that saves and reloads.

    A Lambda around preprocess_input would not deserialise in safe mode; this
    layer stores only its ``mode`` ("caffe", "tf" or "torch").
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(np.array(_TORCH_MEAN, dtype=np.float32))
            std = keras.ops.convert_to_tensor(np.array(_TORCH_STD, dtype=np.float32))
            return (x / 255.0 - mean) / std
        mean = keras.ops.convert_to_tensor(np.array(_CAFFE_MEAN_BGR, dtype=np.float32))
        return keras.ops.flip(x, axis=-1) - mean  # caffe: RGB -> BGR, then centre per channel

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
