"""The Setup section every notebook opens with (plumbing, kept out of the notebooks)."""

from __future__ import annotations

import os
import platform
import random

import numpy as np

from ..config import Paths, profile_settings


def setup(data_dir: str = "", output_dir: str = "", profile: str = "smoke", seed: int = 42,
          keras: bool = False) -> tuple[Paths, dict]:
    """Resolve paths, seed every RNG, set the figure style and print what this run uses.

    Returns (paths, profile settings). With ``keras=True`` also seeds Keras and says
    which backend and devices it will use (and what that means for time).
    """
    from .. import __version__
    from ..plots import set_style

    paths = Paths.resolve(data_dir or None, output_dir or None, profile=profile)
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
