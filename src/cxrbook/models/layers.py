"""Custom Keras layers the saved models need; importing this module registers them for ``load_model``."""

from __future__ import annotations

import keras
import numpy as np


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

    def call(self, images, training=None):
        if not training:
            return images
        ops = keras.ops
        n = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0

        def uniform(lo: float, hi: float):
            return keras.random.uniform((n,), lo, hi, seed=self.seed_generator)

        zx, zy = uniform(1 - self.zoom, 1 + self.zoom), uniform(1 - self.zoom, 1 + self.zoom)
        shear = uniform(-self.shear_degrees, self.shear_degrees) * (3.141592653589793 / 180.0)
        sign = ops.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else ops.ones((n,))
        # output (x, y) -> input: centre + Flip . Shear . Zoom . (output - centre)
        m00, m01 = sign * zx, -sign * ops.sin(shear) * zy
        m10, m11 = ops.zeros((n,)), ops.cos(shear) * zy
        transform = ops.stack([m00, m01, cx - m00 * cx - m01 * cy,
                               m10, m11, cy - m10 * cx - m11 * cy,
                               ops.zeros((n,)), ops.zeros((n,))], axis=1)
        return ops.image.affine_transform(images, ops.cast(transform, images.dtype),
                                          interpolation="bilinear", fill_mode="nearest")

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
