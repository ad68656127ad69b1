"""``python -m benchmarks --short`` runs end to end on generated images and writes every field.

Timing is never asserted (CI machines are noisy): only that each figure exists
with its median / min / max, and that the ratios are positive numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATS = ("median", "min", "max", "runs", "unit")


def _check_stats(section: dict, key: str) -> None:
    stats = section[key]
    assert set(STATS) <= set(stats), f"{key} lacks {set(STATS) - set(stats)}"
    assert stats["min"] <= stats["median"] <= stats["max"], key
    assert len(stats["runs"]) >= 1, key


@pytest.mark.slow
def test_short_benchmarks_write_every_field(tmp_path):
    out = tmp_path / "b.json"
    env = {k: v for k, v in os.environ.items() if k != "CXR_DATA_DIR"}  # generated images only
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--short", "--output", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    b = json.loads(out.read_text())

    assert b["schema_version"] == 2
    assert b["date_utc"].endswith("+00:00")
    assert {"cores", "cpu"} <= set(b["machine"]) and b["machine"]["cores"] >= 1
    assert "commit" in b["git"]
    s = b["settings"]
    assert s["short"] is True and s["repeats"] == 1 and s["data_source"] == "generated"
    assert {"input_pipeline", "frozen_backbone", "backbone_features", "prediction"} <= set(s["sizes"])

    ip = b["input_pipeline"]
    assert ip["status"] == "ok"
    for key in ("ours_images_per_second", "theirs_images_per_second", "ours_seconds", "theirs_seconds",
                "cache_build_seconds", "cache_load_seconds", "ours_without_augmentation_images_per_second",
                "ratio"):
        _check_stats(ip, key)
    assert ip["ratio"]["median"] > 0
    assert ip["settings"]["image_size"] == 150 and ip["settings"]["n_images"] >= 1
    assert "trivial" in ip["settings"]["model"]

    fb = b["frozen_backbone"]
    assert fb["status"] == "ok"
    for key in ("ours_seconds", "ours_features_seconds", "ours_head_seconds", "theirs_seconds", "ratio",
                "ratio_features_cached", "ours_val_auc", "theirs_val_auc"):
        _check_stats(fb, key)
    assert fb["ratio"]["median"] > 0
    assert fb["backbone_image_passes"]["ratio_bound"] == fb["settings"]["epochs"] == 5
    assert {"image_size", "n_train", "n_val"} <= set(fb["settings"])
    assert isinstance(fb["val_auc_comparable"], bool)

    bf = b["backbone_features"]
    assert bf["status"] == "ok"
    for key in ("ours_images_per_second", "theirs_images_per_second", "theirs_predict_images_per_second", "ratio"):
        _check_stats(bf, key)
    assert bf["ratio"]["goal"] == ">= 2x" and isinstance(bf["ratio"]["met"], bool)
    assert bf["ours_images_per_second"]["goal"] == ">= 6 img/s"
    assert bf["max_abs_feature_diff"] < 1e-4  # ONNX Runtime and Keras compute the same features

    wb = b["workbook"]
    assert wb["status"] == "ok", wb.get("error")
    _check_stats(wb, "total_seconds")
    _check_stats(wb, "peak_rss_mib_kernels")
    assert wb["notebooks"] and all(set(STATS) <= set(v) for v in wb["notebooks"].values())

    pr = b["prediction"]
    if pr["status"] == "skipped":  # the predict CLI is optional for this test
        assert "predict command not available" in pr["reason"]
    else:
        assert pr["status"] == "ok"
        assert {"custom_cnn", "improved_cnn", "logreg_pixels"} <= set(pr["models"])
        for name, m in pr["models"].items():
            for key in ("cold_start_seconds", "cold_start_first_answer_seconds", "warm_scores_only_seconds_per_image"):
                _check_stats(m, key)
            assert m["engine"] == "onnx"
            assert m["cold_start_first_answer_seconds"]["goal"] == "<= 1 s"
            assert m["warm_scores_only_seconds_per_image"]["goal"] == "<= 100 ms"
        for key in ("cold_start_seconds", "warm_seconds_per_image"):
            _check_stats(pr["gradcam"], key)
        assert isinstance(pr["all_goals_met"], bool)

    assert "RATIO ours/theirs" in proc.stdout  # the printed table
