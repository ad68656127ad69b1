"""Benchmark 4: prediction latency, cold (a fresh process) and warm (model loaded once, in process).

The model is a small saved model: by default the reference custom CNN
(``models.custom_cnn``, augmentation layers included as notebook 04 saves it)
trained for one epoch on a few training images and saved with
``models.save_model`` (sidecar included) into the work folder, so the figure
does not depend on what ``outputs/`` holds; ``--predict-model`` times an
existing model instead.

Cold start: ``python -m cxrbook predict IMAGE --model M.keras --out DIR`` as a
subprocess (default engine "auto" and Grad-CAM overlay on, as a user runs it;
``--out`` keeps the overlay out of the data folder), from process start until
it exits; the time to its score line (the first answer) is recorded too.
Warm: in this process, ``predict.load_scorer`` once, then ``predict.predict_files``
on one image at a time (with and without the Grad-CAM overlay); the first call
is not counted. If ``cxrbook.predict`` is missing, the section says "predict
command not available".
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


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def predict_command_available() -> tuple[bool, str]:
    """Whether ``python -m cxrbook predict --help`` works (the CLI is written separately)."""
    proc = subprocess.run([sys.executable, "-m", "cxrbook", "predict", "--help"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        return True, ""
    return False, (proc.stderr.strip().splitlines() or ["(no message)"])[-1]


def train_tiny_model(data: BenchData, workdir: Path, image_size: int, n_images: int, seed: int) -> Path:
    """The reference custom CNN, one epoch on ``n_images`` training images, saved with its sidecar."""
    from cxrbook import models
    from cxrbook.pipeline import encode_labels, load_arrays, to_rgb_float

    rows = stratified_subset(data.split("train"), n_images, seed)
    arrays = load_arrays(rows, image_size, cache_dir=workdir / "cache_predict", progress=False)
    y = encode_labels(arrays.train.labels, data.classes)
    model = models.custom_cnn(image_size, augment=True, seed=seed, n_classes=2)
    model.fit(to_rgb_float(arrays.train.x), y.astype("float32"), batch_size=32, epochs=1, verbose=0)
    return models.save_model(model, workdir / "predict_model" / "custom_cnn.keras", sidecar={
        "classes": list(data.classes), "image_size": image_size, "task": "covid_vs_normal", "threshold": 0.5,
        "preprocessing": {"grayscale_to_rgb": True, "range": "0-255", "clahe": False},
        "weights": "none (trained from scratch, 1 epoch: benchmark model, not a result)",
        "backbone": "custom_cnn"})


def cold_start(model_path: Path, image: str, out_dir: Path,
               timeout_s: int = 600) -> tuple[float, float | None, str]:
    """(seconds to exit, seconds to the image's score line, stdout) of one ``predict`` subprocess."""
    cmd = [sys.executable, "-m", "cxrbook", "predict", image, "--model", str(model_path), "--out", str(out_dir)]
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


def run(data: BenchData, workdir: Path, repeats: int, seed: int, image_size: int = 150,
        n_train_images: int = 64, n_warm_images: int = 20, model_path: Path | None = None) -> dict:
    """Cold and warm prediction latency; returns the ``prediction`` JSON section."""
    available, why = predict_command_available()
    if not available:
        return {"status": "skipped", "reason": f"predict command not available ({why})"}
    from cxrbook import predict as P

    if model_path is None:
        with stopwatch() as t:
            model_path = train_tiny_model(data, workdir, image_size, n_train_images, seed)
        model_note = (f"custom_cnn trained 1 epoch on {n_train_images} images "
                      f"({t['seconds']:.1f} s, untimed)")
    else:
        model_note = f"existing model {model_path}"
    images = data.split("test")["image_path"].tolist()[:max(n_warm_images, 1)]
    overlays = workdir / "predict_overlays"
    say(f"[prediction] model {Path(model_path).name}; cold start x{repeats}, warm on {len(images)} images "
        f"x{repeats}")

    # Warm, in process: load once, one image per call, as the CLI does per file.
    with stopwatch() as tl:
        scorer = P.load_scorer(model_path)
    warm: dict[bool, list[float]] = {True: [], False: []}
    for gradcam in (True, False):
        P.predict_files(scorer, images[:1], out_dir=overlays, overlays=gradcam, echo=None)  # not counted
        for _ in range(repeats):
            for path in images:
                with stopwatch() as t:
                    rows = P.predict_files(scorer, [path], out_dir=overlays, overlays=gradcam, echo=None)
                if rows[0]["status"] != "ok":
                    raise RuntimeError(f"predict could not score {path}: {rows[0]['message']}")
                warm[gradcam].append(t["seconds"])

    cold, first = [], []
    for _ in range(repeats):
        total, first_answer, stdout = cold_start(Path(model_path), images[0], overlays)
        cold.append(total)
        if first_answer is not None:
            first.append(first_answer)
    out = {
        "status": "ok",
        "settings": {"model": model_note, "model_image_size": scorer.image_size, "engine": scorer.engine,
                     "repeats": repeats, "n_warm_images": len(images), "image_source": "test split files",
                     "cold_command": "python -m cxrbook predict IMAGE --model M.keras --out DIR "
                                     "(engine auto, Grad-CAM overlay on), subprocess until exit",
                     "warm_path": "predict.load_scorer once; predict.predict_files on one image per call; "
                                  "first call excluded"},
        "cold_start_seconds": summary(cold, "s"),
        "cold_start_first_answer_seconds": summary(first, "s") if first else None,
        "warm_seconds_per_image": summary(warm[True], "s"),            # with Grad-CAM overlay (CLI default)
        "warm_scores_only_seconds_per_image": summary(warm[False], "s"),  # --no-gradcam
        "model_load_seconds": round(tl["seconds"], 3),
        "cold_start_example_output": stdout.strip()[-600:],
    }
    say(f"  cold start {out['cold_start_seconds']['median']:.2f} s ({scorer.engine} engine), warm "
        f"{out['warm_seconds_per_image']['median'] * 1000:.1f} ms/image with Grad-CAM, "
        f"{out['warm_scores_only_seconds_per_image']['median'] * 1000:.1f} ms scores only")
    return out
