"""``python -m benchmarks [--short] [--repeats N] [--output outputs/benchmarks.json]``.

Runs the seven benchmarks (see ``benchmarks/README.md``), prints a table and
writes the JSON. Exit status 1 when a benchmark failed (a skipped one is not a
failure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import SCHEMA_VERSION
from .common import NORMALS, TASK, generated_data_dir, load_bench_data, say

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("input_pipeline", "frozen_backbone", "backbone_features", "workbook", "prediction", "app_load", "int8")

# Sizes per mode. Full mode keeps `make bench` under ~30 minutes on 2 CPU cores:
# VGG16 at 96 px runs ~15-20 images/s there, and theirs makes 5 passes over train + val; the prediction
# benchmark exports five backbones at 224 px (a minute or two) before timing.
SETTINGS = {
    "full": {
        "input_pipeline": {"image_size": 150, "n_images": None},   # the whole training split
        "frozen_backbone": {"image_size": 96, "n_train": 160, "n_val": 48, "epochs": 10},  # issue 10: 10 epochs
        "backbone_features": {"image_size": 224, "n_images": 48},
        "prediction": {"image_size": 150, "transfer_size": 224, "n_train_images": 64, "n_warm_images": 20},
        "workbook_repeats": 1,
        # ours' epoch lasts 1-2 s, short enough for one busy second of this shared machine to halve it:
        # at least 5 interleaved pairs for this figure (3 runs measured 3.4x and 7.1x on the same code)
        "input_pipeline_min_repeats": 5,
        "workbook_notebooks": None,                                  # all of them
        "app_load": {"users": 20, "uploads": 10, "workers": 2},      # issue 17: 20 users x 10 uploads
        # issue 20: every model type trained here (CNNs on the whole training split, heads on 320 images'
        # features), quantized, checked on the whole test split, timed against fp32
        "int8": {"feature_size": 224, "n_feature_images": 48, "cnn_size": 150, "cnn_epochs": 3,
                 "transfer_size": 224, "n_transfer_train": 320, "head_epochs": 10, "n_scoring": 32, "n_warm": 8},
    },
    "short": {
        "input_pipeline": {"image_size": 150, "n_images": 48},
        "frozen_backbone": {"image_size": 32, "n_train": 32, "n_val": 16, "epochs": 5},
        "backbone_features": {"image_size": 32, "n_images": 16},
        # CNNs and the logistic regression only: exporting the four large backbones takes minutes
        "prediction": {"image_size": 64, "transfer_size": 32, "n_train_images": 32, "n_warm_images": 5,
                       "transfer": ()},
        "workbook_repeats": 1,
        # The whole smoke run takes ~3 minutes even on generated images (notebook 06 builds
        # four backbones), over the CI budget; short mode times the data notebooks only.
        "workbook_notebooks": "01,02,03",
        "app_load": {"users": 20, "uploads": 10, "workers": 2},
        "int8": {"feature_size": 32, "n_feature_images": 16, "cnn_size": 32, "cnn_epochs": 1, "transfer_size": 32,
                 "n_transfer_train": 32, "head_epochs": 2, "transfer": ("VGG16",), "n_scoring": 8, "n_warm": 2},
    },
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true",
                   help="small subsets, 1 repeat, workbook on generated images (minutes; for CI)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 3; --short: 1)")
    p.add_argument("--output", default=str(ROOT / "outputs" / "benchmarks.json"), help="JSON to write")
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--manifest", help="workbook: read this run_manifest.json instead of running the workbook")
    p.add_argument("--workbook-repeats", type=int, default=None,
                   help="workbook runs (default 1: a smoke run takes minutes)")
    p.add_argument("--workbook-notebooks", default=None,
                   help="workbook: notebook numbers to run, e.g. 01,02,03 or 'all' "
                        "(default: all; --short: 01,02,03)")
    p.add_argument("--predict-model", help="prediction: time this saved .keras/.joblib model instead of "
                                           "building every model type")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work folder")
    return p


def _fmt(stats: dict | None, scale: float = 1.0, digits: int = 2) -> tuple[str, str, str]:
    if not isinstance(stats, dict) or "median" not in stats:
        return ("-", "-", "-")
    return tuple(f"{stats[k] * scale:.{digits}f}" for k in ("median", "min", "max"))


def _met(stats: dict | None) -> str:
    return "met" if stats and stats.get("met") else "NOT met"


def table(result: dict) -> str:
    """The human-readable summary: one line per figure, median [min, max]."""
    rows: list[tuple[str, str, tuple[str, str, str], str]] = []
    ip, fb, bf, wb, pr, al, q8 = (result.get(k, {}) for k in BENCHMARKS)
    if ip.get("status") == "ok":
        rows += [("input pipeline", "ours: cache + tf.data, 1-channel aug", _fmt(ip["ours_images_per_second"], 1, 1), "img/s"),
                 ("", "theirs: ImageDataGenerator", _fmt(ip["theirs_images_per_second"], 1, 1), "img/s"),
                 ("", "RATIO ours/theirs", _fmt(ip["ratio"]), "x"),
                 ("", "(ours without augmentation layers)",
                  _fmt(ip["ours_without_augmentation_images_per_second"], 1, 1), "img/s"),
                 ("", "cache build (cold, once)", _fmt(ip["cache_build_seconds"]), "s"),
                 ("", "cache read (warm)", _fmt(ip["cache_load_seconds"], 1, 3), "s")]
    if fb.get("status") == "ok":
        s = fb["settings"]
        rows += [(f"frozen VGG16 {s['image_size']}px", "ours: features once + head",
                  _fmt(fb["ours_seconds"], 1, 1), "s"),
                 (f"n={s['n_train']}+{s['n_val']}, {s['epochs']} ep", "theirs: base inside model",
                  _fmt(fb["theirs_seconds"], 1, 1), "s"),
                 ("", f"RATIO theirs/ours ({fb['backbone_image_passes']['pass_ratio']:.0f}x the base passes)",
                  _fmt(fb["ratio"]), "x"),
                 ("", "E x cost of a pass theirs/ours", _fmt(fb["passes_times_cost_ratio"]), "x"),
                 ("", "ratio if features cached", _fmt(fb["ratio_features_cached"]), "x"),
                 ("", "val AUC ours", _fmt(fb["ours_val_auc"], 1, 3), ""),
                 ("", "val AUC theirs", _fmt(fb["theirs_val_auc"], 1, 3), "")]
    if bf.get("status") == "ok":
        s = bf["settings"]
        rows += [(f"VGG16 features {s['image_size']}px", "ours: ONNX Runtime", _fmt(bf["ours_images_per_second"], 1, 1),
                  f"img/s (goal {bf['ours_images_per_second']['goal']}: {_met(bf['ours_images_per_second'])})"),
                 (f"n={s['n_images']}", "theirs: Keras predict_on_batch", _fmt(bf["theirs_images_per_second"], 1, 1),
                  "img/s"),
                 ("", "theirs: Keras predict", _fmt(bf["theirs_predict_images_per_second"], 1, 1), "img/s"),
                 ("", "RATIO ours/theirs", _fmt(bf["ratio"]),
                  f"x (goal {bf['ratio']['goal']}: {_met(bf['ratio'])})"),
                 ("", f"ours / theirs ({bf['gflop_per_image']:.1f} GFLOP per image)", _fmt(bf["ours_gflops"], 1, 0),
                  "GFLOP/s (ours)"),
                 ("", "", _fmt(bf["theirs_gflops"], 1, 0), "GFLOP/s (theirs)"),
                 ("", "one-off export (cached)", (f"{bf['export_seconds']:.1f}", "", ""), "s")]
    if wb.get("status") in ("ok", "failed") and "notebooks" in wb:
        first = True
        for name, st in wb["notebooks"].items():
            rows.append(("workbook (smoke)" if first else "", name, _fmt(st, 1, 1), "s"))
            first = False
        rows += [("", "TOTAL", _fmt(wb["total_seconds"], 1, 1), "s"),
                 ("", "peak RSS of the kernels", _fmt(wb["peak_rss_mib_kernels"], 1, 0), "MiB")]
    if pr.get("status") == "ok":
        first = True
        for name, m in pr["models"].items():
            cold, warm = m["cold_start_first_answer_seconds"], m["warm_scores_only_seconds_per_image"]
            rows += [("prediction" if first else "", f"{name} ({m['engine']}): cold, first answer", _fmt(cold),
                      f"s (goal {cold['goal']}: {_met(cold)})" if cold else "s"),
                     ("", f"{name}: warm per image, scores only", _fmt(warm, 1000, 1),
                      f"ms (goal {warm['goal']}: {_met(warm)})")]
            first = False
        cam = pr.get("gradcam")
        if cam:
            rows += [("", f"{cam['model']} + Grad-CAM: cold, new process to exit",
                      _fmt(cam["cold_start_seconds"]), "s (Keras loaded for the overlay)"),
                     ("", f"{cam['model']} + Grad-CAM: warm per image", _fmt(cam["warm_seconds_per_image"], 1000, 1),
                      "ms")]
    if al.get("status") == "ok":
        s = al["settings"]
        first = True
        for db_name, b in al["backends"].items():
            label = f"app {s['users']}x{s['uploads_per_user']} uploads" if first else ""
            first = False
            if b.get("status") != "ok":
                rows.append((label, f"{db_name}: {b.get('status')} ({b.get('reason', '')})"[:44], ("", "", ""), ""))
                continue
            lat = b["latency_seconds"] or {}
            rows += [(label, f"{db_name}: latency p50 / p95 / max",
                      tuple(f"{lat.get(k, float('nan')) * 1000:.0f}" for k in ("p50", "p95", "max")),
                      f"ms (goal {lat.get('goal')}: {_met(lat)})"),
                     ("", f"{db_name}: requests/s, errors, lost",
                      (f"{b['requests_per_second']:.1f}", str(b["errors"]), str(b["storage"]["lost"])),
                      "req/s | errors | lost" + ("" if b["nothing_lost"] else " (STORAGE INCONSISTENT)"))]
    if q8.get("status") == "ok":
        f = q8["features"]
        rows += [(f"int8 {f['backbone']} {f['image_size']}px", "features: fp32 / int8",
                  (f"{f['fp32_images_per_second']['median']:.1f}", f"{f['int8_images_per_second']['median']:.1f}", ""),
                  "img/s"),
                 (f"n={f['n_images']}", "RATIO int8/fp32", _fmt(f["ratio"]), f"x (goal {f['ratio']['goal']}: "
                                                                           f"{_met(f['ratio'])})")]
        if "accuracy" in f:
            a = f["accuracy"]
            rows.append(("", "head test AUC fp32 / int8, agreement",
                         (f"{a['auc_fp32']:.4f}", f"{a['auc_int8']:.4f}", f"{a['decision_agreement']:.3f}"),
                         f"n={a['n_images']} ({'met' if a['met'] else 'NOT met'})"))
        v = q8.get("vnni") or {}
        if v.get("status") == "ok":
            rows.append(("", "VNNI share of ONNX Runtime samples", (f"{v['vnni_percent_of_onnxruntime_samples']:.0f}",
                                                                 "", ""), "%"))
        for name, m in q8["models"].items():
            a = m["accuracy"]
            if "ratio" in m:
                rows.append(("int8 predict" if name == next(iter(q8["models"])) else "",
                             f"{name}: scoring int8/fp32, warm/image", (f"{m['ratio']['median']:.2f}",
                                                                       f"{m['ratio_warm_per_image']['median']:.2f}", ""),
                             f"x (goal {m['ratio']['goal']}: {_met(m['ratio'])})"))
            rows.append(("", f"{name}: test AUC fp32 / int8, agreement",
                         (f"{a['auc_fp32']:.4f}", f"{a['auc_int8']:.4f}", f"{a['decision_agreement']:.3f}"),
                         f"n={a['n_images']} ({'met' if a['met'] else 'NOT met'}"
                         + (", DEGENERATE model" if m["degenerate"] else "") + ")"))
    for name in BENCHMARKS:
        st = result.get(name, {}).get("status")
        if st not in ("ok", None, "not_run"):
            why = result[name].get("error", result[name].get("reason", ""))
            rows.append((name, f"{st.upper()}: {why}"[:74], ("", "", ""), ""))
    head = f"{'benchmark':<24}{'figure':<44}{'median':>10}{'min':>10}{'max':>10}  unit"
    lines = [head, "-" * len(head)]
    for bench, fig, (med, lo, hi), unit in rows:
        lines.append(f"{bench:<24}{fig:<44}{med:>10}{lo:>10}{hi:>10}  {unit}")
    return "\n".join(lines)


def _guard(name: str, fn, *args, **kwargs) -> dict:
    """Run one benchmark; a failure becomes {"status": "failed", "error": ...} (traceback on stderr)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - recorded, reported, and makes the exit status 1
        traceback.print_exc()
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    mode = "short" if args.short else "full"
    cfg = SETTINGS[mode]
    repeats = args.repeats or (1 if args.short else 3)
    wb_repeats = args.workbook_repeats or cfg["workbook_repeats"]
    wb_notebooks = args.workbook_notebooks or cfg["workbook_notebooks"]
    wb_notebooks = None if wb_notebooks in (None, "all") else wb_notebooks
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"--only names unknown benchmarks {unknown}; choose from {BENCHMARKS}")
    if repeats < 1 or wb_repeats < 1:
        raise SystemExit("--repeats and --workbook-repeats must be >= 1")

    from cxrbook.provenance import git_commit
    from cxrbook.workflow.manifest import machine, package_versions, write_json

    t_all = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="cxrbook-bench-"))
    result: dict = {"schema_version": SCHEMA_VERSION,
                    "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine(), "git": git_commit(), "packages": package_versions()}
    result.update({b: {"status": "not_run"} for b in BENCHMARKS})
    try:
        say(f"benchmarks ({mode}, {repeats} repeat(s)); work folder {workdir}")
        data = load_bench_data(workdir, args.short, args.seed)
        say(f"data: {data.source} ({data.data_dir}); images per split {data.describe()}; "
            f"setup {data.seconds_setup:.1f} s")
        result["settings"] = {
            "short": args.short, "repeats": repeats, "workbook_repeats": wb_repeats, "seed": args.seed,
            "task": TASK, "normals": NORMALS, "data_source": data.source, "data_dir": str(data.data_dir),
            "images_per_split": data.describe(), "setup_seconds": data.seconds_setup,
            "workbook_notebooks": wb_notebooks or "all",
            "benchmarks_run": only, "sizes": {k: v for k, v in cfg.items() if not k.startswith("workbook_")},
            "note": "timings on a shared machine are noisy; compare ratios taken in one run, not across runs",
        }

        # The workbook runs first, in a subprocess, before this process imports TensorFlow.
        if "workbook" in only:
            if args.manifest:
                from .workbook import from_manifest
                result["workbook"] = _guard("workbook", from_manifest, Path(args.manifest))
            else:
                from .workbook import run as run_workbook
                if args.short and data.source == "real":
                    wb_dir, wb_source = generated_data_dir(workdir, True, args.seed), "generated"
                else:
                    wb_dir, wb_source = data.data_dir, data.source
                result["workbook"] = _guard("workbook", run_workbook, wb_dir, workdir, wb_repeats, args.seed,
                                            wb_source, notebooks=wb_notebooks)
        if "input_pipeline" in only:
            from .input_pipeline import run as run_input
            result["input_pipeline"] = _guard("input_pipeline", run_input, data, workdir,
                                              max(repeats, cfg.get("input_pipeline_min_repeats", 1)), args.seed,
                                              **cfg["input_pipeline"])
        if "frozen_backbone" in only:
            from .frozen_backbone import run as run_backbone
            result["frozen_backbone"] = _guard("frozen_backbone", run_backbone, data, workdir, repeats,
                                               args.seed, **cfg["frozen_backbone"])
        if "backbone_features" in only:
            from .backbone_features import run as run_features
            result["backbone_features"] = _guard("backbone_features", run_features, data, workdir, repeats,
                                                 args.seed, **cfg["backbone_features"])
        if "prediction" in only:
            from .prediction import run as run_prediction
            model = Path(args.predict_model) if args.predict_model else None
            result["prediction"] = _guard("prediction", run_prediction, data, workdir, repeats, args.seed,
                                          model_path=model, **cfg["prediction"])
        if "int8" in only:
            from .int8 import run as run_int8
            result["int8"] = _guard("int8", run_int8, data, workdir, repeats, args.seed, **cfg["int8"])
        if "app_load" in only:  # the web app under load on SQLite and PostgreSQL ($CXR_TEST_PG_URL)
            from .app_load import run as run_app_load
            result["app_load"] = _guard("app_load", run_app_load, workdir, seed=args.seed, **cfg["app_load"])
    finally:
        result["total_seconds"] = round(time.perf_counter() - t_all, 1)
        path = write_json(result, args.output)
        if args.keep_workdir:
            say(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    say("\n" + table(result))
    say(f"\nwrote {path} ({result['total_seconds']:.0f} s)")
    failed = [b for b in BENCHMARKS if result.get(b, {}).get("status") == "failed"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
