"""Static int8 quantization (issue 20 §3): calibrated on training images only, checked against fp32 on the
test split, recorded in the sidecar, and used by the int8 engine only when bound and checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrbook.models import quantization as Q


def _tiny_graph(path: Path, seed: int = 0) -> Path:
    """A small fp32 CNN as a hand-written ONNX graph (no TensorFlow): NHWC image -> Conv(8) -> Relu ->
    Conv(4) -> Relu -> GlobalAveragePool -> MatMul -> Sigmoid, weights drawn with ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.05, (8, 3, 3, 3)).astype(np.float32)
    w1[:, :, :, :] *= np.linspace(0.2, 3.0, 8)[:, None, None, None]  # channel scales differ: per-channel matters
    w2 = rng.normal(0, 0.2, (4, 8, 3, 3)).astype(np.float32)
    wd = rng.normal(0, 0.5, (4, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("w2", w2), ("wd", wd),
                                                         ("scale", np.array(1 / 255, np.float32)))]
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["nchw", "scale"], ["x0"]),
             helper.make_node("Conv", ["x0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "wd"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["score"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            [None, 16, 16, 3])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    return path


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)


def test_quantize_onnx_writes_a_per_channel_u8s8_qdq_graph_close_to_fp32(tmp_path):
    import onnx
    from onnx import numpy_helper
    from cxrbook.models.onnx_session import OnnxModel
    fp32 = _tiny_graph(tmp_path / "tiny.onnx")
    calib = _images(24, 1)
    info = Q.quantize_onnx(fp32, tmp_path / "tiny.int8.onnx", Q.image_batches(calib, 8))
    assert info["n_calibration_images"] == 24 and info["format"] == "QDQ" and info["per_channel"] is True
    assert info["sha256"] == Q._sha256(tmp_path / "tiny.int8.onnx")
    model = onnx.load(str(tmp_path / "tiny.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 5
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert any(a.dtype == np.int8 and a.shape == (8, 3, 3, 3) for a in consts.values())   # weights: int8
    assert any(a.dtype == np.float32 and a.shape == (8,) for a in consts.values())        # one scale per channel
    assert any(a.dtype == np.uint8 and a.ndim == 0 for a in consts.values())              # activations: uint8
    x = __import__("cxrbook.data.pipeline", fromlist=["to_rgb_float"]).to_rgb_float(_images(32, 2))
    a, b = OnnxModel(fp32).predict(x), OnnxModel(tmp_path / "tiny.int8.onnx").predict(x)
    assert np.abs(a - b).max() < 0.02 and np.abs(a - b).max() > 0  # int8, so not bit-equal; close


def test_accuracy_check_bounds():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    fp32 = np.clip(y * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    same = Q.accuracy_check(y, fp32, fp32, 0.5)
    assert same["met"] and same["auc_abs_diff"] == 0 and same["decision_agreement"] == 1 and same["n_images"] == 200
    flipped = fp32.copy()
    near = np.argsort(np.abs(fp32 - 0.5))[:3]               # three decisions flip: 98.5% agree (< 99%)
    flipped[near] = np.where(fp32[near] >= 0.5, 0.499, 0.501)
    r = Q.accuracy_check(y, fp32, flipped, 0.5)
    assert r["n_decisions_differing"] == 3 and r["decision_agreement"] == 0.985 and not r["met"]
    flipped[near[2]] = fp32[near[2]]                         # two flip: exactly 99% agree: met if the AUC holds
    r = Q.accuracy_check(y, fp32, flipped, 0.5)
    assert r["decision_agreement"] == 0.99 and r["met"] == (r["auc_abs_diff"] <= Q.AUC_TOLERANCE)
    noisy = fp32 + rng.normal(0, 0.2, 200)                   # the AUC moves by more than 0.005
    r = Q.accuracy_check(y, fp32, noisy, 0.5)
    assert r["auc_abs_diff"] > Q.AUC_TOLERANCE and not r["met"]
    three = rng.dirichlet([1, 1, 1], 90)
    y3 = three.argmax(axis=1)
    r = Q.accuracy_check(y3, three, three, None)
    assert r["met"] and r["auc_fp32"] == r["auc_int8"] > 0.9 and r["threshold"] is None
    with pytest.raises(ValueError, match="threshold"):
        Q.accuracy_check(y, fp32, fp32, None)
    with pytest.raises(ValueError, match="one class"):
        Q.accuracy_check(np.ones(200, int), fp32, fp32, 0.5)


def _bound_model(tmp_path: Path, met: bool = True) -> tuple[Path, dict]:
    """A fake saved model folder: <m>.keras (not read here), its fp32 .onnx, <m>.int8.onnx and the sidecar entry."""
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read by int8_session")
    fp32 = _tiny_graph(tmp_path / "m.onnx")
    info = Q.quantize_onnx(fp32, Q.int8_path(model), Q.image_batches(_images(8, 1)))
    sidecar = {"onnx_int8": {**info, "accuracy": {"met": met, "auc_abs_diff": 0.001 if met else 0.02,
                                                  "decision_agreement": 1.0}}}
    return model, sidecar


def test_int8_engine_loads_only_a_bound_and_checked_file(tmp_path):
    model, sidecar = _bound_model(tmp_path)
    assert Q.int8_path(model).name == "m.int8.onnx"
    net = Q.int8_session(model, sidecar)
    assert net.predict(np.zeros((2, 16, 16, 3), np.float32)).shape == (2, 1)
    with pytest.raises(ValueError, match="no int8 version"):
        Q.int8_session(model, {})
    with pytest.raises(ValueError, match="bare .onnx file name"):
        Q.int8_session(model, {"onnx_int8": {**sidecar["onnx_int8"], "file": "../elsewhere/m.int8.onnx"}})
    with pytest.raises(ValueError, match="failed its accuracy check"):
        Q.int8_session(model, {"onnx_int8": {**sidecar["onnx_int8"], "accuracy": {"met": False}}})
    data = Q.int8_path(model).read_bytes()
    Q.int8_path(model).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))       # one bit of the int8 file
    with pytest.raises(ValueError, match="SHA-256"):
        Q.int8_session(model, sidecar)
    Q.int8_path(model).write_bytes(data)
    _tiny_graph(model.with_suffix(".onnx"), seed=1)                          # the fp32 file re-exported
    with pytest.raises(ValueError, match="quantized from another"):
        Q.int8_session(model, sidecar)


def test_calibration_indices_are_a_seeded_subset():
    a, b = Q.calibration_indices(100, 10, 3), Q.calibration_indices(100, 10, 3)
    assert np.array_equal(a, b) and len(set(a)) == 10 and a.max() < 100 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, Q.calibration_indices(100, 10, 4))
    assert len(Q.calibration_indices(5, 64, 0)) == 5
    with pytest.raises(ValueError):
        Q.calibration_indices(0, 4, 0)


@pytest.mark.slow
def test_quantize_saved_model_calibrates_on_train_checks_on_test_and_predict_uses_it(tmp_path, monkeypatch):
    """A trained tiny CNN saved with its ONNX export: quantize_saved_model calibrates on training images only
    (every calibration image is a training image), checks on the whole test split, records both in the
    sidecar; load_scorer(engine="int8") then scores close to fp32, and refuses once the file changes."""
    from cxrbook.data import pipeline
    from cxrbook.inference import saved_model
    from cxrbook.models import architectures, training
    data = _cached_data(tmp_path, 32)
    y = pipeline.encode_labels(data.train.labels, ("normal", "covid"))
    model = architectures.custom_cnn(32, augment=False, seed=0)
    training.fit(model, data.train.x, y, data.val.x, pipeline.encode_labels(data.val.labels, ("normal", "covid")),
                 epochs=8, batch_size=8, verbose=0)
    side = {"classes": ["normal", "covid"], "threshold": 0.5, "image_size": 32, "task": "covid_vs_normal",
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False}, "weights": "none (test)"}
    path = training.save_model(model, tmp_path / "m" / "cnn.keras", side, onnx=True)
    seen = []
    real = Q.quantize_onnx

    def spy(fp32, out, batches, *a, **k):
        seen.extend(np.asarray(b) for b in batches())
        return real(fp32, out, batches, *a, **k)

    monkeypatch.setattr(Q, "quantize_onnx", spy)
    entry = Q.quantize_saved_model(path, data, n_calibration=10, seed=1)
    train_rgb = pipeline.to_rgb_float(data.train.x)
    others = pipeline.to_rgb_float(np.concatenate([data.val.x, data.test.x]))
    calib = np.concatenate(seen)
    assert len(calib) == 10 == entry["calibration"]["n_images"] and entry["calibration"]["split"] == "train"
    assert all(any(np.array_equal(c, t) for t in train_rgb) for c in calib)
    assert not any(any(np.array_equal(c, o) for o in others) for c in calib)
    acc = entry["accuracy"]
    assert acc["split"] == "test" and acc["n_images"] == len(data.test) and acc["data_key"] == data.key
    assert json.loads(path.with_suffix(".json").read_text())["onnx_int8"] == json.loads(json.dumps(entry))
    x = pipeline.to_rgb_float(data.test.x)
    fp32 = saved_model.load_model(path, engine="onnx").probabilities(x)
    if not acc["met"]:
        pytest.fail(f"the tiny CNN's int8 version failed its own accuracy check: {acc}")
    int8 = saved_model.load_model(path, engine="int8")
    assert int8.engine == "int8" and np.abs(int8.probabilities(x) - fp32).max() < 0.05
    good = Q.int8_path(path).read_bytes()
    Q.int8_path(path).write_bytes(good + b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        saved_model.load_model(path, engine="int8")
    Q.int8_path(path).write_bytes(good)
    fp32_file = path.with_suffix(".onnx")
    fp32_file.write_bytes(fp32_file.read_bytes() + b"\0")  # the fp32 export no longer the one bound to the .keras
    with pytest.raises(ValueError, match="with the int8 engine"):
        saved_model.load_model(path, engine="int8")
    training.save_model(model, path, side, onnx=True)  # saved again: the old int8 file goes with the old export
    assert not Q.int8_path(path).exists()
    with pytest.raises(ValueError, match="no int8 version"):
        saved_model.load_model(path, engine="int8")


def _cached_data(tmp_path: Path, size: int, n: int = 48):
    """Generated X-rays in train/val/test (both labels in each), decoded and cached by ``load_arrays``."""
    import pandas as pd
    from PIL import Image
    from cxrbook.data import pipeline
    from cxrbook.data.synthetic import chest_image
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = ("normal", "covid")[i % 2]
        path = tmp_path / "img" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(chest_image(label, rng, 64)).save(path)
        rows.append({"image_path": str(path), "label": label, "split": ("train", "train", "val", "test")[(i // 2) % 4],
                     "patient_id": f"p{i}", "source": "synthetic"})
    return pipeline.load_arrays(pd.DataFrame(rows), size, cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.slow
def test_int8_feature_engine_is_cached_apart_calibrated_on_train_and_close_to_fp32(tmp_path):
    from cxrbook.models import backbones
    data = _cached_data(tmp_path, 32)
    fp32 = backbones.cached_features("VGG16", 32, "none", data, cache_dir=tmp_path / "c", progress=False,
                                     engine="onnx")
    int8 = backbones.cached_features("VGG16", 32, "none", data, cache_dir=tmp_path / "c", progress=False,
                                     engine="int8")
    assert int8.path != fp32.path and not int8.hit
    assert backbones.cached_features("VGG16", 32, "none", data, cache_dir=tmp_path / "c", progress=False,
                                     engine="int8").hit
    for split in ("train", "val", "test"):
        scale = np.abs(fp32[split]).max()
        assert 0 < np.abs(int8[split] - fp32[split]).max() < 0.1 * scale
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "c").glob("onnx_*.int8.json")]
    assert record["spec"]["calibration"].startswith(f"{data.key}:train:")
    assert record["quantization"]["n_calibration_images"] == len(data.train) == record["spec"]["n_calibration"]
