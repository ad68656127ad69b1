"""Score every image under a folder: what ``python -m cxrbook evaluate`` runs.

Each file is read and scored exactly as ``predict`` does (:func:`cxrbook.inference.predict.preprocess_file`,
:func:`cxrbook.inference.predict.decide`); the run writes ``predictions.csv`` and ``unreadable.csv`` and, given a
labels CSV (``filename,label[,patient_id]``), ``metrics.json`` with patient-bootstrap intervals at the
threshold stored in the model's sidecar. Nothing is silently dropped: unreadable files and labelled
files not found are counted and named, and the files the walk leaves out on purpose (hidden ones,
our own overlays, the labels file, symlinked folders) are listed in ``skipped.csv`` with the reason.
``--out`` may not be, contain or sit inside ``--images``. Every CSV is written spreadsheet-safe
(``atomic.write_rows``). Research tool, not a diagnosis.
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..atomic import check_output_dir, rows_writer, spreadsheet_original, write_together
from ..config import default_output_dir, describe_path_problem
from ..data.images import UnreadableImage
from .saved_model import SavedModel
from .predict import OVERLAY_SUFFIX, decide, preprocess_file
from ..models.sidecar import DISCLAIMER

MAX_LISTED = 20  # console lists at most this many names; the JSON/CSV files hold them all

# Entries the walk leaves out on purpose (listed in skipped.csv and on the console, never counted as failures).
SKIP_REASONS = {
    "hidden": "hidden (its name starts with '.')",
    "own_overlay": f"a Grad-CAM overlay this tool writes (*{OVERLAY_SUFFIX})",
    "labels_file": "the --labels file itself",
    "symlinked_folder": "a symbolic link to a folder: not followed (it could loop or lead out of the folder); "
                        "pass its target as --images to score it",
    "unlistable_folder": "a folder that cannot be listed",
}


def walk_images(root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()
                ) -> tuple[list[Path], list[dict]]:
    """(files to score, entries skipped) under ``root``, recursively and sorted.

    Skipped, each with a reason of ``SKIP_REASONS``: hidden files and folders, the overlays this tool
    writes (``*_gradcam.png``), the ``exclude`` files (the labels CSV), symlinked folders (never
    followed) and folders that cannot be listed. Everything else is returned, including symlink
    loops, dangling links and named pipes: reading them says why they are not images (one row each).
    Names are compared, never resolved, so a symlink loop cannot raise here.
    """
    root = Path(root)
    excl = {os.path.realpath(e) for e in exclude}
    files: list[Path] = []
    skipped: list[dict] = []

    def skip(path: Path, reason: str, detail: str = "") -> None:
        skipped.append({"file": path.relative_to(root).as_posix(), "reason": reason, "detail": detail})

    def unlistable(e: OSError) -> None:
        skip(Path(e.filename or root), "unlistable_folder", e.strerror or str(e))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                skip(here / d, "hidden")
            elif (here / d).is_symlink():
                skip(here / d, "symlinked_folder", f"it points to {os.readlink(here / d)}")
            else:
                keep.append(d)
        dirnames[:] = keep
        for fn in sorted(filenames):
            p = here / fn
            if fn.startswith("."):
                skip(p, "hidden")
            elif fn.endswith(OVERLAY_SUFFIX):
                skip(p, "own_overlay")
            elif os.path.realpath(p) in excl:
                skip(p, "labels_file")
            else:
                files.append(p)
    return files, skipped


def check_folders(images_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """ValueError when ``out_dir`` is ``images_dir``, inside it or above it: outputs never mix with the images.

    Inside, our CSVs would sit among the user's images (and be walked by the next run); above, the walk
    would have to leave out the images themselves (it used to report "0 files"). Paths are compared
    with symlinks resolved.
    """
    images, out = os.path.realpath(images_dir), os.path.realpath(out_dir)
    if out == images:
        where = "is the --images folder"
    elif os.path.commonpath([images, out]) == images:
        where = f"is inside the --images folder {images_dir}"
    elif os.path.commonpath([images, out]) == out:
        where = f"contains the --images folder {images_dir}"
    else:
        return
    raise ValueError(f"--out {out_dir} {where}: outputs must not mix with the images scored; "
                     "choose an --out folder outside it (e.g. next to it)")


def read_labels(path: str | os.PathLike, classes: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """``filename -> (label, patient_id or None)`` from a CSV with columns filename,label[,patient_id].

    Raises ValueError naming the file and its line numbers for: a path that is not a readable file
    (a folder, a dangling link, ...), an empty file, a header without rows, missing or repeated
    columns, a row with more or fewer fields than the header, a blank filename or label, a label
    the model does not know, a filename listed twice, and a ``patient_id`` column blank on some or
    every row (fill it in, or remove the column so that every image counts as its own patient).
    """
    path = Path(path)
    problem = describe_path_problem(path, "labels file")
    if problem:
        raise ValueError(problem)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            lines = [(reader.line_num, r) for r in reader if any(v.strip() for v in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"labels file {path} is not a readable CSV ({e})") from None
    need = "it needs a header filename,label (optional patient_id) and one row per image"
    if header is None:
        raise ValueError(f"labels file {path} is empty: {need}")
    cols = [c.strip() for c in header]
    missing = [c for c in ("filename", "label") if c not in cols]
    if missing:
        raise ValueError(f"labels file {path} lacks column(s) {missing}; {need}, found {cols}")
    repeated = sorted({c for c in cols if c and cols.count(c) > 1})
    if repeated:
        raise ValueError(f"labels file {path} has column(s) {repeated} more than once in its header")
    if not lines:
        raise ValueError(f"labels file {path} has a header but no rows: {need}")
    problems: list[str] = []
    unknown: dict[str, list[int]] = {}
    blank_pid: list[int] = []
    first: dict[str, int] = {}
    out: dict[str, tuple[str, str | None]] = {}
    for line, r in lines:
        if len(r) < len(cols) or any(v.strip() for v in r[len(cols):]):
            problems.append(f"line {line} has {len(r)} fields, the header has {len(cols)}")
            continue
        rec = {c: spreadsheet_original(v.strip()) for c, v in zip(cols, r)}  # as our own CSVs escape them
        name, label, pid = rec["filename"], rec["label"], rec.get("patient_id")
        if not name or not label:
            problems.append(f"line {line} has a blank {'filename' if not name else 'label'}")
            continue
        if label not in classes:
            unknown.setdefault(label, []).append(line)
        if name in first:
            problems.append(f"line {line} lists {name!r} again (first on line {first[name]})")
        first.setdefault(name, line)
        if pid == "":
            blank_pid.append(line)
        out[name] = (label, pid or None)
    if unknown:
        problems.append(f"labels {sorted(unknown)} that the model does not know (its classes are {list(classes)}), "
                        "on line(s) " + ", ".join(_lines(v) for _, v in sorted(unknown.items())))
    if blank_pid:
        which = "every row" if len(blank_pid) == len(lines) else f"line(s) {_lines(blank_pid)}"
        problems.append(f"the patient_id column is blank on {which}: fill it in (one id per patient), or "
                        "remove the column to count every image as its own patient")
    if problems:
        shown = problems[:MAX_LISTED] + ([f"... and {len(problems) - MAX_LISTED} more"]
                                         if len(problems) > MAX_LISTED else [])
        raise ValueError(f"labels file {path}: " + "; ".join(shown))
    return out


def _lines(numbers: Sequence[int]) -> str:
    shown = ", ".join(map(str, numbers[:MAX_LISTED]))
    return shown + (f" ... ({len(numbers)} in all)" if len(numbers) > MAX_LISTED else "")


def evaluate_folder(scorer: SavedModel, images_dir: str | os.PathLike, labels_csv: str | os.PathLike | None = None,
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
    check_bootstrap(n_boot, seed)
    if not images_dir.is_dir():
        raise ValueError(describe_path_problem(images_dir, "images folder")
                         or f"images folder {images_dir} is a file, not a folder: score single images with predict")
    say = echo or (lambda s: None)
    classes = scorer.classes
    out = Path(out_dir if out_dir is not None else default_out_dir(images_dir))
    check_folders(images_dir, out)
    labels = read_labels(labels_csv, classes) if labels_csv else None
    out = check_output_dir(out, "--out")
    files, skipped = walk_images(images_dir, exclude=[labels_csv] if labels_csv else [])
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
    pred_csv, bad_csv, skip_csv = out / "predictions.csv", out / "unreadable.csv", out / "skipped.csv"
    metrics_json = out / "metrics.json"
    summary = {"n_files": len(files), "n_scored": len(preds), "n_unreadable": len(unreadable),
               "n_skipped": len(skipped), "predictions_csv": str(pred_csv), "unreadable_csv": str(bad_csv),
               "skipped_csv": str(skip_csv), "seconds_scoring": round(seconds, 2),
               "metrics": None, "metrics_json": None, "note": DISCLAIMER}
    labelled = (_labelled_metrics(scorer, labels, rel, preds, images_dir, labels_csv, n_boot, seed, metrics_json)
                if labels is not None else None)
    threshold = "" if scorer.threshold is None else f"{scorer.threshold:.6f}"
    writers = {  # spreadsheet-safe: a file named =HYPERLINK(...).png is text, not a formula
        pred_csv: rows_writer(["file", *[f"score_{c}" for c in classes], "predicted_label", "threshold", "note"],
                              [[rel[i], *[f"{v:.6f}" for v in preds[i][0]], preds[i][1], threshold, DISCLAIMER]
                               for i in sorted(preds)]),
        bad_csv: rows_writer(["file", "reason", "detail", "note"],
                             [[u["file"], u["reason"], u["detail"], u["note"]] for u in unreadable]),
        skip_csv: rows_writer(["file", "reason", "detail"], [[k["file"], k["reason"], k["detail"]] for k in skipped]),
    }
    if labelled is not None:
        from ..evaluation.records import save_metrics
        writers[metrics_json] = lambda path: save_metrics(labelled["metrics"], path)
    # one run's files, all or none: never this model's predictions beside another run's metrics
    stale = [metrics_json] if labelled is None and metrics_json.is_file() else []
    write_together(writers, remove=stale)
    say(f"scored {len(preds)} images in {seconds:.1f} s -> {pred_csv}")
    _listing(say, "unreadable", unreadable, bad_csv, lambda u: f"not scored: {u['file']}: {u['reason']}")
    _listing(say, "skipped on purpose", skipped, skip_csv,
             lambda k: f"skipped: {k['file']}: {SKIP_REASONS[k['reason']]}")
    if stale:
        say(f"removed {metrics_json} of an earlier run: this run had no labels, and its metrics belonged "
            "to other predictions")
    if labelled is not None:
        for line in labelled.pop("lines"):
            say(line)
        summary.update(labelled, metrics_json=str(metrics_json))
    return summary


def _listing(say: Callable[[str], None], title: str, rows: list[dict], path: Path,
             line: Callable[[dict], str]) -> None:
    """``title: n -> path (reason: count, ...)``, then one line per row (at most MAX_LISTED) with its detail."""
    counts = Counter(r["reason"] for r in rows)
    say(f"{title}: {len(rows)} -> {path}" + (" (" + ", ".join(f"{r}: {n}" for r, n in counts.items()) + ")"
                                             if rows else ""))
    for r in rows[:MAX_LISTED]:
        say(f"  {line(r)}" + (f" ({r['detail']})" if r["detail"] else ""))
    if len(rows) > MAX_LISTED:
        say(f"  ... and {len(rows) - MAX_LISTED} more in {path}")


def default_out_dir(images_dir: str | os.PathLike) -> Path:
    """``evaluate/<folder name>`` under the outputs folder (``config.default_output_dir``)."""
    return default_output_dir()[0] / "evaluate" / (Path(images_dir).resolve().name or "images")


def check_bootstrap(n_boot: int, seed: int) -> None:
    """ValueError naming the parameter for a resample count below 1 or a seed outside 0 .. 2**32 - 1."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot (--n-bootstrap) must be a whole number >= 1, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"seed (--seed) must be a whole number from 0 to {2**32 - 1}, got {seed!r}")


def _labelled_metrics(scorer, labels, rel, preds, images_dir, labels_csv, n_boot, seed, path) -> dict:
    """The metrics record of the labelled scored images (not yet written to ``path``), its counts and
    the lines to print once it is written."""
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
    threshold = scorer.threshold if len(classes) == 2 else None  # a binary sidecar without one is refused at load
    report = M.evaluate(np.asarray(y), scores, np.asarray(pid), classes, threshold=threshold, n_boot=n_boot, seed=seed)
    record = R.metrics_record(
        report, model=scorer.name, task=str(scorer.sidecar.get("task", "unknown")),
        weights=str(scorer.sidecar.get("weights", "unknown")),
        threshold_rule="stored in the model sidecar" if len(classes) == 2 else "argmax",
        extra={"note": DISCLAIMER, "images_dir": str(images_dir), "labels_csv": str(labels_csv),
               "patients": ("patient_id column of the labels file" if has_pid else
                            "no patient_id column: each image counts as its own patient"),
               "n_scored_without_label": n_unlabelled, "n_labels_without_scored_image": n_orphan,
               "labels_not_found": not_found, "labels_unreadable": sorted(found - used),
               "engine": scorer.engine, "image_size": scorer.image_size,
               "preprocessing": scorer.sidecar.get("preprocessing")})
    auc = record["metrics"].get("roc_auc" if len(classes) == 2 else "macro_auc", {})
    lines = [f"metrics on {record['n_test']} labelled images ({record['n_patients']} patients): accuracy "
             f"{R.fmt(record['metrics']['accuracy'])}, AUC {R.fmt(auc)} -> {path} [{DISCLAIMER}]"]
    if not has_pid:
        lines.append("  (no patient_id column: every image is treated as its own patient)")
    if n_unlabelled or n_orphan:
        lines.append(f"  {n_unlabelled} scored images had no label; {n_orphan} labelled files were not scored")
    if not_found:
        shown = not_found[:MAX_LISTED]
        more = f" ... and {len(not_found) - len(shown)} more" if len(not_found) > len(shown) else ""
        lines.append(f"  {len(not_found)} labelled files were not found under {images_dir} (listed in {path} "
                     f"under extra.labels_not_found): {', '.join(shown)}{more}")
    return {"metrics": record, "n_labels_not_found": len(not_found), "lines": lines}
