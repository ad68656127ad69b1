"""The README speed table: the app's load test per database and the int8 engine's rows (issues 17 and 20),
and the frozen head's ratio described by its passes, not as a bound."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the benchmarks package: its own summary() makes the stats objects
from benchmarks.common import summary, with_goal  # noqa: E402

from cxrbook.reporting.speed_table import speed_block  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "outputs_small" / "benchmarks.json"


def _app(p95: float, errors: int = 0, lost: int = 0) -> dict:
    lat = {"median": 0.21, "p50": 0.21, "p95": p95, "min": 0.05, "max": 1.4, "mean": 0.3, "n": 200, "unit": "s",
           "goal": "p95 <= 1 s", "met": p95 <= 1}
    storage = {"accepted": 200 - lost, "rows": 200 - lost, "files": 200 - lost, "lost": lost, "duplicated": 0,
               "unexpected_rows": 0, "wrong_owner": 0, "rows_without_file": 0, "files_without_row": 0}
    return {"status": "ok", "database": "sqlite", "requests": 200, "accepted": 200 - errors, "errors": errors,
            "requests_per_second": 37.46, "latency_seconds": lat, "storage": storage, "nothing_lost": lost == 0,
            "goal_met": p95 <= 1 and errors == 0 and lost == 0}


def _accuracy(met: bool) -> dict:
    return {"split": "test", "n_images": 172, "auc_fp32": 0.97123, "auc_int8": 0.97081 if met else 0.95,
            "auc_abs_diff": 0.00042 if met else 0.02123, "auc_tolerance": 0.005, "decision_agreement": 171 / 172,
            "n_decisions_differing": 1, "min_agreement": 0.99, "threshold": 0.42, "met": met}


def _int8() -> dict:
    ratio = with_goal(summary([3.1, 3.4, 2.9], "x (int8 faster)", 3), ">= 2x", True)
    slow = with_goal(summary([1.5, 1.7, 1.6], "x (int8 faster)", 3), ">= 2x", False)
    model = {"image_size": 150, "degenerate": False, "accuracy": _accuracy(True), "ratio": slow,
             "scoring_fp32_images_per_second": summary([60, 62, 58], "images/s", 2),
             "scoring_int8_images_per_second": summary([95, 99, 96], "images/s", 2),
             "warm_per_image_fp32_seconds": summary([0.012, 0.013, 0.011], "s"),
             "warm_per_image_int8_seconds": summary([0.010, 0.011, 0.010], "s"),
             "ratio_warm_per_image": summary([1.2, 1.18, 1.1], "x (int8 faster)", 3)}
    return {"status": "ok", "settings": {"n_scoring_images": 32},
            "features": {"backbone": "VGG16", "image_size": 224, "n_images": 48, "ratio": ratio,
                         "fp32_images_per_second": summary([14.8, 15.0, 14.1], "images/s", 2),
                         "int8_images_per_second": summary([47.0, 50.1, 41.2], "images/s", 2),
                         "accuracy": _accuracy(True)},
            "vnni": {"status": "ok", "vnni_percent_of_onnxruntime_samples": 71.3},
            "models": {"custom_cnn": model,
                       "mobilenetv2": {"image_size": 224, "degenerate": True, "accuracy": _accuracy(False),
                                       "status": "accuracy not met: the int8 engine refuses this model"}}}


@pytest.fixture
def outputs(tmp_path) -> Path:
    out = tmp_path / "outputs"
    out.mkdir()
    shutil.copy(FIXTURE, out / "benchmarks.json")
    return out


def _with(outputs: Path, **sections) -> str:
    b = json.loads((outputs / "benchmarks.json").read_text())
    b.update(sections)
    (outputs / "benchmarks.json").write_text(json.dumps(b))
    return speed_block(outputs)


def _row(text: str, start: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| {start}")]
    return line


def test_app_load_rows_per_database_with_the_goal(outputs):
    app = {"status": "ok", "goal": "p95 <= 1 s per prediction without overlay, zero errors, zero lost",
           "settings": {"users": 20, "uploads_per_user": 10, "server_workers": 2},
           "backends": {"sqlite": _app(0.62), "postgresql": _app(0.81, errors=2, lost=1)}}
    text = _with(outputs, app_load=app)
    sqlite = _row(text, "web app, 20 users x 10 uploads, 2 workers, sqlite")
    assert "37.5 requests/s; latency p50 210 ms, p95 620 ms; 0 errors, 0 lost, 0 duplicated of 200 accepted" in sqlite
    assert sqlite.rstrip(" |").endswith("zero errors, zero lost: met")
    pg = _row(text, "web app, 20 users x 10 uploads, 2 workers, postgresql")
    assert "p95 810 ms; 2 errors, 1 lost" in pg and pg.rstrip(" |").endswith(": not met")  # p95 met, errors not
    app["backends"]["postgresql"] = {"status": "skipped", "reason": "no PostgreSQL server at $CXR_TEST_PG_URL (refused)"}
    pg = _row(_with(outputs, app_load=app), "web app, 20 users x 10 uploads, 2 workers, postgresql")
    assert "skipped: no PostgreSQL server" in pg and "met" not in pg
    failed = _with(outputs, app_load={"status": "failed", "error": "RuntimeError: server did not start"})
    assert "failed: RuntimeError: server did not start" in failed


def test_int8_rows_carry_the_ratio_and_the_accuracy_check(outputs):
    text = _with(outputs, int8=_int8())
    feats = _row(text, "int8 vs fp32 ONNX Runtime: frozen VGG16 features, 48 images at 224 px")
    assert "| 47.0 images/s [41.2, 50.1] | 14.8 images/s [14.1, 15.0] | 3.10x [2.90, 3.40] |" in feats
    assert ">= 2x: met; head on its features: test AUC 0.9712 -> 0.9708" in feats
    assert "decisions 171/172 agree (bound 99%): met" in feats and "71% of ONNX Runtime's samples in VNNI" in feats
    cnn = _row(text, "int8 vs fp32: `predict` custom_cnn (150 px)")
    assert "1.60x [1.50, 1.70] / 1.18x [1.10, 1.20]" in cnn and ">= 2x: not met" in cnn
    mob = _row(text, "int8 vs fp32: `predict` mobilenetv2 (224 px)")
    assert "accuracy not met: the int8 engine refuses this model" in mob
    assert "-> 0.9500" in mob and ": NOT met" in mob and "DEGENERATE model" in mob


def test_frozen_head_ratio_is_described_by_its_passes_not_a_bound(outputs):
    b = json.loads((outputs / "benchmarks.json").read_text())
    fb = b["frozen_backbone"]
    fb["backbone_image_passes"] = {"ours": 208, "theirs": 2080, "pass_ratio": 10.0}
    fb["passes_times_cost_ratio"] = summary([13.1, 13.3, 12.7], "x", 3)
    row = _row(_with(outputs, frozen_backbone=fb), "frozen VGG16 head")
    assert "(10x the base passes; passes x cost per pass: 13.10x [12.70, 13.30])" in row and "bound" not in row
    fb["backbone_image_passes"] = {"ours": 208, "theirs": 1040, "ratio_bound": 5.0}  # a benchmarks.json before issue 20
    del fb["passes_times_cost_ratio"]
    row = _row(_with(outputs, frozen_backbone=fb), "frozen VGG16 head")
    assert "(5x the base passes)" in row and "bound" not in row
