"""The runner executes notebooks 01-03 with papermill and writes consistent outputs."""

import json

import pandas as pd
import pytest

from cxrbook.runner import list_notebooks, run

DATA_FIGURES = ["01_finding", "01_age", "01_sex", "01_survival", "01_view", "01_modality", "01_country",
                "01_images_per_patient", "01_label_by_view", "01_label_by_age_group_source",
                "03_split_composition"]


def _check_outputs(out, data_dir):
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
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert [n["status"] for n in manifest["notebooks"]] == ["ok"] * 3
    assert "01_metadata_visualization.html" in (out / "index.html").read_text()


@pytest.mark.slow
def test_run_01_03_on_generated_data(fake_data, tmp_path):
    out = tmp_path / "out"
    run(profile="smoke", only=["01", "02", "03"], data_dir=str(fake_data), output_dir=str(out))
    _check_outputs(out, fake_data)


@pytest.mark.slow
@pytest.mark.realdata
def test_run_01_03_on_real_data(real_data, tmp_path):
    out = tmp_path / "out"
    run(profile="smoke", only=["01", "02", "03"], data_dir=str(real_data), output_dir=str(out))
    _check_outputs(out, real_data)


def test_failing_notebook_names_cell_and_error(fake_data, tmp_path):
    """A notebook that raises stops the run with the notebook, cell and error in the message."""
    from cxrbook.runner import NotebookFailed
    with pytest.raises(NotebookFailed, match=r"03_segregation_and_splits.ipynb failed in cell \[\d+\].*"
                                             r"FileNotFoundError.*clean.csv.*run notebook 02 first"):
        run(profile="smoke", only=["03"], data_dir=str(fake_data), output_dir=str(tmp_path / "o"),
            html_index=False)


def test_only_rejects_unknown_numbers():
    with pytest.raises(ValueError, match="names no notebook"):
        list_notebooks(["99"])
