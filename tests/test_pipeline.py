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
