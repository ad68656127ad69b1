"""The Setup section every notebook opens with (plumbing, kept out of the notebooks)."""

from __future__ import annotations

import os
import platform
import random

import numpy as np

from ..config import Paths, profile_settings


WEIGHTS_ENV = "CXR_WEIGHTS"  # `make lab WEIGHTS=none` sets it; a notebook's weights = "" reads it
DEFAULT_WEIGHTS = "imagenet"


def setup(data_dir: str = "", output_dir: str = "", profile: str = "smoke", seed: int = 42,
          keras: bool = False, notebook: str = "") -> tuple[Paths, dict]:
    """Resolve paths, seed every RNG, set the figure style and print what this run uses.

    Returns (paths, profile settings). With ``keras=True`` also seeds Keras and says
    which backend and devices it will use (and what that means for time). ``notebook``
    (its number, e.g. "07") records when this execution started (``reporting.index.record_start``):
    the index then tells this execution's figures from older ones left in ``outputs/figures/``.
    """
    from .. import __version__
    from ..plots import set_style
    from ..reporting.index import record_start

    paths = Paths.resolve(data_dir or None, output_dir or None, profile=profile)
    if notebook:
        record_start(paths.outputs, notebook)
    settings = profile_settings(profile)
    random.seed(seed)
    np.random.seed(seed)
    set_style()
    print(f"cxrbook {__version__} | python {platform.python_version()} | numpy {np.__version__}")
    print(f"profile={profile} seed={seed}\ndata    = {paths.data}\noutputs = {paths.outputs}")
    if keras:
        import keras as K
        K.utils.set_random_seed(seed)
        backend = K.backend.backend()
        gpus = _gpus(backend)
        print(f"keras {K.__version__} | backend {backend} | "
              + (f"GPU: {gpus}" if gpus else f"no GPU: CPU only ({os.cpu_count()} cores); "
                 "the smoke profile takes minutes, the full profile can take hours"))
    return paths, settings


def _gpus(backend: str) -> list[str]:
    if backend == "tensorflow":
        import tensorflow as tf
        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "torch":
        import torch
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def weights_choice(weights: str = "") -> str:
    """The backbone weights a notebook uses: ``weights`` when given (papermill's ``-p weights=...``), else
    ``$CXR_WEIGHTS`` (``make lab WEIGHTS=none`` sets it for JupyterLab), else ``imagenet``; printed with
    where it came from."""
    given = str(weights).strip()
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    choice = given or env or DEFAULT_WEIGHTS
    origin = "parameter" if given else (f"${WEIGHTS_ENV}" if env else f"default; set ${WEIGHTS_ENV}=none or the "
                                        "parameter to run offline")
    print(f"weights = {choice!r} ({origin})")
    return choice


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|"})


def prose(text: str):
    """Generated prose for display as Markdown (wrapped to the page, no monospace, no split words), with
    Markdown's special characters escaped so numbers and model names show as written."""
    from IPython.display import Markdown
    return Markdown(str(text).translate(_MARKDOWN_SPECIAL))
