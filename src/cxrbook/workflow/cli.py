"""The ``predict`` and ``evaluate`` commands of ``python -m cxrbook``: arguments, messages and exit codes.

The work is done by :mod:`cxrbook.inference.predict` (files) and :mod:`cxrbook.inference.folder` (a folder); this
module only parses, reports and returns the documented exit code. It imports nothing heavy at
module level, so ``predict`` answers in about a second. Research tool, not a diagnosis.
"""

from __future__ import annotations

import sys
import time

from ..inference.folder import evaluate_folder
from ..inference.saved_model import ENGINES
from ..inference.predict import load_scorer, predict_files
from ..models.sidecar import DISCLAIMER

# Exit codes of ``predict`` and ``evaluate`` (also in their --help epilog and the README).
EXIT_OK = 0              # every input was scored
EXIT_NONE_SCORED = 1     # no input could be scored
EXIT_FATAL = 2           # usage error or an unusable model / folder / labels file: nothing was done
EXIT_SOME_FAILED = 3     # some inputs were scored, others failed (each one is named in the output)
EXIT_CODES_HELP = (f"exit codes: {EXIT_OK} every input scored; {EXIT_NONE_SCORED} no input could be scored; "
                   f"{EXIT_FATAL} usage error or unusable model/folder/labels (nothing scored); "
                   f"{EXIT_SOME_FAILED} some inputs scored, others failed (unreadable, DICOM, too large, "
                   "a folder, or a labelled file not found; each is named in the output)")


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
    _add_crop_arguments(p)
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
    _add_crop_arguments(e)
    e.set_defaults(func=cmd_evaluate)


def _add_crop_arguments(p) -> None:
    p.add_argument("--crop-lungs", action="store_true",
                   help="crop each image to its detected lungs before scoring (notebook 09's detector and margin); "
                        "a model trained on lung crops is always cropped, and refused without its detector")
    p.add_argument("--detector", help="lung detector .weights.h5 (default: the one beside a crop-trained model, "
                                      "else lung_crops/lung_detector.weights.h5 under the model's folder)")


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _exit_code(n_scored: int, n_failed: int) -> int:
    """The documented exit code (``EXIT_CODES_HELP``) for a run that scored and failed these many inputs."""
    if not n_scored:
        return EXIT_NONE_SCORED
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def _cropper(args, scorer):
    """The lung cropper the model needs or ``--crop-lungs`` asks for (None: whole images); its warnings on stderr.
    ValueError (exit 2) when a crop is needed and no detector can be loaded."""
    from ..inference.lung_crop import cropper_for
    crop, warnings = cropper_for(args.model, scorer.sidecar, requested=args.crop_lungs, detector=args.detector)
    for w in warnings:
        print(w, file=sys.stderr)
    return crop


def cmd_predict(args) -> int:
    """CLI ``predict``; returns an exit code of ``EXIT_CODES_HELP``."""
    t0 = time.perf_counter()
    try:
        scorer = load_scorer(args.model, engine=args.engine)
        crop = _cropper(args, scorer)
    except ValueError as e:
        _err(str(e))
        return EXIT_FATAL
    print(f"model {args.model} ({scorer.engine} engine, {scorer.image_size} px, classes {scorer.classes}, "
          f"threshold {scorer.threshold}) loaded in {time.perf_counter() - t0:.2f} s [{DISCLAIMER}]")
    rows = predict_files(scorer, args.images, out_dir=args.out, overlays=not args.no_gradcam, crop=crop)
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
                                  n_boot=args.n_bootstrap, seed=args.seed, crop=_cropper(args, scorer))
    except ValueError as e:
        _err(str(e))
        return EXIT_FATAL
    print(f"{DISCLAIMER.capitalize()}: do not use these outputs for patient care.")
    return _exit_code(summary["n_scored"], summary["n_unreadable"] + summary.get("n_labels_not_found", 0))
