"""The ``run``, ``predict``, ``evaluate`` and ``tables`` commands of ``python -m cxrbook``: arguments,
messages and exit codes.

The work is done by :mod:`cxrbook.workflow.runner` (the notebooks), :mod:`cxrbook.inference.predict`
(files), :mod:`cxrbook.inference.folder` (a folder) and :mod:`cxrbook.reporting.tables` (the README's
tables); this module parses, validates every value before any work, says where outputs go, and
returns the documented exit code (``EXIT_CODES``: each command's ``--help`` lists them, and the README
holds the same tables, which a test compares). It imports nothing heavy at module level, so
``predict`` answers in about a second. Research tool, not a diagnosis.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
import time
from pathlib import Path

from ..atomic import OutputDirError, WriteError, as_write_error, check_output_dir
from ..config import resolve_output_dir
from ..inference.folder import check_folders, default_out_dir, evaluate_folder
from ..inference.saved_model import ENGINES, load_model
from ..inference.predict import predict_files
from ..models.sidecar import DISCLAIMER

EXIT_OK = 0              # every input was scored / every notebook ran / tables done
EXIT_NONE_SCORED = 1     # predict, evaluate: no input could be scored
EXIT_NOTEBOOK_FAILED = 1  # run: a notebook failed
EXIT_CHECK_FAILED = 1    # tables --check: the README differs from the outputs
EXIT_FATAL = 2           # usage error or an unusable input: nothing was done
EXIT_SOME_FAILED = 3     # predict, evaluate: some inputs were scored, others failed
EXIT_BROKEN_INPUT = 3    # tables: an input file is corrupt; --write-readme wrote nothing
EXIT_WRITE_FAILED = 4    # writing failed (disk full, read-only, I/O error)
EXIT_LOCKED = 5          # run: another run holds the outputs folder
EXIT_INTERRUPTED = 130   # run: Ctrl-C

SEED_MAX = 2**32 - 1
_WRITE = "disk full, read-only, I/O error"
# Each command's exit codes and what they mean: the --help epilogs are made from these, and the
# README's "Exit codes" tables hold the same words (tests/test_commands.py compares all three).
EXIT_CODES: dict[str, dict[int, str]] = {
    "run": {
        EXIT_OK: "every notebook ran; run_manifest.json says complete",
        EXIT_NOTEBOOK_FAILED: "a notebook failed (its cell, error and executed copy are named); run_manifest.json "
                              "says failed",
        EXIT_FATAL: "usage or set-up error, nothing run: a bad option value, -p for a name the runner sets, --only "
                    "naming no notebook, the data folder missing or a file, the kernel not registered, an unusable "
                    "--output-dir, or no workbook in or above the current folder",
        EXIT_WRITE_FAILED: f"writing failed ({_WRITE}; the file is named); run_manifest.json says failed",
        EXIT_LOCKED: "another run holds the outputs folder (its pid and start time are named); nothing run",
        EXIT_INTERRUPTED: "interrupted (Ctrl-C); run_manifest.json says interrupted",
    },
    "predict": {
        EXIT_OK: "every image scored",
        EXIT_NONE_SCORED: "no image could be scored",
        EXIT_FATAL: "usage error, or an unusable model or --out folder: nothing scored",
        EXIT_SOME_FAILED: "some images scored, others not (unreadable, DICOM, too large, a folder; each is named)",
        EXIT_WRITE_FAILED: f"an overlay could not be written ({_WRITE}; each is named); the scores were printed",
    },
    "evaluate": {
        EXIT_OK: "every image scored",
        EXIT_NONE_SCORED: "no image could be scored",
        EXIT_FATAL: "usage error, or an unusable model, folder, labels file or --out folder: nothing scored, no "
                    "result written",
        EXIT_SOME_FAILED: "some images scored, others failed (unreadable, or a labelled file not found; each is "
                          "named)",
        EXIT_WRITE_FAILED: f"the results could not be written ({_WRITE}; named): --out keeps its earlier results "
                           "whole, never a mix of two runs",
    },
    "tables": {
        EXIT_OK: "tables printed, the README written, or (--check) the README matches the outputs",
        EXIT_CHECK_FAILED: "--check: a README block differs from what the outputs generate, or cannot be checked",
        EXIT_FATAL: "usage error: the README or the outputs folder missing, or the README's markers malformed",
        EXIT_BROKEN_INPUT: "an input file is corrupt or inconsistent (named): --write-readme wrote nothing",
        EXIT_WRITE_FAILED: f"the README could not be written ({_WRITE}); it is left as it was",
    },
}


def _width() -> int:
    """The width argparse wraps help to (the terminal's, less 2), at most 100."""
    return max(40, min(100, shutil.get_terminal_size().columns - 2))


def exit_codes_epilog(command: str, width: int | None = None) -> str:
    """``exit codes:`` and one wrapped line per code of ``EXIT_CODES[command]`` (a --help epilog)."""
    width = width or _width()
    lines = ["exit codes:"]
    for code, meaning in EXIT_CODES[command].items():
        lines += textwrap.wrap(meaning, width, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
    return "\n".join(lines)


def _parser(subparsers, name: str, help: str, description: str):
    """A sub-command whose description is wrapped here and whose epilog is its exit-code table."""
    return subparsers.add_parser(name, help=help, description=textwrap.fill(description, _width()),
                                 epilog=exit_codes_epilog(name), formatter_class=argparse.RawDescriptionHelpFormatter)


def whole_number(option: str, lo: int, hi: int | None = None):
    """An argparse ``type``: an int in [lo, hi], else an error naming ``option`` and the range."""
    span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{option} must be a whole number {span}, got {text!r}")
        return value
    return parse


def name_value(text: str) -> tuple[str, str]:
    """An argparse ``type`` for ``-p NAME=VALUE``."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"-p takes NAME=VALUE (a notebook parameter), got {text!r}")
    return name.strip(), value


def add_commands(subparsers) -> None:
    """Add ``run``, ``predict``, ``evaluate`` and ``tables`` to the ``python -m cxrbook`` parser."""
    r = _parser(subparsers, "run", "execute the notebooks in order with papermill",
                "Execute the notebooks in order with papermill into the outputs folder (one run at a time per "
                "folder). Outputs go to --output-dir, else $CXR_OUTPUT_DIR, else outputs/ of the workbook in "
                "or above the current folder; the first line printed says which.")
    r.add_argument("--profile", choices=["smoke", "full"], default="smoke")
    r.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,03")
    r.add_argument("--data-dir", help="folder with the three collections (default: $CXR_DATA_DIR)")
    r.add_argument("--output-dir", help="where outputs go (default: $CXR_OUTPUT_DIR, else the workbook's outputs/)")
    r.add_argument("--seed", type=whole_number("--seed", 0, SEED_MAX), default=42)
    r.add_argument("--cell-timeout", type=whole_number("--cell-timeout", 1), default=1800, help="seconds per cell")
    r.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", type=name_value,
                   help="extra notebook parameter (Python literal), e.g. -p task=three_class; not data_dir, "
                        "output_dir, profile or seed, which have their own options")
    r.set_defaults(func=cmd_run)

    note = ("Research tool, not a diagnosis. Scores come from ONNX Runtime (--engine onnx, the default; "
            "no TensorFlow), its checked int8 version (--engine int8, where quantized) or Keras (--engine keras); "
            "a .joblib pixel logistic regression runs its ONNX graph. A Grad-CAM overlay loads the Keras model (TensorFlow, seconds): --no-gradcam "
            "answers in about a second.")
    p = _parser(subparsers, "predict", f"score X-ray image files ({DISCLAIMER})",
                note + " An overlay never replaces an existing file: a taken name gets a number (_2, _3, ...).")
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

    e = _parser(subparsers, "evaluate", f"score every image under a folder ({DISCLAIMER})",
                note + " Without a patient_id column in --labels every image counts as its own patient in the "
                       "bootstrap intervals.")
    e.add_argument("--model", required=True, help="outputs/models/<name>.keras or .joblib")
    e.add_argument("--images", required=True, help="folder scanned recursively")
    e.add_argument("--labels", help="CSV with columns filename,label[,patient_id]; filename relative to --images "
                                    "or a bare file name")
    e.add_argument("--out", help="output folder (default: evaluate/<folder name> in the outputs folder: "
                                 "$CXR_OUTPUT_DIR, else the workbook's outputs/)")
    e.add_argument("--n-bootstrap", type=whole_number("--n-bootstrap", 1), default=1000,
                   help="patient bootstrap resamples for the intervals")
    e.add_argument("--seed", type=whole_number("--seed", 0, SEED_MAX), default=42)
    e.add_argument("--engine", choices=ENGINES, default="onnx")
    _add_crop_arguments(e)
    e.set_defaults(func=cmd_evaluate)

    t = _parser(subparsers, "tables", "render the README's results tables from outputs/",
                "Render the README's results tables from the outputs folder (--outputs, else $CXR_OUTPUT_DIR, "
                "else the workbook's outputs/). --write-readme writes every block or, when an input file is "
                "corrupt, none.")
    t.add_argument("--outputs", help="outputs folder (default: $CXR_OUTPUT_DIR, else the workbook's outputs/)")
    t.add_argument("--write-readme", metavar="README",
                   help="replace the text between each <!-- tables:NAME:start/end --> marker pair")
    t.add_argument("--check", metavar="README",
                   help="exit 1 if a marked block differs from what the outputs generate")
    t.set_defaults(func=cmd_tables)


def _add_crop_arguments(p) -> None:
    p.add_argument("--crop-lungs", action="store_true",
                   help="crop each image to its detected lungs before scoring (notebook 09's detector and margin); "
                        "a model trained on lung crops is always cropped, and refused without its detector")
    p.add_argument("--detector", help="lung detector .weights.h5 (default: the one beside a crop-trained model, "
                                      "else lung_crops/lung_detector.weights.h5 under the model's folder)")


def _cropper(args, scorer):
    """The lung cropper the model needs or ``--crop-lungs`` asks for (None: whole images); its warnings on stderr.
    ValueError (exit 2) when a crop is needed and no detector can be loaded."""
    from ..inference.lung_crop import cropper_for
    crop, warnings = cropper_for(args.model, scorer.sidecar, requested=args.crop_lungs, detector=args.detector)
    for w in warnings:
        print(w, file=sys.stderr)
    return crop


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _exit_code(n_scored: int, n_failed: int, n_unwritten: int = 0) -> int:
    """The documented exit code (``EXIT_CODES``) for a run that scored and failed these many inputs."""
    if not n_scored:
        return EXIT_NONE_SCORED
    if n_unwritten:
        return EXIT_WRITE_FAILED
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def cmd_run(args) -> int:
    """CLI ``run``; returns an exit code of ``EXIT_CODES["run"]``."""
    from .lock import OutputsLocked
    from .runner import NotebookFailed, RunRefused, RunWriteFailed, run
    extra = {k: _literal(v) for k, v in (args.param or [])}
    try:
        run(profile=args.profile, only=args.only.split(",") if args.only else None, data_dir=args.data_dir,
            output_dir=args.output_dir, seed=args.seed, extra=extra, cell_timeout=args.cell_timeout)
    except RunRefused as e:
        _err(str(e))
        return EXIT_FATAL
    except OutputsLocked as e:
        _err(str(e))
        return EXIT_LOCKED
    except NotebookFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED if e.disk_full else EXIT_NOTEBOOK_FAILED
    except RunWriteFailed as e:
        _err(str(e))
        return EXIT_WRITE_FAILED
    except KeyboardInterrupt:
        print("INTERRUPTED: run_manifest.json records the run as interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # anything else the run wrote (the index, a folder); other errors keep their traceback
        err = as_write_error(e, getattr(e, "filename", None) or "the outputs folder")
        if not isinstance(err, WriteError):
            raise
        _err(str(err))
        return EXIT_WRITE_FAILED
    return EXIT_OK


def _literal(text: str):
    import ast
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def cmd_predict(args) -> int:
    """CLI ``predict``; returns an exit code of ``EXIT_CODES["predict"]``."""
    t0 = time.perf_counter()
    overlays = not args.no_gradcam
    try:
        if args.out and overlays:
            check_output_dir(args.out, "--out")
        scorer = load_model(args.model, engine=args.engine)
        crop = _cropper(args, scorer)
    except (ValueError, OutputDirError) as e:
        _err(str(e))
        return EXIT_FATAL
    print(f"model {args.model} ({scorer.engine} engine, {scorer.image_size} px, classes {scorer.classes}, "
          f"threshold {scorer.threshold}) loaded in {time.perf_counter() - t0:.2f} s [{DISCLAIMER}]")
    print("overlays: none (--no-gradcam)" if not overlays else
          f"overlays: into {Path(args.out).resolve()} (--out)" if args.out else
          "overlays: beside each image (--out DIR to put them elsewhere)")
    rows = predict_files(scorer, args.images, out_dir=args.out, overlays=overlays, crop=crop)
    ok = sum(r["status"] == "ok" for r in rows)
    failed = [r["file"] for r in rows if r["status"] != "ok"]
    unwritten = [r["file"] for r in rows if r.get("overlay_failed")]
    print(f"{ok} of {len(rows)} images scored in {time.perf_counter() - t0:.2f} s"
          + (f"; not scored: {', '.join(failed)}" if failed else "")
          + (f"; overlay not written: {', '.join(unwritten)}" if unwritten else "") + ". "
          f"{DISCLAIMER.capitalize()}: do not use these outputs for patient care.")
    return _exit_code(ok, len(failed), len(unwritten))


def cmd_evaluate(args) -> int:
    """CLI ``evaluate``; returns an exit code of ``EXIT_CODES["evaluate"]`` (labelled files not found count as
    failed)."""
    if args.out:
        out, origin = Path(args.out).resolve(), "--out"
    else:
        out, origin = default_out_dir(args.images), f"default; {resolve_output_dir(None)[1]}"
    try:
        check_folders(args.images, out)  # before check_output_dir creates it inside the images
        check_output_dir(out, "--out" if args.out else "the default output folder")
        print(f"outputs: {out} (from {origin})")
        if args.n_bootstrap < 200:
            print(f"note: {args.n_bootstrap} bootstrap resamples give rough interval ends; the default is 1000")
        scorer = load_model(args.model, engine=args.engine)
        summary = evaluate_folder(scorer, args.images, labels_csv=args.labels, out_dir=out,
                                  n_boot=args.n_bootstrap, seed=args.seed, crop=_cropper(args, scorer))
    except (ValueError, OutputDirError) as e:
        _err(str(e))
        return EXIT_FATAL
    except WriteError as e:
        _err(f"{e}; nothing was replaced: {out} holds its earlier results, if any, whole")
        return EXIT_WRITE_FAILED
    print(f"{DISCLAIMER.capitalize()}: do not use these outputs for patient care.")
    return _exit_code(summary["n_scored"], summary["n_unreadable"] + summary.get("n_labels_not_found", 0))


def cmd_tables(args) -> int:
    """CLI ``tables``; returns an exit code of ``EXIT_CODES["tables"]``."""
    from ..reporting import tables as T
    outputs, origin = resolve_output_dir(args.outputs, "--outputs")
    if not outputs.is_dir():
        _err(f"outputs folder {outputs} (from {origin}) does not exist")
        return EXIT_FATAL
    print(f"tables from {outputs} (from {origin})", file=sys.stderr)
    blocks = T.render(outputs)
    broken = T.broken_inputs(blocks)
    if not (args.write_readme or args.check):
        sys.stdout.write(T.markdown(blocks))
        if broken:
            _err("corrupt or inconsistent input file(s): " + "; ".join(broken))
            return EXIT_BROKEN_INPUT
        return EXIT_OK
    status = EXIT_OK
    try:
        if args.write_readme:
            notes = T.write_readme(args.write_readme, blocks)
            print(f"wrote {args.write_readme}" + "".join(f"\n  {n}" for n in notes))
        if args.check:
            problems = T.check(Path(args.check).read_text(encoding="utf-8"), blocks)
            print(f"{args.check}: " + ("every table matches the outputs" if not problems else
                                       "OUT OF DATE\n  " + "\n  ".join(problems) + f"\n  fix: {T.REGENERATE}"))
            status = EXIT_CHECK_FAILED if problems else EXIT_OK
    except T.BrokenInputs as e:
        _err(str(e))
        return EXIT_BROKEN_INPUT
    except WriteError as e:
        _err(f"{e}; the README is left as it was")
        return EXIT_WRITE_FAILED
    except (OSError, ValueError) as e:  # the README missing or unreadable, its markers malformed
        _err(str(e))
        return EXIT_FATAL
    return status
