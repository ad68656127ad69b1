"""Shared fixtures: a generated copy of the three collections (no real data needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrbook.data.synthetic import make_fake_collections


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> Path:
    """Three fake collections with every defect cleaning must catch."""
    return make_fake_collections(tmp_path_factory.mktemp("data"), n_patients=6, seed=0)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real collections, when CXR_DATA_DIR points at them; else the test is skipped."""
    d = os.environ.get("CXR_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("CXR_DATA_DIR is not set to the real data")
    return Path(d)


def run_on_backend(code: str, backend: str = "torch", timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter with KERAS_BACKEND=backend; it must print one JSON line last."""
    import json
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": backend},
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def label_only_data(tmp_path):
    """A function (train, val, test label lists) -> ``pipeline.CachedData`` of blank 8x8 images, one patient
    per image, image paths sorted within each split: enough for ``experiment.evaluate_and_save``."""
    import numpy as np

    from cxrbook.data.pipeline import CachedData, SplitArrays

    def split(labels, prefix: str) -> SplitArrays:
        n = len(labels)
        return SplitArrays(x=np.zeros((n, 8, 8, 1), np.uint8), labels=np.array(labels),
                           patient_id=np.array([f"{prefix}{i}" for i in range(n)]),
                           image_path=np.array([f"{prefix}/{i:03d}.png" for i in range(n)]),
                           source=np.array(["cohen"] * n))

    def make(train, val, test) -> CachedData:
        return CachedData(train=split(train, "tr"), val=split(val, "va"), test=split(test, "te"), key="k",
                          path=tmp_path / "c.npz", hit=False, image_size=8, clahe=False)
    return make
