"""Every path and profile of the workbook, in one place.

The workbook root (the checkout holding ``pyproject.toml`` of project ``cxrbook`` and ``notebooks/``)
is found by walking up from the current folder, never from where the package is installed: a
non-editable install puts this file in ``site-packages``, and outputs must not land there. The CLI
run from the checkout, ``make`` and the notebooks' kernels (whose folder is ``notebooks/``) all find
the same root. ``CXR_OUTPUT_DIR`` (or a command's ``--output-dir`` / ``--outputs``) sets the outputs
folder explicitly; outside a workbook without either, outputs go to ``./outputs`` and every
command says where they went.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

KERNEL_NAME = "cxrbook"  # registered by `make venv`; papermill -k uses the same name
DATA_ENV = "CXR_DATA_DIR"
OUTPUT_ENV = "CXR_OUTPUT_DIR"
PROJECT_NAME = "cxrbook"  # [project] name in the workbook's pyproject.toml: one of its two markers

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


# Readable model names for tables, figures and sentences: the one place they are written.
DISPLAY_NAMES = {"custom_cnn": "Custom CNN (reference)", "custom_cnn_improved": "Improved CNN (BN + GAP)",
                 "improved_cnn": "Improved CNN (BN + GAP)", "vgg16": "VGG16 frozen + head",
                 "vgg16_finetuned": "VGG16 fine-tuned block5", "logreg_pixels": "Logistic regression on 32x32 pixels",
                 "logreg": "Logistic regression on 32x32 pixels"}


def display_name(name: str, backbone: str | None = None) -> str:
    """Readable name of the model saved as ``name`` (its file stem; task suffix allowed).

    ``DISPLAY_NAMES`` of its base name, else ``"<backbone> frozen + head"``, else the base name;
    notebook 07's ``<arch>__normals_<normals>`` models add ``, normals=<normals> (07)``.
    """
    base, *rest = name.split("__")
    normals = next((p[len("normals_"):] for p in rest if p.startswith("normals_")), None)
    text = DISPLAY_NAMES.get(base) or (f"{backbone} frozen + head" if backbone else base)
    return f"{text}, normals={normals} (07)" if normals else text


class DataNotFoundError(FileNotFoundError):
    """The data folder, or one of its collections, is missing."""


# Why a path a user handed us cannot be read as a file; keys double as image reasons (data.images.REASONS).
PATH_PROBLEMS = {
    "missing_file": "does not exist",
    "dangling_symlink": "is a dangling symbolic link (its target is missing)",
    "symlink_loop": "is a symbolic link loop (it leads back to itself)",
    "is_a_directory": "is a folder, not a file",
    "not_a_regular_file": "is not a regular file, so it is not read",
    "permission_denied": "cannot be read (permission denied)",
}


def path_problem(path: str | os.PathLike) -> tuple[str, str] | None:
    """None when ``path`` is a readable regular file, else ``(reason, detail)``, ``reason`` a key of PATH_PROBLEMS.

    Never opens the file (a named pipe would block) and never raises for a bad path: a symlink loop,
    a dangling link or a FIFO each get their own reason instead of "does not exist".
    """
    import errno
    import stat
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink_loop", ""
        if e.errno == errno.EACCES:
            return "permission_denied", e.strerror or ""
        if os.path.islink(path):
            try:
                return "dangling_symlink", f"it points to {os.readlink(path)}"
            except OSError:
                return "dangling_symlink", ""
        return "missing_file", "" if e.errno == errno.ENOENT else (e.strerror or "")
    if stat.S_ISDIR(st.st_mode):
        return "is_a_directory", ""
    if not stat.S_ISREG(st.st_mode):
        kind = ("named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "device")
        return "not_a_regular_file", f"it is a {kind}"
    if not os.access(path, os.R_OK):
        return "permission_denied", ""
    return None


def describe_path_problem(path: str | os.PathLike, what: str = "file",
                          hints: dict[str, str] | None = None) -> str | None:
    """``"labels file X is a folder, not a file"``-style sentence for :func:`path_problem`, or None if readable;
    ``hints`` adds advice per reason (``{"missing_file": "train one first"}``)."""
    problem = path_problem(path)
    if problem is None:
        return None
    reason, detail = problem
    extra = "; ".join(x for x in (detail, (hints or {}).get(reason, "")) if x)
    return f"{what} {path} {PATH_PROBLEMS[reason]}" + (f" ({extra})" if extra else "")


class WorkbookNotFoundError(FileNotFoundError):
    """No cxrbook workbook (pyproject.toml naming cxrbook, and notebooks/) in or above the current folder."""


def is_workbook_root(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the workbook: a ``pyproject.toml`` whose project is cxrbook, and ``notebooks/``."""
    folder = Path(folder)
    toml = folder / "pyproject.toml"
    if not (toml.is_file() and (folder / "notebooks").is_dir()):
        return False
    try:
        project = tomllib.loads(toml.read_text(encoding="utf-8")).get("project") or {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(project, dict) and project.get("name") == PROJECT_NAME


def find_workbook_root(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest workbook root at or above ``start`` (default: the current folder), or None."""
    here = Path(start if start is not None else Path.cwd()).expanduser().resolve()
    return next((d for d in (here, *here.parents) if is_workbook_root(d)), None)


def workbook_root(start: str | os.PathLike | None = None) -> Path:
    """``find_workbook_root``, or WorkbookNotFoundError saying what is looked for and where."""
    root = find_workbook_root(start)
    if root is None:
        here = Path(start if start is not None else Path.cwd()).resolve()
        raise WorkbookNotFoundError(
            f"no cxrbook workbook in or above {here} (looked for pyproject.toml naming project "
            f"{PROJECT_NAME!r} beside a notebooks/ folder): run this command inside the cxrbook checkout")
    return root


def notebooks_dir(start: str | os.PathLike | None = None) -> Path:
    """The workbook's ``notebooks/`` folder (WorkbookNotFoundError outside a workbook)."""
    return workbook_root(start) / "notebooks"


def default_output_dir() -> tuple[Path, str]:
    """(the outputs folder when none is given, where that choice comes from, in words).

    ``$CXR_OUTPUT_DIR`` if set; else ``outputs/`` of the workbook in or above the current folder;
    else ``./outputs``. Never a folder derived from where the package is installed.
    """
    if os.environ.get(OUTPUT_ENV):
        return Path(os.environ[OUTPUT_ENV]).expanduser().resolve(), f"${OUTPUT_ENV}"
    root = find_workbook_root()
    if root is not None:
        return root / "outputs", f"the workbook at {root}"
    return Path.cwd().resolve() / "outputs", (f"the current folder: no cxrbook workbook in or above it; set "
                                              f"{OUTPUT_ENV} or pass the command's output option to choose")


def resolve_output_dir(given: str | os.PathLike | None = None, option: str = "--output-dir") -> tuple[Path, str]:
    """(the outputs folder, where it comes from): ``given`` (named by ``option``) if any, else ``default_output_dir``."""
    if given:
        return Path(given).expanduser().resolve(), option
    return default_output_dir()


def __getattr__(name: str) -> Path:
    """``PROJECT_ROOT``, ``NOTEBOOKS_DIR`` and ``DEFAULT_OUTPUT_DIR`` for code written against the old
    constants: each access resolves afresh, as the functions above do (no longer from this file's place)."""
    if name == "DEFAULT_OUTPUT_DIR":
        return default_output_dir()[0]
    if name == "PROJECT_ROOT":
        return workbook_root()
    if name == "NOTEBOOKS_DIR":
        return notebooks_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def profile_settings(profile: str) -> dict:
    """Settings of a named profile (`smoke` or `full`)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return dict(PROFILES[profile])


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: the argument if given, else $CXR_DATA_DIR, else ``data/`` of the workbook (or ``./data``).

    Raises DataNotFoundError naming where the path came from and how to get the data when the
    folder does not exist or is a file. No silent fallback: a given path that is missing fails.
    """
    if data_dir:
        path, origin = Path(data_dir), "the data_dir argument"
    elif os.environ.get(DATA_ENV):
        path, origin = Path(os.environ[DATA_ENV]), f"${DATA_ENV}"
    else:
        path, origin = (find_workbook_root() or Path.cwd()) / "data", f"the default (no {DATA_ENV} set)"
    path = path.expanduser().resolve()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise DataNotFoundError(f"data folder {path} (from {origin}) {what}.\n{GET_DATA_HELP}")
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
        out, _ = resolve_output_dir(output_dir)
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
