"""Benchmark 4: prediction latency of every model type, cold (a fresh process) and warm (loaded once).

Models: each type the workbook saves, built here so the figures do not depend
on what ``outputs/`` holds (``--predict-model`` times one existing model
instead): the reference custom CNN (trained one epoch on a few training
images), the improved CNN, VGG16 and the four notebook-06 backbones joined with
a head (``models.full_transfer_model``, weights "none": the speed equals
ImageNet weights'), all saved by ``training.save_model(..., onnx=True)`` (``.keras`` + ``.onnx`` +
sidecar: the export a model's first ``predict`` would otherwise make, once), and the
pixel logistic regression (``.joblib`` + its ``.onnx``). Saving and the ONNX
export are untimed setup (``setup_seconds`` per model).

Cold start, scores only: ``python -m cxrbook predict IMAGE --model M --no-gradcam``
as a subprocess (ONNX Runtime; no TensorFlow, no scikit-learn), until its score line
(the first answer; goal <= 1 s) and until exit.
Warm, scores only: in this process, ``saved_model.load_model`` once, then
``predict.predict_files(..., overlays=False)`` on one image per call (goal
<= 100 ms per image); the first call is not counted.
Grad-CAM (custom CNN only): the same cold command with the overlay on (Keras
and TensorFlow are imported for the gradients) and warm per image with the
overlay, to document what an overlay costs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import BenchData, say, stopwatch, stratified_subset, summary

ROOT = Path(__file__).resolve().parents[1]
GOAL_COLD_S = 1.0
GOAL_WARM_S = 0.1
TRANSFER = ("VGG16", "DenseNet121", "ResNet50V2", "InceptionV3", "MobileNetV2")


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _goal(stats: dict, limit: float, unit_text: str) -> dict:
    return {**stats, "goal": f"<= {unit_text}", "met": bool(stats["median"] <= limit)}


def predict_command_available() -> tuple[bool, str]:
    """Whether ``python -m cxrbook predict --help`` works (the CLI is written separately)."""
    proc = subprocess.run([sys.executable, "-m", "cxrbook", "predict", "--help"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        return True, ""
    return False, (proc.stderr.strip().splitlines() or ["(no message)"])[-1]


def build_models(data: BenchData, workdir: Path, cnn_size: int, transfer_size: int, n_train_images: int,
                 seed: int, transfer: tuple[str, ...]) -> dict[str, tuple[Path, float]]:
    """name -> (saved model path, setup seconds) for every model type (benchmark models, not results)."""
    from cxrbook.models import backbones
    from cxrbook.evaluation import experiment
    from cxrbook.models import architectures as models
    from cxrbook.models import training
    from cxrbook.data.pipeline import encode_labels, load_arrays, to_rgb_float

    folder = workdir / "predict_models"
    side = {"classes": list(data.classes), "task": "covid_vs_normal", "threshold": 0.5,
            "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
            "weights": "none (benchmark model, not a result)"}
    rows = stratified_subset(data.split("train"), n_train_images, seed)
    arrays = load_arrays(rows, cnn_size, cache_dir=workdir / "cache_predict", progress=False)
    y = encode_labels(arrays.train.labels, data.classes)
    out: dict[str, tuple[Path, float]] = {}
    with stopwatch() as t:
        cnn = models.custom_cnn(cnn_size, augment=True, seed=seed, n_classes=2)
        cnn.fit(to_rgb_float(arrays.train.x), y.astype("float32"), batch_size=32, epochs=1, verbose=0)
        path = training.save_model(cnn, folder / "custom_cnn.keras", {
            **side, "image_size": cnn_size, "backbone": "custom_cnn"}, onnx=True)
    out["custom_cnn"] = (path, t["seconds"])
    with stopwatch() as t:
        path = training.save_model(models.improved_cnn(cnn_size, augment=True, seed=seed), folder / "improved_cnn.keras",
                                   {**side, "image_size": cnn_size, "backbone": "improved_cnn"}, onnx=True)
    out["improved_cnn"] = (path, t["seconds"])
    for name in transfer:
        with stopwatch() as t:
            base = backbones.build_backbone(name, transfer_size, "none", seed=seed)
            full = models.full_transfer_model(base, models.transfer_head(int(base.output_shape[-1]), seed=seed))
            path = training.save_model(full, folder / f"{name.lower()}.keras",
                                       {**side, "image_size": transfer_size, "backbone": name}, onnx=True)
        out[name.lower()] = (path, t["seconds"])
        say(f"  built and exported {name} at {transfer_size} px in {t['seconds']:.0f} s")
    with stopwatch() as t:
        clf = experiment.fit_pixel_logreg(arrays.train.x, y, 32, seed)
        path = experiment.save_pixel_logreg(clf, folder / "logreg_pixels.joblib", {
            **side, "image_size": cnn_size, "thumbnail_size": 32, "weights": "none (classical)",
            "backbone": "logreg_pixels"})
    out["logreg_pixels"] = (path, t["seconds"])
    return out


def cold_start(model_path: Path, image: str, out_dir: Path, overlay: bool = False,
               timeout_s: int = 600) -> tuple[float, float | None, str]:
    """(seconds to exit, seconds to the image's score line, stdout) of one ``predict`` subprocess."""
    cmd = [sys.executable, "-m", "cxrbook", "predict", image, "--model", str(model_path), "--out", str(out_dir)]
    if not overlay:
        cmd.append("--no-gradcam")
    with tempfile.TemporaryFile(mode="w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True)
        first, lines = None, []
        for line in proc.stdout:
            if first is None and line.startswith(f"{image}:"):
                first = time.perf_counter() - start
            lines.append(line)
        rc = proc.wait(timeout=timeout_s)
        total = time.perf_counter() - start
        if rc != 0:
            err.seek(0)
            raise RuntimeError(f"predict exited {rc}: {err.read()[-1500:]}")
    return total, first, "".join(lines)


def _warm(P, scorer, images: list[str], out_dir: Path, repeats: int, overlays: bool) -> list[float]:
    P.predict_files(scorer, images[:1], out_dir=out_dir, overlays=overlays, echo=None)  # not counted
    times = []
    for _ in range(repeats):
        for path in images:
            with stopwatch() as t:
                rows = P.predict_files(scorer, [path], out_dir=out_dir, overlays=overlays, echo=None)
            if rows[0]["status"] != "ok":
                raise RuntimeError(f"predict could not score {path}: {rows[0]['message']}")
            times.append(t["seconds"])
    return times


def _cold(model_path: Path, image: str, out_dir: Path, repeats: int, overlay: bool) -> dict:
    cold, first, stdout = [], [], ""
    for _ in range(repeats):
        total, first_answer, stdout = cold_start(model_path, image, out_dir, overlay=overlay)
        cold.append(total)
        if first_answer is not None:
            first.append(first_answer)
    return {"cold_start_seconds": summary(cold, "s"),
            "cold_start_first_answer_seconds": summary(first, "s") if first else None,
            "cold_start_example_output": stdout.strip()[-400:]}


def run(data: BenchData, workdir: Path, repeats: int, seed: int, image_size: int = 150,
        transfer_size: int = 224, n_train_images: int = 64, n_warm_images: int = 20,
        transfer: tuple[str, ...] = TRANSFER, model_path: Path | None = None) -> dict:
    """Cold and warm prediction latency per model type; returns the ``prediction`` JSON section."""
    available, why = predict_command_available()
    if not available:
        return {"status": "skipped", "reason": f"predict command not available ({why})"}
    from cxrbook.inference import predict as P
    from cxrbook.inference.saved_model import load_model

    if model_path is None:
        say(f"[prediction] building every model type (CNNs {image_size} px, transfer {transfer_size} px; untimed)")
        built = build_models(data, workdir, image_size, transfer_size, n_train_images, seed, tuple(transfer))
    else:
        built = {Path(model_path).stem: (Path(model_path), 0.0)}
    images = data.split("test")["image_path"].tolist()[:max(n_warm_images, 1)]
    overlays = workdir / "predict_overlays"
    per_model: dict[str, dict] = {}
    for name, (path, setup) in built.items():
        with stopwatch() as tl:
            scorer = load_model(path)
        warm = _warm(P, scorer, images, overlays, repeats, overlays=False)
        cold = _cold(path, images[0], overlays, repeats, overlay=False)
        first = cold["cold_start_first_answer_seconds"]
        per_model[name] = {
            "engine": scorer.engine, "image_size": scorer.image_size, "setup_seconds": round(setup, 1),
            "onnx_max_abs_logit_diff": ((scorer.sidecar.get("onnx") or {}).get("parity") or {}).get(
                "max_abs_logit_diff"),
            "model_load_seconds": round(tl["seconds"], 3),
            "cold_start_seconds": cold["cold_start_seconds"],
            "cold_start_first_answer_seconds": _goal(first, GOAL_COLD_S, f"{GOAL_COLD_S:g} s") if first else None,
            "warm_scores_only_seconds_per_image": _goal(summary(warm, "s"), GOAL_WARM_S, f"{GOAL_WARM_S * 1000:g} ms"),
            "cold_start_example_output": cold["cold_start_example_output"]}
        say(f"  {name:<14} ({scorer.engine}) cold first answer "
            f"{(first or {}).get('median', float('nan')):.2f} s, exit {cold['cold_start_seconds']['median']:.2f} s; "
            f"warm {per_model[name]['warm_scores_only_seconds_per_image']['median'] * 1000:.1f} ms/image")

    cam_name = "custom_cnn" if "custom_cnn" in built else next(iter(built))
    gradcam = None
    scorer = load_model(built[cam_name][0])
    if scorer.has_gradcam:
        with stopwatch() as tk:
            scorer.heatmaps(P.preprocess_file(images[0], scorer.sidecar)[1][None])  # loads Keras once
        gradcam = {"model": cam_name, "first_heatmap_seconds_in_process": round(tk["seconds"], 2),
                   "warm_seconds_per_image": summary(_warm(P, scorer, images, overlays, repeats, True), "s"),
                   **_cold(built[cam_name][0], images[0], overlays, repeats, overlay=True)}
        say(f"  Grad-CAM ({cam_name}): cold with overlay {gradcam['cold_start_seconds']['median']:.2f} s, "
            f"warm {gradcam['warm_seconds_per_image']['median'] * 1000:.1f} ms/image")
    met = [m[k]["met"] for m in per_model.values()
           for k in ("cold_start_first_answer_seconds", "warm_scores_only_seconds_per_image") if m[k]]
    legacy = per_model.get("custom_cnn") or next(iter(per_model.values()))
    return {
        "status": "ok",
        "goal": {"cold start to first answer": f"<= {GOAL_COLD_S:g} s, every model type",
                 "warm per image, scores only": f"<= {GOAL_WARM_S * 1000:g} ms"},
        # the reference CNN's figures under the schema-1 names (read by cxrbook.reporting.tables' speed block)
        "cold_start_seconds": legacy["cold_start_seconds"],
        "warm_scores_only_seconds_per_image": legacy["warm_scores_only_seconds_per_image"],
        "warm_seconds_per_image": (gradcam or {}).get("warm_seconds_per_image"),
        "settings": {"models": "every type the workbook saves, built here (benchmark models, not results)"
                               if model_path is None else f"existing model {model_path}",
                     "cnn_image_size": image_size, "transfer_image_size": transfer_size, "repeats": repeats,
                     "n_warm_images": len(images), "image_source": "test split files",
                     "cold_command": "python -m cxrbook predict IMAGE --model M --out DIR --no-gradcam, "
                                     "subprocess until the score line and until exit",
                     "warm_path": "saved_model.load_model once; predict.predict_files(overlays=False) on one image "
                                  "per call; first call excluded",
                     "gradcam": "same cold command with the overlay (Keras loaded for the gradients); warm with "
                                "overlay"},
        "models": per_model,
        "gradcam": gradcam,
        "all_goals_met": bool(met) and all(met),
    }
