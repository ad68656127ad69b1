"""``python -m benchmarks --short`` runs end to end on generated images and writes every field.

Timing is never asserted (CI machines are noisy). What is asserted can fail: each figure's median,
min and max are those of its stored runs, the ratios are recomputed from the stored raw times of
the same interleaved pairs, images/s from the image count, and every unit is the expected one.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATS = ("median", "min", "max", "runs", "unit")
REPEATS = 2  # two runs per figure: the median (mean of two) differs from min and max


def _check_stats(section: dict, key: str, unit: str, n_runs: int | None = REPEATS, digits: int = 4
                 ) -> list[float]:
    """The summary's fields are the statistics of its own runs (each rounded to ``digits``); returns
    the runs."""
    stats = section[key]
    assert set(STATS) <= set(stats), f"{key} lacks {set(STATS) - set(stats)}"
    runs = stats["runs"]
    assert runs and all(isinstance(r, (int, float)) and math.isfinite(r) for r in runs), key
    if n_runs is not None:
        assert len(runs) == n_runs, (key, runs)
    assert stats["median"] == pytest.approx(statistics.median(runs), rel=0, abs=1.01 * 10 ** -digits), key
    assert stats["min"] == min(runs) and stats["max"] == max(runs), key
    assert stats["unit"] == unit, (key, stats["unit"])
    return runs


def _half_unit(x: float) -> float:
    """Half a unit of the last decimal ``x`` was stored with (its rounding error at most)."""
    text = repr(float(x))
    return 0.5 * 10 ** -(len(text.split(".")[1]) if "." in text and "e" not in text else 0)


def _check_ratio(section: dict, ratio: str, num: str, den: str) -> None:
    """Each stored ratio run is num / den of the same pair of stored raw times, within what the rounding
    of the stored times and of the stored ratio can explain (short runs store times of ~0.1 s with
    few decimals, so a fixed relative tolerance failed on correct ratios)."""
    for r, a, b in zip(section[ratio]["runs"], section[num]["runs"], section[den]["runs"]):
        expected = a / b
        bound = expected * (_half_unit(a) / a + _half_unit(b) / b) * 1.01 + _half_unit(r) + 1e-9
        assert abs(r - expected) <= bound, (ratio, r, a, b, bound)


def model_gflop_vgg16(size: int) -> float:
    """VGG16's convolutions by hand: (c_in, c_out) per 3x3 'same' layer, 2x2 pooling after each block."""
    blocks = [[(3, 64), (64, 64)], [(64, 128), (128, 128)], [(128, 256), (256, 256), (256, 256)],
              [(256, 512), (512, 512), (512, 512)], [(512, 512), (512, 512), (512, 512)]]
    macs, side = 0, size
    for block in blocks:
        macs += sum(side * side * 9 * c_in * c_out for c_in, c_out in block)
        side //= 2
    return 2 * macs / 1e9


def test_model_gflop_counts_convolutions_and_dense_layers():
    import keras
    from benchmarks.backbone_features import model_gflop
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)            # 8*8*9*2*4 = 4608 multiply-adds
    x = keras.layers.Conv2D(6, 3, strides=2, padding="valid")(x)     # 3*3*9*4*6 = 1944
    inner = keras.Model(inputs, x)
    outer_in = keras.Input((8, 8, 2))
    y = keras.layers.Dense(5)(keras.layers.Flatten()(inner(outer_in)))  # 54*5 = 270, inside a nested model
    assert model_gflop(keras.Model(outer_in, y)) == pytest.approx(2 * (4608 + 1944 + 270) / 1e9)
    assert model_gflop_vgg16(224) == pytest.approx(30.69, abs=0.01)  # the published 15.35 G multiply-adds


def test_workbook_goal_is_met_only_by_a_complete_smoke_run_within_it():
    from benchmarks.workbook import NOTEBOOKS, total_with_goal
    every = [p.name for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))]
    assert len(every) >= 8
    fast, slow = {"median": 231.0}, {"median": 301.0}
    assert total_with_goal(fast, "smoke", every, failed=False)["met"] is True
    assert total_with_goal(slow, "smoke", every, failed=False)["met"] is False
    assert total_with_goal(fast, "smoke", every[:3], failed=False)["met"] is False  # 01-03 only
    assert total_with_goal(fast, "smoke", every, failed=True)["met"] is False
    assert total_with_goal(fast, "full", every, failed=False)["met"] is False


def test_summary_statistics_on_known_inputs():
    from benchmarks.common import summary
    s = summary([3.0, 1.0, 2.0, 10.0], "s")
    assert s == {"median": 2.5, "min": 1.0, "max": 10.0, "runs": [3.0, 1.0, 2.0, 10.0], "unit": "s"}
    s = summary([0.123456, 5, 0.5], "x", digits=3)
    assert s["median"] == 0.5 and s["min"] == 0.123 and s["runs"] == [0.123, 5.0, 0.5] and s["unit"] == "x"
    assert summary([7], "MiB")["median"] == 7.0
    with pytest.raises(ValueError, match="no measurements"):
        summary([], "s")


@pytest.mark.slow
def test_short_benchmarks_write_every_field(tmp_path):
    out = tmp_path / "b.json"
    env = {k: v for k, v in os.environ.items() if k != "CXR_DATA_DIR"}  # generated images only
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--short", "--repeats", str(REPEATS),
                           "--output", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_benchmarks(json.loads(out.read_text()))
    assert "RATIO ours/theirs" in proc.stdout  # the printed table


def _check_benchmarks(b: dict) -> None:
    """Every field of a ``--short --repeats REPEATS`` benchmarks JSON, consistent with its raw runs."""
    assert b["schema_version"] == 3
    assert b["date_utc"].endswith("+00:00")
    assert {"cores", "cpu"} <= set(b["machine"]) and b["machine"]["cores"] >= 1
    assert "commit" in b["git"]
    s = b["settings"]
    assert s["short"] is True and s["repeats"] == REPEATS and s["data_source"] == "generated"
    assert {"input_pipeline", "frozen_backbone", "backbone_features", "prediction"} <= set(s["sizes"])

    ip = b["input_pipeline"]
    assert ip["status"] == "ok"
    for key in ("ours_seconds", "theirs_seconds", "cache_build_seconds", "cache_load_seconds"):
        _check_stats(ip, key, "s")
    n = ip["settings"]["n_images"]
    for key, seconds in (("ours_images_per_second", "ours_seconds"),
                         ("theirs_images_per_second", "theirs_seconds")):
        per_second = _check_stats(ip, key, "images/s", digits=2)
        assert per_second == pytest.approx([n / x for x in ip[seconds]["runs"]], rel=2e-3, abs=0.01), key
    _check_stats(ip, "ours_without_augmentation_images_per_second", "images/s", digits=2)
    _check_stats(ip, "ratio", "x (ours faster)", digits=3)
    _check_ratio(ip, "ratio", "theirs_seconds", "ours_seconds")
    assert ip["settings"]["image_size"] == 150 and n >= 1
    assert "trivial" in ip["settings"]["model"]

    fb = b["frozen_backbone"]
    assert fb["status"] == "ok"
    for key in ("ours_seconds", "ours_features_seconds", "ours_head_seconds", "theirs_seconds"):
        _check_stats(fb, key, "s")
    for key in ("ratio", "ratio_features_cached"):
        _check_stats(fb, key, "x (ours faster)", digits=3)
    _check_ratio(fb, "ratio", "theirs_seconds", "ours_seconds")
    _check_ratio(fb, "ratio_features_cached", "theirs_seconds", "ours_head_seconds")
    for key in ("ours_val_auc", "theirs_val_auc"):
        assert all(0 <= a <= 1 for a in _check_stats(fb, key, "AUC")), key
    assert fb["val_auc_abs_diff"] == pytest.approx(
        abs(fb["ours_val_auc"]["median"] - fb["theirs_val_auc"]["median"]), abs=2e-4)
    assert fb["val_auc_comparable"] == (fb["val_auc_abs_diff"] <= 0.05)
    passes = fb["backbone_image_passes"]
    assert passes["pass_ratio"] == fb["settings"]["epochs"] == 5
    per_pass = fb["seconds_per_base_pass"]
    ours_pass = _check_stats(per_pass, "ours", "s")
    theirs_pass = _check_stats(per_pass, "theirs_estimate", "s")
    p_ = passes["ours"]
    assert ours_pass == pytest.approx([f / p_ for f in fb["ours_features_seconds"]["runs"]], rel=1e-3, abs=1e-4)
    assert theirs_pass == pytest.approx([max(t - h, 0) / (5 * p_) for t, h in zip(
        fb["theirs_seconds"]["runs"], fb["ours_head_seconds"]["runs"])], rel=1e-3, abs=1e-4)
    assert _check_stats(fb, "passes_times_cost_ratio", "x", digits=3) == pytest.approx(
        [5 * t / o for t, o in zip(theirs_pass, ours_pass)], rel=2e-2)
    assert passes["ours"] == fb["settings"]["n_train"] + fb["settings"]["n_val"]
    assert passes["theirs"] == 5 * passes["ours"]

    bf = b["backbone_features"]
    assert bf["status"] == "ok"
    n = bf["settings"]["n_images"]
    for key in ("ours_seconds", "theirs_seconds", "theirs_predict_seconds"):
        _check_stats(bf, key, "s")
    for key, seconds in (("ours_images_per_second", "ours_seconds"), ("theirs_images_per_second", "theirs_seconds"),
                         ("theirs_predict_images_per_second", "theirs_predict_seconds")):
        per_second = _check_stats(bf, key, "images/s", digits=2)
        assert per_second == pytest.approx([n / x for x in bf[seconds]["runs"]], rel=2e-3, abs=0.01), key
    for key in ("ratio", "ratio_vs_predict"):
        _check_stats(bf, key, "x (ours faster)", digits=3)
    _check_ratio(bf, "ratio", "theirs_seconds", "ours_seconds")
    _check_ratio(bf, "ratio_vs_predict", "theirs_predict_seconds", "ours_seconds")
    assert bf["ratio"]["goal"] == ">= 2x" and bf["ratio"]["met"] == (bf["ratio"]["median"] >= 2)
    ips = bf["ours_images_per_second"]
    assert ips["goal"] == ">= 6 images/s" and ips["met"] == (ips["median"] >= 6)
    assert bf["max_abs_feature_diff"] < 1e-4  # ONNX Runtime and Keras compute the same features
    # VGG16's convolutions at the short run's size: 2 x multiply-adds, scaled from 15.35 G at 224 px
    size = bf["settings"]["image_size"]
    assert bf["gflop_per_image"] == pytest.approx(model_gflop_vgg16(size), rel=1e-3)
    for key, per_second in (("ours_gflops", "ours_images_per_second"), ("theirs_gflops", "theirs_images_per_second")):
        runs = _check_stats(bf, key, "GFLOP/s", digits=1)
        assert runs == pytest.approx([bf["gflop_per_image"] * x for x in bf[per_second]["runs"]], rel=2e-2), key

    wb = b["workbook"]
    assert wb["status"] == "ok", wb.get("error")
    wb_runs = s["workbook_repeats"]
    _check_stats(wb, "total_seconds", "s", wb_runs, digits=1)
    # the short run executes 01-03 only: the 5-minute goal is for the whole smoke workbook, so it is not met
    assert wb["total_seconds"]["goal"].startswith("<= 300 s") and wb["total_seconds"]["met"] is False
    _check_stats(wb, "peak_rss_mib_kernels", "MiB", wb_runs, digits=1)
    assert wb["notebooks"]
    for name in wb["notebooks"]:
        _check_stats(wb["notebooks"], name, "s", wb_runs, digits=1)

    pr = b["prediction"]
    if pr["status"] == "skipped":  # the predict CLI is optional for this test
        assert "predict command not available" in pr["reason"]
    else:
        assert pr["status"] == "ok"
        assert set(pr["models"]) == {"custom_cnn", "improved_cnn", "logreg_pixels"}  # short: no large backbones
        met = []
        for name, m in pr["models"].items():
            assert m["engine"] == "onnx", name
            _check_stats(m, "cold_start_seconds", "s")
            cold = m["cold_start_first_answer_seconds"]
            assert all(a <= b for a, b in zip(_check_stats(m, "cold_start_first_answer_seconds", "s"),
                                              m["cold_start_seconds"]["runs"])), name  # answer before exit
            warm = m["warm_scores_only_seconds_per_image"]
            _check_stats(m, "warm_scores_only_seconds_per_image", "s", REPEATS * pr["settings"]["n_warm_images"])
            assert cold["goal"] == "<= 1 s" and cold["met"] == (cold["median"] <= 1.0), name
            assert warm["goal"] == "<= 100 ms" and warm["met"] == (warm["median"] <= 0.1), name
            met += [cold["met"], warm["met"]]
        assert pr["all_goals_met"] == all(met)
        cam = pr["gradcam"]
        assert cam["model"] == "custom_cnn"
        _check_stats(cam, "cold_start_seconds", "s")
        _check_stats(cam, "warm_seconds_per_image", "s", None)

    q = b["int8"]
    assert q["status"] == "ok", q.get("error")
    n_test = sum(s["images_per_split"]["test"].values())
    n_train = sum(s["images_per_split"]["train"].values())
    f = q["features"]
    fp32, int8 = (_check_stats(f, k, "images/s", digits=2) for k in ("fp32_images_per_second", "int8_images_per_second"))
    # per pair: fp32 seconds / int8 seconds = int8 images/s / fp32 images/s
    assert _check_stats(f, "ratio", "x (int8 faster)", digits=3) == pytest.approx(
        [i / o for o, i in zip(fp32, int8)], rel=2e-2)
    assert f["ratio"]["goal"] == ">= 2x" and f["ratio"]["met"] == (f["ratio"]["median"] >= 2)
    assert f["accuracy"]["n_images"] == n_test
    assert set(q["models"]) == {"custom_cnn", "improved_cnn", "vgg16"}  # short: VGG16 the only base
    for name, m in q["models"].items():
        acc, cal = m["accuracy"], m["calibration"]
        assert acc["split"] == "test" and acc["n_images"] == n_test, name
        assert acc["met"] == (acc["auc_abs_diff"] <= 0.005 and acc["decision_agreement"] >= 0.99), name
        assert cal["split"] == "train" and 0 < cal["n_images"] <= min(64, cal["n_available"]) <= n_train, name
        if acc["met"]:
            for key in ("scoring_fp32_images_per_second", "scoring_int8_images_per_second"):
                _check_stats(m, key, "images/s", digits=2)
            _check_stats(m, "ratio", "x (int8 faster)", digits=3)
            assert m["ratio"]["met"] == (m["ratio"]["median"] >= 2), name
        else:
            assert "ratio" not in m and m["status"].startswith("accuracy not met"), name
    assert q["accuracy_met_every_model"] == all(m["accuracy"]["met"] and not m["degenerate"]
                                                for m in q["models"].values())
