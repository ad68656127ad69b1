"""The lung detector (KerasHub RetinaNet) and its metrics: IoU, COCO AP, mean box, patient bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbook.evaluation.box_metrics import average_precision, compare_to_mean_box, detection_summary, iou, mean_box
from cxrbook.evaluation.metrics import cluster_weights, patient_codes

# --------------------------------------------------------------------------- metrics


def test_iou_known_values_and_keras():
    a = np.array([0.0, 0.0, 0.5, 0.5])
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, [0.25, 0.0, 0.75, 0.5]) == pytest.approx(1 / 3)
    assert iou(a, [0.6, 0.6, 0.9, 0.9]) == 0.0
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(1)
    lo = rng.uniform(0, 0.6, (20, 2))
    boxes_a = np.concatenate([lo, lo + rng.uniform(0.05, 0.4, (20, 2))], axis=1)
    lo = rng.uniform(0, 0.6, (20, 2))
    boxes_b = np.concatenate([lo, lo + rng.uniform(0.05, 0.4, (20, 2))], axis=1)
    theirs = keras.ops.convert_to_numpy(keras.utils.bounding_boxes.compute_iou(
        boxes_a.astype("float32"), boxes_b.astype("float32"), bounding_box_format="xyxy"))
    np.testing.assert_allclose(iou(boxes_a, boxes_b), np.diag(theirs), atol=1e-5)


def test_average_precision_by_hand():
    # ranked tp 1,0,1,1 of 4 true boxes: precision envelope 1 up to recall .25, .75 up to .75, then nothing
    ious = np.array([0.9, 0.1, 0.8, 0.7])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert average_precision(ious, scores, 0.5) == pytest.approx((26 * 1.0 + 50 * 0.75) / 101)
    # a missing prediction (NaN score) is a missed true box: recall stops at 3/5
    assert average_precision(np.r_[ious, 0.0], np.r_[scores, np.nan], 0.5) == pytest.approx(
        (21 * 1.0 + 40 * 0.75) / 101)
    # tied scores are one operating point (precision .75 at recall .75), whatever the order
    tied = np.full(4, 0.5)
    assert average_precision(ious, tied, 0.5) == pytest.approx(76 * 0.75 / 101)
    assert average_precision(ious[::-1], tied, 0.5) == average_precision(ious, tied, 0.5)


def test_weights_equal_repeated_images():
    rng = np.random.default_rng(2)
    ious, scores = rng.uniform(0, 1, 12), rng.uniform(0, 1, 12)
    w = rng.integers(0, 4, 12)
    repeated = average_precision(np.repeat(ious, w), np.repeat(scores, w), 0.5)
    assert average_precision(ious, scores, 0.5, w[None, :].astype(float))[0] == pytest.approx(repeated)


def test_summary_perfect_and_mean_box():
    rng = np.random.default_rng(3)
    lo = rng.uniform(0.05, 0.3, (10, 2, 2))
    true = np.concatenate([lo, lo + 0.4], axis=-1)
    s = detection_summary(true, true, rng.uniform(0.5, 1, (10, 2)))
    assert s["iou_mean"] == pytest.approx(1.0) and s["map50"] == pytest.approx(1.0)
    assert s["map50_95"] == pytest.approx(1.0)
    np.testing.assert_allclose(mean_box(true), true.mean(axis=0))


def test_the_box_bootstrap_keeps_patients_whole():
    """compare_to_mean_box resamples with metrics.cluster_weights: every image of a drawn patient comes along."""
    pids = np.array(["a", "a", "b", "c", "c", "c"])
    codes, m = patient_codes(pids, len(pids))
    rows = np.concatenate(list(cluster_weights(codes, m, 200, np.random.default_rng(0))))
    assert rows.shape == (200, 6)
    assert np.all(rows[:, 0] == rows[:, 1]) and np.all(rows[:, 3] == rows[:, 5])
    # each resample draws three patients: a, b, c counted once each per row
    assert np.all(rows[:, [0, 2, 3]].sum(axis=1) == 3)


def test_compare_to_mean_box_is_paired_and_flags_nothing_odd():
    rng = np.random.default_rng(4)
    n = 40
    lo = rng.uniform(0.0, 0.4, (n, 2, 2))
    true = np.concatenate([lo, lo + 0.45], axis=-1)
    pred = true + rng.normal(0, 0.01, true.shape)
    base = mean_box(true[:20])
    pids = [f"p{i // 2}" for i in range(n)]
    out = compare_to_mean_box(true, pred, rng.uniform(0.5, 1, (n, 2)), base, pids, ("right", "left"),
                              n_boot=300, seed=0)
    assert out["n_patients"] == 20 and out["n_images"] == n
    d = out["difference"]["iou_right"]
    assert d["value"] > 0.2 and d["ci95"][0] > 0.1
    assert out["detector"]["iou_left"]["value"] > out["mean_box"]["iou_left"]["value"]
    lo_, hi_ = out["mean_box"]["iou_mean"]["ci95"]
    assert lo_ < out["mean_box"]["iou_mean"]["value"] < hi_
    # paired: a "detector" that predicts the mean box differs from it by exactly 0 in every resample
    same = compare_to_mean_box(true, np.broadcast_to(base, true.shape), np.ones((n, 2)), base, pids,
                               ("right", "left"), n_boot=300, seed=0)
    assert same["difference"]["iou_mean"]["ci95"] == [0.0, 0.0]
    assert same["mean_box"]["iou_mean"]["ci95"][1] - same["mean_box"]["iou_mean"]["ci95"][0] > 0.01


# --------------------------------------------------------------------------- the detector

def two_lungs(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of two bright rectangles on noise and their boxes (n, 2, 4) rel_xyxy (right lung = image left).

    Positions and sizes vary a lot, so that the mean box is a poor guess."""
    x = rng.normal(60, 20, (n, size, size)).clip(0, 255)
    boxes = np.zeros((n, 2, 4))
    for i in range(n):
        top = rng.uniform(0.03, 0.45)
        h = rng.uniform(0.3, 0.5)
        for k, (lo, hi) in enumerate(((0.02, 0.22), (0.5, 0.7))):
            x0 = rng.uniform(lo, hi)
            w = rng.uniform(0.18, 0.28)
            t = top + rng.uniform(-0.04, 0.04)
            boxes[i, k] = [x0, t, x0 + w, t + h]
            a, b, c, d = (np.array([x0, t, x0 + w, t + h]) * size).round().astype(int)
            x[i, b:d, a:c] += 130
    return x.clip(0, 255).astype(np.uint8), boxes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cxrbook.models.detection import DetectorConfig, build_detector
    from cxrbook.models.detection_training import train_detector

    rng = np.random.default_rng(0)
    x, boxes = two_lungs(88, 64, rng)
    config = DetectorConfig(image_size=64, backbone="resnet_small", epochs=25, batch_size=8, head_layers=1,
                            learning_rate=2e-3, translate=0.0, zoom=0.0, seed=0)
    model = build_detector(config)
    history = train_detector(model, x[:64], boxes[:64], config)
    return model, config, x, boxes, history


@pytest.mark.slow
def test_detector_beats_the_mean_box_on_held_out_images(trained):
    from cxrbook.models.detection import detect, with_fallback

    model, config, x, boxes, history = trained
    assert history["loss"][-1] < history["loss"][0]
    pred, scores = detect(model, x[64:], batch_size=8)
    base = mean_box(boxes[:64])
    used, fell_back = with_fallback(pred, scores, base, 0.3)
    det_iou = iou(used, boxes[64:]).mean()
    base_iou = iou(np.broadcast_to(base, boxes[64:].shape), boxes[64:]).mean()
    assert fell_back.mean() < 0.25
    assert det_iou > base_iou + 0.07, (det_iou, base_iou)


@pytest.mark.slow
def test_saved_detector_gives_the_same_boxes_and_holds_no_optimizer_state(trained, tmp_path):
    import h5py

    from cxrbook.models.detection import detect, load_detector, save_detector

    model, config, x, boxes, _ = trained
    base = mean_box(boxes[:64])
    path = save_detector(model, config, tmp_path / "lungs.weights.h5", mean_box=base, margin=0.1, min_confidence=0.3)

    def names(p):
        with h5py.File(p, "r") as f:
            found = []
            f.visit(found.append)
        return found
    assert names(path) and not [n for n in names(path) if "optimizer" in n]
    model.save_weights(tmp_path / "as_trained.weights.h5")  # what a plain save of the trained model holds
    assert [n for n in names(tmp_path / "as_trained.weights.h5") if "optimizer" in n]
    again, meta = load_detector(path)
    assert meta["lungs"] == ["right", "left"] and meta["config"]["image_size"] == 64
    assert (meta["margin"], meta["min_confidence"]) == (0.1, 0.3)
    np.testing.assert_allclose(meta["mean_box"], base)
    a, sa = detect(model, x[64:72], batch_size=8)
    b, sb = detect(again, x[64:72], batch_size=8)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    # weights of another network are refused, naming the file
    other = tmp_path / "other.weights.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("vars/0", data=np.zeros(3))
    (tmp_path / "other.json").write_text((tmp_path / "lungs.json").read_text())
    with pytest.raises(ValueError, match="other.weights.h5 do not fit the network"):
        load_detector(other)


def _sidecar(tmp_path, **changes):
    """A detector sidecar as save_detector writes it, with ``changes`` to its config or top level."""
    import json
    config = {"image_size": 64, "backbone": "resnet_small", "weights": "none", "head_layers": 1, "head_norm": True,
              "epochs": 1, "batch_size": 8, "learning_rate": 0.001, "box_loss_weight": 10.0, "translate": 0.1,
              "zoom": 0.2, "seed": 0, "clahe": False, "extra": {}}
    meta = {"config": config, "lungs": ["right", "left"], "mean_box": [[0.1, 0.2, 0.45, 0.8], [0.55, 0.2, 0.9, 0.8]],
            "margin": 0.1, "min_confidence": 0.5}
    for k, v in changes.items():
        (config if k in config else meta)[k] = v
    (tmp_path / "d.weights.h5").write_bytes(b"not read before the sidecar is checked")
    (tmp_path / "d.json").write_text(json.dumps(meta))
    return tmp_path / "d.weights.h5"


@pytest.mark.parametrize("changes, message", [
    ({"image_size": 1 << 20}, "image_size must be a multiple of 32 in"),
    ({"head_layers": 500}, "head_layers must be an integer"),
    ({"backbone": "__import__('os')"}, "unknown detector backbone"),
    ({"lungs": ["left", "right"]}, "are not"),
    ({"mean_box": [[0, 0, 2, 1], [0, 0, 1, 1]]}, "mean_box must be"),
    ({"margin": "0.1"}, "margin must be a number"),
    ({"config": "no"}, "unusable"),
])
def test_a_bad_detector_sidecar_is_refused_before_anything_is_built(tmp_path, changes, message):
    from cxrbook.models.detection import read_detector_sidecar
    with pytest.raises(ValueError, match=message):
        read_detector_sidecar(_sidecar(tmp_path, **changes))


def test_a_detector_sidecar_never_asks_for_a_download_and_must_be_small(tmp_path):
    from cxrbook.models.detection import MAX_SIDECAR_BYTES, read_detector_sidecar
    config, meta = read_detector_sidecar(_sidecar(tmp_path, weights="imagenet", backbone="resnet18"))
    assert config.weights == "none" and config.backbone == "resnet18"
    path = _sidecar(tmp_path)
    (tmp_path / "d.json").write_text(" " * (MAX_SIDECAR_BYTES + 1))
    with pytest.raises(ValueError, match="over"):
        read_detector_sidecar(path)
    (tmp_path / "d.json").unlink()
    with pytest.raises(FileNotFoundError, match="sidecar .*d.json .* is missing"):
        read_detector_sidecar(path)


def test_crop_region_is_the_union_widened_and_clipped():
    from cxrbook.models.detection import crop_region
    boxes = np.array([[[0.1, 0.2, 0.4, 0.8], [0.6, 0.1, 0.9, 0.7]]])
    np.testing.assert_allclose(crop_region(boxes, 0.0), [[0.1, 0.1, 0.9, 0.8]])
    np.testing.assert_allclose(crop_region(boxes, 0.1), [[0.02, 0.03, 0.98, 0.87]])
    np.testing.assert_allclose(crop_region(boxes, 0.5), [[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="margin"):
        crop_region(boxes, -0.1)


def test_crop_to_region_takes_the_region_of_the_full_image():
    from cxrbook.models.detection import crop_to_region
    gray = np.arange(100 * 200, dtype=np.uint16).reshape(100, 200)
    crop = crop_to_region(gray, (0.25, 0.5, 0.75, 1.0))
    assert crop.shape == (50, 100)
    assert crop[0, 0] == gray[50, 50]


@pytest.mark.parametrize("region, shape, corner", [
    ((0.5, 0.5, 0.5, 0.5), (32, 32), (34, 84)),       # a point: widened about its centre to 32 x 32
    ((1.0, 1.0, 1.0, 1.0), (32, 32), (68, 168)),      # at the corner: widened inwards
    ((0.0, 0.0, 1.0, 0.05), (50, 200), (0, 0)),       # a strip 200 x 5: widened to 4:1
    ((0.1, 0.1, 0.2, 0.9), (80, 32), (10, 14)),       # 20 x 80 -> 32 x 80 about its centre
])
def test_crops_are_always_images_the_workbook_scores(region, shape, corner):
    from cxrbook.data.images import MAX_ASPECT_RATIO, MIN_SIDE_PX, check_shape
    from cxrbook.models.detection import crop_to_region
    gray = np.arange(100 * 200, dtype=np.int64).reshape(100, 200)
    crop = crop_to_region(gray, region)
    assert crop.shape == shape and crop[0, 0] == gray[corner]
    assert min(crop.shape) >= MIN_SIDE_PX and max(crop.shape) <= MAX_ASPECT_RATIO * min(crop.shape)
    check_shape("crop", crop.shape[1], crop.shape[0])


def test_with_fallback_uses_the_mean_box_below_the_confidence():
    from cxrbook.models.detection import with_fallback

    boxes = np.array([[[0.1, 0.1, 0.4, 0.8], [0.6, 0.1, 0.9, 0.8]]] * 2)
    scores = np.array([[0.9, 0.2], [np.nan, 0.7]])
    base = np.array([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]])
    used, fell = with_fallback(boxes, scores, base, 0.5)
    np.testing.assert_array_equal(fell, [[False, True], [True, False]])
    np.testing.assert_allclose(used[0, 1], base[1])
    np.testing.assert_allclose(used[1, 0], base[0])
    np.testing.assert_allclose(used[0, 0], boxes[0, 0])


def test_weights_offline_and_bad_paths_fail_clearly(monkeypatch, tmp_path):
    import keras_hub

    from cxrbook.models.detection import DetectorConfig, build_detector

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.ResNetBackbone, "from_preset", no_network)
    with pytest.raises(RuntimeError, match="cannot download the ImageNet preset .*weights='none'"):
        build_detector(DetectorConfig(image_size=64, backbone="resnet18", weights="imagenet"))
    with pytest.raises(FileNotFoundError, match="not a KerasHub preset folder"):
        build_detector(DetectorConfig(image_size=64, backbone="resnet18", weights=str(tmp_path)))
    with pytest.raises(ValueError, match="ImageNet weights exist for backbone 'resnet18' only"):
        DetectorConfig(backbone="resnet_small", weights="imagenet")
