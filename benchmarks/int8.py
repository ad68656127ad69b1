"""Benchmark 7: the int8 engine (static quantization) against the fp32 ONNX engine, side by side, with its accuracy.

Models trained here on the benchmark data (benchmark models, not results; weights "none": random,
seeded bases, as the offline workbook trains): the reference custom CNN and the improved CNN on
the whole training split, and VGG16, DenseNet121, ResNet50V2, InceptionV3 and MobileNetV2 as
frozen bases with a head trained on their fp32 features of a stratified subset of the training
split, each with its threshold chosen on the validation split (Youden, as the notebooks do) and
saved with its ONNX export (``training.save_model(..., onnx=True)``). A model whose validation
scores are constant (a dead network) is trained again with the next seed, at most three seeds;
the seeds are recorded. Then, per model, ``quantization.quantize_saved_model``: static int8,
calibrated on 64 TRAINING images, checked on the whole internal TEST split against the fp32
graph (AUC within 0.005, decisions at the stored threshold agreeing on >= 99% of the images).

Timed, fp32 and int8 interleaved ``repeats`` times after one untimed call each:

- **features**: ``backbones.extract_features`` of VGG16 at 224 px on the same in-memory images as
  ``backbone_features`` (batch 32), on ``backbone_onnx`` (fp32) and ``backbone_onnx_int8``. Its
  accuracy: the VGG16 head's test scores on the fp32 features and on the int8 features.
- **predict**, per model: the loaded model's scoring step, ``load_model(path, engine).probabilities`` on
  32 model-ready test images (``scoring``, the goal's figure), and ``predict_files`` one test file
  per call, warm (``warm_per_image``: decoding and resizing the file included, what one ``predict``
  call waits for once the model is loaded).

Goal (issue 20): int8 >= 2x fp32 for the features and for ``predict``, with the accuracy bound.
``vnni``: which instructions ONNX Runtime spends the int8 features' time in (``perf record``
samples of a child process; skipped without ``perf``): the share of samples at or just before an
AVX-512 VNNI dot product (``vpdpbusd``), the instruction int8 convolutions need on this CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from .common import BenchData, say, stopwatch, stratified_subset, summary, with_goal

GOAL_RATIO = 2.0
TRANSFER = ("VGG16", "DenseNet121", "ResNet50V2", "InceptionV3", "MobileNetV2")
FEATURE_BACKBONE = "VGG16"
MAX_SEEDS = 3
VNNI_MNEMONICS = ("vpdpbusd", "vpdpbusds", "vpdpwssd", "vpdpwssds")


def _ratio(fp32_s: list[float], int8_s: list[float]) -> dict:
    r = summary([f / i for f, i in zip(fp32_s, int8_s)], "x (int8 faster)", 3)
    return with_goal(r, f">= {GOAL_RATIO:g}x", r["median"] >= GOAL_RATIO)


def _interleaved(fp32, int8, repeats: int) -> tuple[list[float], list[float]]:
    """One untimed call each, then fp32, int8, fp32, int8 ... ``repeats`` times; seconds per call."""
    fp32(), int8()
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((fp32, a), (int8, b)):
            with stopwatch() as t:
                fn()
            out.append(t["seconds"])
    return a, b


def _threshold_and_check(scores_val: np.ndarray, y_val: np.ndarray) -> tuple[float, bool]:
    """Youden threshold on validation, and whether the validation scores are constant (a dead network)."""
    from cxrbook.evaluation.metrics import choose_threshold
    return choose_threshold(y_val, scores_val), bool(np.ptp(scores_val) < 1e-6)


def _sidecar(data: BenchData, size: int, backbone: str, threshold: float, seed: int) -> dict:
    return {"classes": list(data.classes), "task": "covid_vs_normal", "threshold": float(threshold),
            "image_size": int(size), "backbone": backbone, "normals": "all", "seed": int(seed),
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
            "weights": "none (benchmark model, not a result)"}


def train_cnns(data: BenchData, arrays, folder: Path, size: int, epochs: int, seed: int) -> dict[str, dict]:
    """The two CNNs on the whole training split; name -> {path, seeds, degenerate}."""
    from cxrbook.data.pipeline import encode_labels, to_rgb_float
    from cxrbook.models import architectures, training
    y_tr, y_va = (encode_labels(arrays[s].labels, data.classes) for s in ("train", "val"))
    x_va = to_rgb_float(arrays.val.x)
    out = {}
    for name, build in (("custom_cnn", architectures.custom_cnn), ("improved_cnn", architectures.improved_cnn)):
        tried = []
        for s in range(seed, seed + MAX_SEEDS):
            tried.append(s)
            model = build(size, augment=True, seed=s)
            with stopwatch() as t:
                training.fit(model, arrays.train.x, y_tr, x_va, y_va, epochs=epochs, seed=s, verbose=0)
            threshold, dead = _threshold_and_check(training.predict_scores(model, x_va), y_va)
            say(f"  trained {name} (seed {s}) in {t['seconds']:.0f} s" + ("; constant scores, again" if dead else ""))
            if not dead:
                break
        path = training.save_model(model, folder / f"{name}.keras", _sidecar(data, size, name, threshold, s), onnx=True,
                                   parity=arrays.val.x)
        out[name] = {"path": path, "seeds_tried": tried, "degenerate": dead}
    return out


def train_transfer(data: BenchData, arrays, folder: Path, cache: Path, size: int, names: tuple[str, ...],
                   epochs: int, seed: int) -> tuple[dict[str, dict], dict]:
    """Frozen bases + heads trained on their fp32 ONNX features; name -> {path, seeds_tried, degenerate}, and
    the VGG16 head with its fp32 test features (for the features' accuracy)."""
    from cxrbook.data.pipeline import encode_labels
    from cxrbook.models import architectures, backbones, training
    y_tr, y_va = (encode_labels(arrays[s].labels, data.classes) for s in ("train", "val"))
    out, vgg = {}, {}
    for name in names:
        with stopwatch() as t:
            feats = backbones.cached_features(name, size, "none", arrays, cache_dir=cache, progress=False, seed=seed,
                                              engine="onnx")
        tried = []
        for s in range(seed, seed + MAX_SEEDS):
            tried.append(s)
            head = architectures.transfer_head(feats.train.shape[1], seed=s)
            training.fit(head, feats.train, y_tr, feats.val, y_va, epochs=epochs, seed=s, verbose=0)
            threshold, dead = _threshold_and_check(training.predict_scores(head, feats.val), y_va)
            if not dead:
                break
        full = architectures.full_transfer_model(backbones.build_backbone(name, size, "none", seed=seed), head)
        path = training.save_model(full, folder / f"{name.lower()}.keras", _sidecar(data, size, name, threshold, s),
                                   onnx=True, parity=arrays.val.x)
        say(f"  {name}: fp32 features {t['seconds']:.0f} s, head seeds {tried}"
            + (" (constant validation scores: a degenerate model)" if dead else ""))
        out[name.lower()] = {"path": path, "seeds_tried": tried, "degenerate": dead}
        if name == FEATURE_BACKBONE:
            vgg = {"head": head, "threshold": threshold, "test_features": feats.test}
        del full
    return out, vgg


def vnni_share(int8_path: Path, image_size: int, seconds: float = 6.0) -> dict:
    """Where ONNX Runtime spends an int8 model's time: ``perf record`` of a child scoring one batch in a loop.

    Each sample's address inside ONNX Runtime's library is disassembled (objdump); a sample counts
    as VNNI when that instruction or one of the next three is a VNNI dot product. Skipped (with the
    reason) when perf or objdump is missing or perf may not sample.
    """
    import onnxruntime
    if not (shutil.which("perf") and shutil.which("objdump")):
        return {"status": "skipped", "reason": "perf or objdump not installed"}
    lib = next(Path(onnxruntime.__file__).parent.joinpath("capi").glob("onnxruntime_pybind11_state*.so"), None)
    code = ("import sys, time, numpy as np, onnxruntime as ort\n"
            "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
            f"x = np.random.default_rng(0).uniform(0, 255, (8, {image_size}, {image_size}, 3)).astype('float32')\n"
            "n = s.get_inputs()[0].name; s.run(None, {n: x}); t = time.time()\n"
            f"while time.time() - t < {seconds}: s.run(None, {{n: x}})\n")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        rec = subprocess.run(["perf", "record", "-F", "499", "-o", str(data), "--", sys.executable, "-c", code,
                              str(int8_path)], capture_output=True, text=True, timeout=120)
        if rec.returncode != 0 or lib is None:
            return {"status": "skipped", "reason": f"perf record failed: {rec.stderr.strip()[-200:]}"}
        rep = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso,sym", "--stdio", "-q"],
                             capture_output=True, text=True, timeout=120)
    hot: Counter = Counter()
    total = 0.0
    for line in rep.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith("%"):
            share = float(parts[0].rstrip("%"))
            total += share
            if parts[1] == lib.name and parts[-1].startswith("0x"):
                hot[int(parts[-1], 16)] += share
    in_lib = sum(hot.values())
    vnni, top = 0.0, []
    for addr, share in hot.most_common():
        dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={addr}",
                              f"--stop-address={addr + 40}", str(lib)], capture_output=True, text=True).stdout
        ops = [ln.split("\t")[1].split()[0] for ln in dis.splitlines() if "\t" in ln and ":" in ln.split("\t")[0]][:4]
        if any(op in VNNI_MNEMONICS for op in ops):
            vnni += share
        if len(top) < 5:
            top.append({"share_percent": round(share, 2), "instructions": ops})
    return {"status": "ok", "method": "perf record -F 499 of a child running the int8 graph; samples inside "
                                      "ONNX Runtime disassembled with objdump (instruction or next three)",
            "samples_in_onnxruntime_percent": round(in_lib, 1),
            "vnni_percent_of_onnxruntime_samples": round(100 * vnni / in_lib, 1) if in_lib else 0.0,
            "hottest": top}


def run(data: BenchData, workdir: Path, repeats: int, seed: int, feature_size: int = 224, n_feature_images: int = 48,
        cnn_size: int = 150, cnn_epochs: int = 3, transfer_size: int = 224, n_transfer_train: int | None = 320,
        head_epochs: int = 10, transfer: tuple[str, ...] = TRANSFER, n_scoring: int = 32, n_warm: int = 8,
        batch_size: int = 32) -> dict:
    """Train, quantize, check and time every model type; returns the ``int8`` JSON section."""
    import pandas as pd
    from cxrbook.data.pipeline import load_arrays, to_rgb_float
    from cxrbook.inference import predict as P
    from cxrbook.inference.saved_model import load_model
    from cxrbook.models import backbones, quantization as Q
    from cxrbook.models import training

    folder, cache = workdir / "int8_models", workdir / "cache_int8"
    say(f"[int8] training the models (CNNs {cnn_size} px, {cnn_epochs} epochs; heads on {transfer_size} px features)")
    cnn_arrays = load_arrays(data.splits, cnn_size, cache_dir=cache, progress=False)
    sub = pd.concat([stratified_subset(data.split("train"), n_transfer_train, seed), data.split("val"),
                     data.split("test")])
    tr_arrays = load_arrays(sub, transfer_size, cache_dir=cache, progress=False)
    models = train_cnns(data, cnn_arrays, folder, cnn_size, cnn_epochs, seed)
    if FEATURE_BACKBONE not in transfer:
        transfer = (FEATURE_BACKBONE, *transfer)
    trained, vgg = train_transfer(data, tr_arrays, folder, cache, transfer_size, tuple(transfer), head_epochs, seed)
    models.update(trained)

    # ---- features: VGG16 base, fp32 vs int8
    feat_arrays = tr_arrays if feature_size == transfer_size else load_arrays(sub, feature_size, cache_dir=cache,
                                                                               progress=False)
    pick = Q.calibration_indices(len(feat_arrays.train), Q.N_CALIBRATION, seed)
    fp32_base = backbones.backbone_onnx(FEATURE_BACKBONE, feature_size, "none", seed=seed, cache_dir=cache)
    with stopwatch() as tq:
        int8_base = backbones.backbone_onnx_int8(FEATURE_BACKBONE, feature_size, "none", feat_arrays.train.x[pick],
                                                 f"{feat_arrays.key}:train:{len(pick)}:seed={seed}", seed, cache)
    timing_x = load_arrays(stratified_subset(data.split("train"), n_feature_images, seed), feature_size,
                           cache_dir=cache, progress=False).train.x
    n = len(timing_x)
    f_s, i_s = _interleaved(lambda: backbones.extract_features(fp32_base, timing_x, batch_size),
                            lambda: backbones.extract_features(int8_base, timing_x, batch_size), repeats)
    features = {"backbone": FEATURE_BACKBONE, "image_size": feature_size, "n_images": n, "batch_size": batch_size,
                "quantize_seconds": round(tq["seconds"], 1),
                "fp32_images_per_second": summary([n / s for s in f_s], "images/s", 2),
                "int8_images_per_second": summary([n / s for s in i_s], "images/s", 2),
                "ratio": _ratio(f_s, i_s)}
    if vgg and feature_size == transfer_size:
        from cxrbook.data.pipeline import encode_labels
        int8_test = backbones.extract_features(int8_base, tr_arrays.test.x, batch_size)
        features["accuracy"] = {"model": f"{FEATURE_BACKBONE} head (trained on fp32 features), test split", **Q.accuracy_check(
            encode_labels(tr_arrays.test.labels, data.classes), training.predict_scores(vgg["head"], vgg["test_features"]),
            training.predict_scores(vgg["head"], int8_test), vgg["threshold"])}
    say(f"  features: fp32 {features['fp32_images_per_second']['median']:.1f} img/s, int8 "
        f"{features['int8_images_per_second']['median']:.1f} img/s, ratio {features['ratio']['median']:.2f}x"
        + (f"; head test AUC {features['accuracy']['auc_fp32']:.4f} -> {features['accuracy']['auc_int8']:.4f}, "
           f"agreement {features['accuracy']['decision_agreement']:.3f}" if "accuracy" in features else ""))
    vnni = vnni_share(int8_base.path, feature_size)

    # ---- predict: every model, fp32 vs int8
    per_model = {}
    for name, m in models.items():
        arrays = cnn_arrays if name in ("custom_cnn", "improved_cnn") else tr_arrays
        with stopwatch() as tq:
            entry = Q.quantize_saved_model(m["path"], arrays, seed=seed)
        acc = entry["accuracy"]
        fp32_scorer = load_model(m["path"], engine="onnx")
        row = {"image_size": arrays.image_size, "seeds_tried": m["seeds_tried"], "degenerate": m["degenerate"],
               "quantize_seconds": round(tq["seconds"], 1), "calibration": entry["calibration"],
               "accuracy": {k: v for k, v in acc.items() if k != "data_key"}}
        if not acc["met"]:
            row["status"] = "accuracy not met: the int8 engine refuses this model"
            per_model[name] = row
            say(f"  {name:<14} accuracy NOT met ({acc})")
            continue
        int8_scorer = load_model(m["path"], engine="int8")
        x = to_rgb_float(arrays.test.x[:n_scoring])
        f_s, i_s = _interleaved(lambda: fp32_scorer.probabilities(x), lambda: int8_scorer.probabilities(x), repeats)
        files = arrays.test.image_path[:n_warm].tolist()
        out = workdir / "int8_overlays"
        wf, wi = _interleaved(lambda: [P.predict_files(fp32_scorer, [f], out_dir=out, overlays=False, echo=None)
                                       for f in files],
                              lambda: [P.predict_files(int8_scorer, [f], out_dir=out, overlays=False, echo=None)
                                       for f in files], repeats)
        row.update({"status": "ok",
                    "scoring_fp32_images_per_second": summary([len(x) / s for s in f_s], "images/s", 2),
                    "scoring_int8_images_per_second": summary([len(x) / s for s in i_s], "images/s", 2),
                    "ratio": _ratio(f_s, i_s),
                    "warm_per_image_fp32_seconds": summary([s / len(files) for s in wf], "s"),
                    "warm_per_image_int8_seconds": summary([s / len(files) for s in wi], "s"),
                    "ratio_warm_per_image": summary([a / b for a, b in zip(wf, wi)], "x (int8 faster)", 3)})
        per_model[name] = row
        say(f"  {name:<14} scoring {row['scoring_fp32_images_per_second']['median']:.1f} -> "
            f"{row['scoring_int8_images_per_second']['median']:.1f} img/s ({row['ratio']['median']:.2f}x), warm "
            f"per image {row['ratio_warm_per_image']['median']:.2f}x; test AUC {acc['auc_fp32']:.4f} -> "
            f"{acc['auc_int8']:.4f}, agreement {acc['decision_agreement']:.3f} of {acc['n_images']}")
    checked = [r["accuracy"]["met"] and not r["degenerate"] for r in per_model.values()]
    fast = [r["ratio"]["met"] for r in per_model.values() if "ratio" in r]
    return {
        "status": "ok",
        "goal": {"ratio": f">= {GOAL_RATIO:g}x int8 vs fp32 (features; predict's scoring)",
                 "accuracy": f"|AUC int8 - AUC fp32| <= {Q.AUC_TOLERANCE} on the test split and decisions at the "
                             f"stored threshold agreeing on >= {Q.MIN_AGREEMENT:.0%} of its images"},
        "settings": {"repeats": repeats, "weights": "none (random, seeded bases; benchmark models, not results)",
                     "cnn_image_size": cnn_size, "cnn_epochs": cnn_epochs, "transfer_image_size": transfer_size,
                     "n_transfer_train": len(tr_arrays.train), "head_epochs": head_epochs,
                     "n_scoring_images": n_scoring, "n_warm_files": n_warm, "batch_size": batch_size,
                     "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": Q.QUANT_FORMAT,
                                      "per_channel": True, "activations": "uint8", "weights": "int8",
                                      "calibration": f"MinMax on {Q.N_CALIBRATION} training images"},
                     "threshold": "Youden on the validation split (fp32 scores), stored in the sidecar",
                     "timed": "fp32 and int8 interleaved after one untimed call each"},
        "features": features,
        "vnni": vnni,
        "models": per_model,
        "accuracy_met_every_model": bool(checked) and all(checked),
        "ratio_met_every_model": bool(fast) and all(fast) and len(fast) == len(per_model),
    }
