"""Static int8 quantization of the workbook's ONNX models (ONNX Runtime's own tools), and its accuracy check.

On this CPU (AVX-512 with VNNI) both fp32 engines already run VGG16's convolutions at
the fp32 peak, so speed past it comes from 8-bit integer arithmetic: ONNX Runtime's
``quantize_static`` rewrites an fp32 ``.onnx`` into a QDQ graph (QuantizeLinear /
DequantizeLinear around each convolution and matrix product, which ONNX Runtime fuses
into integer kernels when the session is built), with

- unsigned 8-bit activations and signed 8-bit weights (U8S8, the pairing the VNNI
  instruction ``vpdpbusd`` multiplies; ``reduce_range`` off, since VNNI does not
  saturate), weights per output channel;
- activation ranges calibrated (MinMax) on TRAINING images only, never validation or
  test: the calibration is part of the model, like its weights.

int8 is never the default. ``quantize_saved_model`` writes ``<name>.int8.onnx`` beside a
saved model's fp32 ``.onnx`` and records in the sidecar's ``onnx_int8`` entry the
calibration (split, number of images, the image cache's key, the seed that drew them)
and the accuracy check on the internal test split against the fp32 graph: the AUC of
each within ``AUC_TOLERANCE`` (0.005) and decisions at the stored threshold agreeing on
at least ``MIN_AGREEMENT`` (99%) of the images. ``int8_session`` (the ``int8`` engine
of ``predict``) loads the file only when the sidecar binds it (SHA-256 of both the int8
file and the fp32 file it was made from) and the check passed. ``quantize_onnx`` is the
step both use; ``backbones.backbone_onnx_int8`` caches quantized frozen bases for
features (``cached_features(engine="int8")``).

Imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..atomic import write_json
from ..data.pipeline import CachedData, encode_labels, to_rgb_float
from .onnx_session import OnnxModel
from .sidecar import read_sidecar

AUC_TOLERANCE = 0.005      # largest accepted |AUC int8 - AUC fp32| on the internal test split (issue 20)
MIN_AGREEMENT = 0.99       # smallest accepted share of test images with the same decision at the threshold
N_CALIBRATION = 64         # training images the activation ranges are calibrated on
INT8_SUFFIX = ".int8.onnx"
QUANT_FORMAT = "QDQ"       # ONNX Runtime's recommended format for CPU since 1.11
CALIBRATION_METHOD = "MinMax"


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def calibration_indices(n_available: int, n: int, seed: int) -> np.ndarray:
    """Which of ``n_available`` training images calibrate: ``n`` drawn without replacement with ``seed``, sorted."""
    if n_available < 1:
        raise ValueError("no training images to calibrate on")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_available)[:min(n, n_available)])


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike,
                  batches: Callable[[], Iterator[np.ndarray]], per_channel: bool = True,
                  quant_format: str = QUANT_FORMAT) -> dict:
    """Quantize ``fp32_path`` statically to int8 at ``out_path``; activation ranges from ``batches()``.

    ``batches`` yields model-ready float32 inputs (e.g. RGB [0, 255] training images,
    a few at a time). The fp32 graph is first run through ONNX Runtime's
    ``quant_pre_process`` (shape inference and graph optimisation, as its
    documentation recommends). Returns the settings the sidecar records.
    """
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    input_name = OnnxModel(fp32_path).input_name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches())
            self.n = 0

        def get_next(self):
            batch = next(self.it, None)
            if batch is None:
                return None
            self.n += len(batch)
            return {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    reader = Reader()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cxrbook-quant-", dir=out_path.parent) as tmp:   # same disk: the rename is atomic
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        staged = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(staged), reader, quant_format=getattr(QuantFormat, quant_format),
                        per_channel=per_channel, reduce_range=False, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD))
        # (MinMax keeps only each batch's per-tensor min and max, so memory does not grow with the images;
        # its CalibMaxIntermediateOutputs option is not used: in onnxruntime 1.32 it discards those batches'
        # ranges instead of folding them in.)
        os.replace(staged, out_path)
    return {"file": out_path.name, "sha256": _sha256(out_path), "source_onnx": fp32_path.name,
            "source_onnx_sha256": _sha256(fp32_path), "tool": "onnxruntime.quantization.quantize_static",
            "format": quant_format, "per_channel": bool(per_channel), "activation_type": "uint8",
            "weight_type": "int8", "reduce_range": False, "calibration_method": CALIBRATION_METHOD,
            "n_calibration_images": int(reader.n), "onnxruntime_version": onnxruntime.__version__}


def image_batches(x_uint8: np.ndarray, batch_size: int = 8) -> Callable[[], Iterator[np.ndarray]]:
    """Cached grayscale uint8 images as model-ready RGB float batches (what ``quantize_onnx`` calibrates on)."""
    def gen() -> Iterator[np.ndarray]:
        for i in range(0, len(x_uint8), batch_size):
            yield to_rgb_float(x_uint8[i:i + batch_size])
    return gen


def accuracy_check(y_true: np.ndarray, fp32: np.ndarray, int8: np.ndarray, threshold: float | None) -> dict:
    """int8 against fp32 scores on the same labelled images: AUCs, their difference, decision agreement.

    ``fp32``/``int8``: (n,) positive-class probabilities of a binary model (decided at
    ``threshold``) or (n, k) probabilities of a k-class one (argmax; macro one-vs-rest
    AUC). ``met``: |AUC difference| <= ``AUC_TOLERANCE`` and agreement >= ``MIN_AGREEMENT``.
    """
    from sklearn.metrics import roc_auc_score
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        raise ValueError(f"the labelled images hold one class only ({len(y_true)} images): an AUC needs two")
    fp32, int8 = np.asarray(fp32, np.float64), np.asarray(int8, np.float64)
    if fp32.ndim == 2 and fp32.shape[1] == 1:
        fp32, int8 = fp32[:, 0], int8[:, 0]
    if fp32.ndim == 1:
        if threshold is None:
            raise ValueError("a binary model's decisions need its stored threshold")
        auc = [float(roc_auc_score(y_true, s)) for s in (fp32, int8)]
        same = (fp32 >= threshold) == (int8 >= threshold)
    else:
        auc = [float(roc_auc_score(y_true, s, multi_class="ovr", average="macro")) for s in (fp32, int8)]
        same = fp32.argmax(axis=1) == int8.argmax(axis=1)
    diff = abs(auc[1] - auc[0])
    agreement = float(same.mean())
    return {"n_images": int(len(y_true)), "auc_fp32": round(auc[0], 6), "auc_int8": round(auc[1], 6),
            "auc_abs_diff": round(diff, 6), "auc_tolerance": AUC_TOLERANCE,
            "decision_agreement": round(agreement, 6), "n_decisions_differing": int((~same).sum()),
            "min_agreement": MIN_AGREEMENT, "threshold": threshold,
            "max_abs_score_diff": round(float(np.max(np.abs(int8 - fp32))), 6),
            "met": bool(diff <= AUC_TOLERANCE and agreement >= MIN_AGREEMENT)}


def _scores(net: OnnxModel, x_uint8: np.ndarray, batch_size: int = 32) -> np.ndarray:
    out = np.concatenate([net.predict_on_batch(to_rgb_float(x_uint8[i:i + batch_size]))
                          for i in range(0, len(x_uint8), batch_size)])
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def int8_path(model_path: str | os.PathLike) -> Path:
    """``<name>.int8.onnx`` beside the saved model ``<name>.keras``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + INT8_SUFFIX)


def quantize_saved_model(model_path: str | os.PathLike, data: CachedData, n_calibration: int = N_CALIBRATION,
                         seed: int = 0, per_channel: bool = True, quant_format: str = QUANT_FORMAT) -> dict:
    """Quantize a saved ``.keras`` model's ONNX export to ``<name>.int8.onnx`` and check it; returns the entry.

    Calibration: ``n_calibration`` images of ``data``'s TRAINING split (drawn with
    ``seed``). Check: the internal TEST split of ``data``, scored by the fp32 ``.onnx`` and
    the int8 file, labels from the sidecar's classes, decisions at its stored threshold
    (``accuracy_check``). The entry (settings, calibration, accuracy, both files'
    SHA-256) goes into the sidecar as ``onnx_int8``, also when the check fails (``met``
    false: ``int8_session`` then refuses the file). ``data`` must be the images the model
    was trained and tested on, at its image size.
    """
    model_path = Path(model_path)
    sidecar = read_sidecar(model_path)
    fp32 = model_path.with_suffix(".onnx")
    if model_path.suffix != ".keras" or not sidecar.get("onnx") or not fp32.is_file():
        raise ValueError(f"{model_path}: int8 quantization takes a saved .keras image model with its ONNX export "
                         f"beside it ({fp32.name}; training.save_model(..., onnx=True) or one fp32 predict writes it)")
    if sidecar["onnx"].get("sha256") and sidecar["onnx"]["sha256"] != _sha256(fp32):
        raise ValueError(f"{fp32} is not the ONNX export {model_path.with_suffix('.json').name} records (SHA-256); "
                         "export it again (one fp32 predict does) before quantizing")
    if int(sidecar["image_size"]) != data.image_size:
        raise ValueError(f"{model_path} takes {sidecar['image_size']} px images, the data holds {data.image_size} px")
    pick = calibration_indices(len(data.train), n_calibration, seed)
    out = int8_path(model_path)
    entry = quantize_onnx(fp32, out, image_batches(data.train.x[pick]), per_channel, quant_format)
    entry["calibration"] = {"split": "train", "n_images": int(len(pick)), "n_available": int(len(data.train)),
                            "seed": int(seed), "data_key": data.key, "image_size": data.image_size}
    y = encode_labels(data.test.labels, sidecar["classes"])
    threshold = sidecar.get("threshold") if len(sidecar["classes"]) == 2 else None
    entry["accuracy"] = {"split": "test", "data_key": data.key, **accuracy_check(
        y, _scores(OnnxModel(fp32), data.test.x), _scores(OnnxModel(out), data.test.x),
        None if threshold is None else float(threshold))}
    side = model_path.with_suffix(".json")
    write_json({**json.loads(side.read_text()), "onnx_int8": entry}, side, indent=2, sort_keys=True)
    return entry


def int8_session(model_path: str | os.PathLike, sidecar: dict) -> OnnxModel:
    """The int8 graph of a saved model, for the ``int8`` engine; ValueError naming the file when it cannot be used.

    Used only when the sidecar's ``onnx_int8`` entry binds it: its SHA-256 is the file's,
    the fp32 ``.onnx`` it was made from is still the one beside the model (same SHA-256),
    and its accuracy check passed.
    """
    model_path = Path(model_path)
    entry = sidecar.get("onnx_int8")
    hint = ("quantize it with cxrbook.models.quantization.quantize_saved_model(model, data) "
            "or use --engine onnx (fp32)")
    if not isinstance(entry, dict) or not entry.get("file"):
        raise ValueError(f"{model_path} has no int8 version (no onnx_int8 entry in its sidecar); {hint}")
    name = str(entry["file"])
    if Path(name).name != name or name in (".", "..") or not name.endswith(".onnx"):
        raise ValueError(f"{model_path.with_suffix('.json')}: onnx_int8.file must be a bare .onnx file name, "
                         f"got {name!r}")
    path = model_path.with_name(name)
    fp32 = model_path.with_suffix(".onnx")
    data = path.read_bytes() if path.is_file() else None
    if data is None or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ValueError(f"{path} is missing or is not the file its sidecar records (SHA-256); {hint}")
    if not fp32.is_file() or _sha256(fp32) != entry.get("source_onnx_sha256"):
        raise ValueError(f"{path} was quantized from another {fp32.name} than the one beside the model; {hint}")
    acc = entry.get("accuracy") or {}
    if acc.get("met") is not True:
        raise ValueError(f"{path} failed its accuracy check against fp32 on the test split (AUC difference "
                         f"{acc.get('auc_abs_diff')}, decisions agreeing {acc.get('decision_agreement')}; "
                         f"bounds {AUC_TOLERANCE} and {MIN_AGREEMENT}): use --engine onnx (fp32)")
    return OnnxModel(path, model_bytes=data)  # the bytes hashed are the bytes run
