"""``python -m cxrbook predict|evaluate``: score X-ray files with a saved model.

RESEARCH TOOL, NOT A DIAGNOSIS: every printed line, CSV row, JSON and overlay
image says so. The models were trained on a few hundred public images whose
labels are confounded with the hospital they came from (see notebook 07).

Preprocessing follows the model's sidecar (``<model>.json``) exactly as the
training pipeline did: ``images.load_gray`` (grayscale, RGBA flattened on
black, 16-bit rescaled by its own range), optional CLAHE at full resolution,
bilinear resize to ``image_size``, gray copied to three channels, values 0-255.

Speed: importing TensorFlow takes longer than the whole answer should, so
scores come from ONNX Runtime (``engine="onnx"``, the default; loading and
scoring live in ``cxrbook.inference``): every ``.keras`` model has an ``.onnx``
export beside it (written by ``models.save_model``, or once on first use), and
so has the pixel logistic regression (``.joblib``; its graph takes the
thumbnails). Scoring imports neither TensorFlow nor scikit-learn. A Grad-CAM overlay needs gradients, so the first overlay
loads the Keras model (TensorFlow, seconds); ``--no-gradcam`` skips it.
``--engine keras`` scores with Keras instead.
"""

from __future__ import annotations

import csv
from collections import Counter
import html
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .images import UnreadableImage, load_gray, prepare
from . import inference
from .inference import ENGINES, Scorer, keras_scorer, to_probabilities  # noqa: F401  (public here too)
from .overlay import MAX_OVERLAY_SIDE, MIN_OVERLAY_WIDTH, overlay_image, wrap_caption  # noqa: F401
from .sidecar import DISCLAIMER, SidecarError, confound_warning, read_sidecar  # noqa: F401  (SidecarError, read_sidecar re-exported)

OVERLAY_SUFFIX = "_gradcam.png"

# Exit codes of ``predict`` and ``evaluate`` (also in their --help epilog and the README).
EXIT_OK = 0              # every input was scored
EXIT_NONE_SCORED = 1     # no input could be scored
EXIT_FATAL = 2           # usage error or an unusable model / folder / labels file: nothing was done
EXIT_SOME_FAILED = 3     # some inputs were scored, others failed (each one is named in the output)
EXIT_CODES_HELP = (f"exit codes: {EXIT_OK} every input scored; {EXIT_NONE_SCORED} no input could be scored; "
                   f"{EXIT_FATAL} usage error or unusable model/folder/labels (nothing scored); "
                   f"{EXIT_SOME_FAILED} some inputs scored, others failed (unreadable, DICOM, too large, "
                   "a folder, or a labelled file not found; each is named in the output)")


def load_scorer(model_path: str | os.PathLike, engine: str = "onnx") -> Scorer:
    """``inference.load_scorer`` (a ``.keras`` or ``.joblib`` model on ONNX Runtime, or ``engine="keras"``),
    plus notebook 06's soft-voting ensemble: a ``.json`` model whose members are each loaded as here."""
    if Path(model_path).suffix == ".json":
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        from .ensemble import ensemble_scorer
        return ensemble_scorer(model_path, lambda member: load_scorer(member, engine=engine))
    return inference.load_scorer(model_path, engine)


# =========================================================================== preprocessing and output

def preprocess_file(path: str | os.PathLike, sidecar: dict) -> tuple[np.ndarray, np.ndarray]:
    """(full-resolution gray uint8 image, model input (s, s, 3) float32 in [0, 255]).

    As in training (``images.prepare``, also used by the cache): decode with ``images.load_gray``, CLAHE
    at full resolution when ``sidecar["preprocessing"]["clahe"]``, bilinear
    resize to ``sidecar["image_size"]``, gray copied to three channels.
    Raises ``images.UnreadableImage`` (with ``.reason``) for files that cannot be used.
    """
    gray = load_gray(path)
    clahe = bool((sidecar.get("preprocessing") or {}).get("clahe"))
    small = prepare(gray, int(sidecar["image_size"]), clahe).astype(np.float32)  # same function as training
    return gray, np.repeat(small[..., None], 3, axis=-1)


def decide(probs: np.ndarray, classes: Sequence[str], threshold: float | None) -> list[str]:
    """Predicted class names: binary ``P(positive) >= threshold``, otherwise argmax."""
    probs = np.asarray(probs)
    if len(classes) == 2:
        if threshold is None:
            raise ValueError("a binary model needs its validation-chosen threshold; none was given")
        return [classes[1] if p >= float(threshold) else classes[0] for p in probs[:, 1]]
    return [classes[i] for i in probs.argmax(axis=1)]


def _save_png(img, path: Path, meta: dict) -> None:
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    for k, v in meta.items():
        info.add_text(k, str(v))
    img.save(path, pnginfo=info, compress_level=1)


def _overlay_path(src: Path, out_dir: Path | None, taken: set) -> Path:
    folder = out_dir if out_dir is not None else src.parent
    p = folder / f"{src.stem}{OVERLAY_SUFFIX}"
    i = 2
    while p in taken:
        p = folder / f"{src.stem}_{i}{OVERLAY_SUFFIX}"
        i += 1
    taken.add(p)
    return p


def _format_probs(classes: Sequence[str], probs: np.ndarray) -> str:
    return "  ".join(f"P({c})={p:.3f}" for c, p in zip(classes, probs))


# =========================================================================== predict

def predict_files(scorer: Scorer, files: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                  overlays: bool = True, echo: Callable[[str], None] | None = print) -> list[dict]:
    """Score image files one by one; one dict per file (``status`` "ok" or "unreadable").

    Keys: file, status, reason, probabilities (dict), predicted, threshold,
    overlay (path or None), message, note, caution (``sidecar.confound_warning``:
    what a high score of this model may really mean; printed and captioned beside every score). With ``overlays`` a Grad-CAM
    overlay ``<stem>_gradcam.png`` is written beside each original (or in
    ``out_dir``); an unwritable folder is reported, the scores are still given.
    """
    classes, t = scorer.classes, scorer.threshold
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda s: None)
    rows, taken = [], set()
    rule = f"P({classes[1]}) >= {t:.3f}" if len(classes) == 2 else "argmax"
    caution = confound_warning(scorer.sidecar)
    for f in files:
        path = Path(f)
        row = {"file": str(path), "status": "ok", "reason": "", "probabilities": {}, "predicted": None,
               "threshold": t, "overlay": None, "message": "", "note": DISCLAIMER, "caution": caution}
        try:
            gray, x = preprocess_file(path, scorer.sidecar)
        except UnreadableImage as e:
            from .images import REASONS
            hint = ("; to score every image under a folder use `python -m cxrbook evaluate --model MODEL "
                    f"--images {path}`" if e.reason == "is_a_directory" else "")
            row.update(status="unreadable", reason=e.reason,
                       message=f"{path}: not scored: {REASONS.get(e.reason, e.reason)}"
                               + (f" ({e.detail})" if e.detail else "") + hint)
            say(row["message"])
            rows.append(row)
            continue
        probs = scorer.probabilities(x[None])  # the answer first: a heatmap may have to load Keras
        label = decide(probs, classes, t)[0]
        row.update(probabilities={c: float(p) for c, p in zip(classes, probs[0])}, predicted=label)
        say(f"{path}: {_format_probs(classes, probs[0])} -> {label} (rule {rule}) [{DISCLAIMER}]")
        say(f"  {caution}")
        heat = scorer.heatmaps(x[None]) if overlays and scorer.has_gradcam else None
        if overlays and heat is None:
            row["message"] = f"no Grad-CAM overlay: {scorer.name} is not a CNN"
            say(f"  {row['message']}")
        if heat is not None:
            target = _overlay_path(path, out, taken)
            caption = (f"{DISCLAIMER.upper()}\n{scorer.name}: {_format_probs(classes, probs[0])} -> {label}"
                       f"\n{caution}")
            try:
                _save_png(overlay_image(gray, heat[0], caption), target,
                          {"Disclaimer": DISCLAIMER, "Source": str(path), "Model": scorer.name,
                           "Prediction": label, "Probabilities": json.dumps(row["probabilities"]),
                           "Caution": caution})
                row["overlay"] = str(target)
                say(f"  Grad-CAM overlay: {target}")
            except OSError as e:
                row["message"] = (f"cannot write the overlay in {target.parent} ({e.strerror or e}); "
                                  "pass --out DIR to write overlays elsewhere")
                say(f"  {row['message']}")
        rows.append(row)
    return rows


def predict_images(model, sidecar: dict | None, paths: Sequence[str | os.PathLike] | str,
                   out_dir: str | os.PathLike | None = None, overlays: bool = True, echo=print):
    """Notebook entry point: score files with a Keras model (+ sidecar) or a ``Scorer``, as a DataFrame.

    ``model`` may be a ``Scorer``, a path to a ``.keras`` file (sidecar read
    beside it) or an in-memory Keras model with its ``sidecar`` dict. One row
    per file: file, status, P(<class>) columns, predicted, threshold, overlay, message, note, caution.
    """
    import pandas as pd
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(model, Scorer):
        scorer = model
    elif isinstance(model, (str, os.PathLike)):
        scorer = load_scorer(model)
    else:
        if sidecar is None:
            raise ValueError("pass the model's sidecar dict (classes, image_size, threshold, preprocessing)")
        scorer = keras_scorer(model, sidecar)
    rows = predict_files(scorer, paths, out_dir=out_dir, overlays=overlays, echo=echo)
    flat = [{"file": r["file"], "status": r["status"], "reason": r["reason"],
             **{f"P({c})": r["probabilities"].get(c) for c in scorer.classes},
             "predicted": r["predicted"], "threshold": r["threshold"], "overlay": r["overlay"],
             "message": r["message"], "note": r["note"], "caution": r["caution"]} for r in rows]
    return pd.DataFrame(flat)


# =========================================================================== evaluate

def list_files(root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Every regular, non-hidden file under ``root`` (recursive, sorted), minus ``exclude``
    (files or folders) and the overlays this tool writes (``*_gradcam.png``)."""
    root = Path(root)
    excl = [Path(e).resolve() for e in exclude]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if fn.startswith(".") or fn.endswith(OVERLAY_SUFFIX):
                continue
            rp = p.resolve()
            if any(rp == e or e in rp.parents for e in excl):
                continue
            out.append(p)
    return out


def read_labels(path: str | os.PathLike, classes: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """``filename -> (label, patient_id or None)`` from a CSV with columns filename,label[,patient_id].

    Raises ValueError naming the file for a missing file, missing columns,
    duplicate filenames or labels that are not among the model's classes.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"labels file {path} is not a readable CSV ({e})") from None
    missing = [c for c in ("filename", "label") if c not in cols]
    if missing:
        raise ValueError(f"labels file {path} lacks column(s) {missing}; it needs filename,label "
                         f"(optional patient_id), found {cols}")
    out: dict[str, tuple[str, str | None]] = {}
    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        raise ValueError(f"labels file {path} has labels {unknown} that the model does not know; "
                         f"its classes are {list(classes)}")
    for r in rows:
        if not r["filename"]:
            continue
        if r["filename"] in out:
            raise ValueError(f"labels file {path} lists {r['filename']!r} twice")
        out[r["filename"]] = (r["label"], r.get("patient_id") or None)
    return out


def evaluate_folder(scorer: Scorer, images_dir: str | os.PathLike, labels_csv: str | os.PathLike | None = None,
                    out_dir: str | os.PathLike | None = None, n_boot: int = 1000, seed: int = 42,
                    batch_size: int = 64, echo: Callable[[str], None] | None = print) -> dict:
    """Score every file under ``images_dir``; write predictions.csv, unreadable.csv and, with labels, metrics.json.

    ``labels_csv`` rows match an image by its path relative to ``images_dir``
    (e.g. ``covid/img1.png``) or, when unambiguous, by its bare file name.
    Without a ``patient_id`` column every image counts as its own patient in
    the bootstrap intervals (too narrow if patients have several images).
    Returns a summary dict (counts, output paths, metrics record or None).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"images folder {images_dir} does not exist or is not a folder")
    say = echo or (lambda s: None)
    classes = scorer.classes
    if out_dir is None:
        from .config import DEFAULT_OUTPUT_DIR
        out_dir = DEFAULT_OUTPUT_DIR / "evaluate" / (images_dir.resolve().name or "images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = read_labels(labels_csv, classes) if labels_csv else None
    files = list_files(images_dir, exclude=[out] + ([labels_csv] if labels_csv else []))
    say(f"evaluate: {len(files)} files under {images_dir} with {scorer.name} (engine {scorer.engine}) "
        f"[{DISCLAIMER}]")
    rel = [p.relative_to(images_dir).as_posix() for p in files]
    scored: list[tuple[int, np.ndarray]] = []
    unreadable: list[dict] = []
    t0 = time.perf_counter()
    batch_x, batch_i = [], []

    def flush():
        if batch_x:
            probs = scorer.probabilities(np.stack(batch_x))
            scored.extend(zip(batch_i, probs))
            batch_x.clear()
            batch_i.clear()

    for i, p in enumerate(files):
        try:
            _, x = preprocess_file(p, scorer.sidecar)
        except UnreadableImage as e:
            unreadable.append({"file": rel[i], "reason": e.reason, "detail": e.detail, "note": DISCLAIMER})
            continue
        batch_x.append(x)
        batch_i.append(i)
        if len(batch_x) >= batch_size:
            flush()
    flush()
    seconds = time.perf_counter() - t0
    preds = {i: (p, decide(p[None], classes, scorer.threshold)[0]) for i, p in scored}
    pred_csv, bad_csv = out / "predictions.csv", out / "unreadable.csv"
    with open(pred_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", *[f"score_{c}" for c in classes], "predicted_label", "threshold", "note"])
        for i in sorted(preds):
            p, lab = preds[i]
            w.writerow([rel[i], *[f"{v:.6f}" for v in p], lab,
                        "" if scorer.threshold is None else f"{scorer.threshold:.6f}", DISCLAIMER])
    with open(bad_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "reason", "detail", "note"])
        w.writeheader()
        w.writerows(unreadable)
    say(f"scored {len(preds)} images in {seconds:.1f} s -> {pred_csv}")
    say(f"unreadable: {len(unreadable)} -> {bad_csv}" + ("" if not unreadable else " ("
        + ", ".join(f"{r}: {n}" for r, n in Counter(u["reason"] for u in unreadable).items()) + ")"))
    for u in unreadable[:MAX_LISTED]:
        say(f"  not scored: {u['file']}: {u['reason']}" + (f" ({u['detail']})" if u["detail"] else ""))
    if len(unreadable) > MAX_LISTED:
        say(f"  ... and {len(unreadable) - MAX_LISTED} more in {bad_csv}")
    summary = {"n_files": len(files), "n_scored": len(preds), "n_unreadable": len(unreadable),
               "predictions_csv": str(pred_csv), "unreadable_csv": str(bad_csv), "seconds_scoring": round(seconds, 2),
               "metrics": None, "metrics_json": None, "note": DISCLAIMER}
    if labels is not None:
        summary.update(_labelled_metrics(scorer, labels, rel, preds, out, images_dir, labels_csv, n_boot, seed, say))
    return summary


def _labelled_metrics(scorer, labels, rel, preds, out, images_dir, labels_csv, n_boot, seed, say) -> dict:
    from . import metrics as M
    from . import records as R
    classes = scorer.classes
    names = [Path(r).name for r in rel]
    name_count = Counter(names)
    def label_key(i: int) -> str | None:
        return rel[i] if rel[i] in labels else (names[i] if name_count[names[i]] == 1 and names[i] in labels
                                                else None)

    found = {label_key(i) for i in range(len(rel))} - {None}  # labelled files present (scored or unreadable)
    not_found = sorted(set(labels) - found)
    y, s, pid, used = [], [], [], set()
    for i in sorted(preds):
        key = label_key(i)
        if key is None:
            continue
        used.add(key)
        lab, patient = labels[key]
        y.append(classes.index(lab))
        s.append(preds[i][0])
        pid.append(patient if patient is not None else f"image:{rel[i]}")
    n_unlabelled = len(preds) - len(y)
    n_orphan = len(set(labels) - used)
    if not y:
        raise ValueError(f"no scored image matches a row of {labels_csv} (filename must be the path relative to "
                         f"{images_dir} or the bare file name)")
    has_pid = any(v[1] is not None for v in labels.values())
    scores = np.asarray(s)
    scores = scores[:, 1] if len(classes) == 2 else scores
    threshold = scorer.threshold if len(classes) == 2 else None
    rule = "stored in the model sidecar"
    if len(classes) == 2 and threshold is None:
        threshold, rule = 0.5, "fixed 0.5 (the sidecar stores no threshold)"
    report = M.evaluate(np.asarray(y), scores, np.asarray(pid), classes, threshold=threshold, n_boot=n_boot, seed=seed)
    record = R.metrics_record(
        report, model=scorer.name, task=str(scorer.sidecar.get("task", "unknown")),
        weights=str(scorer.sidecar.get("weights", "unknown")),
        threshold_rule=rule if len(classes) == 2 else "argmax",
        extra={"note": DISCLAIMER, "images_dir": str(images_dir), "labels_csv": str(labels_csv),
               "patients": ("patient_id column of the labels file" if has_pid else
                            "no patient_id column: each image counts as its own patient"),
               "n_scored_without_label": n_unlabelled, "n_labels_without_scored_image": n_orphan,
               "labels_not_found": not_found, "labels_unreadable": sorted(found - used),
               "engine": scorer.engine, "image_size": scorer.image_size,
               "preprocessing": scorer.sidecar.get("preprocessing")})
    path = R.save_metrics(record, out / "metrics.json")
    auc = record["metrics"].get("roc_auc" if len(classes) == 2 else "macro_auc", {})
    say(f"metrics on {record['n_test']} labelled images ({record['n_patients']} patients): accuracy "
        f"{R.fmt(record['metrics']['accuracy'])}, AUC {R.fmt(auc)} -> {path} [{DISCLAIMER}]")
    if not has_pid:
        say("  (no patient_id column: every image is treated as its own patient)")
    if n_unlabelled or n_orphan:
        say(f"  {n_unlabelled} scored images had no label; {n_orphan} labelled files were not scored")
    if not_found:
        shown = not_found[:MAX_LISTED]
        more = f" ... and {len(not_found) - len(shown)} more" if len(not_found) > len(shown) else ""
        say(f"  {len(not_found)} labelled files were not found under {images_dir} (listed in {path} under "
            f"extra.labels_not_found): {', '.join(shown)}{more}")
    return {"metrics": record, "metrics_json": str(path), "n_labels_not_found": len(not_found)}


MAX_LISTED = 20  # console lists at most this many names; the JSON/CSV files hold them all


# =========================================================================== command line

def add_commands(subparsers) -> None:
    """Add ``predict`` and ``evaluate`` to the ``python -m cxrbook`` parser."""
    note = ("Research tool, not a diagnosis. Scores come from ONNX Runtime (--engine onnx, the default; "
            "no TensorFlow) or Keras (--engine keras); a .joblib pixel logistic regression runs its ONNX "
            "graph. A Grad-CAM overlay loads the Keras model (TensorFlow, seconds): --no-gradcam "
            "answers in about a second.")
    p = subparsers.add_parser("predict", help=f"score X-ray image files ({DISCLAIMER})", description=note,
                              epilog=EXIT_CODES_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, 16-bit, RGBA, ...; not DICOM: convert it to PNG first); "
                        "for a folder use evaluate --images DIR")
    p.add_argument("--model", required=True, help="outputs/models/<name>.keras or .joblib (its .json sidecar "
                                                  "beside it), or notebook 06's ensemble.json")
    p.add_argument("--out", help="folder for the Grad-CAM overlays (default: beside each image)")
    p.add_argument("--no-gradcam", action="store_true", help="print scores only, write no overlay")
    p.add_argument("--engine", choices=ENGINES, default="onnx")
    p.set_defaults(func=cmd_predict)

    e = subparsers.add_parser("evaluate", help=f"score every image under a folder ({DISCLAIMER})",
                              description=note + " Without a patient_id column in --labels every image counts "
                                                 "as its own patient in the bootstrap intervals.",
                              epilog=EXIT_CODES_HELP)
    e.add_argument("--model", required=True, help="outputs/models/<name>.keras or .joblib")
    e.add_argument("--images", required=True, help="folder scanned recursively")
    e.add_argument("--labels", help="CSV with columns filename,label[,patient_id]; filename relative to --images "
                                    "or a bare file name")
    e.add_argument("--out", help="output folder (default: outputs/evaluate/<folder name>)")
    e.add_argument("--n-bootstrap", type=int, default=1000, help="patient bootstrap resamples for the intervals")
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--engine", choices=ENGINES, default="onnx")
    e.set_defaults(func=cmd_evaluate)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _exit_code(n_scored: int, n_failed: int) -> int:
    """The documented exit code (``EXIT_CODES_HELP``) for a run that scored and failed these many inputs."""
    if not n_scored:
        return EXIT_NONE_SCORED
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def cmd_predict(args) -> int:
    """CLI ``predict``; returns an exit code of ``EXIT_CODES_HELP``."""
    t0 = time.perf_counter()
    try:
        scorer = load_scorer(args.model, engine=args.engine)
    except ValueError as e:
        _err(str(e))
        return EXIT_FATAL
    print(f"model {args.model} ({scorer.engine} engine, {scorer.image_size} px, classes {scorer.classes}, "
          f"threshold {scorer.threshold}) loaded in {time.perf_counter() - t0:.2f} s [{DISCLAIMER}]")
    rows = predict_files(scorer, args.images, out_dir=args.out, overlays=not args.no_gradcam)
    ok = sum(r["status"] == "ok" for r in rows)
    failed = [r["file"] for r in rows if r["status"] != "ok"]
    print(f"{ok} of {len(rows)} images scored in {time.perf_counter() - t0:.2f} s"
          + (f"; not scored: {', '.join(failed)}" if failed else "") + ". "
          f"{DISCLAIMER.capitalize()}: do not use these outputs for patient care.")
    return _exit_code(ok, len(failed))


def cmd_evaluate(args) -> int:
    """CLI ``evaluate``; returns an exit code of ``EXIT_CODES_HELP`` (labelled files not found count as failed)."""
    try:
        scorer = load_scorer(args.model, engine=args.engine)
        summary = evaluate_folder(scorer, args.images, labels_csv=args.labels, out_dir=args.out,
                                  n_boot=args.n_bootstrap, seed=args.seed)
    except ValueError as e:
        _err(str(e))
        return EXIT_FATAL
    print(f"{DISCLAIMER.capitalize()}: do not use these outputs for patient care.")
    return _exit_code(summary["n_scored"], summary["n_unreadable"] + summary.get("n_labels_not_found", 0))


# =========================================================================== notebook upload widget

def upload_widget(model, out_dir: str | os.PathLike, sidecar: dict | None = None):
    """An ``ipywidgets`` file picker that scores the chosen X-ray like ``predict`` and shows its overlay.

    ``model``: a ``Scorer``, a ``.keras`` path or a Keras model (+ ``sidecar``).
    Returns the widget box; nothing runs until a file is picked, so executing
    the cell non-interactively (papermill) only displays it.
    """
    import ipywidgets as W
    from IPython.display import Image as IPImage
    from IPython.display import display

    scorer = model if isinstance(model, Scorer) else (
        load_scorer(model) if isinstance(model, (str, os.PathLike)) else keras_scorer(model, sidecar or {}))
    folder = Path(out_dir)
    up = W.FileUpload(accept="image/*,.png,.jpg,.jpeg,.tif,.tiff,.bmp", multiple=False,
                      description="Chest X-ray")
    shown = W.Output()

    def on_upload(change) -> None:
        value = change["new"]
        items = list(value.values()) if isinstance(value, dict) else list(value)  # ipywidgets 7 / 8
        with shown:
            shown.clear_output()
            for item in items:
                name = Path(item.get("name") or item.get("metadata", {}).get("name", "upload")).name
                target = folder / "uploads" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(bytes(item["content"]))
                rows = predict_files(scorer, [target], out_dir=folder, echo=None)
                display(W.HTML(result_html(rows[0], scorer.classes)))
                if rows[0]["overlay"]:
                    display(IPImage(filename=rows[0]["overlay"]))

    up.observe(on_upload, names="value")
    note = W.HTML(f"<b>{DISCLAIMER.upper()}.</b> Pick a chest X-ray file; it is scored by <code>{scorer.name}</code> "
                  f"({scorer.engine} engine) exactly as <code>python -m cxrbook predict</code> would.<br>"
                  f"<span style='color:#b00000'>{html.escape(confound_warning(scorer.sidecar))}</span>")
    return W.VBox([note, up, shown])


def result_html(row: dict, classes: Sequence[str]) -> str:
    """One scored (or unreadable) file of ``predict_files`` as HTML for the notebook: the score, the label and,
    right beside them, the disclaimer and the model's confound caution (``row["caution"]``)."""
    name = html.escape(Path(row["file"]).name)
    if row["status"] != "ok":
        return f"<p><b>{name}</b>: {html.escape(row['message'])}</p>"
    probs = html.escape(_format_probs(classes, [row["probabilities"][c] for c in classes]))
    return (f"<p><b>{name}</b>: {probs} &rarr; <b>{html.escape(str(row['predicted']))}</b> "
            f"[{DISCLAIMER}]<br><span style='color:#b00000'>&#9888; {html.escape(row['caution'])}</span></p>")


# =========================================================================== notebook 07's prediction section

DEFAULT_EXAMPLE_MODEL = "custom_cnn"  # notebook 04's reference CNN


def resolve_model(paths, model_path: str | os.PathLike = "", task: str = "covid_vs_normal") -> Path:
    """The ``.keras`` file a notebook's ``model_path`` parameter names.

    Empty: notebook 04's reference CNN for ``task`` (``outputs/models/custom_cnn.keras``; FileNotFoundError
    saying to run notebook 04 when it is missing). Otherwise the path as given (relative to the current
    folder), or, for a bare file name such as ``vgg16.keras``, that file in ``outputs/models/``.
    """
    from .experiment import model_name
    if not str(model_path).strip():
        return paths.require(paths.models / f"{model_name(DEFAULT_EXAMPLE_MODEL, task)}.keras", "04")
    p = Path(model_path).expanduser()
    if not p.exists() and not p.is_absolute() and p.parent == Path("."):
        in_models = paths.models / (p.name if p.suffix else f"{p.name}.keras")
        if in_models.exists():
            return in_models
        raise FileNotFoundError(f"model_path {str(model_path)!r}: neither {p.resolve()} nor {in_models} exists "
                                "(notebooks 04-06 save models as outputs/models/<name>.keras)")
    return p


def first_test_image(paths) -> str:
    """The first test image of ``outputs/splits.csv`` (image paths sorted, as the training arrays are)."""
    import pandas as pd
    splits = pd.read_csv(paths.require(paths.splits_csv, "03"), usecols=["image_path", "split"])
    test = sorted(splits.loc[splits["split"] == "test", "image_path"].astype(str))
    if not test:
        raise ValueError(f"{paths.splits_csv} has no test image: rerun notebook 03")
    return test[0]


def example_prediction(paths, model_path: str | os.PathLike = "", example_image: str | os.PathLike = "",
                       task: str = "covid_vs_normal", echo: Callable[[str], None] | None = print):
    """Notebook 07's prediction section in one call; it needs only the setup cell (``paths``), no audit result.

    Scores ``example_image`` (empty: ``first_test_image``) with ``resolve_model(paths, model_path, task)``
    exactly like ``python -m cxrbook predict`` and writes its Grad-CAM overlay to ``outputs/predictions/``.
    Returns ``predict_images``' one-row DataFrame (scores, label, overlay path, caution).
    """
    model = resolve_model(paths, model_path, task)
    image = str(example_image).strip() or first_test_image(paths)
    if echo:
        echo(f"model {model}; image {image}")
    return predict_images(model, None, [image], out_dir=paths.outputs / "predictions", echo=echo)
