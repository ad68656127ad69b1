"""Decode-once caching of image arrays, label encoding and augmentation layers."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbook.models import layers
from cxrbook.data import pipeline


def write_images(root, n_per_split=(6, 3, 3), seed=0) -> pd.DataFrame:
    """Tiny generated X-ray-like files (8- and 16-bit, RGB, odd sizes) and their splits table."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    i = 0
    for split, n in zip(("train", "val", "test"), n_per_split):
        for k in range(n):
            label = ("normal", "covid")[k % 2]
            h, w = rng.integers(200, 320, size=2)  # large enough that decoding dominates a cache read
            arr = rng.integers(0, 255, (h, w)).astype(np.uint8)
            path = root / f"img{i:03d}.png"
            if i % 3 == 1:
                Image.fromarray(np.stack([arr] * 3, -1)).save(path)
            elif i % 3 == 2:
                Image.fromarray(arr.astype(np.uint16) * 200).save(path)
            else:
                Image.fromarray(arr).save(path)
            rows.append({"image_path": str(path), "patient_id": f"p{i // 2}", "source": "synthetic",
                         "label": label, "split": split})
            i += 1
    return pd.DataFrame(rows)


@pytest.fixture
def splits(tmp_path):
    return write_images(tmp_path / "images")


def test_second_load_is_a_cache_hit_and_decodes_nothing(splits, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = pipeline.load_gray

    def counting(path):
        calls["n"] += 1
        return real(path)

    monkeypatch.setattr(pipeline, "load_gray", counting)
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    first = pipeline.load_arrays(splits, 32, cache_dir=cache, progress=False)
    t1 = time.perf_counter()
    assert not first.hit and calls["n"] == len(splits)
    calls["n"] = 0
    second = pipeline.load_arrays(splits.sample(frac=1, random_state=1), 32, cache_dir=cache, progress=False)
    t2 = time.perf_counter()
    print(f"decode {t1 - t0:.4f}s, cache hit {t2 - t1:.4f}s")
    assert second.hit and calls["n"] == 0
    assert second.key == first.key and second.path == first.path == cache / f"{first.key}.npz"
    assert (t2 - t1) < (t1 - t0)
    for split, arrays in first.items():
        np.testing.assert_array_equal(arrays.x, second[split].x)
        np.testing.assert_array_equal(arrays.image_path, second[split].image_path)
        assert arrays.x.shape == (len(splits[splits.split == split]), 32, 32, 1)
        assert arrays.x.dtype == np.uint8
        assert list(arrays.image_path) == sorted(arrays.image_path)
        assert set(arrays.labels) <= {"normal", "covid"}
    assert [p.name for p in cache.iterdir()] == [first.path.name]  # no temp file left behind


def test_key_depends_on_manifest_and_parameters(splits):
    k = pipeline.cache_key(splits, 32, False)
    assert k == pipeline.cache_key(splits.iloc[::-1], 32, False)
    assert k != pipeline.cache_key(splits, 48, False)
    assert k != pipeline.cache_key(splits, 32, True)
    moved = splits.copy()
    moved.loc[0, "split"] = "val"
    assert k != pipeline.cache_key(moved, 32, False)
    relabeled = splits.copy()
    relabeled.loc[0, "label"] = "covid" if splits.loc[0, "label"] == "normal" else "normal"
    assert k != pipeline.cache_key(relabeled, 32, False)


def test_clahe_changes_pixels_and_key(splits, tmp_path):
    plain = pipeline.load_arrays(splits, 24, clahe=False, cache_dir=tmp_path, progress=False)
    eq = pipeline.load_arrays(splits, 24, clahe=True, cache_dir=tmp_path, progress=False)
    assert plain.key != eq.key and eq.clahe and not eq.hit
    assert eq.train.x.shape == plain.train.x.shape and eq.train.x.dtype == np.uint8
    assert not np.array_equal(eq.train.x, plain.train.x)


def test_encode_labels_and_rgb():
    y = pipeline.encode_labels(["covid", "normal", "covid"], ("normal", "covid"))
    assert y.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="pneumonia"):
        pipeline.encode_labels(["pneumonia"], ("normal", "covid"))
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    rgb = pipeline.to_rgb_float(x)
    assert rgb.shape == (2, 4, 4, 3) and rgb.dtype == np.float32
    assert rgb.max() <= 255 and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_augmentation_acts_only_in_training():
    import keras
    aug = layers.augmentation(seed=0)
    names = [type(layer).__name__ for layer in aug.layers]
    assert names == ["ReferenceAugmentation"]
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(aug(x, training=False)), x)
    assert not np.allclose(keras.ops.convert_to_numpy(aug(x, training=True)), x)


def test_reference_augmentation_geometry():
    """Without zoom and shear only the flip is left: each image comes back as itself or its mirror,
    and both happen (p = 0.5); zoom changes pixels but keeps the centre pixel in place."""
    import keras
    from cxrbook.models.layers import ReferenceAugmentation
    x = np.random.default_rng(1).uniform(0, 255, (32, 17, 17, 1)).astype("float32")
    y = keras.ops.convert_to_numpy(ReferenceAugmentation(zoom=0.0, shear_degrees=0.0, seed=3)(x, training=True))
    same = [np.allclose(a, b, atol=1e-3) for a, b in zip(y, x)]
    mirrored = [np.allclose(a, b[:, ::-1], atol=1e-3) for a, b in zip(y, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
    z = keras.ops.convert_to_numpy(ReferenceAugmentation(zoom=0.2, shear_degrees=0.0, flip=False, seed=3)(x, training=True))
    assert not np.allclose(z, x) and np.allclose(z[:, 8, 8], x[:, 8, 8], atol=1e-3)


# --------------------------------------------------------------------------- the training input pipeline

BLOB_X, BLOB_Y = 13.0, 16.0


def _blob_image(size: int = 41) -> np.ndarray:
    """A dark square with one bright blob left of and above the centre: its centroid shows flips and zooms."""
    yy, xx = np.mgrid[:size, :size]
    return np.rint(250 * np.exp(-((xx - BLOB_X) ** 2 + (yy - BLOB_Y) ** 2) / (2 * 2.5 ** 2))).astype(np.uint8)


def _applied(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per augmented blob image (n, s, s): the flip and the zoom factors read back from the blob's centroid.

    The transform maps output to input about the centre c: ``in - c = Flip . Shear . Zoom . (out - c)``,
    so the centroid moves to ``c + flip * (13 - c) / zx`` along x and ``c + (16 - c) / zy`` along y
    (the 0.2-degree shear moves it by under 0.02 px)."""
    s = images.shape[1]
    c = (s - 1) / 2
    mass = images.sum(axis=(1, 2))
    cx = (images * np.arange(s)[None, None, :]).sum(axis=(1, 2)) / mass
    cy = (images * np.arange(s)[None, :, None]).sum(axis=(1, 2)) / mass
    return {"flipped": cx > c, "zoom_x": (c - BLOB_X) / np.abs(cx - c), "zoom_y": (c - BLOB_Y) / (c - cy)}


N_DRAWS = 2000


def _layer_draws(img: np.ndarray, seed: int) -> np.ndarray:
    """The augmentation as notebook 04's models applied it until now: the Keras layer inside the model, on
    the three-channel float image; channel 0 of each output."""
    import keras
    layer = layers.ReferenceAugmentation(seed=seed)
    rgb = pipeline.to_rgb_float(np.repeat(img[None, :, :, None], 100, axis=0))
    return np.concatenate([keras.ops.convert_to_numpy(layer(rgb, training=True))[..., 0]
                           for _ in range(N_DRAWS // 100)])


def _pipeline_draws(img: np.ndarray, seed: int) -> np.ndarray:
    """The same augmentation in ``training_batches`` (one gray channel, then repeated), one epoch of N_DRAWS."""
    x = np.repeat(img[None, :, :, None], N_DRAWS, axis=0)
    ds = pipeline.training_batches(x, np.zeros(N_DRAWS, np.float32), 100, seed,
                                   augment=layers.ReferenceAugmentation().params)
    out = np.concatenate([b.numpy() for b, _ in ds])
    assert out.shape == (N_DRAWS, *img.shape, 3) and out.dtype == np.float32
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert out.min() >= 0 and out.max() <= 255
    return out[..., 0]


def _same_distribution(a: dict, b: dict, what: str) -> None:
    from scipy.stats import ks_2samp
    for name in ("zoom_x", "zoom_y"):
        p = ks_2samp(a[name], b[name]).pvalue
        assert p > 0.001, f"{name}: the pipeline's distribution differs from {what} (KS p = {p:.2g})"
    for applied in (a, b):  # p = 0.5 flips; zooms fill U(0.8, 1.2) up to its ends and not beyond
        assert abs(applied["flipped"].mean() - 0.5) < 0.05, applied["flipped"].mean()
        for name in ("zoom_x", "zoom_y"):
            assert 0.78 < applied[name].min() < 0.82 and 1.18 < applied[name].max() < 1.22, \
                (name, applied[name].min(), applied[name].max())


def test_pipeline_augmentation_has_the_layers_distribution():
    """Issue 20: the tf.data pipeline augments one channel instead of three inside the model; the applied
    flips and zooms must follow the same distribution as the layer's (2,000 draws each, read back from a
    blob's centroid; two-sample KS tests and the ranges)."""
    img = _blob_image()
    _same_distribution(_applied(_layer_draws(img, seed=1)), _applied(_pipeline_draws(img, seed=2)), "the layer's")


def test_pipeline_augmentation_matches_image_data_generator():
    """The reference itself: ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True) on the
    same image (tf_keras, the bench extra), against the pipeline."""
    ImageDataGenerator = pytest.importorskip("tf_keras.preprocessing.image").ImageDataGenerator
    img = _blob_image()
    gen = ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    rgb = pipeline.to_rgb_float(img[None, :, :, None])[0]
    ref = np.stack([gen.random_transform(rgb, seed=i)[..., 0] for i in range(N_DRAWS)])
    _same_distribution(_applied(ref), _applied(_pipeline_draws(img, seed=3)), "ImageDataGenerator's")


def test_training_batches_shuffle_and_redraw_every_epoch_and_repeat_per_seed():
    x = np.repeat(_blob_image()[None, :, :, None], 8, axis=0)
    x[:, 0, 0, 0] = np.arange(8)  # an id in one corner pixel, to follow the order
    y = np.arange(8, dtype=np.float32)
    aug = layers.ReferenceAugmentation().params

    def epochs(seed):
        ds = pipeline.training_batches(x, y, 4, seed, augment=aug)
        return [np.concatenate([b.numpy() for b, _ in ds]) for _ in range(2)], \
               [np.concatenate([lab.numpy() for _, lab in ds]) for _ in range(2)]

    (a1, a2), (l1, l2) = epochs(5)
    (b1, _), (m1, _) = epochs(5)
    assert np.array_equal(a1, b1) and np.array_equal(l1, m1)  # the same seed, the same batches
    assert sorted(l1) == sorted(l2) == list(y)                 # every image once per epoch
    assert not np.array_equal(l1, l2)                          # in a new order
    # new transforms in the next epoch: identical images, so only the draws can tell the epochs apart
    same = pipeline.training_batches(np.repeat(x[:1], 8, axis=0), y, 4, 5, augment=aug)
    e1, e2 = (np.concatenate([b.numpy() for b, _ in same]) for _ in range(2))
    assert not np.array_equal(e1, e2)
    plain = np.concatenate([b.numpy() for b, _ in pipeline.training_batches(x, y, 4, 5)])
    assert sorted(plain[:, 0, 0, 0]) == list(range(8))         # no augmentation: the pixels as cached
    with pytest.raises(ValueError, match="uint8 grayscale"):
        pipeline.training_batches(x.astype(np.float32), y, 4, 0)


@pytest.mark.slow
def test_fit_moves_the_models_augmentation_into_the_input_pipeline(monkeypatch):
    """training.fit on the cache's gray pixels: the model's leading augmentation runs in the tf.data map
    (with the layer's parameters) and the layer passes its input through during fit, never twice; after
    fit the layer augments again."""
    import keras
    from cxrbook.models import architectures, training
    calls, during = [], []
    real = training.training_batches

    def spy(x, y, batch_size, seed, augment=None, channels=3):
        calls.append(augment)
        return real(x, y, batch_size, seed, augment=augment, channels=channels)

    monkeypatch.setattr(training, "training_batches", spy)
    model = architectures.custom_cnn(32, augment=True, seed=0)
    layer = layers.leading_augmentation(model)
    probe = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: during.append(
        layer.applied_by_input_pipeline))
    x = np.repeat(_blob_image(32)[None, :, :, None], 16, axis=0)
    y = np.arange(16) % 2
    training.fit(model, x, y, x[:4], y[:4], epochs=1, batch_size=8, verbose=0, callbacks=[probe])
    assert calls == [layer.params] and during and all(during)
    assert layer.applied_by_input_pipeline is False and model.train_function is None
    rgb = pipeline.to_rgb_float(x[:4])
    assert not np.allclose(keras.ops.convert_to_numpy(model.layers[0](rgb, training=True)), rgb)
    plain = architectures.custom_cnn(32, augment=False, seed=0)
    assert layers.leading_augmentation(plain) is None
    training.fit(plain, x, y, x[:4], y[:4], epochs=1, batch_size=8, verbose=0)
    assert calls[-1] is None
