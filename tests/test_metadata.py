import pandas as pd
import pytest

from cxrbook.config import DataNotFoundError, resolve_data_dir
from cxrbook.data.metadata import TIDY_COLUMNS, load_all, normalize_finding, pathogen_of

# Every distinct `finding` string of the real Cohen (22 June 2020) and Actualmed metadata.
REAL_FINDINGS = {
    "COVID-19": "covid", "COVID-19, ARDS": "covid",
    "No Finding": "normal", "No finding": "normal",
    "Pneumocystis": "other_pneumonia", "Streptococcus": "other_pneumonia", "SARS": "other_pneumonia",
    "Pneumonia": "other_pneumonia", "Klebsiella": "other_pneumonia",
    "Mycoplasma Bacterial Pneumonia": "other_pneumonia", "Legionella": "other_pneumonia",
    "Lipoid": "other_pneumonia", "Varicella": "other_pneumonia", "E.Coli": "other_pneumonia",
    "Bacterial": "other_pneumonia", "Chlamydophila": "other_pneumonia", "Influenza": "other_pneumonia",
    "ARDS": "unknown", "todo": "unknown", "": "unknown",
}


@pytest.mark.parametrize("finding,label", sorted(REAL_FINDINGS.items()))
def test_normalization_of_real_finding_strings(finding, label):
    assert normalize_finding(finding) == label


def test_blank_and_nan_are_unknown():
    assert normalize_finding(float("nan")) == "unknown"
    assert normalize_finding("   ") == "unknown"
    assert normalize_finding("Something New") == "unknown"


@pytest.mark.parametrize("finding,kind", [("Streptococcus", "bacterial"), ("Mycoplasma Bacterial Pneumonia", "bacterial"),
                                          ("SARS", "viral"), ("COVID-19, ARDS", "viral"), ("Pneumocystis", "fungal"),
                                          ("Lipoid", "non_infectious"), ("Pneumonia", "unspecified"),
                                          ("No Finding", "none"), ("todo", "unknown")])
def test_pathogen_type(finding, kind):
    assert pathogen_of(finding) == kind


def test_real_findings_are_all_known(real_data):
    tidy = load_all(real_data)
    unknown = set(tidy.loc[tidy["label"] == "unknown", "finding"].fillna("")) - {"todo", "ARDS", ""}
    assert not unknown, f"findings without a rule: {unknown}"
    assert set(tidy["finding"].fillna("")) <= set(REAL_FINDINGS), "a new finding string appeared"


def test_tidy_table(fake_data):
    tidy = load_all(fake_data)
    assert list(tidy.columns) == TIDY_COLUMNS
    assert tidy["patient_id"].str.match(r"^(cohen|actualmed|pediatric):").all()
    assert set(tidy.loc[tidy["source"] == "pediatric", "age_group"]) == {"pediatric"}
    rows_in = sum(len(pd.read_csv(p)) for p in fake_data.glob("*/metadata.csv"))
    assert len(tidy) == rows_in


def test_missing_columns_error_names_file_and_columns(fake_data, tmp_path):
    import shutil
    copy = tmp_path / "d"
    shutil.copytree(fake_data, copy)
    meta = copy / "covid-chestxray-dataset" / "metadata.csv"
    pd.read_csv(meta).drop(columns=["finding", "view"]).to_csv(meta, index=False)
    with pytest.raises(ValueError) as e:
        load_all(copy)
    assert str(meta) in str(e.value) and "finding" in str(e.value) and "view" in str(e.value)


def test_missing_data_folder_names_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="CXR_DATA_DIR") as e:
        resolve_data_dir()
    assert "git clone" in str(e.value)
    with pytest.raises(DataNotFoundError, match="lacks collection"):
        load_all(tmp_path)


# --------------------------------------------------------------------------- pediatric patient ids

def _pediatric_ids(tmp_path, names: list[str]) -> list[str]:
    from cxrbook.data.metadata import SOURCES, load_pediatric
    folder = tmp_path / SOURCES["pediatric"]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"filename": names}).to_csv(folder / "metadata.csv", index=False)
    return load_pediatric(tmp_path)["patient_id"].tolist()


def test_pediatric_patient_id_from_kermany_file_names(tmp_path):
    """Kermany names are IM-<patient>-<image>[-<n>].jpeg, some with a NORMAL2- prefix (real examples
    from the collection's metadata.csv). Images of one patient share an id; other patients do not."""
    names = ["IM-0011-0001.jpeg", "IM-0011-0001-0001.jpeg", "IM-0011-0001-0002.jpeg",  # patient 0011
             "IM-0003-0001.jpeg", "IM-0006-0001.jpeg",                                 # two more
             "NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427-0002.jpeg",                  # patient 1427
             "NORMAL2-IM-1430-0001.jpeg", "im-0115-0001.JPEG"]
    ids = dict(zip(names, _pediatric_ids(tmp_path, names)))
    assert ids["IM-0011-0001.jpeg"] == ids["IM-0011-0001-0001.jpeg"] == ids["IM-0011-0001-0002.jpeg"] \
        == "pediatric:IM-0011"
    assert ids["NORMAL2-IM-1427-0001.jpeg"] == ids["NORMAL2-IM-1427-0002.jpeg"] == "pediatric:IM-1427"
    assert len({ids[n] for n in ("IM-0003-0001.jpeg", "IM-0006-0001.jpeg", "IM-0011-0001.jpeg",
                                 "NORMAL2-IM-1430-0001.jpeg", "NORMAL2-IM-1427-0001.jpeg")}) == 5
    assert ids["im-0115-0001.JPEG"] == "pediatric:IM-0115"
    # Current rule: the NORMAL2- prefix is dropped, so IM-0383 and NORMAL2-IM-0383 (both series hold
    # 72 such numbers) are one patient. Merging can only keep images in one split, never leak across.
    assert _pediatric_ids(tmp_path, ["IM-0383-0001.jpeg", "NORMAL2-IM-0383-0001.jpeg"]) == \
        ["pediatric:IM-0383"] * 2


def test_pediatric_unparseable_name_is_its_own_patient(tmp_path):
    """A name that is not Kermany's pattern: the file stem is the patient (one image, one patient)."""
    ids = _pediatric_ids(tmp_path, ["scan_7.png", "scan_8.png", "IM-12.jpeg", "IM-0003-0001.jpeg"])
    assert ids == ["pediatric:scan_7", "pediatric:scan_8", "pediatric:IM-12", "pediatric:IM-0003"]


@pytest.mark.realdata
def test_real_pediatric_names_all_parse(real_data):
    """Every real Kermany name parses (no fallback ids) and its id is the IM-number of the name."""
    from cxrbook.data.metadata import load_pediatric
    ped = load_pediatric(real_data)
    assert ped["patient_id"].str.fullmatch(r"pediatric:IM-\d{4}").all()
    numbers = ped["image_path"].str.extract(r"IM-(\d{4})-", expand=False)
    assert (ped["patient_id"] == "pediatric:IM-" + numbers).all()
    assert ped["patient_id"].nunique() < len(ped)       # several images per patient exist
