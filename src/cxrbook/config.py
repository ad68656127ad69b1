"""Every path and profile of the workbook, in one place.

The project root is found from this file's location, never from the current
directory, so notebooks and the CLI resolve the same paths wherever they run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
DEFAULT_OUTPUT_DIR = PROJECT_ROOT / "outputs"
KERNEL_NAME = "cxrbook"  # registered by `make venv`; papermill -k uses the same name
DATA_ENV = "CXR_DATA_DIR"

SOURCES = {
    "cohen": "covid-chestxray-dataset",
    "actualmed": "actualmed-covid-chestxray-dataset",
    "pediatric": "pediatric-normal-chestxray",
}

GET_DATA_HELP = f"""Point the workbook at the three collections with {DATA_ENV}=/path/to/folder, a folder holding:
  covid-chestxray-dataset/            git clone https://github.com/ieee8023/covid-chestxray-dataset
  actualmed-covid-chestxray-dataset/  git clone https://github.com/agchung/Actualmed-COVID-chestxray-dataset
  pediatric-normal-chestxray/         normal class of Kermany et al. 2018, https://data.mendeley.com/datasets/rscbjbr9sj/2
                                      (images/ plus a metadata.csv listing `filename`; see README "Data")"""

# Profiles: plain named values. `smoke` is what CI runs on the real data; `full`
# follows the published image sizes and epochs.
PROFILES: dict[str, dict] = {
    "smoke": {
        "cnn_image_size": 64,
        "cnn_epochs": 2,
        "transfer_image_size": 80,  # InceptionV3 needs >= 75 px
        "transfer_epochs": 3,
        "fine_tune_epochs": 0,
        "batch_size": 32,
        "n_bootstrap": 200,
        "comparison_backbones": ["DenseNet121", "ResNet50V2", "InceptionV3", "MobileNetV2"],
        "max_gradcam": 8,
        # notebook 09's lung detector (cxrbook.models.detection.DetectorConfig)
        "detector_image_size": 64,
        "detector_epochs": 20,
        "detector_head_layers": 1,
    },
    "full": {
        "cnn_image_size": 150,
        "cnn_epochs": 30,
        "transfer_image_size": 224,
        "transfer_epochs": 30,
        "fine_tune_epochs": 10,
        "batch_size": 32,
        "n_bootstrap": 2000,
        "comparison_backbones": ["DenseNet121", "ResNet50V2", "InceptionV3", "MobileNetV2"],
        "max_gradcam": 16,
        "detector_image_size": 96,
        "detector_epochs": 100,
        "detector_head_layers": 2,
    },
}


def model_name(base: str, task: str) -> str:
    """File stem of a model's outputs: ``vgg16`` for covid_vs_normal, ``vgg16__three_class`` otherwise."""
    return base if task == "covid_vs_normal" else f"{base}__{task}"


class DataNotFoundError(FileNotFoundError):
    """The data folder, or one of its collections, is missing."""


def profile_settings(profile: str) -> dict:
    """Settings of a named profile (`smoke` or `full`)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return dict(PROFILES[profile])


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: the argument if given, else $CXR_DATA_DIR, else `data/`.

    Raises DataNotFoundError naming CXR_DATA_DIR and how to get the data when the
    folder does not exist. No silent fallback: a given path that is missing fails.
    """
    if data_dir:
        path, origin = Path(data_dir), "the data_dir argument"
    elif os.environ.get(DATA_ENV):
        path, origin = Path(os.environ[DATA_ENV]), f"${DATA_ENV}"
    else:
        path, origin = PROJECT_ROOT / "data", f"the default (no {DATA_ENV} set)"
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise DataNotFoundError(f"data folder {path} (from {origin}) does not exist.\n{GET_DATA_HELP}")
    return path


@dataclass(frozen=True)
class Paths:
    """Where a run reads and writes; every notebook derives its paths from one of these."""

    data: Path
    outputs: Path
    profile: str = ""  # the profile this notebook runs with; "" = not checked against the tables' records

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike | None = None,
                output_dir: str | os.PathLike | None = None, profile: str = "") -> "Paths":
        out = Path(output_dir).expanduser().resolve() if output_dir else DEFAULT_OUTPUT_DIR
        paths = cls(data=resolve_data_dir(data_dir), outputs=out, profile=profile)
        for d in (paths.figures, paths.metrics, paths.models, paths.cache, paths.notebooks):
            d.mkdir(parents=True, exist_ok=True)
        return paths

    def require(self, path: Path, notebook: str) -> Path:
        """``path`` if it exists and was written from this data folder and profile.

        Else a FileNotFoundError saying which notebook (e.g. "02") writes it, or a
        ``provenance.ProvenanceMismatch`` naming the file, the folder it came from and this one.
        """
        from .provenance import check
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist yet: run notebook {notebook} first "
                                    f"(python -m cxrbook run --only {notebook})")
        check(path, self.data, self.profile, notebook)
        return Path(path)

    def save_table(self, df, path: Path) -> Path:
        """Write a shared table (tidy/clean/cleaning_log/splits) atomically with its provenance record."""
        from .provenance import save_table
        return save_table(df, path, self.data, self.profile)

    @property
    def figures(self) -> Path:
        return self.outputs / "figures"

    @property
    def metrics(self) -> Path:
        return self.outputs / "metrics"

    @property
    def models(self) -> Path:
        return self.outputs / "models"

    @property
    def cache(self) -> Path:
        return self.outputs / "cache"

    @property
    def notebooks(self) -> Path:
        return self.outputs / "notebooks"

    @property
    def clean_csv(self) -> Path:
        return self.outputs / "clean.csv"

    @property
    def cleaning_log(self) -> Path:
        return self.outputs / "cleaning_log.csv"

    @property
    def tidy_csv(self) -> Path:
        return self.outputs / "tidy.csv"

    @property
    def splits_csv(self) -> Path:
        return self.outputs / "splits.csv"
