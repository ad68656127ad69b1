"""The runner executes every notebook with papermill (smoke profile) and the outputs are consistent.

On generated data always; on the real collections too when CXR_DATA_DIR is set (CI sets it).
"""

import json
import re
from datetime import datetime

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


# stderr lines an executed notebook may show (JupyterLab draws stderr in red): none so far
STDERR_ALLOWED: list[str] = []


def _outputs(out, notebook: str) -> list[dict]:
    """Every output of an executed notebook, in order."""
    cells = json.loads((out / "notebooks" / notebook).read_text())["cells"]
    return [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]


def _text(o: dict, kind: str = "text/plain") -> str:
    value = o.get("text") if o.get("output_type") == "stream" else (o.get("data") or {}).get(kind, "")
    return "".join(value) if isinstance(value, list) else str(value or "")


def _check_students(out, data_dir):
    """What students read in the executed notebooks (issue 19): no red boxes, full texts, generated numbers."""
    bad = [(nb.name, line) for nb in sorted((out / "notebooks").glob("*.ipynb")) for o in _outputs(out, nb.name)
           if o.get("output_type") == "stream" and o.get("name") == "stderr"
           for line in _text(o).splitlines() if line.strip() and not any(re.search(a, line) for a in STDERR_ALLOWED)]
    assert not bad, f"stderr (red boxes) in executed notebooks: {bad[:10]}"
    errors = [nb.name for nb in (out / "notebooks").glob("*.ipynb") for o in _outputs(out, nb.name)
              if o.get("output_type") == "error"]
    assert not errors, errors
    # 01: the largest number of images of one patient comes from the data
    tidy = pd.read_csv(out / "tidy.csv")
    most = int(tidy.groupby("patient_id").size().max())
    assert any(f"the most for one patient is {most} (" in _text(o) for o in _outputs(out, "01_metadata_visualization.ipynb"))
    # 02: missing files are counted per source
    log = pd.read_csv(out / "cleaning_log.csv")
    said = "".join(_text(o) for o in _outputs(out, "02_data_cleaning.ipynb"))
    for source, n in log[log["reason"] == "missing_file"].groupby("source").size().items():
        assert f"{source}: {n} of its" in said, source
    # 04: the parameter count printed is this run's model's
    assert re.search(r"\n?[\d,]+ parameters at 64 px", "".join(_text(o) for o in _outputs(out, "04_custom_cnn.ipynb")))
    # 06: the claims in full (markdown), the shared note once, in the notebook and its HTML copy
    claims = [_text(o, "text/markdown") for o in _outputs(out, "06_model_comparison.ipynb") if "published claim" in
              _text(o, "text/markdown")]
    assert len(claims) == 1 and "the figure is the majority-class share, not skill" in claims[0]
    assert claims[0].count("left out:") <= len(set(re.findall(r"(\w+) left out:", claims[0])))
    assert "the figure is the majority-class share, not skill" in (out / "html" / "06_model_comparison.html").read_text()
    # 07: one figure across models, the sentence says what happens inside each view, the full table in a CSV
    audit = json.loads((out / "audit.json").read_text())
    said = audit["sentences"]["groups"]   # generated data may leave no group with both classes: that branch says so
    assert "view=" in said and ("inside each view and each sex group" in said or
                                said.startswith("No view or sex group holds both classes"))
    assert len(pd.read_csv(out / "audit_groups.csv")) == len(audit["groups"])
    started = datetime.fromisoformat(json.loads((out / "run_manifest.json").read_text())["started_utc"]).timestamp()
    assert (out / "figures" / "07_groups.png").is_file()
    assert not [f.name for f in (out / "figures").glob("07_groups_*.png") if f.stat().st_mtime >= started]
    # 08: the paragraph as Markdown, not a monospace print
    prose = [_text(o, "text/markdown") for o in _outputs(out, "08_external_validation.ipynb")]
    opening = json.loads((out / "external.json").read_text())["paragraph"][:60]   # whichever branch it took
    assert any(opening in p for p in prose), opening
    assert not any(opening in _text(o) for o in _outputs(out, "08_external_validation.ipynb")
                   if o.get("output_type") == "stream")


def _check_index(out, planted: list[str]):
    """The index: the run's real status, only this run's figures shown, stale ones listed by name."""
    page = (out / "index.html").read_text()
    assert "Run complete" in page
    assert all(nb.stem + ".html" in page for nb in list_notebooks())
    shown = set(re.findall(r'<img src="figures/([^"]+)"', page))
    assert shown == {f.name for f in (out / "figures").glob("*.png")} - set(planted)
    for name in planted:
        assert name in page.split("stale figure(s)")[1], name
    assert "Trust audit (notebook 07)" in page and "External validation (notebook 08)" in page


def _check_run(out, data_dir):
    _check_data_outputs(out, data_dir)
    _check_model_outputs(out)
    _check_external(out, data_dir)
    _check_lungs(out, data_dir)
    _check_students(out, data_dir)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert [n["status"] for n in manifest["notebooks"]] == ["ok"] * len(list_notebooks())
    assert manifest["git"]["commit"] and manifest["data_sha256"] and manifest["packages"]["keras"]


@pytest.mark.slow
def test_whole_workbook_on_generated_data(fake_data, tmp_path):
    out = tmp_path / "out"
    stale = ["07_groups_old_model.png", "04_custom_cnn__three_class_history.png"]   # an earlier run's leftovers
    for name in stale:
        _png(out / "figures" / name, 1_700_000_000.0)
    # fine_tune_epochs=1 also runs notebook 05's block5 fine-tuning branch (off in the smoke profile)
    run(profile="smoke", data_dir=str(fake_data), output_dir=str(out),
        extra={"weights": "none", "fine_tune_epochs": 1, "detector_epochs": 2})  # 09's detector: 2 epochs here
    _check_run(out, fake_data)
    _check_index(out, stale)
    R.validate_record(R.load_metrics(out / "metrics" / "vgg16_finetuned.json"))


@pytest.mark.slow
@pytest.mark.realdata
def test_whole_workbook_on_real_data(real_data, tmp_path):
    out = tmp_path / "out"
    run(profile="smoke", data_dir=str(real_data), output_dir=str(out), extra={"weights": "none"})
    _check_run(out, real_data)
    _check_index(out, [])


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
            "    print(json.dumps({'type': type(e).__name__, 'msg': str(e), 'runtime': isinstance(e, RuntimeError)}))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["type"] == "WeightsUnavailable", out   # a RuntimeError that IPython shows as one line
    assert out["runtime"] and "ImageNet weights for VGG16" in out["msg"] and "weights='none'" in out["msg"], out["msg"]
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
    assert "WeightsUnavailable" in msg and "weights='none'" in msg and "make lab WEIGHTS=none" in msg, msg[-2000:]
    assert not (out / "metrics" / "vgg16.json").exists()
    # the executed notebook shows the error as its one line, not three screens of urllib traceback
    (error,) = [o for o in _outputs(out, "05_vgg16_transfer_learning.ipynb") if o.get("output_type") == "error"]
    assert error["ename"] == "WeightsUnavailable" and len(error["traceback"]) == 1, error["traceback"]
    assert "urllib" not in error["traceback"][0] and "Traceback" not in error["traceback"][0]
    # `make lab WEIGHTS=none` passes the choice as $CXR_WEIGHTS: no -p weights, the kernel reads it, 05 runs offline
    monkeypatch.setenv("CXR_WEIGHTS", "none")
    run(profile="smoke", only=["05"], data_dir=str(fake_data), output_dir=str(out), html_index=False)
    assert R.load_metrics(out / "metrics" / "vgg16.json")["weights"] == "none"
    assert any("weights = 'none' ($CXR_WEIGHTS)" in _text(o) for o in _outputs(out, "05_vgg16_transfer_learning.ipynb"))


def test_only_rejects_unknown_numbers():
    with pytest.raises(ValueError, match="names no notebook"):
        list_notebooks(["99"])


# --------------------------------------------------------------------------- outputs/index.html (issue 19 item 7, issue 16 item 6)

def _png(path, t: float) -> None:
    """A small real PNG at ``path`` whose modification time is ``t``."""
    import os

    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "white").save(path)
    os.utime(path, (t, t))


def _executed(path, t: float) -> None:
    import os

    import nbformat
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# executed")])
    nbformat.write(nb, path)
    os.utime(path, (t, t))


def _start(out, nb: str, t: float) -> None:
    from cxrbook.atomic import write_json
    write_json({"notebook": nb, "started_unix": t}, out / "logs" / f"{nb}.started.json")


def test_index_says_what_the_manifest_says_and_shows_only_current_figures(tmp_path):
    from datetime import datetime, timezone

    from cxrbook.reporting.index import build_index
    out = tmp_path / "outputs"
    t0 = 1_800_000_000.0   # this run started here; everything before it is an earlier run's
    manifest = {"started_utc": datetime.fromtimestamp(t0, timezone.utc).isoformat(), "status": "interrupted",
                "profile": "smoke", "seed": 42, "git": {"commit": "abc"}, "data_sha256": "f" * 64, "parameters": {},
                "notebooks": [{"notebook": "01_metadata_visualization.ipynb", "status": "ok", "seconds": 3.0},
                              {"notebook": "02_data_cleaning.ipynb", "status": "interrupted", "seconds": 1.0,
                               "error": "KeyboardInterrupt: "}]}
    (out / "run_manifest.json").parent.mkdir(parents=True)
    (out / "run_manifest.json").write_text(json.dumps(manifest))
    _executed(out / "notebooks" / "01_metadata_visualization.ipynb", t0 + 5)
    _executed(out / "notebooks" / "02_data_cleaning.ipynb", t0 + 0.5)   # written in the start's second, by
    _start(out, "02", t0 - 500)                                          # the previous run: 02 never started in this one
    _executed(out / "notebooks" / "03_segregation_and_splits.ipynb", t0 - 500)
    _start(out, "01", t0 + 1)
    _png(out / "figures" / "01_age.png", t0 + 2)                        # written by this run's 01
    _png(out / "figures" / "01_old_name.png", t0 - 900)                 # left over from an earlier 01
    _start(out, "07", t0 - 800)
    _png(out / "figures" / "07_groups.png", t0 - 700)                   # 07's latest execution (not this run)
    _png(out / "figures" / "07_groups__three_class.png", t0 - 1000)     # before 07's latest start: stale
    page = build_index(out).read_text()
    assert "Run INTERRUPTED in 02_data_cleaning.ipynb" in page and "Run complete" not in page
    assert 'href="html/01_metadata_visualization.html"' in page and (out / "html" / "01_metadata_visualization.html").is_file()
    assert 'href="html/02_data_cleaning.html"' not in page and "03_segregation" not in page  # not this run's pages
    shown = set(re.findall(r'<img src="figures/([^"]+)"', page))
    assert shown == {"01_age.png", "07_groups.png"}
    stale = page.split("stale figure(s)")[1]
    assert "01_old_name.png" in stale and "07_groups__three_class.png" in stale
    assert "not in the recorded run" in page.split("07 ·")[1].split("</h3>")[0]
    assert "max-width:100%" in page and 'width="360"' not in page   # figures at their own, readable size


def test_index_without_a_run_and_from_the_command_line(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "outputs"
    _png(out / "figures" / "03_split_composition.png", 1_800_000_000.0)
    r = subprocess.run([sys.executable, "-m", "cxrbook", "index", "--outputs", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    page = (out / "index.html").read_text()
    assert "No workbook run is recorded here" in page and '<img src="figures/03_split_composition.png"' in page
    assert "Not generated:" in page   # the generated tables say what is missing instead of failing
    r = subprocess.run([sys.executable, "-m", "cxrbook", "index", "--outputs", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not exist" in r.stdout


def test_an_interrupted_run_rewrites_the_index(fake_data, tmp_path, monkeypatch):
    """Ctrl-C during a notebook: the index says interrupted and links no earlier page."""
    import papermill as pm
    out = tmp_path / "o"
    run(profile="smoke", only=["01"], data_dir=str(fake_data), output_dir=str(out))
    assert "Run complete" in (out / "index.html").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pm, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(profile="smoke", only=["01"], data_dir=str(fake_data), output_dir=str(out))
    page = (out / "index.html").read_text()
    assert "Run INTERRUPTED in 01_metadata_visualization.ipynb" in page and "Run complete" not in page
    assert 'href="html/01_metadata_visualization.html"' not in page   # the earlier run's page is not linked
