"""The runner executes every notebook with papermill (smoke profile) and the outputs are consistent.

On generated data always; on the real collections too when CXR_DATA_DIR is set (CI sets it).
"""

import json

import pandas as pd
import pytest

from cxrbook.models import ensemble as ENS
from cxrbook.evaluation import records as R
from cxrbook.workflow.runner import NotebookFailed, list_notebooks, run

DATA_FIGURES = ["01_finding", "01_age", "01_sex", "01_survival", "01_view", "01_modality", "01_country",
                "01_images_per_patient", "01_label_by_view", "01_label_by_age_group_source",
                "03_split_composition"]
MODEL_FIGURES = ["04_custom_cnn_history", "04_custom_cnn_confusion", "04_custom_cnn_roc_pr",
                 "04_custom_cnn_reliability", "05_vgg16_history", "05_vgg16_confusion", "05_vgg16_gradcam",
                 "06_roc_overlay"]
MODELS = ["custom_cnn", "custom_cnn_improved", "vgg16", "densenet121", "resnet50v2", "inceptionv3",
          "mobilenetv2", "logreg_pixels", "ensemble"]


def _check_data_outputs(out, data_dir):
    for name in DATA_FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    tidy = pd.read_csv(out / "tidy.csv")
    clean = pd.read_csv(out / "clean.csv")
    log = pd.read_csv(out / "cleaning_log.csv")
    rows_in = sum(len(pd.read_csv(p, dtype=str, keep_default_na=False)) for p in data_dir.glob("*/metadata.csv"))
    assert len(tidy) == rows_in == len(clean) + len(log)
    assert list(log.columns[:4]) == ["source", "row_id", "image_path", "reason"]
    assert {"source", "patient_id", "image_path", "finding", "label", "pathogen_type", "view", "modality",
            "age", "sex", "age_group", "license"} <= set(clean.columns)
    splits = pd.read_csv(out / "splits.csv")
    assert list(splits.columns[:5]) == ["image_path", "patient_id", "source", "label", "split"]
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all(), "a patient is in two splits"
    assert set(splits["image_path"]) <= set(clean["image_path"])
    for label in splits["label"].unique():
        assert set(splits.loc[splits["label"] == label, "split"]) == {"train", "val", "test"}


def _check_model_outputs(out):
    for name in MODEL_FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    splits = pd.read_csv(out / "splits.csv")
    n_test = int((splits["split"] == "test").sum())
    for name in MODELS:
        rec = R.load_metrics(out / "metrics" / f"{name}.json")
        R.validate_record(rec)  # intervals present, accuracy == trace(cm) / n_test, threshold in [0, 1]
        assert rec["n_test"] == n_test and rec["task"] == "covid_vs_normal"
        assert rec["weights"] != "imagenet", "offline runs must say which weights they used"
        for metric, m in rec["metrics"].items():   # every interval names its method (issue 15)
            assert m.get("ci_method") in R.CI_METHODS, (name, metric, m)
        for metric in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):   # proportions: never 0 wide
            m = rec["metrics"][metric]
            if m["value"] is not None:
                assert m["ci95"][1] - m["ci95"][0] > 0 and "ci_flag" not in m, (name, metric, m)
        assert ("degenerate" in rec) == (rec["metrics"]["roc_auc"].get("ci_flag") == "zero_width"), name
        scores = pd.read_csv(out / "metrics" / f"{name}_scores.csv")
        assert set(scores.loc[scores["split"] == "test", "image_path"]) == \
            set(splits.loc[splits["split"] == "test", "image_path"])
    for name in ("custom_cnn", "vgg16"):
        side = json.loads((out / "models" / f"{name}.json").read_text())
        assert (out / "models" / f"{name}.keras").is_file() and side["threshold"] is not None
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["model"]) == set(MODELS)
    ensemble = ENS.load_ensemble(out / "models" / "ensemble.json")   # members exist and share one input
    assert len(ensemble["members"]) >= 2 and ensemble["threshold"] is not None
    vs_best = pd.read_csv(out / "ensemble_vs_best_member.csv")
    assert list(vs_best["reference"]) == [ensemble["chosen_by"]["best_member"]]
    assert len(pd.read_csv(out / "published_claims.csv")) == 4


def _check_external(out, data_dir):
    """Notebook 08: every trained model scored on both external collections at its stored validation threshold."""
    from cxrbook.external import scores as XS
    for name in ("08_internal_vs_external", "08_score_distributions"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    rec = json.loads((out / "external.json").read_text())
    XS.validate_external(rec)
    hannover = pd.read_csv(data_dir / "external" / "hannover-covid" / "data.csv", dtype=str)
    nih = pd.read_csv(data_dir / "external" / "nih-adult-normal" / "metadata.csv", dtype=str)
    assert rec["collections"]["hannover"]["n_images"] == len(hannover)
    assert rec["collections"]["hannover"]["n_patients"] == hannover["patient_id"].nunique()
    assert rec["collections"]["nih"]["n_images"] == len(nih)
    by = {e["model"]: e for e in rec["models"]}
    assert set(MODELS) <= set(by), f"not scored externally: {set(MODELS) - set(by)}"
    assert by["custom_cnn__normals_adult"]["normals"] == "adult" and by["custom_cnn__normals_all"]["normals"] == "all"
    for name, e in by.items():
        side = json.loads((out / "models" / f"{name}.json").read_text())
        internal = R.load_metrics(out / "metrics" / f"{name}.json")
        assert e["threshold"] == side["threshold"] == pytest.approx(internal["threshold"]), name
        for metric in ("sensitivity", "specificity", "roc_auc"):
            assert e["internal"][metric] == internal["metrics"][metric], (name, metric)
        for metric in ("sensitivity", "specificity"):
            m = e["external"][metric]
            assert m["value"] is not None and None not in m["ci95"], (name, metric)
    assert rec["paragraph"] and "64x64" in rec["paragraph"]


def _check_lungs(out, data_dir):
    """Notebook 09: lungs.json with the detector against the mean box and every model cropped vs not, the saved
    detector and crop-trained CNNs, which ``predict`` crops for."""
    from cxrbook.__main__ import main
    from cxrbook.data.lung_boxes import load_lung_boxes
    from cxrbook.lungs import study as L
    for name in ("09_boxes_held_out", "09_boxes_by_collection", "09_cropped_vs_uncropped"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    rec = json.loads((out / "lungs.json").read_text())
    L.validate_lungs(rec)
    assert rec["boxes"]["counts"] == load_lung_boxes(data_dir).counts()
    held = rec["detector"]["held_out"]
    for side in ("detector", "mean_box", "difference"):
        for metric in ("iou_mean", "iou_right", "iou_left", "map50", "map50_95"):
            assert held[side][metric]["value"] is not None and len(held[side][metric]["ci95"]) == 2, (side, metric)
    ext = json.loads((out / "external.json").read_text())["collections"]
    assert {c: v["images"] for c, v in rec["fallback"].items() if c in ext} == {c: v["n_images"] for c, v in ext.items()}
    for normals in ("all", "adult"):
        for arch in ("custom_cnn", "logreg"):
            run = rec["runs"][normals][arch]
            assert run["uncropped"]["n_test"] == run["cropped"]["n_test"]
            assert set(run["external"]) == {"hannover", "nih"}
            for e in run["external"].values():
                assert e["difference"]["value"] == pytest.approx(e["cropped"]["value"] - e["uncropped"]["value"])
        assert rec["runs"][normals]["custom_cnn"]["uncropped_from"].startswith("notebook 07's saved model")
    assert rec["source_probe"]["uncropped_from"] == "notebook 07 (audit.json)"
    assert rec["paragraph"].startswith("- **Detector.**")
    crop_model = out / "models" / "lung_crops" / "custom_cnn__normals_all__lung_crops.keras"
    assert str(crop_model) in rec["saved_models"] and (out / "models" / "lung_crops" / "lung_detector.json").is_file()
    image = next((data_dir / "external" / "nih-adult-normal" / "images").glob("*.png"))
    assert main(["predict", str(image), "--model", str(crop_model), "--engine", "keras", "--no-gradcam"]) == 0


def _check_run(out, data_dir):
    _check_data_outputs(out, data_dir)
    _check_model_outputs(out)
    _check_external(out, data_dir)
    _check_lungs(out, data_dir)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert [n["status"] for n in manifest["notebooks"]] == ["ok"] * len(list_notebooks())
    assert manifest["git"]["commit"] and manifest["data_sha256"] and manifest["packages"]["keras"]
    index = (out / "index.html").read_text()
    assert all(nb.stem + ".html" in index for nb in list_notebooks())


@pytest.mark.slow
def test_whole_workbook_on_generated_data(fake_data, tmp_path):
    out = tmp_path / "out"
    # fine_tune_epochs=1 also runs notebook 05's block5 fine-tuning branch (off in the smoke profile)
    run(profile="smoke", data_dir=str(fake_data), output_dir=str(out),
        extra={"weights": "none", "fine_tune_epochs": 1, "detector_epochs": 2})  # 09's detector: 2 epochs here
    _check_run(out, fake_data)
    R.validate_record(R.load_metrics(out / "metrics" / "vgg16_finetuned.json"))


@pytest.mark.slow
@pytest.mark.realdata
def test_whole_workbook_on_real_data(real_data, tmp_path):
    out = tmp_path / "out"
    run(profile="smoke", data_dir=str(real_data), output_dir=str(out), extra={"weights": "none"})
    _check_run(out, real_data)


def test_failing_notebook_names_cell_and_error(fake_data, tmp_path):
    """A notebook that raises stops the run with the notebook, cell and error in the message."""
    with pytest.raises(NotebookFailed, match=r"03_segregation_and_splits.ipynb failed in cell \[\d+\].*"
                                             r"FileNotFoundError.*clean.csv.*run notebook 02 first"):
        run(profile="smoke", only=["03"], data_dir=str(fake_data), output_dir=str(tmp_path / "o"),
            html_index=False)


_DEAD_PROXY = "http://127.0.0.1:9"   # the discard port: every download through it fails at once


def _force_offline(env_set, keras_home) -> None:
    """An empty Keras cache (no ~/.keras weights can be found) and every HTTP(S) request sent to a dead
    proxy, so the ImageNet download fails on any machine, online or not."""
    env_set("KERAS_HOME", str(keras_home))
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        env_set(var, _DEAD_PROXY)
    env_set("NO_PROXY", "")
    env_set("no_proxy", "")


def test_build_backbone_offline_raises_a_clear_error(tmp_path):
    """backbones.build_backbone(..., "imagenet") without a reachable download: RuntimeError naming the
    backbone and the alternatives. Run in a fresh interpreter: Keras reads KERAS_HOME at import."""
    import os
    import subprocess
    import sys
    env = dict(os.environ)
    _force_offline(env.__setitem__, tmp_path / "keras_home")
    code = ("import json\n"
            "from cxrbook.models import backbones\n"
            "try:\n"
            "    backbones.build_backbone('VGG16', 32, 'imagenet')\n"
            "    print(json.dumps({'type': None, 'msg': ''}))\n"
            "except Exception as e:\n"
            "    print(json.dumps({'type': type(e).__name__, 'msg': str(e)}))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["type"] == "RuntimeError", out
    assert "ImageNet weights for VGG16" in out["msg"] and "weights='none'" in out["msg"], out["msg"]
    assert "weights=<path" in out["msg"], out["msg"]
    assert not list((tmp_path / "keras_home").rglob("*.h5")), "weights were downloaded despite the dead proxy"


def test_imagenet_offline_fails_loudly(fake_data, tmp_path, monkeypatch):
    """weights=imagenet without internet stops notebook 05 with a message naming the alternatives.
    Offline is forced (empty KERAS_HOME, dead proxy), so the test means the same on an online machine."""
    out = tmp_path / "o"
    run(profile="smoke", only=["01", "02", "03"], data_dir=str(fake_data), output_dir=str(out), html_index=False)
    _force_offline(monkeypatch.setenv, tmp_path / "keras_home")   # the papermill kernel inherits these
    with pytest.raises(NotebookFailed) as e:
        run(profile="smoke", only=["05"], data_dir=str(fake_data), output_dir=str(out), html_index=False,
            extra={"weights": "imagenet"})
    msg = str(e.value)
    assert "RuntimeError" in msg and "weights" in msg and "none" in msg, msg[-2000:]
    assert not (out / "metrics" / "vgg16.json").exists()


def test_only_rejects_unknown_numbers():
    with pytest.raises(ValueError, match="names no notebook"):
        list_notebooks(["99"])
