"""Score every image under a folder: what ``python -m cxrbook evaluate`` runs.

Each file is read and scored exactly as ``predict`` does (:func:`cxrbook.inference.predict.preprocess_file`,
:func:`cxrbook.inference.predict.decide`); the run writes ``predictions.csv`` and ``unreadable.csv`` and, given a
labels CSV (``filename,label[,patient_id]``), ``metrics.json`` with patient-bootstrap intervals at the
threshold stored in the model's sidecar. Nothing is silently dropped: unreadable files and labelled
files not found are counted and named. Research tool, not a diagnosis.
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..data.images import UnreadableImage
from .saved_model import Scorer
from .predict import OVERLAY_SUFFIX, decide, preprocess_file
from ..models.sidecar import DISCLAIMER

MAX_LISTED = 20  # console lists at most this many names; the JSON/CSV files hold them all


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
                    batch_size: int = 64, echo: Callable[[str], None] | None = print, crop=None) -> dict:
    """Score every file under ``images_dir``; write predictions.csv, unreadable.csv and, with labels, metrics.json.

    ``labels_csv`` rows match an image by its path relative to ``images_dir``
    (e.g. ``covid/img1.png``) or, when unambiguous, by its bare file name.
    Without a ``patient_id`` column every image counts as its own patient in
    the bootstrap intervals (too narrow if patients have several images).
    ``crop``: a ``lung_crop.LungCropper``: each image is cropped to its lungs first (as ``predict``).
    Returns a summary dict (counts, output paths, metrics record or None).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"images folder {images_dir} does not exist or is not a folder")
    say = echo or (lambda s: None)
    classes = scorer.classes
    if out_dir is None:
        from ..config import DEFAULT_OUTPUT_DIR
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
            _, x = preprocess_file(p, scorer.sidecar, crop=crop)
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
    from ..evaluation import metrics as M
    from ..evaluation import records as R
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
